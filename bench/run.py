#!/usr/bin/env python3
"""Side-by-side reverse-proxy benchmark: direct, weft, HAProxy and nginx, in one run.

Every target proxies to the same nginx backend (one worker, returns a 17-byte body). The
load generator and the backend share core 0; the proxy under test runs alone on core 1
with one worker thread/process. Targets are interleaved (A B C D, A B C D, ...) and
repeated; the report gives medians with min-max.

Measured per target:
  * HTTP/1.1 keep-alive throughput (wrk, 1 thread, 50 connections) and proxy CPU per request
  * HTTP/2 throughput (h2load, 50 connections x 10 streams, h2c) and proxy CPU per request
  * latency p50/p99 at a fixed moderate rate (wrk, 10 connections paced by bench/paced.lua)
  * RSS idle (after start) and the peak under load
  * user-space instructions per proxied HTTP/1.1 request and per HTTP/2 request
    (valgrind callgrind: N and N+10,000 requests with h2load --h1 -c 10, and h2load -c 10
    -m 10, subtracted) - the figures noise cannot move

Usage: bench/run.py [--duration 10] [--reps 5] [--no-callgrind] [--write docs/benchmarks.md]
       bench/run.py --instructions-only      (just the callgrind figure, ~2 minutes)
       bench/run.py --smoke --weft BIN        (seconds: every step once, tiny sizes; fails on
                                               any error, asserts no figure; the tests run it)
Needs: nginx, haproxy, wrk, h2load, valgrind, taskset (scripts/install-test-deps).
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# weft's tracing during the run (--tracing): "default" (trace context passed on, no
# exporter), "unsampled" (an OTLP exporter configured, 0% sampled) or "sampled" (100%, to a
# real OTLP receiver). Set by main before any target is made.
TRACING = {"mode": "default", "endpoint": None}
TICK = os.sysconf("SC_CLK_TCK")
LOAD_CORE, PROXY_CORE = "0", "1"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def pids_of(root_pid):
    """The process and its children (nginx master + workers)."""
    out = subprocess.run(["pgrep", "-P", str(root_pid)], capture_output=True, text=True).stdout
    return [root_pid] + [int(p) for p in out.split()]


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def rss_kb(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def private_kb(pids):
    """Memory only these processes hold (`RssAnon`: heap, stacks, their own data), without
    the pages of the executable and libraries, which every process of the same binary
    shares (they count in RSS once per process)."""
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Target:
    def __init__(self, name, work, h1_port, h2_port, cmd=None, ready_port=None):
        self.name, self.work, self.h1_port, self.h2_port = name, work, h1_port, h2_port
        self.cmd, self.proc, self.ready_port = cmd, None, ready_port

    def start(self, prefix=()):
        if self.cmd is None:
            return
        log = open(os.path.join(self.work, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(list(prefix) + self.cmd, stdout=log, stderr=log)
        wait_port(self.ready_port or self.h1_port)
        time.sleep(0.3)

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pids(self):
        return pids_of(self.proc.pid) if self.proc else []


def nginx_conf(work, name, body):
    tmp = os.path.join(work, f"{name}-tmp")
    os.makedirs(tmp, exist_ok=True)
    path = os.path.join(work, f"{name}.conf")
    with open(path, "w") as f:
        f.write(f"""user root;
worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
{body}
}}
""")
    return path


def weft_backend_yaml(backend_h1):
    """The route and service every benchmark's weft uses: all requests to the backend."""
    return f"""---
kind: HTTPRoute
metadata: {{name: all}}
spec:
  rules: [{{backendRefs: [{{name: backend}}]}}]
---
kind: Service
metadata: {{name: backend}}
spec:
  endpoints: [{{address: "127.0.0.1:{backend_h1}"}}]
  connectionPool: {{maxIdlePerEndpoint: 256}}
"""


