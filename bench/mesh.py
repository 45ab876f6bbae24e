#!/usr/bin/env python3
"""Mesh hop benchmark: client -> sidecar A -> mutual TLS (HTTP/2) -> sidecar B -> app,
beside the same client calling the app directly, in one run.

The app is an nginx backend (one worker, 17-byte body). The load generator, the app and
the control plane share core 0; both sidecars share core 1 (`taskset`), so their CPU is
what they use and nothing else. Direct and mesh runs are interleaved and repeated; the
report gives medians with min-max.

Measured:
  * latency p50/p99 at a fixed rate (wrk, 10 connections paced by bench/paced.lua, about
    4-5k req/s), direct and through the hop; the added latency is the difference
  * CPU of both sidecars together per 1,000 requests/s (vCPU), from that fixed-rate run
  * RSS of each sidecar, idle and after the runs
  * maximum throughput through the hop (wrk, 50 connections, unpaced), for reference
  * mutual TLS handshakes per second on sidecar B's inbound port with a mesh certificate
    (`openssl s_time`): new sessions every time, and with session resumption
  * the same hop for an opaque TCP app (`--app-protocol tcp`, the same nginx behind it:
    HTTP is just bytes to the mesh): paced latency and CPU with long-lived connections,
    and new connections per second (`Connection: close`: each request is a new TCP
    connection, so a new mutual TLS handshake between the sidecars), beside direct

With `--tracing sampled` every request is sampled (the Mesh says 100%) and both sidecars
export their spans to the tests' real OTLP/gRPC receiver; by default trace context is
passed on and nothing is exported.

  * instructions per request through the hop, both sidecars together (valgrind callgrind,
    a fresh pair of sidecars for N and N+10,000 requests, subtracted): the figure noise
    cannot move
  * context switches of both sidecars per request (/proc), with the paced runs

Usage: bench/mesh.py [--duration 10] [--reps 3] [--tracing default|sampled] [--weft BIN]
                     [--no-callgrind] [--keep-callgrind DIR] [--write docs/benchmarks.md]
       bench/mesh.py --smoke --weft BIN   (seconds, tiny sizes; fails on errors, asserts no figure)
Needs: nginx, wrk, h2load, openssl, valgrind, taskset (scripts/install-test-deps) and
target/release/weft.
"""
import argparse
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (ports, CPU/RSS sampling, wrk parsing, markdown blocks)

CORE_LOAD, CORE_MESH = "0", "1"


def spawn(work, name, cmd, core, env=None, prefix=()):
    log = open(os.path.join(work, f"{name}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", core] + list(prefix) + cmd, stdout=subprocess.PIPE, stderr=log,
                            text=True, env=env)
    ready = json.loads(proc.stdout.readline())
    return proc, ready


TLS = None  # the control plane's CA (it serves TLS, as by default), set once it starts


def api(server, token, method, path, body=None):
    req = urllib.request.Request(f"{server}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"x-weft-token": token, "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10, context=TLS) as r:
        return json.loads(r.read() or b"{}")


