#!/usr/bin/env python3
"""TLS edge benchmark: weft vs HAProxy vs nginx, same certificate, same backend, one run.

Each proxy terminates TLS with the same ECDSA P-256 certificate on core 1 (one worker
thread/process) and forwards plain HTTP/1.1 to one nginx backend on core 0, where the load
generator also runs. Targets are interleaved and repeated; medians with min-max.

Measured per target:
  * HTTPS keep-alive throughput (wrk, 1 thread, 50 connections) and proxy CPU per request
  * new TLS handshakes per second: every request on a new connection, no session
    resumption (wrk with `Connection: close`), and proxy CPU per handshake+request
  * memory per open idle connection: RSS growth over 10,000 idle connections, plain HTTP
    and TLS (handshake done, no request), divided by the count

Usage: bench/tls.py [--duration 10] [--reps 3] [--idle 10000] [--write docs/benchmarks.md]
       bench/tls.py --smoke --weft BIN   (seconds, tiny sizes; fails on errors, asserts no figure)
Needs: nginx, haproxy, wrk, openssl, taskset (scripts/install-test-deps).
"""
import argparse
import asyncio
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the HTTP benchmark's helpers: ports, targets, CPU/RSS sampling)

# File descriptors for the client and each proxy: 10,000 idle connections need more than
# the usual 1024; a container may cap the hard limit (20,000 here), which is enough.
NOFILE = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
# HAProxy reserves two descriptors per connection it may hold (client and server side).
HAPROXY_MAXCONN = NOFILE // 2 - 20


