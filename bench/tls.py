#!/usr/bin/env python3
"""TLS benchmark: Sluice vs nginx (OpenSSL) vs HAProxy (OpenSSL), in one run, on this machine.

Every contender gets ONE worker pinned to the same core and the same certificate (ECDSA P-256,
then RSA 2048, made here with openssl). Every contender negotiates the same TLS 1.3 suite: the
clients (s_time, wrk) are given an OpenSSL config that offers only that suite (each suite in
--suites is measured in turn; the suite each contender chose is checked with s_client and
shown). Three measurements per certificate and suite:

* full handshakes: `openssl s_time -new` clients (no resumption, TLS 1.3, X25519) on the
  other core, for a fixed time. The clients' own crypto (ECDSA/RSA verify) is slower than the
  server's, so the contender is not saturated; what we compare is full handshakes per second
  of the contender's CPU (handshakes / (utime+stime)), i.e. handshakes per second per core.
* HTTPS keep-alive, whole core: wrk (1 thread, 64 connections, https) through the contender
  to the same upstream (nginx, 1 KiB body), both on the other core: requests/s, CPU time per
  request, and how busy the load core was. On a 2-core machine the load core (wrk's TLS plus
  the upstream) saturates first, near 50,000 requests/s, so this request rate mostly measures
  the load; CPU per request is the contender's figure.
* HTTPS keep-alive, contender-bound: the same, with the contender limited to half a core
  (a CPU cgroup: quota 50 ms per 100 ms), so the contender, not the load core, is what runs
  out: requests/s here is the contender's throughput per half core. (Throttling makes p99
  tens of milliseconds for everyone; the rate is what this measures.)

Usage: python3 bench/tls.py [--duration 10] [--rounds 3] [--suites A,B] [--write-results]
Installs nginx, haproxy and wrk with apt-get if they are missing (needs root; the CPU cgroup
needs root too, and is skipped with a note where it cannot be made).
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# bench/run.py's tool discovery and process helpers, as bench/idle.py and bench/churn use them.
from run import bench_manifests, cpu_ticks, ensure_tools, family, start_upstream, tool, wait_port, write_section  # noqa: E402
CONTENDER_CPU = "0"
LOAD_CPU = "1"
# Ports of their own: other benchmarks (bench/run.py) use 18000/18080.
UPSTREAM_PORT = 18400
TLS_PORT = 18443
HTTP_PORT = 18480
CLK_TCK = os.sysconf("SC_CLK_TCK")
HANDSHAKE_CLIENTS = 4
DEFAULT_SUITES = "TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384"
QUOTA_SHARE = 0.5
QUOTA_PERIOD_US = 100_000
# The client environment of the suite being measured (OPENSSL_CONF); set by main().
CLIENT_ENV = dict(os.environ)

WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "errors": %d, "duration_us": %d, "p50": %d, "p99": %d}\\n',
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


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
    manifests = bench_manifests(tmp, "127.0.0.1", UPSTREAM_PORT)
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


def client_env(tmp, suite):
    """An environment whose OpenSSL clients offer only `suite` (TLS 1.3)."""
    conf = os.path.join(tmp, f"client-{suite}.cnf")
    with open(conf, "w") as f:
        f.write("openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n"
                "[ssl_sect]\nsystem_default = system_default_sect\n"
                f"[system_default_sect]\nCiphersuites = {suite}\n")
    return {**os.environ, "OPENSSL_CONF": conf}


def negotiated_suite():
    """The suite the contender picks for our clients (openssl s_client -brief)."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{TLS_PORT}", "-brief", "-tls1_3"],
                         input="", capture_output=True, text=True, env=CLIENT_ENV, timeout=10)
    m = re.search(r"Ciphersuite: (\S+)", out.stderr + out.stdout)
    return m.group(1) if m else "?"


class CpuLimit:
    """A CPU cgroup (v1 `cpu` controller or v2) limiting its members to a share of one core."""

    def __init__(self, share):
        self.path = None
        quota = int(share * QUOTA_PERIOD_US)
        try:
            if os.path.isdir("/sys/fs/cgroup/cpu") and os.path.exists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
                path = "/sys/fs/cgroup/cpu/sluice-tls-bench"
                os.makedirs(path, exist_ok=True)
                with open(f"{path}/cpu.cfs_period_us", "w") as f:
                    f.write(str(QUOTA_PERIOD_US))
                with open(f"{path}/cpu.cfs_quota_us", "w") as f:
                    f.write(str(quota))
            elif os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                path = "/sys/fs/cgroup/sluice-tls-bench"
                with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
                    f.write("+cpu")
                os.makedirs(path, exist_ok=True)
                with open(f"{path}/cpu.max", "w") as f:
                    f.write(f"{quota} {QUOTA_PERIOD_US}")
            else:
                raise OSError("no CPU cgroup controller mounted")
            self.path = path
        except OSError as e:
            self.error = str(e)

    def add(self, pids):
        for pid in pids:
            with open(f"{self.path}/cgroup.procs", "w") as f:
                f.write(str(pid))

    def remove(self):
        if self.path:
            try:
                os.rmdir(self.path)
            except OSError:
                pass


