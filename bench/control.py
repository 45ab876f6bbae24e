#!/usr/bin/env python3
"""Control-plane benchmark: convergence, memory and reconnect storms at N proxies.

For each N: a fresh `weft server` as it runs by default — TLS on its API and discovery
stream, ACLs on (bootstrapped here) — with its store on tmpfs so the disk's fsync time is
not what is measured; then `discovery_load` (crates/weft-control/examples) makes one
service token per simulated proxy, registers N instances with them, opens N discovery
streams over TLS, each with its proxy's token (100 per HTTP/2 connection: the machine's fd
limit is 20,000), measures write-to-last-proxy convergence over --writes writes, and a
reconnect storm. The load tool runs on the same 2-core machine as the server and competes
with it for CPU: figures are upper bounds.

    bench/control.py [--sizes 100,1000,10000,50000] [--writes 50] [--write docs/benchmarks.md]
    bench/control.py --smoke --weft BIN --load BIN   (seconds: 200 proxies, 5 writes; the
                                                      tests run it; asserts no figure)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from run import acl_bootstrap, add_smoke, write_block  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft-cli"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft-control", "--example", "discovery_load"],
                   cwd=ROOT, check=True)
    return (os.path.join(target, "release", "weft"),
            os.path.join(target, "release", "examples", "discovery_load"))


def one(weft, load, n, writes):
    data = tempfile.mkdtemp(prefix="weft-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    # The defaults: TLS and ACLs on. The ready line says where and which CA signed it.
    server = subprocess.Popen([weft, "server", "--listen", "127.0.0.1:0", "--data-dir", data],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "WEFT_LOG": "warn"})
    try:
        ready = json.loads(server.stdout.readline())
        url = f"https://localhost:{ready['address'].rsplit(':', 1)[1]}"
        token = acl_bootstrap(weft, url, ready["caFile"])
        out = subprocess.run([load, "--server", url, "--ca-file", ready["caFile"], "--token", token,
                              "--server-pid", str(server.pid), "--proxies", str(n), "--writes", str(writes)],
                             capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"discovery_load failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="100,1000,10000,50000")
    p.add_argument("--writes", type=int, default=50)
    p.add_argument("--write", help="markdown file to update (block control-bench)")
    p.add_argument("--weft", help="a built weft (default: build the release one)")
    p.add_argument("--load", help="a built discovery_load example (default: build it)")
    add_smoke(p)
    a = p.parse_args()
    if a.smoke:
        a.sizes, a.writes = "200", 5
    weft, load = (a.weft, a.load) if a.weft and a.load else build()
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        r = one(weft, load, n, a.writes)
        print(json.dumps(r), flush=True)
        rows.append(r)
    lines = [
        "| proxies (= instances) | services | convergence p50 | p99 | max | initial sync | reconnect storm | cold storm | server RSS | server CPU (sync + writes) | server CPU (storm) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['proxies']:,} | {r['services']:,} | {r['convergence_ms_p50']:.1f} ms | {r['convergence_ms_p99']:.1f} ms "
            f"| {r['convergence_ms_max']:.1f} ms | {r['initial_sync_s']:.2f} s | {r['storm_resync_s']:.2f} s | {r['cold_storm_s']:.2f} s "
            f"| {r['server_rss_after_storm_mb']:.0f} MB | {r['server_cpu_s_sync_and_writes']:.1f} s | {r['server_cpu_s_storm']:.1f} s |")
    table = "\n".join(lines)
    print(table)
    if a.smoke:
        print("smoke run ok (figures from a smoke run mean nothing)")
    elif a.write:
        write_block(a.write, "control-bench", table)


if __name__ == "__main__":
    main()
