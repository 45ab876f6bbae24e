#!/usr/bin/env python3
"""Web UI benchmark: a synthetic mesh of 1,000 services and 5,000 edges in the UI.

A fresh `weft server` (release build; store on tmpfs; plaintext and ACLs off, like
bench/control.py: the UI's own cost is what is measured), then `live_load`
(crates/weft-control/examples) registers the services and answers the server's live
questions as one proxy per service, each reporting the windows of the edges into it. Then:

1. time to interactive, in headless Chromium (Debian's, driven by playwright-core): from
   the navigation's start until the topology is drawn with every service and a click on
   one has opened its panel; a cold browser each run;
2. the server while 10 browsers watch the topology (each receives it every 2 s): its CPU
   (from /proc, as a share of one core) and RSS, against the same span with no browser.

    bench/ui.py [--services 1000] [--edges 5000] [--runs 5] [--browsers 10] [--seconds 30]
                [--write docs/benchmarks.md] [--smoke]

Everything runs on one 2-core machine: the browsers compete with the server for CPU.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from run import free_port, wait_port, write_block  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSER = os.path.join(ROOT, "bench", "ui_browser.cjs")


def build():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft-cli"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft-control", "--example", "live_load"],
                   cwd=ROOT, check=True)
    return (os.path.join(target, "release", "weft"),
            os.path.join(target, "release", "examples", "live_load"))


def usage(pid):
    """(CPU seconds, RSS bytes, peak RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return cpu, rss, hwm


def node_env():
    env = dict(os.environ)
    node_dir = os.environ.get("WEFT_NODE_DIR", os.path.expanduser("~/.cache/weft/node"))
    env["WEFT_PLAYWRIGHT"] = os.path.join(node_dir, "node_modules", "playwright-core")
    env.setdefault("WEFT_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
    return env


def browser(*args):
    out = subprocess.run(["node", BROWSER, *map(str, args)], env=node_env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"browser failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--edges", type=int, default=5000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--browsers", type=int, default=10)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--weft", help="a built weft (default: build the release one)")
    p.add_argument("--load", help="a built live_load example (default: build it)")
    p.add_argument("--smoke", action="store_true", help="seconds, tiny sizes, no figures kept")
    p.add_argument("--write", help="markdown file to update (block ui-bench)")
    a = p.parse_args()
    if a.smoke:
        a.services, a.edges, a.runs, a.browsers, a.seconds = 20, 40, 1, 1, 3
    weft, load = (a.weft, a.load) if a.weft and a.load else build()

    data = tempfile.mkdtemp(prefix="weft-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([weft, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                               "--tls", "off", "--acl", "off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loader = None
    try:
        wait_port(port)
        # Every edge allowed, as in a mesh that works (with no intention, the default
        # denies and every edge would be drawn denied).
        urllib.request.urlopen(urllib.request.Request(
            f"{url}/v1/config", method="POST", headers={"Content-Type": "application/yaml"},
            data=b"kind: Intention\nmetadata: {name: allow-all}\nspec: {source: '*', destination: '*', action: allow}\n"))
        loader = subprocess.Popen([load, "--server", f"127.0.0.1:{port}", "--services", str(a.services),
                                   "--edges", str(a.edges), "--seconds", "3600"],
                                  stdout=subprocess.PIPE, text=True)
        ready = json.loads(loader.stdout.readline())
        assert ready.get("event") == "ready", ready
        time.sleep(1)

        runs = browser("interactive", url, a.services, a.runs)["runs"]

        # The same span with no browser, then with `browsers` watching.
        cpu0, _, _ = usage(server.pid)
        time.sleep(a.seconds)
        cpu1, rss_idle, _ = usage(server.pid)
        watcher = subprocess.Popen(["node", BROWSER, "watch", url, str(a.services), str(a.browsers), str(a.seconds)],
                                   env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = watcher.stderr.readline()  # {"event":"watching"} once every page shows the mesh
        if "watching" not in line:
            raise SystemExit(f"watchers failed: {line}{watcher.stderr.read()}")
        cpu2, _, _ = usage(server.pid)
        out, err = watcher.communicate()
        cpu3, rss_watch, hwm = usage(server.pid)
        if watcher.returncode != 0:
            raise SystemExit(f"watchers failed: {err}")
        updates = json.loads(out.strip().splitlines()[-1])["updates"]
        result = {
            "services": a.services, "edges": a.edges,
            "interactive_ms": runs, "interactive_median_ms": statistics.median(runs),
            "idle_cpu_share": round((cpu1 - cpu0) / a.seconds, 3),
            "watched_cpu_share": round((cpu3 - cpu2) / a.seconds, 3),
            "browsers": a.browsers, "updates_per_browser": updates,
            "rss_idle_mb": round(rss_idle / 2**20, 1), "rss_watched_mb": round(rss_watch / 2**20, 1),
            "rss_peak_mb": round(hwm / 2**20, 1),
        }
        print(json.dumps(result))
        if a.write and not a.smoke:
            block = "\n".join([
                f"Measured with `bench/ui.py --services {a.services} --edges {a.edges} --runs {a.runs} "
                f"--browsers {a.browsers} --seconds {a.seconds}` (release build, headless "
                f"{subprocess.run(['chromium', '--version'], capture_output=True, text=True).stdout.strip()}):",
                "",
                "| | figure |",
                "|---|---|",
                f"| time to interactive topology ({a.services} services, {a.edges} edges), median of {a.runs} cold browsers | "
                f"**{statistics.median(runs) / 1000:.2f} s** (runs: {', '.join(f'{r / 1000:.2f}' for r in runs)} s) |",
                f"| server CPU, no browser (the load's own stats asks) | {result['idle_cpu_share'] * 100:.1f}% of a core |",
                f"| server CPU, {a.browsers} browsers watching (a topology every 2 s each) | {result['watched_cpu_share'] * 100:.1f}% of a core |",
                f"| topologies each browser received in {a.seconds} s | {min(updates)}–{max(updates)} |",
                f"| server RSS: before the browsers / while they watch / peak | {result['rss_idle_mb']} / {result['rss_watched_mb']} / {result['rss_peak_mb']} MB |",
            ])
            write_block(a.write, "ui-bench", block)
    finally:
        for proc in (loader, server):
            if proc:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