def start_otlp_receiver(mode):
    """The OTLP/gRPC receiver of the tests (venv python), when tracing exports."""
    TRACING["mode"] = mode
    if mode == "default":
        return None
    venv = os.environ.get("WEFT_VENV", os.path.expanduser("~/.cache/weft/venv"))
    script = os.path.join(ROOT, "crates", "weft-cli", "tests", "support", "otlp_receiver.py")
    # On the load generator's core: the proxies' core stays theirs.
    proc = subprocess.Popen(["taskset", "-c", LOAD_CORE, os.path.join(venv, "bin", "python"), script,
                             "--port", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    import json
    ready = json.loads(proc.stdout.readline())
    TRACING["endpoint"] = "http://" + ready["address"]
    # Spans are printed, one line each: drain them so the receiver never blocks.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc


def make_targets(work, weft_bin, backend_ports=None):
    # The backend speaks HTTP/1.1 on one port (the proxies' upstream) and h2c on another
    # (for the direct HTTP/2 baseline). Pass the running backend's ports to build more
    # proxies in front of it.
    backend_h1, backend_h2 = backend_ports or (free_port(), free_port())
    backend_conf = nginx_conf(work, "backend", f"""  server {{
    listen 127.0.0.1:{backend_h1};
    listen 127.0.0.1:{backend_h2} http2;
    location / {{ return 200 "hello from nginx\\n"; }}
  }}""")
    backend = Target("backend", work, backend_h1, backend_h2, ["nginx", "-c", backend_conf])

    direct = Target("direct", work, backend_h1, backend_h2)

    p1, p2 = free_port(), free_port()
    weft_cfg = os.path.join(work, "weft.yaml")
    rate = {"default": None, "unsampled": 0, "sampled": 100}[TRACING["mode"]]
    tracing = "" if rate is None else f"\n  tracing: {{samplingPercent: {rate}}}"
    with open(weft_cfg, "w") as f:
        f.write(f"""kind: Gateway
metadata: {{name: bench}}
spec:
  listeners: [{{name: web, address: "127.0.0.1:{p1}"}}]{tracing}
{weft_backend_yaml(backend_h1)}""")
    exporter = ["--otlp-endpoint", TRACING["endpoint"]] if TRACING["endpoint"] else []
    weft = Target("weft", work, p1, p1,
                  ["taskset", "-c", PROXY_CORE, weft_bin, "proxy", "--config", weft_cfg,
                   "--workers", "1", "--admin", "off", "--log", "warn"] + exporter)

    h1, h2 = free_port(), free_port()
    hap_cfg = os.path.join(work, "haproxy.cfg")
    with open(hap_cfg, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:{h1}
  bind 127.0.0.1:{h2} proto h2
  default_backend b
backend b
  server s1 127.0.0.1:{backend_h1}
""")
    haproxy = Target("haproxy", work, h1, h2, ["taskset", "-c", PROXY_CORE, "haproxy", "-db", "-f", hap_cfg])

    n1, n2 = free_port(), free_port()
    ngx_conf = nginx_conf(work, "nginx-proxy", f"""  upstream b {{ server 127.0.0.1:{backend_h1}; keepalive 256; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{n1};
    listen 127.0.0.1:{n2} http2;
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""")
    nginx = Target("nginx", work, n1, n2, ["taskset", "-c", PROXY_CORE, "nginx", "-c", ngx_conf])
    return backend, [direct, weft, haproxy, nginx]


def run_load(cmd):
    out = subprocess.run(["taskset", "-c", LOAD_CORE] + cmd, capture_output=True, text=True, timeout=600)
    return out.stdout + out.stderr


def measure(target, cmd, parse):
    pids = target.pids()
    before = cpu_ticks(pids)
    peak = [rss_kb(pids)]
    proc = subprocess.Popen(["taskset", "-c", LOAD_CORE] + cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        peak.append(rss_kb(pids))
        time.sleep(0.25)
    text = proc.stdout.read()
    cpu = (cpu_ticks(pids) - before) / TICK
    reqs, rps, errors = parse(text)
    return {"rps": rps, "cpu_us": (cpu / reqs * 1e6) if (pids and reqs) else None,
            "rss_peak": max(peak) if pids else None, "errors": errors, "raw": text}


def parse_wrk(text):
    reqs = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return reqs, rps, errors


def parse_h2load(text):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    return int(m.group(4)), rps, int(m.group(5)) + int(m.group(6))


def parse_latency(text):
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1, "ms": 1000, "s": 1e6}[unit]
    return pct(50), pct(99)


def callgrind_instructions(target_factory, n_small=2000, n_big=12000, h2=False):
    """User-space instructions per request: (Ir(n_big) - Ir(n_small)) / (n_big - n_small).
    HTTP/1.1 with 10 connections, or (h2) HTTP/2 with 10 connections of 10 streams each."""
    totals = []
    for n in (n_small, n_big):
        target, out_file = target_factory()
        target.start(prefix=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"])
        port = target.h2_port if h2 else target.h1_port
        wait_port(port, 120)
        proto = ["-m", "10"] if h2 else ["--h1"]
        text = run_load(["h2load"] + proto + ["-c", "10", "-n", str(n), f"http://127.0.0.1:{port}/"])
        done = parse_h2load(text)[0]
        if done != n:
            raise RuntimeError(f"callgrind run of {target.name}: {done}/{n} requests succeeded\n{text}")
        target.stop()
        folder = os.path.dirname(out_file)
        totals.append(sum(callgrind_total(os.path.join(folder, p)) for p in os.listdir(folder)
                          if p.startswith(os.path.basename(out_file))))
    return (totals[1] - totals[0]) / (n_big - n_small)


def callgrind_total(path):
    """The instructions a callgrind output file counts (its `summary:`/`totals:` line)."""
    for line in open(path):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals")


def fmt_range(values, fmt="{:.0f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--instructions-only", action="store_true",
                    help="only the callgrind instructions/request of each proxy (quick, noise-free; for optimisation work)")
    ap.add_argument("--write", help="replace the results block of this markdown file")
    ap.add_argument("--weft", default=os.path.join(ROOT, "target", "release", "weft"))
    ap.add_argument("--tracing", choices=["default", "unsampled", "sampled"], default="default",
                    help="weft's tracing: context passed on only (default), an OTLP exporter "
                         "with 0%% sampled, or 100%% sampled to a real OTLP receiver")
    add_smoke(ap)
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.reps = 1, 1
    sizes = SMOKE_CALLGRIND if args.smoke else {}
    receiver = start_otlp_receiver(args.tracing)
    check_tools(["nginx", "haproxy", "wrk", "h2load", "taskset", "valgrind"], args.weft)

    work = tempfile.mkdtemp(prefix="weft-bench-")
    backend, targets = make_targets(work, args.weft)
    backend.cmd = ["taskset", "-c", LOAD_CORE] + backend.cmd
    backend.start()
    results = {t.name: {"h1": [], "h2": [], "lat": [], "idle": [], "private": []} for t in targets}
    d = str(args.duration)
    paced = os.path.join(ROOT, "bench", "paced.lua")
    try:
        for rep in range(0 if args.instructions_only else args.reps):
            for t in targets:
                t.start()
                results[t.name]["idle"].append(rss_kb(t.pids()) if t.proc else None)
                results[t.name]["private"].append(private_kb(t.pids()) if t.proc else None)
                run_load(["wrk", "-t1", "-c50", f"-d{min(2, args.duration)}s", f"http://127.0.0.1:{t.h1_port}/"])  # warm-up
                r1 = measure(t, ["wrk", "-t1", "-c50", f"-d{d}s", f"http://127.0.0.1:{t.h1_port}/"], parse_wrk)
                r2 = measure(t, ["h2load", "-c50", "-m10", "-D", d, f"http://127.0.0.1:{t.h2_port}/"], parse_h2load)
                lat = run_load(["wrk", "-t1", "-c10", f"-d{d}s", "--latency", "-s", paced, f"http://127.0.0.1:{t.h1_port}/"])
                results[t.name]["h1"].append(r1)
                results[t.name]["h2"].append(r2)
                results[t.name]["lat"].append(parse_latency(lat) + (parse_wrk(lat)[1],))
                t.stop()
                print(f"rep {rep + 1}/{args.reps} {t.name:8s} h1 {r1['rps']:9.0f} req/s cpu {r1['cpu_us'] or 0:6.1f} us/req "
                      f"| h2 {r2['rps']:9.0f} req/s cpu {r2['cpu_us'] or 0:6.1f} us/req | p99 {results[t.name]['lat'][-1][1]:.0f} us "
                      f"| errors {r1['errors']}+{r2['errors']}", flush=True)
    finally:
        for t in targets:
            t.stop()

    instructions, instructions_h2 = {}, {}
    if not args.no_callgrind:
        for t in targets[1:]:
            def factory(t=t):
                _, fresh = make_targets(work, args.weft, (backend.h1_port, backend.h2_port))
                ft = next(x for x in fresh if x.name == t.name)
                ft.cmd = [c for c in ft.cmd]
                if ft.cmd[0] == "taskset":
                    ft.cmd = ft.cmd[3:]
                if t.name == "nginx":
                    conf = ft.cmd[-1]
                    text = open(conf).read().replace("daemon off;", "daemon off;\nmaster_process off;")
                    open(conf, "w").write(text)
                out = os.path.join(work, f"callgrind-{t.name}-{time.time_ns()}.out")
                return ft, out
            for h2, into in ((False, instructions), (True, instructions_h2)):
                proto = "HTTP/2" if h2 else "HTTP/1.1"
                try:
                    into[t.name] = callgrind_instructions(factory, h2=h2, **sizes)
                    print(f"callgrind {t.name} {proto}: {into[t.name]:.0f} instructions/request", flush=True)
                except Exception as e:  # report, do not hide
                    print(f"callgrind {t.name} {proto} failed: {e}", flush=True)
                    into[t.name] = None
                    if args.smoke:
                        raise
    backend.stop()
    if receiver:
        receiver.kill()
    if args.instructions_only:
        shutil.rmtree(work, ignore_errors=True)
        return

    rows = []
    header = ("| target | HTTP/1.1 req/s | proxy CPU µs/req (h1) | HTTP/2 req/s | proxy CPU µs/req (h2) "
              "| p50 / p99 µs at fixed rate | idle RSS MB | peak RSS MB | instructions/req (h1) "
              "| instructions/req (h2) | errors |")
    rows.append(header)
    rows.append("|" + "---|" * 11)
    for t in targets:
        r = results[t.name]
        errs = sum(x["errors"] for x in r["h1"] + r["h2"])
        idle, peak = med(r["idle"]), med([x["rss_peak"] for x in r["h1"] + r["h2"]])
        ins, ins2 = instructions.get(t.name), instructions_h2.get(t.name)
        rows.append(" | ".join([
            f"| {t.name}",
            fmt_range([x["rps"] for x in r["h1"]]),
            fmt_range([x["cpu_us"] for x in r["h1"]], "{:.1f}"),
            fmt_range([x["rps"] for x in r["h2"]]),
            fmt_range([x["cpu_us"] for x in r["h2"]], "{:.1f}"),
            f"{med([x[0] for x in r['lat']]):.0f} / {med([x[1] for x in r['lat']]):.0f}",
            f"{idle / 1024:.1f}" if idle else "-",
            f"{peak / 1024:.1f}" if peak else "-",
            f"{ins:,.0f}" if ins else "-",
            f"{ins2:,.0f}" if ins2 else "-",
            f"{errs} |",
        ]))

    def ratio(metric, a, b):
        va, vb = metric(a), metric(b)
        return f"{va / vb:.2f}" if va and vb else "-"

    cpu1 = lambda n: med([x["cpu_us"] for x in results[n]["h1"]])
    cpu2 = lambda n: med([x["cpu_us"] for x in results[n]["h2"]])
    p99 = lambda n: med([x[1] for x in results[n]["lat"]])
    idle = lambda n: med(results[n]["idle"])
    ins = lambda n: instructions.get(n)
    ins2 = lambda n: instructions_h2.get(n)
    ratios = ["", "| weft ÷ other (lower is better) | CPU/req h1 | CPU/req h2 | p99 | idle RSS | instructions/req h1 "
              "| instructions/req h2 |", "|---|---|---|---|---|---|---|"]
    for other in ["haproxy", "nginx"]:
        ratios.append(f"| weft ÷ {other} | {ratio(cpu1, 'weft', other)} | {ratio(cpu2, 'weft', other)} | {ratio(p99, 'weft', other)} "
                      f"| {ratio(idle, 'weft', other)} | {ratio(ins, 'weft', other)} | {ratio(ins2, 'weft', other)} |")

    cmd = f"bench/run.py --duration {args.duration} --reps {args.reps}" + (" --no-callgrind" if args.no_callgrind else "")
    private = ", ".join(f"{t.name} {med(results[t.name]['private']) / 1024:.1f} MB" for t in targets
                        if med(results[t.name]["private"]))
    block = "\n".join([f"Command: `{cmd}` — run on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
                       f"medians of {args.reps} interleaved runs (min-max).", ""] + rows + ratios
                      + ["", f"Idle memory of each proxy's own (RssAnon, without the executable's shared pages): {private}."])
    print(block)
    shutil.rmtree(work, ignore_errors=True)
    if args.smoke:
        smoke_check(sum(x["errors"] for r in results.values() for x in r["h1"] + r["h2"]),
                    [x["rps"] for r in results.values() for x in r["h1"] + r["h2"]])
    elif args.write:
        write_block(args.write, "bench", block)


# A smoke run's callgrind sizes: enough requests to subtract, few enough for a debug build.
SMOKE_CALLGRIND = {"n_small": 50, "n_big": 150}


def add_smoke(ap):
    """`--smoke`: every step of the benchmark once, for a second, at tiny sizes — so a
    benchmark cannot rot unnoticed when a default changes. It fails on any error or on a
    step that moved nothing, asserts no figure, and never writes the docs."""
    ap.add_argument("--smoke", action="store_true",
                    help="seconds, tiny sizes: fail on errors, assert no figure, write nothing")


def smoke_check(errors, rates):
    """The end of a smoke run: exit non-zero when a request failed or a step moved nothing."""
    if errors or not rates or min(r or 0 for r in rates) <= 0:
        sys.exit(f"smoke run failed: {errors} errors, rates {rates}")
    print("smoke run ok (figures from a smoke run mean nothing)")


def acl_bootstrap(weft, server, ca_file):
    """The management token of a fresh `weft server` with ACLs on (its default)."""
    boot = subprocess.run([weft, "acl", "bootstrap", "--server", server], capture_output=True, text=True,
                          env={**os.environ, "WEFT_CA_FILE": ca_file}, check=True)
    return re.search(r"^secret:\s+(\S+)", boot.stdout, re.M).group(1)


def check_tools(tools, weft):
    """Exits with the install step when a tool or the weft release binary is missing."""
    for tool in tools:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} missing: run scripts/install-test-deps")
    if not os.path.exists(weft):
        sys.exit(f"{weft} missing: cargo build --release")
    os.environ["PATH"] += ":/usr/sbin"


def write_block(path, name, block):
    """Replaces the text between <!-- NAME:begin --> and <!-- NAME:end --> in the markdown
    file (appending the markers first if the file has none)."""
    text = open(path).read()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    pre, rest = text.split(begin, 1)
    post = rest.split(end, 1)[1]
    open(path, "w").write(f"{pre}{begin}\n{block}\n{end}{post}")


if __name__ == "__main__":
    main()