def make_cert(work):
    key, crt, both = (os.path.join(work, n) for n in ("tls.key", "tls.crt", "tls.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    with open(both, "w") as f:
        f.write(open(crt).read() + open(key).read())
    return key, crt, both


def ulimited(cmd):
    return ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"] + cmd


def make_targets(work, weft_bin, backend_h1, cert):
    key, crt, both = cert
    targets = []

    tls, plain = run.free_port(), run.free_port()
    cfg = os.path.join(work, "weft-tls.yaml")
    with open(cfg, "w") as f:
        f.write(f"""kind: Gateway
metadata: {{name: bench}}
spec:
  listeners:
    - name: tls
      address: "127.0.0.1:{tls}"
      protocol: HTTPS
      tls: {{certificates: [{{certFile: "{crt}", keyFile: "{key}"}}]}}
      limits: {{maxConnections: 50000}}
    - {{name: plain, address: "127.0.0.1:{plain}", limits: {{maxConnections: 50000}}}}
{run.weft_backend_yaml(backend_h1)}""")
    t = run.Target("weft", work, tls, plain, ulimited(["taskset", "-c", run.PROXY_CORE, weft_bin, "proxy", "--config", cfg,
                                                       "--workers", "1", "--admin", "off", "--log", "warn"]))
    targets.append(t)

    tls, plain = run.free_port(), run.free_port()
    cfg = os.path.join(work, "haproxy-tls.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn {HAPROXY_MAXCONN}
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:{tls} ssl crt {both} alpn h2,http/1.1
  bind 127.0.0.1:{plain}
  default_backend b
backend b
  server s1 127.0.0.1:{backend_h1}
""")
    hap = run.Target("haproxy", work, tls, plain,
                     ulimited(["taskset", "-c", run.PROXY_CORE, "haproxy", "-db", "-f", cfg]))
    hap.max_idle = HAPROXY_MAXCONN - 100
    targets.append(hap)

    tls, plain = run.free_port(), run.free_port()
    conf = run.nginx_conf(work, "nginx-tls", f"""  upstream b {{ server 127.0.0.1:{backend_h1}; keepalive 256; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{tls} ssl http2;
    listen 127.0.0.1:{plain};
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""")
    text = open(conf).read().replace("worker_connections 8192;", "worker_connections 19000;")
    text = text.replace("worker_processes 1;", f"worker_processes 1;\nworker_rlimit_nofile {NOFILE};")
    open(conf, "w").write(text)
    targets.append(run.Target("nginx", work, tls, plain,
                              ulimited(["taskset", "-c", run.PROXY_CORE, "nginx", "-c", conf])))
    return targets


async def hold_idle(port, n, tls, ca):
    """Opens n idle connections (TLS: handshake completed) and returns them."""
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
    sem = asyncio.Semaphore(100)
    conns = []

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                 server_hostname="localhost" if tls else None)
            conns.append(w)

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def idle_growth(target, port, n, tls, ca):
    """RSS growth per idle connection, in bytes."""
    pids = target.pids()
    before = run.rss_kb(pids)
    loop = asyncio.new_event_loop()
    conns = loop.run_until_complete(hold_idle(port, n, tls, ca))
    time.sleep(1.0)
    after = run.rss_kb(pids)
    for w in conns:
        w.close()
    loop.run_until_complete(asyncio.sleep(0.5))
    loop.close()
    return (after - before) * 1024 / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--write", help="replace the TLS results block of this markdown file")
    ap.add_argument("--weft", default=os.path.join(run.ROOT, "target", "release", "weft"))
    run.add_smoke(ap)
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.reps, args.idle = 1, 1, 50
    run.check_tools(["nginx", "haproxy", "wrk", "openssl", "taskset", "prlimit"], args.weft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    work = tempfile.mkdtemp(prefix="weft-tls-bench-")
    cert = make_cert(work)
    backend, _ = run.make_targets(work, args.weft)
    backend.cmd = ["taskset", "-c", run.LOAD_CORE] + backend.cmd
    backend.start()
    targets = make_targets(work, args.weft, backend.h1_port, cert)
    res = {t.name: {"ka": [], "hs": [], "idle_plain": [], "idle_tls": []} for t in targets}
    d = str(args.duration)
    try:
        for rep in range(args.reps):
            for t in targets:
                t.start()
                url = f"https://127.0.0.1:{t.h1_port}/"
                run.run_load(["wrk", "-t1", "-c50", f"-d{min(2, args.duration)}s", url])  # warm-up
                ka = run.measure(t, ["wrk", "-t1", "-c50", f"-d{d}s", url], run.parse_wrk)
                hs = run.measure(t, ["wrk", "-t1", "-c50", f"-d{d}s", "-H", "Connection: close", url], run.parse_wrk)
                t.stop()
                # Each idle measurement on a fresh process: memory freed by one run would
                # otherwise be reused by the next and hide its growth.
                n = min(args.idle, getattr(t, "max_idle", args.idle))
                res[t.name]["idle_n"] = n
                t.start()
                ip = idle_growth(t, t.h2_port, n, False, cert[1])
                t.stop()
                t.start()
                it = idle_growth(t, t.h1_port, n, True, cert[1])
                t.stop()
                for k, v in (("ka", ka), ("hs", hs), ("idle_plain", ip), ("idle_tls", it)):
                    res[t.name][k].append(v)
                print(f"rep {rep + 1}/{args.reps} {t.name:8s} keep-alive {ka['rps']:8.0f} req/s cpu {ka['cpu_us'] or 0:6.1f} us/req "
                      f"| handshakes {hs['rps']:7.0f}/s cpu {hs['cpu_us'] or 0:7.1f} us | idle {ip:6.0f} B plain, {it:6.0f} B TLS "
                      f"| errors {ka['errors']}+{hs['errors']}", flush=True)
    finally:
        for t in targets:
            t.stop()
        backend.stop()

    rows = ["| target | HTTPS keep-alive req/s | proxy CPU µs/req | new handshakes/s | proxy CPU µs/handshake "
            "| idle conn, plain (bytes) | idle conn, TLS (bytes) | errors |", "|" + "---|" * 8]
    for t in targets:
        r = res[t.name]
        errs = sum(x["errors"] for x in r["ka"] + r["hs"])
        rows.append(" | ".join([
            f"| {t.name}",
            run.fmt_range([x["rps"] for x in r["ka"]]),
            run.fmt_range([x["cpu_us"] for x in r["ka"]], "{:.1f}"),
            run.fmt_range([x["rps"] for x in r["hs"]]),
            run.fmt_range([x["cpu_us"] for x in r["hs"]], "{:.0f}"),
            f"{run.fmt_range(r['idle_plain'])} ({r['idle_n']:,} conns)",
            f"{run.fmt_range(r['idle_tls'])} ({r['idle_n']:,} conns)",
            f"{errs} |",
        ]))

    def ratio(get, a, b):
        va, vb = run.med(get(a)), run.med(get(b))
        return f"{va / vb:.2f}" if va and vb else "-"

    ka_cpu = lambda n: [x["cpu_us"] for x in res[n]["ka"]]
    ka_rps = lambda n: [x["rps"] for x in res[n]["ka"]]
    hs_cpu = lambda n: [x["cpu_us"] for x in res[n]["hs"]]
    ratios = ["", "| weft ÷ other | keep-alive req/s (higher is better) | CPU/req (lower is better) | CPU/handshake (lower is better) "
                  "| idle TLS conn bytes (lower is better) |", "|---|---|---|---|---|"]
    for other in ["haproxy", "nginx"]:
        ratios.append(f"| weft ÷ {other} | {ratio(ka_rps, 'weft', other)} | {ratio(ka_cpu, 'weft', other)} "
                      f"| {ratio(hs_cpu, 'weft', other)} | {ratio(lambda n: res[n]['idle_tls'], 'weft', other)} |")
    cmd = f"bench/tls.py --duration {args.duration} --reps {args.reps} --idle {args.idle}"
    block = "\n".join([f"Command: `{cmd}` — run on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
                       f"medians of {args.reps} interleaved runs (min-max).", ""] + rows + ratios)
    print(block)
    shutil.rmtree(work, ignore_errors=True)
    if args.smoke:
        run.smoke_check(sum(x["errors"] for r in res.values() for x in r["ka"] + r["hs"]),
                        [x["rps"] for r in res.values() for x in r["ka"] + r["hs"]])
    elif args.write:
        run.write_block(args.write, "bench-tls", block)


if __name__ == "__main__":
    main()
