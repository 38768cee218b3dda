#!/usr/bin/env python3
"""Configuration churn under load: Sluice vs nginx vs HAProxy, side by side in one run.

Each contender proxies constant keep-alive load (wrk) for DURATION seconds while its
configuration changes every 100 ms: the endpoint set of the main route alternates between two
upstreams and both, and an extra host comes and goes.
  * Sluice: the manifests directory is rewritten (atomic rename); no reload exists.
  * nginx: its config is rewritten and `nginx -s reload` (SIGHUP) is sent.
  * HAProxy: its config is rewritten and the master-worker process is reloaded (SIGUSR2,
    which re-executes with -sf for the old workers).
Reported per contender: requests, non-2xx answers, socket errors (connect/read/write/timeout),
p99 and max latency; for Sluice also change→all-workers propagation from its /metrics.

Sluice runs with its access log off, as nginx (`access_log off`) and HAProxy (no log target)
do here.

Usage: python3 bench/churn/run.py [--duration 60] [--write-results]
       python3 bench/churn/run.py --sluice before=/path/to/old/sluice --sluice after=target/dist/sluice \
           --rounds 3 --duration 60        (Sluice builds only, interleaved: before/after figures)
"""

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import run as base  # noqa: E402  (bench/run.py: tool discovery, upstream helpers)

UP = [18000, 18001]
PROXY = 18080
ADMIN = 18081
HTTPS = 18443
SETS = [[0], [1], [0, 1]]

WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "non2xx": %d, "socket_errors": %d, "p99": %d, "max": %d, "duration_us": %d}\\n',
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(99), latency.max, summary.duration))
end
"""


def start_upstreams(tmp):
    procs = []
    for i, port in enumerate(UP):
        conf = os.path.join(tmp, f"up{i}.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1;
worker_cpu_affinity 10;
daemon off;
pid {tmp}/up{i}.pid;
error_log {tmp}/up{i}-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 "upstream {i}\\n"; }} }} }}
""")
        procs.append(subprocess.Popen([base.tool("nginx"), "-c", conf, "-p", tmp],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base.wait_port(port)
    return procs


def sluice_routes(change):
    ups = SETS[change % 3]
    y = ("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: churn, namespace: default}\n"
         "spec:\n  ingressClassName: sluice\n"
         "  defaultBackend: {service: {name: pool, port: {number: 80}}}\n  rules:\n"
         "  - host: main.test\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: pool, port: {number: 80}}}}]}\n")
    if change % 2:
        y += f"  - host: extra-{change}.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: pool, port: {{number: 80}}}}}}}}]}}\n"
    y += "---\napiVersion: v1\nkind: Service\nmetadata: {name: pool, namespace: default}\nspec: {ports: [{port: 80}]}\n"
    for i in ups:
        y += (f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: pool-{i}, namespace: default, "
              f"labels: {{kubernetes.io/service-name: pool}}}}\naddressType: IPv4\nports: [{{port: {UP[i]}}}]\n"
              f"endpoints: [{{addresses: [\"127.0.0.1\"]}}]\n")
    return y


def nginx_conf(tmp, change):
    servers = "".join(f"server 127.0.0.1:{UP[i]};" for i in SETS[change % 3])
    extra = ""
    if change % 2:
        extra = f"server {{ listen 127.0.0.1:{PROXY}; server_name extra-{change}.test; location / {{ proxy_pass http://pods; }} }}"
    return f"""
worker_processes 1;
worker_cpu_affinity 01;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream pods {{ {servers} keepalive 64; }}
  server {{
    listen 127.0.0.1:{PROXY} default_server reuseport backlog=4096;
    location / {{ proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  {extra}
}}
"""


def haproxy_conf(change):
    servers = "".join(f"  server pod{i} 127.0.0.1:{UP[i]}\n" for i in SETS[change % 3])
    extra = ""
    if change % 2:
        extra = f"  use_backend pods if {{ hdr(host) -i extra-{change}.test }}\n"
    return f"""
global
  nbthread 1
  cpu-map 1/1 0
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{PROXY}
{extra}  default_backend pods
backend pods
{servers}"""


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def run_wrk(duration, script, out):
    cmd = ["taskset", "-c", "1", base.tool("wrk"), "-t1", "-c32", f"-d{duration}s", "--timeout", "5s",
           "-H", "Host: main.test", "-s", script, f"http://127.0.0.1:{PROXY}/"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in res.stdout.splitlines() if l.startswith("{")]
    out.append(json.loads(line[-1]) if line else {"error": res.stdout + res.stderr})


def churn(name, apply_change, duration, script):
    results = []
    t = threading.Thread(target=run_wrk, args=(duration, script, results))
    t.start()
    changes = 0
    start = time.time()
    while time.time() - start < duration - 0.5:
        changes += 1
        apply_change(changes)
        time.sleep(0.1)
    t.join()
    r = results[0]
    r["name"] = name
    r["changes"] = changes
    print(f"{name}: {r}", file=sys.stderr)
    return r


def free_port(port):
    """Fails when something already listens on `port` (another bench on this machine): the
    contender would not start, and wrk would measure whoever holds the port."""
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return
    raise RuntimeError(f"port {port} is taken (another benchmark running?)")


def started(p, port):
    base.wait_port(port)
    if p.poll() is not None:
        raise RuntimeError(f"the contender exited (code {p.returncode}) before serving on {port}")


def sluice_propagation():
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    q = {m.group(1): float(m.group(2)) * 1e3 for m in
         re.finditer(r'sluice_snapshot_propagation_quantile_seconds\{quantile="([0-9.]+)"\} ([0-9.e+-]+)', text)}
    count = int(re.search(r"sluice_snapshot_propagation_seconds_count (\d+)", text).group(1))
    unacked = int(re.search(r"sluice_snapshots_unacknowledged_total (\d+)", text).group(1))
    return q, count, unacked


def labelled(text):
    label, sep, path = text.partition("=")
    if not sep or not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH to a sluice binary, got {text!r}")
    return label, os.path.abspath(path)


def run_sluice(binary, tmp, script, duration, name):
    """One churn run of the Sluice binary `binary`; its row, with propagation figures."""
    mdir = tempfile.mkdtemp(prefix="manifests-", dir=tmp)
    write_atomic(os.path.join(mdir, "routes.yaml"), sluice_routes(0))
    conf = os.path.join(tmp, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f'workers = [0]\n[listen]\nhttp = "127.0.0.1:{PROXY}"\nhttps = "127.0.0.1:{HTTPS}"\n'
                f'admin = "127.0.0.1:{ADMIN}"\n'
                f'[sources]\nmanifests = "{mdir}"\n[log]\naccess = false\n')
    p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started(p, PROXY)
    r = churn(name, lambda c: write_atomic(os.path.join(mdir, "routes.yaml"), sluice_routes(c)),
              duration, script)
    r["propagation_ms"], r["published"], r["unacked"] = sluice_propagation()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    time.sleep(0.5)
    return r


def report_compare(results, args):
    cmd = " ".join(f"--sluice {label}=..." for label, _ in args.sluice)
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. "
        f"Sluice builds only, {args.rounds} interleaved round(s) of {args.duration} s each; "
        f"otherwise as the churn run above.",
        "",
        f"Command: `python3 bench/churn/run.py {cmd} --rounds {args.rounds} --duration {args.duration}`",
        "",
        "| build, round | changes | requests | non-2xx | socket errors | propagation p50 | p99 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        q = r["propagation_ms"]
        lines.append(f"| {r['name']} | {r['changes']} | {r.get('requests', 'wrk failed')} | {r.get('non2xx', '')} | "
                     f"{r.get('socket_errors', '')} | {q.get('0.5', 0):.2f} ms | {q.get('0.99', 0):.2f} ms | "
                     f"{q.get('1', 0):.2f} ms |")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--sluice", action="append", type=labelled, default=[], metavar="LABEL=PATH",
                    help="compare these Sluice binaries only (repeatable), in interleaved rounds")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    base.ensure_tools()
    if not args.sluice:
        subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-churn-")
    script = os.path.join(tmp, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    for port in UP + [PROXY, ADMIN, HTTPS]:
        free_port(port)
    ups = start_upstreams(tmp)
    results = []
    try:
        if args.sluice:
            for rnd in range(args.rounds):
                for label, path in args.sluice:
                    r = run_sluice(path, tmp, script, args.duration, f"{label} #{rnd + 1}")
                    results.append(r)
            return report_compare(results, args)
        results.append(run_sluice(binary, tmp, script, args.duration, "sluice"))

        # nginx
        nconf = os.path.join(tmp, "nginx.conf")
        with open(nconf, "w") as f:
            f.write(nginx_conf(tmp, 0))
        p = subprocess.Popen(["taskset", "-c", "0", base.tool("nginx"), "-c", nconf, "-p", tmp, "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started(p, PROXY)

        def nginx_change(c):
            with open(nconf, "w") as f:
                f.write(nginx_conf(tmp, c))
            p.send_signal(signal.SIGHUP)
        results.append(churn("nginx", nginx_change, args.duration, script))
        p.send_signal(signal.SIGQUIT)
        p.wait(timeout=30)
        time.sleep(0.5)

        # HAProxy (master-worker)
        hconf = os.path.join(tmp, "haproxy.cfg")
        with open(hconf, "w") as f:
            f.write(haproxy_conf(0))
        p = subprocess.Popen(["taskset", "-c", "0", base.tool("haproxy"), "-W", "-db", "-f", hconf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started(p, PROXY)

        def haproxy_change(c):
            with open(hconf, "w") as f:
                f.write(haproxy_conf(c))
            p.send_signal(signal.SIGUSR2)
        results.append(churn("haproxy", haproxy_change, args.duration, script))
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    finally:
        for u in ups:
            u.terminate()
            u.wait()

    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. Each contender: one "
        f"worker pinned to CPU 0; wrk (1 thread, 32 keep-alive connections) and two nginx upstreams on CPU 1; "
        f"a configuration change every 100 ms for {args.duration} s.",
        "",
        f"Command: `python3 bench/churn/run.py --duration {args.duration}`",
        "",
        "| contender | changes applied | requests | non-2xx | socket errors | p99 | max latency |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['changes']} | wrk failed: {r['error'][:80]!r} | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['changes']} | {r['requests']} | {r['non2xx']} | {r['socket_errors']} | "
                     f"{r['p99'] / 1000:.2f} ms | {r['max'] / 1000:.1f} ms |")
    s = results[0]
    q = s["propagation_ms"]
    lines += ["", f"Sluice change → all workers serving it ({s['published']} snapshots, "
                  f"{s['unacked']} unacknowledged): p50 {q.get('0.5', 0):.2f} ms, p99 {q.get('0.99', 0):.2f} ms, "
                  f"max {q.get('1', 0):.2f} ms (measured from the first inotify event of a burst)."]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        base.write_section("## Configuration churn under load (issue 4)", text)


if __name__ == "__main__":
    main()