def load_busy():
    """(busy, total) jiffies of the load CPU."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{LOAD_CPU} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v) - v[3] - v[4], sum(v)
    return 0, 1


def keepalive(proc, args, script):
    pids = family(proc.pid)
    before, busy0 = cpu_ticks(pids), load_busy()
    r = wrk(args.duration, args.connections, script)
    after, busy1 = cpu_ticks(family(proc.pid)), load_busy()
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["cpu_us_per_req"] = (after - before) / CLK_TCK * 1e6 / max(r["requests"], 1)
    r["load_busy"] = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
    return r


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
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=CLIENT_ENV)
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
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=CLIENT_ENV).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def measure(name, start, args, script, limit):
    proc = start()
    wait_port(TLS_PORT)
    time.sleep(0.3)
    suite = negotiated_suite()
    handshakes(1)  # warm-up
    pids = family(proc.pid)
    before = cpu_ticks(pids)
    t0 = time.time()
    n = handshakes(args.duration)
    wall = time.time() - t0
    cpu = (cpu_ticks(family(proc.pid)) - before) / CLK_TCK
    hs = {"handshakes": n, "per_s": n / wall, "per_cpu_s": n / max(cpu, 1e-9), "cpu_share": cpu / wall}
    wrk(2, args.connections, script)  # warm-up: pools
    r = keepalive(proc, args, script)
    bound = None
    if limit.path:
        limit.add(family(proc.pid))
        wrk(2, args.connections, script)  # settle under the quota
        bound = keepalive(proc, args, script)
    stop(proc)
    r.update({"name": name, "hs": hs, "suite": suite, "bound": bound})
    line = (f"{name:8s} {suite} handshakes {hs['per_s']:7.0f}/s at {hs['cpu_share'] * 100:3.0f}% CPU = "
            f"{hs['per_cpu_s']:7.0f}/CPU-s | keep-alive {r['rps']:7.0f} req/s cpu {r['cpu_us_per_req']:.2f}us/req "
            f"load {r['load_busy'] * 100:.0f}% errors {r['errors']}")
    if bound:
        line += f" | half core {bound['rps']:7.0f} req/s load {bound['load_busy'] * 100:.0f}% errors {bound['errors']}"
    print(line, file=sys.stderr)
    return r


def table_row(name, m, runs):
    h, c, r, b = m["hs"], m["cpu"], m["rps"], m["bound"]
    errors = sum(x["errors"] + (x["bound"]["errors"] if x["bound"] else 0) for x in runs)
    suites = " ".join(sorted(set(x["suite"] for x in runs)))
    half = f"{b['bound']['rps']:.0f}" if b else "-"
    every_hs = ", ".join(str(round(x["hs"]["per_cpu_s"])) for x in runs)
    every_cpu = ", ".join(f"{x['cpu_us_per_req']:.1f}" for x in runs)
    every_half = ", ".join(str(round(x["bound"]["rps"])) if x["bound"] else "-" for x in runs)
    return (f"| {name} | {suites} | {h['hs']['per_cpu_s']:.0f} | {h['hs']['per_s']:.0f} ({h['hs']['cpu_share'] * 100:.0f} %) | "
            f"{r['rps']:.0f} ({r['load_busy'] * 100:.0f} %) | {c['cpu_us_per_req']:.2f} µs | {1e6 / c['cpu_us_per_req']:.0f} | "
            f"{half} | {errors} | {every_hs}; {every_cpu}; {every_half} |")


def median(runs, key):
    ordered = sorted(runs, key=key)
    return ordered[len(ordered) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--suites", default=DEFAULT_SUITES,
                    help="comma-separated TLS 1.3 suites, each measured in turn (all contenders negotiate it)")
    ap.add_argument("--certs", default="ecdsa,rsa")
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-tls-bench-")
    script = os.path.join(tmp, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    upstream = start_upstream(tmp, port=UPSTREAM_PORT)
    limit = CpuLimit(QUOTA_SHARE)
    command = (f"python3 bench/tls.py --duration {args.duration} --connections {args.connections} "
               f"--rounds {args.rounds} --suites {args.suites} --certs {args.certs}")
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. "
        f"One worker each pinned to CPU {CONTENDER_CPU}; load ({HANDSHAKE_CLIENTS} × `openssl s_time -new -tls1_3`, "
        f"then wrk 1 thread / {args.connections} keep-alive https connections) and the upstream (nginx, 1 KiB body) "
        f"on CPU {LOAD_CPU}; {args.duration} s per measurement; contenders interleaved over {args.rounds} rounds, "
        "the median round counts (all rounds shown). The clients offer one TLS 1.3 suite, so every contender "
        "negotiates it (the suite column is what each one chose, from `openssl s_client -brief`). "
        "\"Half core\": the contender in a CPU cgroup with a quota of "
        f"{QUOTA_SHARE * QUOTA_PERIOD_US / 1000:.0f} ms per {QUOTA_PERIOD_US / 1000:.0f} ms, so that it, not the load core, runs out.",
        "",
        f"Command: `{command}`",
        "",
    ]
    if not limit.path:
        lines += [f"(No CPU cgroup here ({limit.error}): the half-core measurement was skipped.)", ""]
    global CLIENT_ENV
    try:
        for suite in args.suites.split(","):
            CLIENT_ENV = client_env(tmp, suite)
            for kind in args.certs.split(","):
                cert = make_cert(tmp, kind)
                starters = [("sluice", lambda: start_sluice(tmp, binary, cert)), ("nginx", lambda: start_nginx(tmp, cert)),
                            ("haproxy", lambda: start_haproxy(tmp, cert))]
                runs = {name: [] for name, _ in starters}
                for _ in range(args.rounds):
                    for name, start in starters:
                        runs[name].append(measure(name, start, args, script, limit))
                label = ("ECDSA P-256" if kind == "ecdsa" else "RSA 2048") + f", {suite}"
                med = {}
                for name, _ in starters:
                    med[name] = {
                        "hs": median(runs[name], lambda r: r["hs"]["per_cpu_s"]),
                        "cpu": median(runs[name], lambda r: -r["cpu_us_per_req"]),
                        "rps": median(runs[name], lambda r: r["rps"]),
                        "bound": median(runs[name], lambda r: r["bound"]["rps"]) if limit.path else None,
                    }
                lines += [
                    f"### {label}",
                    "",
                    "| contender | suite | full handshakes per CPU-second | handshakes/s (CPU used) | whole core: req/s (load core busy) | CPU per request | requests per CPU-second | half core: req/s | errors | all rounds: hs/CPU-s; µs/req; half-core req/s |",
                    "|---|---|---|---|---|---|---|---|---|---|",
                ]
                for name, _ in starters:
                    lines.append(table_row(name, med[name], runs[name]))
                s, n, ha = (med[k] for k in ("sluice", "nginx", "haproxy"))
                ratio = lambda a, b, f: f(a) / f(b)
                hs = lambda m: m["hs"]["hs"]["per_cpu_s"]
                cap = lambda m: 1 / m["cpu"]["cpu_us_per_req"]
                rps = lambda m: m["rps"]["rps"]
                text = (f"Ratios ({label}): full handshakes per core Sluice/nginx **{ratio(s, n, hs):.2f}**, "
                        f"Sluice/HAProxy **{ratio(s, ha, hs):.2f}**; keep-alive requests per CPU-second Sluice/nginx "
                        f"**{ratio(s, n, cap):.2f}**, Sluice/HAProxy **{ratio(s, ha, cap):.2f}**")
                if limit.path:
                    bnd = lambda m: m["bound"]["bound"]["rps"]
                    text += (f"; keep-alive req/s on half a core Sluice/nginx **{ratio(s, n, bnd):.2f}**, "
                             f"Sluice/HAProxy **{ratio(s, ha, bnd):.2f}**")
                text += (f"; whole-core req/s (load-bound) Sluice/nginx {ratio(s, n, rps):.2f}, "
                         f"Sluice/HAProxy {ratio(s, ha, rps):.2f}.")
                lines += ["", text, ""]
    finally:
        upstream.terminate()
        upstream.wait()
        limit.remove()
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_section("## TLS: Sluice (rustls) vs nginx and HAProxy (OpenSSL) (issue 6)", text)


if __name__ == "__main__":
    main()
