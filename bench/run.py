#!/usr/bin/env python3
"""Side-by-side proxy benchmark: Sluice vs nginx vs HAProxy, in one run, on this machine.

Every contender gets ONE worker pinned to the same core and proxies to the same upstream (an
nginx instance returning a 1 KiB body, pinned to the other core with the load generator).
wrk drives each with keep-alive connections for a fixed time. For each contender we report
requests/s, latency percentiles, the contender's CPU time per request (utime+stime from /proc
over the run, divided by the requests wrk completed) and the ratios against nginx and HAProxy.

Usage: python3 bench/run.py [--duration 10] [--connections 64] [--write-results]
Installs nginx, haproxy and wrk with apt-get if they are missing (needs root).

With --access-log, the contenders are Sluice with its access log on (text lines appended to a
file, the logger thread on the same core) and Sluice with `log.access = false`, interleaved the
same way; the result is the on/off ratio of requests/s (section "Access log on vs off").

With --policies, one Sluice serves a plain route and one route per request policy (a regex
rewrite, a 1,000-entry allowlist, `{SHA}` basic auth, CORS, `limit-rps` that never refuses);
wrk drives each host in turn, interleaved over the rounds, and the result is each policy's
requests/s and CPU per request as a ratio to the plain route of the same round (section
"Request policy cost").
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENDER_CPU = "0"
LOAD_CPU = "1"
UPSTREAM_PORT = 18000
PROXY_PORT = 18080
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "errors": %d, "duration_us": %d, "p50": %d, "p99": %d, "p999": %d}\\n',
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
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
    """The process and its children (nginx master + worker)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [int(p) for p in out.split()]


