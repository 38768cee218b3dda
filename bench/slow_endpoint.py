#!/usr/bin/env python3
"""One slow endpoint among four: tail latency with Sluice's `ewma` vs its `round_robin`, and vs
nginx's round robin (nginx has no ewma without ingress-nginx's Lua balancer), in one run.

Four upstream pods (examples/bench_upstream.rs, 1 KiB answers from memory) listen on
127.0.0.1..4:18000; the fourth waits `--delay-ms` (20) before each answer. Each contender has
one worker pinned to CPU 0 and balances over the four; wrk (keep-alive connections) and the
pods share CPU 1. A round runs every contender once, interleaved; the median round counts.
Reported: requests/s, p50/p99/p99.9 latency, errors, and the p99 ratios ewma/round_robin and
ewma/nginx. With round robin a quarter of the requests wait the delay, so p99 is about the
delay; ewma should send little to the slow pod and keep p99 near the fast pods' latency.

Usage: python3 bench/slow_endpoint.py [--duration 10] [--connections 32] [--rounds 3]
       [--delay-ms 20] [--binary PATH --upstream PATH]
Without --binary/--upstream it builds the `dist` profile (as bench/run.py does). Reuses
bench/run.py's helpers (tools, wrk and its report script, CPU accounting, measure()).
Figures from a loaded or shared machine are not results.
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: the shared starters and measurement)

PODS = 4
POD_PORT = 18000


def start_pods(upstream, delay_ms):
    """Four bench_upstream pods on 127.0.0.1..4, pinned to the load CPU; the last is slow."""
    procs = []
    for i in range(1, PODS + 1):
        delay = delay_ms if i == PODS else 0
        procs.append(subprocess.Popen(
            ["taskset", "-c", run.LOAD_CPU, upstream, "--listen", f"127.0.0.{i}:{POD_PORT}",
             "--shape", "memory", "--body", "1024", "--delay-ms", str(delay)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for i in range(1, PODS + 1):
        wait_addr(f"127.0.0.{i}", POD_PORT)
    return procs


def wait_addr(host, port, timeout=10.0):
    import socket
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def start_sluice(tmp, binary, balance):
    """Sluice with one worker and `load-balance: <balance>` on the route to the four pods."""
    manifests = os.path.join(tmp, f"manifests-{balance}")
    os.makedirs(manifests, exist_ok=True)
    addresses = ", ".join(f'"127.0.0.{i}"' for i in range(1, PODS + 1))
    with open(os.path.join(manifests, "bench.yaml"), "w") as f:
        f.write(f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: bench
  namespace: default
  annotations: {{nginx.ingress.kubernetes.io/load-balance: "{balance}"}}
spec:
  ingressClassName: sluice
  rules:
  - http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: pods, port: {{number: 80}}}}}}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: pods, namespace: default}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: pods-1, namespace: default, labels: {{kubernetes.io/service-name: pods}}}}
addressType: IPv4
ports: [{{port: {POD_PORT}}}]
endpoints: [{{addresses: [{addresses}]}}]
""")
    conf = os.path.join(tmp, f"sluice-{balance}.toml")
    with open(conf, "w") as f:
        f.write(f"""workers = [{run.CONTENDER_CPU}]
[listen]
http = "127.0.0.1:{run.PROXY_PORT}"
admin = "127.0.0.1:{run.PROXY_PORT + 1}"
[sources]
manifests = "{manifests}"
[log]
access = false
""")
    return subprocess.Popen(["taskset", "-c", run.CONTENDER_CPU, binary, "run", "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_nginx(tmp):
    """nginx proxying with its (weighted) round robin over the four pods, keep-alive upstream."""
    conf = os.path.join(tmp, "nginx-rr.conf")
    servers = "".join(f"server 127.0.0.{i}:{POD_PORT}; " for i in range(1, PODS + 1))
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
worker_cpu_affinity 01;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream pods {{ {servers}keepalive 64; }}
  server {{
    listen 127.0.0.1:{run.PROXY_PORT} reuseport backlog=4096;
    location / {{
      proxy_pass http://pods;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return subprocess.Popen(["taskset", "-c", run.CONTENDER_CPU, run.tool("nginx"), "-c", conf, "-p", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay-ms", type=int, default=20)
    ap.add_argument("--binary", help="the sluice binary (default: build the dist profile)")
    ap.add_argument("--upstream", help="the bench_upstream example binary (default: build it, dist)")
    args = ap.parse_args()
    run.ensure_tools()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(run.ROOT, "target"))
    if not args.binary or not args.upstream:
        subprocess.run(["cargo", "build", "--profile", "dist", "--quiet", "--bin", "sluice",
                        "--example", "bench_upstream"], cwd=run.ROOT, check=True)
    binary = args.binary or os.path.join(target, "dist", "sluice")
    upstream = args.upstream or os.path.join(target, "dist", "examples", "bench_upstream")
    tmp = tempfile.mkdtemp(prefix="sluice-slow-")
    script = os.path.join(tmp, "report.lua")
    with open(script, "w") as f:
        f.write(run.WRK_SCRIPT)
    pods = start_pods(upstream, args.delay_ms)
    starters = [
        ("ewma", lambda: start_sluice(tmp, binary, "ewma")),
        ("rr", lambda: start_sluice(tmp, binary, "round_robin")),
        ("nginx-rr", lambda: start_nginx(tmp)),
    ]
    runs = {name: [] for name, _ in starters}
    try:
        for _ in range(args.rounds):
            for name, start in starters:
                runs[name].append(run.measure(name, start(), args, script))
    finally:
        for p in pods:
            p.terminate()
            p.wait()
    results = {}
    for name, _ in starters:
        ordered = sorted(runs[name], key=lambda r: r["p99"])
        results[name] = ordered[len(ordered) // 2]
    lines = [
        f"One slow pod (+{args.delay_ms} ms) among {PODS}; one worker each on CPU {run.CONTENDER_CPU}; "
        f"wrk ({args.connections} keep-alive connections, {args.duration} s) and the pods on CPU {run.LOAD_CPU}; "
        f"median of {args.rounds} interleaved rounds by p99.",
        "",
        "| contender | requests/s | p50 | p99 | p99.9 | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, _ in starters:
        r = results[name]
        lines.append(f"| {name} | {r['rps']:.0f} | {r['p50']} µs | {r['p99']} µs | {r['p999']} µs | {r['errors']} |")
    e, rr, n = results["ewma"], results["rr"], results["nginx-rr"]
    lines += [
        "",
        f"p99 ratios: ewma/round_robin **{e['p99'] / max(rr['p99'], 1):.2f}**, "
        f"ewma/nginx round robin **{e['p99'] / max(n['p99'], 1):.2f}** (below 1: ewma avoids the slow pod).",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