def context_switches(pids):
    """Voluntary + involuntary context switches of every thread of `pids` (/proc): each
    voluntary one is a thread going to sleep to wait for something — a wake-up later."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                for line in open(f"/proc/{pid}/task/{tid}/status"):
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def mesh_cert(work, server, token, service):
    """A certificate for `service` from the mesh CA: own key and CSR (openssl), like a sidecar."""
    key, csr = os.path.join(work, f"{service}.key"), os.path.join(work, f"{service}.csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={service}"],
                   check=True, capture_output=True)
    signed = api(server, token, "POST", "/v1/ca/sign", {"service": service, "csr": open(csr).read()})
    crt = os.path.join(work, f"{service}.crt")
    open(crt, "w").write(signed["certificate"])
    return crt, key


def s_time(addr, crt, key, seconds, reuse, version="-tls1_3"):
    out = subprocess.run(["taskset", "-c", CORE_LOAD, "openssl", "s_time", "-connect", addr,
                          "-cert", crt, "-key", key, "-time", str(seconds), version,
                          "-reuse" if reuse else "-new"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
    return int(m.group(1)) / float(m.group(2)) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--write")
    ap.add_argument("--weft", default=os.path.join(run.ROOT, "target/release/weft"))
    ap.add_argument("--tracing", choices=["default", "sampled"], default="default")
    ap.add_argument("--tap", action="store_true",
                    help="keep `weft tap app --max-rps 10000` open (a reader that keeps up) during the runs")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--keep-callgrind", metavar="DIR",
                    help="copy the hop's callgrind profiles (one per sidecar and run) to DIR "
                         "for callgrind_annotate")
    run.add_smoke(ap)
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.reps = 1, 1
    weft = args.weft
    run.check_tools(["nginx", "wrk", "h2load", "openssl", "valgrind", "taskset"], weft)
    work = tempfile.mkdtemp(prefix="weft-bench-mesh-")
    procs = []
    receiver = run.start_otlp_receiver(args.tracing)
    if receiver:
        procs.append(receiver)
    tracing = ["--otlp-endpoint", run.TRACING["endpoint"]] if receiver else []
    try:
        app_port = run.free_port()
        conf = run.nginx_conf(work, "app", f"""  server {{
    listen 127.0.0.1:{app_port};
    location / {{ return 200 "hello from nginx\\n"; }}
  }}""")
        procs.append(subprocess.Popen(["taskset", "-c", CORE_LOAD, "nginx", "-c", conf],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        run.wait_port(app_port)
        server_proc, ready = spawn(work, "server", [weft, "server", "--listen", "127.0.0.1:0",
                                                    "--data-dir", os.path.join(work, "data")], CORE_LOAD)
        procs.append(server_proc)
        # The control plane as it runs by default: TLS (verified with its CA) and ACLs.
        global TLS
        TLS = ssl.create_default_context(cafile=ready["caFile"])
        server = f"https://localhost:{ready['address'].rsplit(':', 1)[1]}"
        os.environ["WEFT_CA_FILE"] = ready["caFile"]
        token = run.acl_bootstrap(weft, server, ready["caFile"])
        intention = os.path.join(work, "allow.yaml")
        open(intention, "w").write("kind: Intention\nmetadata: {name: client-to-app}\n"
                                   "spec: {source: client, destination: app, action: allow}\n"
                                   "---\nkind: Intention\nmetadata: {name: client-to-tcpapp}\n"
                                   "spec: {source: client, destination: tcpapp, action: allow}\n"
                                   "---\nkind: Intention\nmetadata: {name: cg-client-to-cg-app}\n"
                                   "spec: {source: cg-client, destination: cg-app, action: allow}\n"
                                   + ("---\nkind: Mesh\nmetadata: {name: mesh}\n"
                                      "spec: {tracing: {samplingPercent: 100}}\n" if receiver else ""))
        subprocess.run([weft, "apply", "-f", intention, "--server", server, "--token", token], check=True,
                       capture_output=True)
        env = dict(os.environ, WEFT_LOG="warn")

        def sidecar(service, extra, prefix=()):
            env["WEFT_TOKEN"] = api(server, token, "POST", "/v1/acl/tokens", {"service": service})["secretId"]
            return spawn(work, f"sidecar-{service}",
                         [weft, "sidecar", "--server", server, "--service", service,
                          "--app", f"127.0.0.1:{app_port}", "--inbound", "127.0.0.1:0",
                          "--health", "tcp"] + extra + tracing, CORE_MESH, env, prefix)

        sidecars = {}
        for service, extra in (("app", []), ("tcpapp", ["--app-protocol", "tcp"]),
                               ("client", ["--upstream", "app=127.0.0.1:0",
                                           "--upstream", "tcpapp=127.0.0.1:0"])):
            p, r = sidecar(service, extra)
            procs.append(p)
            sidecars[service] = (p, r)
        out_addr = sidecars["client"][1]["listeners"]["sidecar/out-app"]
        tcp_addr = sidecars["client"][1]["listeners"]["sidecar/out-tcpapp"]
        inbound = sidecars["app"][1]["listeners"]["sidecar/inbound"]
        # Wait until both hops answer (the TCP one only once the client's sidecar knows
        # tcpapp is TCP: before that its HTTP/2 reaches nginx as bytes and fails).
        for addr in (out_addr, tcp_addr):
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://{addr}/", timeout=2).read()
                    break
                except Exception:
                    time.sleep(0.2)
        if args.tap:
            # Every request of the app's sidecar becomes an event (headers included), read
            # and thrown away by a client on the load core.
            procs.append(subprocess.Popen(["taskset", "-c", CORE_LOAD, weft, "tap", "app", "-o", "json",
                                           "--max-rps", "10000", "--server", server, "--token", token],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1)
        sidecar_pids = [p.pid for s, (p, _) in sidecars.items() if s != "tcpapp"]
        tcp_pids = [p.pid for s, (p, _) in sidecars.items() if s != "app"]
        idle_rss = {s: run.rss_kb(run.pids_of(p.pid)) for s, (p, _) in sidecars.items()}
        idle_private = {s: run.private_kb(run.pids_of(p.pid)) for s, (p, _) in sidecars.items()}

        paced = os.path.join(run.ROOT, "bench/paced.lua")
        def paced_run(addr, sidecars_of):
            """wrk at a fixed rate: latency, and the CPU of `sidecars_of` per 1,000 req/s."""
            pids = [q for p in sidecars_of for q in run.pids_of(p)]
            before, switches = run.cpu_ticks(pids), context_switches(pids)
            text = run.run_load(["wrk", "-t1", "-c10", f"-d{args.duration}s", "--latency",
                                 "-s", paced, f"http://{addr}/"])
            cpu = (run.cpu_ticks(pids) - before) / run.TICK
            switches = context_switches(pids) - switches
            _, rps, errors = run.parse_wrk(text)
            p50, p99 = run.parse_latency(text)
            requests = rps * args.duration
            return {"p50": p50, "p99": p99, "rps": rps, "errors": errors,
                    "vcpu_per_krps": (cpu / args.duration) / (rps / 1000) if pids else None,
                    "switches_per_request": switches / requests if pids and requests else None}

        results = {"direct": [], "mesh": []}
        for _ in range(args.reps):
            results["direct"].append(paced_run(f"127.0.0.1:{app_port}", []))
            results["mesh"].append(paced_run(out_addr, sidecar_pids))
        # The TCP hop: long-lived connections (paced), then a new connection per request.
        tcp = [paced_run(tcp_addr, tcp_pids) for _ in range(args.reps)]
        conn_rate = {"direct": [], "mesh": []}
        for _ in range(args.reps):
            for name, addr in (("direct", f"127.0.0.1:{app_port}"), ("mesh", tcp_addr)):
                text = run.run_load(["wrk", "-t1", "-c10", f"-d{args.duration}s",
                                     "-H", "Connection: close", f"http://{addr}/"])
                conn_rate[name].append(run.parse_wrk(text)[1])
        max_rps = [run.parse_wrk(run.run_load(["wrk", "-t1", "-c50", f"-d{args.duration}s",
                                               f"http://{out_addr}/"]))[1] for _ in range(args.reps)]
        after_rss = {s: run.rss_kb(run.pids_of(p.pid)) for s, (p, _) in sidecars.items()}

        crt, key = mesh_cert(work, server, token, "client")
        hs_new = [s_time(inbound, crt, key, args.duration, False) for _ in range(args.reps)]
        # Instructions per request through the hop, both sidecars together: a fresh pair
        # (services cg-client -> cg-app) under callgrind for N and N+10,000 requests.
        hop_instructions = None
        if not args.no_callgrind:
            sizes = run.SMOKE_CALLGRIND if args.smoke else {"n_small": 2000, "n_big": 12000}
            totals = []
            for n in (sizes["n_small"], sizes["n_big"]):
                pair, files = [], []
                try:
                    for service, extra in (("cg-app", []), ("cg-client", ["--upstream", "cg-app=127.0.0.1:0"])):
                        out = os.path.join(work, f"callgrind-{service}-{n}.out")
                        files.append(out)
                        pair.append(sidecar(service, extra, ["valgrind", "--tool=callgrind",
                                                              f"--callgrind-out-file={out}"]))
                    cg_addr = pair[1][1]["listeners"]["sidecar/out-cg-app"]
                    for _ in range(300):  # until the client sidecar knows cg-app (slow under valgrind)
                        try:
                            urllib.request.urlopen(f"http://{cg_addr}/", timeout=5).read()
                            break
                        except Exception:
                            time.sleep(0.2)
                    text = run.run_load(["h2load", "--h1", "-c", "10", "-n", str(n), f"http://{cg_addr}/"])
                    done = run.parse_h2load(text)[0]
                    if done != n:
                        raise RuntimeError(f"callgrind hop run: {done}/{n} requests succeeded\n{text}")
                finally:
                    for p, _ in pair:
                        p.terminate()
                    for p, _ in pair:
                        p.wait(120)
                totals.append(sum(run.callgrind_total(f) for f in files))
                if args.keep_callgrind:
                    os.makedirs(args.keep_callgrind, exist_ok=True)
                    for f in files:
                        shutil.copy(f, args.keep_callgrind)
            hop_instructions = (totals[1] - totals[0]) / (sizes["n_big"] - sizes["n_small"])
        hs_reuse = [s_time(inbound, crt, key, args.duration, True) for _ in range(args.reps)]
        hs_new12 = [s_time(inbound, crt, key, args.duration, False, "-tls1_2") for _ in range(args.reps)]
        hs_reuse12 = [s_time(inbound, crt, key, args.duration, True, "-tls1_2") for _ in range(args.reps)]

        med = lambda xs: statistics.median(xs)
        rng = lambda xs, f="{:.0f}": run.fmt_range(xs, f)
        d, m = results["direct"], results["mesh"]
        added50 = [b["p50"] - a["p50"] for a, b in zip(d, m)]
        added99 = [b["p99"] - a["p99"] for a, b in zip(d, m)]
        vcpu = [r["vcpu_per_krps"] for r in m]
        errors = sum(r["errors"] for r in d + m + tcp)
        tcp_added50 = [b["p50"] - a["p50"] for a, b in zip(d, tcp)]
        tcp_added99 = [b["p99"] - a["p99"] for a, b in zip(d, tcp)]
        block = "\n".join([
            f"`bench/mesh.py --duration {args.duration} --reps {args.reps}"
            + (f" --tracing {args.tracing}" if receiver else "") + "` "
            f"({time.strftime('%Y-%m-%d')}, 2 cores: load, app and control plane on core 0, both sidecars on core 1):",
            "",
            "| | direct | through the mesh hop | added |",
            "| --- | ---: | ---: | ---: |",
            f"| p50 latency at ~{med([r['rps'] for r in m]):.0f} req/s (µs) | {rng([r['p50'] for r in d])} | {rng([r['p50'] for r in m])} | **{med(added50):.0f}** |",
            f"| p99 latency (µs) | {rng([r['p99'] for r in d])} | {rng([r['p99'] for r in m])} | **{med(added99):.0f}** |",
            "",
            f"* CPU of both sidecars together: **{med(vcpu):.3f} vCPU per 1,000 req/s** ({rng(vcpu, '{:.3f}')}); "
            f"target < 0.1 (Istio publishes ~0.2 vCPU for one sidecar per 1,000 req/s).",
            (f"* Instructions per request through the hop, both sidecars together (callgrind, "
             f"`h2load --h1 -c 10`, N and N+10,000 requests subtracted): **{hop_instructions:,.0f}**."
             if hop_instructions else "* Instructions per request through the hop: not measured (--no-callgrind)."),
            f"* Context switches of both sidecars per request through the HTTP hop: "
            f"{rng([r['switches_per_request'] for r in m], '{:.1f}')}; through the TCP hop: "
            f"{rng([r['switches_per_request'] for r in tcp], '{:.1f}')}.",
            f"* Memory (RSS): client sidecar {idle_rss['client']/1024:.1f} MB idle, {after_rss['client']/1024:.1f} MB after the runs; "
            f"app sidecar {idle_rss['app']/1024:.1f} MB idle, {after_rss['app']/1024:.1f} MB after (Istio: ~60 MB per sidecar). "
            f"Of the idle RSS, the sidecar's own memory (RssAnon: heap, stacks) is client {idle_private['client']/1024:.1f} MB, "
            f"app {idle_private['app']/1024:.1f} MB; the rest is the `weft` executable's and libc's pages, shared by every "
            f"process of the same binary.",
            f"* Throughput through the hop, 50 connections unpaced: {rng(max_rps)} req/s (both sidecars on one core).",
            f"* Mutual TLS handshakes per second on the app sidecar's inbound port (`openssl s_time`, mesh certificate, "
            f"client on core 0): TLS 1.3 {rng(hs_new)} new, {rng(hs_reuse)} asking for resumption; "
            f"TLS 1.2 {rng(hs_new12)} new, {rng(hs_reuse12)} resumed.",
            f"* Opaque TCP app (`--app-protocol tcp`, the same nginx; one mutual TLS connection per client "
            f"connection): added p50 **{med(tcp_added50):.0f} µs**, p99 **{med(tcp_added99):.0f} µs** "
            f"(p50 {rng([r['p50'] for r in tcp])}, p99 {rng([r['p99'] for r in tcp])}); both sidecars "
            f"{med([r['vcpu_per_krps'] for r in tcp]):.3f} vCPU per 1,000 req/s; new connections per second "
            f"(`Connection: close`, 10 at a time): direct {rng(conn_rate['direct'])}, through the TCP hop "
            f"{rng(conn_rate['mesh'])} (each a new mutual TLS handshake between the sidecars).",
            f"* Errors: {errors}.",
        ])
        print(block)
        if args.smoke:
            run.smoke_check(errors, [r["rps"] for r in d + m + tcp] + max_rps + conn_rate["mesh"]
                            + ([hop_instructions] if not args.no_callgrind else []))
        elif args.write:
            run.write_block(args.write, "mesh-bench", block)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