def start_upstream(tmp, port=UPSTREAM_PORT, location=None, root=None, connections=4096):
    """nginx as the upstream, pinned to the load CPU: by default `return 200` with a 1 KiB body
    from memory; `location` (and `root`) to serve something else."""
    if location is None:
        location = f'default_type text/plain; return 200 "{"x" * 1024}";'
    root_line = f"root {root};" if root else ""
    conf = os.path.join(tmp, "upstream.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
worker_cpu_affinity 10;
worker_rlimit_nofile {connections + 100};
daemon off;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream-error.log;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    {root_line}
    location / {{ {location} }}
  }}
}}
""")
    p = subprocess.Popen([tool("nginx"), "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


# Every contender sends the upstream the fields Sluice sends by default (and ingress-nginx's
# template sets): Host, X-Forwarded-For, -Proto, -Host, -Port, X-Real-IP and a request ID, so
# the upstream parses the same head behind each of them.


def start_nginx(tmp, connections=4096):
    """nginx as a proxy; `connections` per worker (clients and upstream connections together)."""
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
worker_cpu_affinity 01;
worker_rlimit_nofile {connections + 100};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream pods {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 320; }}
  server {{
    listen 127.0.0.1:{PROXY_PORT} reuseport backlog=4096;
    location / {{
      proxy_pass http://pods;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Request-ID $request_id;
    }}
  }}
}}
""")
    return subprocess.Popen(["taskset", "-c", CONTENDER_CPU, tool("nginx"), "-c", conf, "-p", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_haproxy(tmp, maxconn=4000):
    """HAProxy as a proxy; it needs about two descriptors per connection and refuses to start
    without them."""
    conf = os.path.join(tmp, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""
global
  nbthread 1
  cpu-map 1/1 {CONTENDER_CPU}
  maxconn {maxconn}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:{PROXY_PORT} backlog 4096
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Request-ID %[uuid]
  default_backend pods
backend pods
  server pod1 127.0.0.1:{UPSTREAM_PORT}
""")
    return subprocess.Popen(["taskset", "-c", CONTENDER_CPU, tool("haproxy"), "-f", conf, "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench_manifests(tmp, address, port):
    """The manifest directory every Sluice benchmark serves: one Ingress whose default backend
    is one pod at `address`:`port`. Returns the directory."""
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
ports: [{{port: {port}}}]
endpoints: [{{addresses: ["{address}"]}}]
""")
    return manifests


def start_sluice(tmp, binary, access_log=None, extra="", env=None):
    """`access_log`: None leaves the default (on, to stdout, here /dev/null); True appends to a
    file; False turns it off. `extra`: more TOML for the config (sections after the others)."""
    manifests = bench_manifests(tmp, "127.0.0.1", UPSTREAM_PORT)
    conf = os.path.join(tmp, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f"""workers = [{CONTENDER_CPU}]
[listen]
http = "127.0.0.1:{PROXY_PORT}"
admin = "127.0.0.1:{PROXY_PORT + 1}"
[sources]
manifests = "{manifests}"
""")
        if access_log is True:
            f.write(f'[log]\naccess = true\naccess_path = "{tmp}/access.log"\n')
        elif access_log is False:
            f.write("[log]\naccess = false\n")
        f.write(extra)
    return subprocess.Popen(["taskset", "-c", CONTENDER_CPU, binary, "run", "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, **(env or {})))


def wrk(duration, connections, script, extra=(), url=None):
    cmd = ["taskset", "-c", LOAD_CPU, tool("wrk"), "-t1", f"-c{connections}", f"-d{duration}s",
           "-s", script, *extra, url or f"http://127.0.0.1:{PROXY_PORT}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def measure(name, proc, args, script):
    wait_port(PROXY_PORT)
    time.sleep(0.3)
    wrk(2, args.connections, script)  # warm-up: pools, caches
    pids = family(proc.pid)
    before = cpu_ticks(pids)
    r = wrk(args.duration, args.connections, script)
    after = cpu_ticks(family(proc.pid))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    time.sleep(0.5)
    seconds = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / seconds
    r["cpu_us_per_req"] = (after - before) / CLK_TCK * 1e6 / max(r["requests"], 1)
    r["name"] = name
    print(f"{name:8s} {r['rps']:10.0f} req/s  p50 {r['p50']}us p99 {r['p99']}us p999 {r['p999']}us  "
          f"cpu {r['cpu_us_per_req']:.2f}us/req  errors {r['errors']}", file=sys.stderr)
    return r


# --policies: one route per request policy, and the headers its requests carry.
POLICY_ROUTES = [
    # (name, annotations, path, request path, extra request headers)
    ("plain", {}, "/", "/", []),
    ("regex rewrite", {"use-regex": "true", "rewrite-target": "/v2/$1"}, "/api/v1/(.*)", "/api/v1/items", []),
    # 999 disjoint /24s (every other one) and the client's address.
    ("allowlist, 1,000 entries", {"whitelist-source-range": ",".join(
        [f"10.{i // 128}.{i % 128 * 2}.0/24" for i in range(999)] + ["127.0.0.1/32"])}, "/", "/", []),
    ("basic auth {SHA}", {"auth-type": "basic", "auth-secret": "users"}, "/", "/",
     ["Authorization: Basic dXNlcjpzZWNyZXQ="]),
    ("CORS", {"enable-cors": "true", "cors-allow-origin": "https://app.example"}, "/", "/",
     ["Origin: https://app.example"]),
    ("limit-rps (never refusing)", {"limit-rps": "10000000"}, "/", "/", []),
]


def policy_manifests(manifests):
    docs = [f"""apiVersion: v1
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
---
apiVersion: v1
kind: Secret
metadata: {{name: users, namespace: default}}
stringData: {{auth: "user:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ="}}
"""]
    for i, (_, annotations, path, _, _) in enumerate(POLICY_ROUTES):
        ann = "".join(f"    nginx.ingress.kubernetes.io/{k}: {json.dumps(v)}\n" for k, v in annotations.items())
        docs.append(f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: policy-{i}
  namespace: default
  annotations:
{ann or "    {}"}
spec:
  ingressClassName: sluice
  rules:
  - host: p{i}.bench
    http:
      paths:
      - {{path: {json.dumps(path)}, pathType: ImplementationSpecific, backend: {{service: {{name: pods, port: {{number: 80}}}}}}}}
""".replace("  annotations:\n    {}\n", "  annotations: {}\n"))
    with open(os.path.join(manifests, "bench.yaml"), "w") as f:
        f.write("---\n".join(docs))


def policies(args, binary, tmp, script):
    manifests = os.path.join(tmp, "manifests")
    os.makedirs(manifests, exist_ok=True)
    policy_manifests(manifests)
    conf = os.path.join(tmp, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f'workers = [{CONTENDER_CPU}]\n[listen]\nhttp = "127.0.0.1:{PROXY_PORT}"\n'
                f'admin = "127.0.0.1:{PROXY_PORT + 1}"\n[sources]\nmanifests = "{manifests}"\n'
                f'[log]\naccess = false\n')
    proc = subprocess.Popen(["taskset", "-c", CONTENDER_CPU, binary, "run", "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = {name: [] for name, *_ in POLICY_ROUTES}
    try:
        wait_port(PROXY_PORT)
        time.sleep(0.3)
        for round_no in range(args.rounds):
            for i, (name, _, _, target, headers) in enumerate(POLICY_ROUTES):
                extra = ["-H", f"Host: p{i}.bench"] + [a for h in headers for a in ("-H", h)]
                url = f"http://127.0.0.1:{PROXY_PORT}{target}"
                if round_no == 0:
                    wrk(2, args.connections, script, extra, url)  # warm-up, and a check below
                before = cpu_ticks([proc.pid])
                r = wrk(args.duration, args.connections, script, extra, url)
                after = cpu_ticks([proc.pid])
                r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
                r["cpu_us_per_req"] = (after - before) / CLK_TCK * 1e6 / max(r["requests"], 1)
                runs[name].append(r)
                print(f"{name:28s} {r['rps']:10.0f} req/s  cpu {r['cpu_us_per_req']:.2f}us/req  "
                      f"errors {r['errors']}", file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    plain = runs["plain"]
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. One Sluice "
        f"worker pinned to CPU {CONTENDER_CPU} (access log off); wrk (1 thread, {args.connections} keep-alive "
        f"connections, {args.duration} s per route and round) and the upstream (nginx, 1 KiB body) on CPU {LOAD_CPU}. "
        f"Routes driven in turn, {args.rounds} rounds; ratios are to the plain route of the same round, "
        "the median round shown. Non-2xx answers count as errors (there must be none).",
        "",
        f"Command: `python3 bench/run.py --policies --duration {args.duration} --connections {args.connections} "
        f"--rounds {args.rounds}`",
        "",
        "| route | requests/s (median round) | ratio to plain | CPU per request | ratio to plain | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, *_ in POLICY_ROUTES:
        rps = sorted(r["rps"] / p["rps"] for r, p in zip(runs[name], plain))
        cpu = sorted(r["cpu_us_per_req"] / p["cpu_us_per_req"] for r, p in zip(runs[name], plain))
        med = sorted(runs[name], key=lambda r: r["rps"])[len(runs[name]) // 2]
        errors = sum(r["errors"] for r in runs[name])
        lines.append(f"| {name} | {med['rps']:.0f} | {rps[len(rps) // 2]:.2f} | {med['cpu_us_per_req']:.2f} µs | "
                     f"{cpu[len(cpu) // 2]:.2f} | {errors} |")
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_section("## Request policy cost, end to end (issue 17)", text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3,
                    help="contenders are interleaved over this many rounds; the median round counts")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--access-log", action="store_true",
                    help="Sluice with the access log on (to a file) vs off, instead of the three proxies")
    ap.add_argument("--policies", action="store_true",
                    help="Sluice's plain route vs routes with request policies, instead of the three proxies")
    ap.add_argument("--binary", help="a built sluice binary to use instead of building target/dist/sluice")
    args = ap.parse_args()
    ensure_tools()
    if args.binary:
        binary = os.path.abspath(args.binary)
    else:
        subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    script = os.path.join(tmp, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    upstream = start_upstream(tmp)
    if args.policies:
        try:
            return policies(args, binary, tmp, script)
        finally:
            upstream.terminate()
            upstream.wait()
    if args.access_log:
        starters = [("log-on", lambda: start_sluice(tmp, binary, True)),
                    ("log-off", lambda: start_sluice(tmp, binary, False))]
    else:
        starters = [("sluice", lambda: start_sluice(tmp, binary)), ("nginx", lambda: start_nginx(tmp)),
                    ("haproxy", lambda: start_haproxy(tmp))]
    runs = {name: [] for name, _ in starters}
    logged = 0
    try:
        for round_no in range(args.rounds):
            order = starters
            if args.access_log and round_no % 2 == 1:
                # Alternate who goes first: the second run of a round must not always be the
                # one that meets the machine after the first (page cache, writeback).
                order = list(reversed(starters))
            for name, start in order:
                runs[name].append(measure(name, start(), args, script))
                if args.access_log:
                    logged += drop_access_log(tmp)
    finally:
        upstream.terminate()
        upstream.wait()
    # The median round by requests/s, per contender (the shared machine is noisy).
    results = []
    for name, _ in starters:
        ordered = sorted(runs[name], key=lambda r: r["rps"])
        median = dict(ordered[len(ordered) // 2])
        median["all_rps"] = [round(r["rps"]) for r in runs[name]]
        results.append(median)
    if args.access_log:
        access_log_report(args, results, logged)
        return
    s, n, h = results
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. "
        f"One worker each pinned to CPU {CONTENDER_CPU}; wrk (1 thread, {args.connections} keep-alive connections, "
        f"{args.duration} s) and the upstream (nginx, 1 KiB body) on CPU {LOAD_CPU}.",
        "",
        f"Command: `python3 bench/run.py --duration {args.duration} --connections {args.connections} --rounds {args.rounds}` "
        f"(contenders interleaved over {args.rounds} rounds; the table shows each one's median round, "
        "the last column every round's requests/s).",
        "",
        "| contender | requests/s | p50 | p99 | p99.9 | CPU per request | errors | all rounds (req/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['rps']:.0f} | {r['p50']} µs | {r['p99']} µs | {r['p999']} µs | "
                     f"{r['cpu_us_per_req']:.2f} µs | {r['errors']} | {', '.join(map(str, r['all_rps']))} |")
    lines += [
        "",
        f"Ratios: requests/s Sluice/nginx **{s['rps'] / n['rps']:.2f}**, Sluice/HAProxy **{s['rps'] / h['rps']:.2f}**; "
        f"CPU per request Sluice/nginx **{s['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}**, "
        f"Sluice/HAProxy **{s['cpu_us_per_req'] / h['cpu_us_per_req']:.2f}** (below 1 is better).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_section("## Proxy throughput: Sluice vs nginx vs HAProxy (issue 3)", text)


def drop_access_log(tmp):
    """Counts the lines of the log-on run's file, deletes it and writes back what is dirty, so
    that the next run does not pay for this one's writeback."""
    path = os.path.join(tmp, "access.log")
    try:
        with open(path, "rb") as f:
            lines = sum(1 for _ in f)
        os.remove(path)
    except FileNotFoundError:
        lines = 0
    os.sync()
    time.sleep(0.5)
    return lines


def access_log_report(args, results, logged):
    on, off = results
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    ratios = [a / b for a, b in zip(on["all_rps"], off["all_rps"])]
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}, "
        f"load average at the end {load}. One Sluice worker pinned to "
        f"CPU {CONTENDER_CPU} (its logger thread too); wrk (1 thread, {args.connections} keep-alive "
        f"connections, {args.duration} s) and the upstream (nginx, 1 KiB body) on CPU {LOAD_CPU}.",
        "",
        f"Command: `python3 bench/run.py --access-log --duration {args.duration} --connections {args.connections} "
        f"--rounds {args.rounds}` (on and off interleaved over {args.rounds} rounds, alternating which goes "
        "first; the file is deleted and `sync`ed after each run; the median round of each, and every "
        "round's requests/s).",
        "",
        "| access log | requests/s | p50 | p99 | p99.9 | CPU per request | errors | all rounds (req/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, label in ((on, "on (text, to a file)"), (off, "off (`log.access = false`)")):
        lines.append(f"| {label} | {r['rps']:.0f} | {r['p50']} µs | {r['p99']} µs | {r['p999']} µs | "
                     f"{r['cpu_us_per_req']:.2f} µs | {r['errors']} | {', '.join(map(str, r['all_rps']))} |")
    lines += [
        "",
        f"On/off requests/s (medians): **{on['rps'] / off['rps']:.2f}** (goal: at least 0.90); "
        f"round by round: {', '.join(f'{x:.2f}' for x in ratios)}. "
        f"CPU per request on/off: {on['cpu_us_per_req'] / off['cpu_us_per_req']:.2f}. "
        f"Lines written to the log files: {logged}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_section("## Access log on vs off (issue 15)", text)


def write_section(marker, text):
    """Writes `text` under `marker` in bench/RESULTS.md, replacing that section only."""
    path = os.path.join(ROOT, "bench", "RESULTS.md")
    with open(path) as f:
        existing = f.read()
    section = marker + "\n\n" + text + "\n"
    if marker in existing:
        # Replace this section only, up to the next one.
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
