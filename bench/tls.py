#!/usr/bin/env python3
"""TLS benchmark: Sluice vs nginx (OpenSSL) vs HAProxy (OpenSSL), in one run, on this machine.

Every contender gets ONE worker pinned to the same core and the same certificate (ECDSA P-256,
then RSA 2048, made here with openssl). Two measurements per certificate type:

* full handshakes: `openssl s_time -new` clients (no resumption, TLS 1.3, X25519) on the
  other core, for a fixed time. The clients' own crypto (ECDSA/RSA verify) is slower than the
  server's, so the contender is not saturated; what we compare is full handshakes per second
  of the contender's CPU (handshakes / (utime+stime)), i.e. handshakes per second per core.
* HTTPS keep-alive: wrk (1 thread, 64 connections, https) through the contender to the same
  upstream (nginx, 1 KiB body, on the other core): requests/s and CPU time per request.

Usage: python3 bench/tls.py [--duration 10] [--rounds 3] [--write-results]
Installs nginx, haproxy and wrk with apt-get if they are missing (needs root).
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENDER_CPU = "0"
LOAD_CPU = "1"
# Ports of their own: other benchmarks (bench/run.py) use 18000/18080.
UPSTREAM_PORT = 18400
TLS_PORT = 18443
HTTP_PORT = 18480
CLK_TCK = os.sysconf("SC_CLK_TCK")
HANDSHAKE_CLIENTS = 4

WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "errors": %d, "duration_us": %d, "p50": %d, "p99": %d}\\n',
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


def ensure_tools():
    missing = [t for t in ("nginx", "haproxy", "wrk") if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def wait_port(port, timeout=10.0):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except FileNotFoundError:
            pass
    return total


def family(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [int(p) for p in out.split()]


def make_cert(tmp, kind):
    key, crt = os.path.join(tmp, f"{kind}.key"), os.path.join(tmp, f"{kind}.crt")
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", key, "-out", crt, "-days", "30",
                    "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test"],
                   check=True, capture_output=True)
    pem = os.path.join(tmp, f"{kind}.pem")
    with open(pem, "w") as f:
        f.write(open(crt).read() + open(key).read())
    return {"key": key, "crt": crt, "pem": pem, "kind": kind}


def start_upstream(tmp):
    body = "x" * 1024
    conf = os.path.join(tmp, "upstream.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
worker_cpu_affinity 10;
daemon off;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{UPSTREAM_PORT} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 "{body}"; }}
  }}
}}
""")
    p = subprocess.Popen([tool("nginx"), "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(UPSTREAM_PORT)
    return p


def start_nginx(tmp, cert):
    conf = os.path.join(tmp, "nginx.conf")
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
  upstream pods {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{TLS_PORT} ssl reuseport backlog=4096;
    ssl_certificate {cert['crt']};
    ssl_certificate_key {cert['key']};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / {{
      proxy_pass http://pods;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;
    }}
  }}
}}
""")
    return subprocess.Popen(["taskset", "-c", CONTENDER_CPU, tool("nginx"), "-c", conf, "-p", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_haproxy(tmp, cert):
    conf = os.path.join(tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""
global
  nbthread 1
  cpu-map 1/1 {CONTENDER_CPU}
  maxconn 4000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:{TLS_PORT} ssl crt {cert['pem']} alpn http/1.1
  http-request set-header X-Forwarded-Proto https
  http-response set-header Strict-Transport-Security "max-age=31536000; includeSubDomains"
  default_backend pods
backend pods
  server pod1 127.0.0.1:{UPSTREAM_PORT}
""")
    return subprocess.Popen(["taskset", "-c", CONTENDER_CPU, tool("haproxy"), "-f", conf, "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_sluice(tmp, binary, cert):
    manifests = os.path.join(tmp, "manifests")
    os.makedirs(manifests, exist_ok=True)
    with open(os.path.join(manifests, "bench.yaml"), "w") as f:
        f.write(f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: bench, namespace: default}}
spec:
  ingressClassName: sluice
  defaultBackend: {{service: {{name: pods, port: {{number: 80}}}}}}
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
ports: [{{port: {UPSTREAM_PORT}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
""")
    conf = os.path.join(tmp, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f"""workers = [{CONTENDER_CPU}]
[listen]
http = "127.0.0.1:{HTTP_PORT}"
https = "127.0.0.1:{TLS_PORT}"
admin = "127.0.0.1:{HTTP_PORT + 1}"
[sources]
manifests = "{manifests}"
[tls]
default_certificate_file = {{ cert = "{cert['crt']}", key = "{cert['key']}" }}
""")
    return subprocess.Popen(["taskset", "-c", CONTENDER_CPU, binary, "run", "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    time.sleep(0.5)


def handshakes(duration):
    """Full TLS 1.3 handshakes from HANDSHAKE_CLIENTS s_time processes; returns how many."""
    procs = [subprocess.Popen(["taskset", "-c", LOAD_CPU, "openssl", "s_time", "-connect", f"127.0.0.1:{TLS_PORT}",
                               "-new", "-time", str(duration), "-tls1_3"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(HANDSHAKE_CLIENTS)]
    total = 0
    for p in procs:
        out, _ = p.communicate()
        m = re.search(r"(\d+) connections in [\d.]+s", out)
        if not m:
            raise RuntimeError(f"s_time said: {out}")
        total += int(m.group(1))
    return total


def wrk(duration, connections, script):
    cmd = ["taskset", "-c", LOAD_CPU, tool("wrk"), "-t1", f"-c{connections}", f"-d{duration}s",
           "-s", script, f"https://127.0.0.1:{TLS_PORT}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def measure(name, start, args, script):
    proc = start()
    wait_port(TLS_PORT)
    time.sleep(0.3)
    handshakes(1)  # warm-up
    pids = family(proc.pid)
    before = cpu_ticks(pids)
    t0 = time.time()
    n = handshakes(args.duration)
    wall = time.time() - t0
    cpu = (cpu_ticks(family(proc.pid)) - before) / CLK_TCK
    hs = {"handshakes": n, "per_s": n / wall, "per_cpu_s": n / max(cpu, 1e-9), "cpu_share": cpu / wall}
    wrk(2, args.connections, script)  # warm-up: pools
    before = cpu_ticks(family(proc.pid))
    r = wrk(args.duration, args.connections, script)
    after = cpu_ticks(family(proc.pid))
    stop(proc)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["cpu_us_per_req"] = (after - before) / CLK_TCK * 1e6 / max(r["requests"], 1)
    r.update({"name": name, "hs": hs})
    print(f"{name:8s} handshakes {hs['per_s']:7.0f}/s at {hs['cpu_share'] * 100:3.0f}% CPU = {hs['per_cpu_s']:7.0f}/CPU-s | "
          f"keep-alive {r['rps']:7.0f} req/s p99 {r['p99']}us cpu {r['cpu_us_per_req']:.2f}us/req errors {r['errors']}",
          file=sys.stderr)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-tls-bench-")
    script = os.path.join(tmp, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    upstream = start_upstream(tmp)
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. "
        f"One worker each pinned to CPU {CONTENDER_CPU}; load ({HANDSHAKE_CLIENTS} × `openssl s_time -new -tls1_3`, "
        f"then wrk 1 thread / {args.connections} keep-alive https connections) and the upstream (nginx, 1 KiB body) "
        f"on CPU {LOAD_CPU}; {args.duration} s per measurement; contenders interleaved over {args.rounds} rounds, "
        "the median round counts (all rounds shown).",
        "",
        f"Command: `python3 bench/tls.py --duration {args.duration} --connections {args.connections} --rounds {args.rounds}`",
        "",
    ]
    try:
        for kind in ("ecdsa", "rsa"):
            cert = make_cert(tmp, kind)
            starters = [("sluice", lambda: start_sluice(tmp, binary, cert)), ("nginx", lambda: start_nginx(tmp, cert)),
                        ("haproxy", lambda: start_haproxy(tmp, cert))]
            runs = {name: [] for name, _ in starters}
            for _ in range(args.rounds):
                for name, start in starters:
                    runs[name].append(measure(name, start, args, script))
            label = "ECDSA P-256" if kind == "ecdsa" else "RSA 2048"
            med = {}
            for name, _ in starters:
                by_hs = sorted(runs[name], key=lambda r: r["hs"]["per_cpu_s"])
                by_rps = sorted(runs[name], key=lambda r: r["rps"])
                med[name] = (by_hs[len(by_hs) // 2], by_rps[len(by_rps) // 2])
            lines += [
                f"### {label}",
                "",
                "| contender | full handshakes per CPU-second | handshakes/s (CPU used) | keep-alive req/s | p99 | CPU per request | errors | all rounds: hs/CPU-s; req/s |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, _ in starters:
                h, r = med[name]
                lines.append(
                    f"| {name} | {h['hs']['per_cpu_s']:.0f} | {h['hs']['per_s']:.0f} ({h['hs']['cpu_share'] * 100:.0f} %) | "
                    f"{r['rps']:.0f} | {r['p99']} µs | {r['cpu_us_per_req']:.2f} µs | {r['errors']} | "
                    f"{', '.join(str(round(x['hs']['per_cpu_s'])) for x in runs[name])}; "
                    f"{', '.join(str(round(x['rps'])) for x in runs[name])} |")
            s, n, ha = (med[k] for k in ("sluice", "nginx", "haproxy"))
            lines += [
                "",
                f"Ratios ({label}): handshakes per core Sluice/nginx **{s[0]['hs']['per_cpu_s'] / n[0]['hs']['per_cpu_s']:.2f}**, "
                f"Sluice/HAProxy **{s[0]['hs']['per_cpu_s'] / ha[0]['hs']['per_cpu_s']:.2f}**; "
                f"keep-alive req/s Sluice/nginx **{s[1]['rps'] / n[1]['rps']:.2f}**, Sluice/HAProxy **{s[1]['rps'] / ha[1]['rps']:.2f}**; "
                f"CPU per request Sluice/nginx **{s[1]['cpu_us_per_req'] / n[1]['cpu_us_per_req']:.2f}** (below 1 is better).",
                "",
            ]
    finally:
        upstream.terminate()
        upstream.wait()
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        path = os.path.join(ROOT, "bench", "RESULTS.md")
        with open(path) as f:
            existing = f.read()
        marker = "## TLS: Sluice (rustls) vs nginx and HAProxy (OpenSSL) (issue 6)"
        section = marker + "\n\n" + text + "\n"
        if marker in existing:
            start = existing.index(marker)
            nxt = existing.find("\n## ", start + len(marker))
            rest = existing[nxt + 1:] if nxt >= 0 else ""
            existing = existing[:start] + section + ("\n" + rest if rest else "")
        else:
            existing = existing.rstrip() + "\n\n" + section
        with open(path, "w") as f:
            f.write(existing)


if __name__ == "__main__":
    main()
