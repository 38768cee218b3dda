#!/usr/bin/env python3
"""Sluice's two engines side by side, in one run, on this machine: io_uring (kernel TCP) vs
userspace (smoltcp over a multi-queue TAP), one worker each pinned to the same core, proxying
to the same upstream (nginx, 1 KiB body) on the other core with the load generator (wrk).

Everything runs in a network namespace this script makes (and removes, also on failure): a
TAP `sl0` whose kernel side is 10.99.0.1 (wrk, nginx, and the io_uring engine's listener)
and whose other side is Sluice's userspace stack at 10.99.0.2.

For each engine and each count of extra idle keep-alive connections (default 100 and 50,000,
opened and used once before the measurement), wrk drives 64 keep-alive connections for a
fixed time. Reported: requests/s, p50/p99, Sluice's CPU time per request (utime+stime from
/proc), packets per request and CPU per packet (packets: frames through the TAP for the
userspace engine, TCP segments sent in the namespace for the io_uring engine; both count
every segment of the client and upstream legs once), and Sluice's resident memory.

With --https, wrk speaks HTTPS (TLS 1.3, keep-alive) to each engine's HTTPS listener instead
(Sluice's generated self-signed certificate; the upstream leg stays plain HTTP).

Usage: python3 bench/userspace.py [--duration 10] [--idle 100,50000] [--rounds 1] [--https] [--write-results]
Needs root; installs nginx and wrk with apt-get if they are missing.
"""

import argparse
import ctypes
import datetime
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import bench_manifests, write_section  # noqa: E402  (bench/run.py: one writer of RESULTS.md sections)
CONTENDER_CPU = "0"
LOAD_CPU = "1"
KERNEL_IP = "10.99.0.1"
SLUICE_IP = "10.99.0.2"
UPSTREAM_PORT = 18000
PROXY_PORT = 18080
HTTPS_PORT = 18443
ADMIN_PORT = 18081
CLK_TCK = os.sysconf("SC_CLK_TCK")
NS = f"sluice-bench-{os.getpid()}"
CLONE_NEWNET = 0x40000000

WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "errors": %d, "duration_us": %d, "p50": %d, "p99": %d, "p999": %d}\\n',
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def ensure_tools():
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def make_netns():
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    sh("ip", "-n", NS, "tuntap", "add", "dev", "sl0", "mode", "tap", "multi_queue")
    sh("ip", "-n", NS, "addr", "add", f"{KERNEL_IP}/24", "dev", "sl0")
    # Source addresses for the idle-connection holders: a port space each.
    for k in range(HOLDER_IPS):
        sh("ip", "-n", NS, "addr", "add", f"{holder_ip(k)}/24", "dev", "sl0")
    sh("ip", "-n", NS, "link", "set", "sl0", "up")
    # This process (and everything it starts) moves into the namespace.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{NS}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        # Clear of the fixed ports the benchmark listens on.
        f.write("20000 65535")


def remove_netns():
    sh("ip", "-n", NS, "link", "del", "sl0", check=False)
    sh("ip", "netns", "del", NS, check=False)


def wait_port(ip, port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((ip, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {ip}:{port}")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def kernel_retransmits():
    with open("/proc/self/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def packets(engine):
    if engine == "userspace":
        out = json.loads(sh("ip", "-s", "-j", "link", "show", "sl0").stdout)[0]["stats64"]
        return out["rx"]["packets"] + out["tx"]["packets"]
    with open("/proc/self/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Tcp:")]
    return int(rows[1][rows[0].index("OutSegs")])


def start_upstream(tmp):
    body = "x" * 1024
    conf = os.path.join(tmp, "upstream.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen {KERNEL_IP}:{UPSTREAM_PORT} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 "{body}"; }}
  }}
}}
""")
    p = subprocess.Popen(["taskset", "-c", LOAD_CPU, tool("nginx"), "-c", conf, "-p", tmp],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(KERNEL_IP, UPSTREAM_PORT)
    return p


def start_sluice(tmp, binary, engine, https=False):
    manifests = bench_manifests(tmp, KERNEL_IP, UPSTREAM_PORT)
    http = f"{KERNEL_IP}:{PROXY_PORT}" if engine == "uring" else f"0.0.0.0:{PROXY_PORT}"
    https_addr = f"{KERNEL_IP}:{HTTPS_PORT}" if engine == "uring" else f"0.0.0.0:{HTTPS_PORT}"
    conf = os.path.join(tmp, f"sluice-{engine}.toml")
    with open(conf, "w") as f:
        f.write(f"""workers = [{CONTENDER_CPU}]
engine = "{engine}"
[listen]
http = "{http}"
https = "{https_addr}"
admin = "127.0.0.1:{ADMIN_PORT}"
[timeouts]
keep_alive = "600s"
request_head = "600s"
[sources]
manifests = "{manifests}"
[userspace]
interface = "sl0"
addresses = ["{SLUICE_IP}/24"]
tcp_buffer = "16k"
backlog = 256
""")
    log = open(os.path.join(tmp, f"sluice-{engine}.log"), "a")
    p = subprocess.Popen(["taskset", "-c", CONTENDER_CPU, binary, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=log)
    target = KERNEL_IP if engine == "uring" else SLUICE_IP
    try:
        wait_port(target, HTTPS_PORT if https else PROXY_PORT, timeout=30)
    except RuntimeError:
        p.kill()
        p.wait()
        with open(log.name) as f:
            raise RuntimeError(f"sluice ({engine}) did not come up: {f.read()[-2000:]}")
    return p, target


HOLDER_IPS = 8


def holder_ip(k):
    return f"10.99.0.{11 + k}"


def open_idle(target, n, source=None):
    """n keep-alive connections, each used for one request (one at a time, so the upstream
    pool stays small), then left open and idle."""
    socks = []
    req = b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection((target, PROXY_PORT), timeout=10,
                                     source_address=(source, 0) if source else None)
        s.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + 1024:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("idle connection closed")
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"idle request failed: {got[:60]!r}")
        socks.append(s)
    return socks


HOLD_PER_PROCESS = 15000


def hold_main(target, n, source):
    """Holder process: opens n idle connections, says so, keeps them until stdin closes."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    socks = open_idle(target, n, source)
    print("ready", flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


def start_holders(target, n):
    """Idle connections from helper processes (the open-files limit is per process)."""
    holders = []
    while n > 0:
        k = min(n, HOLD_PER_PROCESS)
        source = holder_ip(len(holders) % HOLDER_IPS)
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--hold", f"{target}:{k}:{source}"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(p)
        n -= k
    for p in holders:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a holder could not open its connections")
    return holders


def stop_holders(holders):
    for p in holders:
        try:
            p.stdin.close()
        except OSError:
            pass
        p.wait()


def fd_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def wrk(target, duration, connections, script, https=False):
    url = f"https://{target}:{HTTPS_PORT}/" if https else f"http://{target}:{PROXY_PORT}/"
    cmd = ["taskset", "-c", LOAD_CPU, tool("wrk"), "-t1", f"-c{connections}", f"-d{duration}s",
           "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def measure(tmp, binary, engine, idle, args, script):
    proc, target = start_sluice(tmp, binary, engine, args.https)
    holders = []
    try:
        time.sleep(0.3)
        holders = start_holders(target, idle)
        wrk(target, 2, args.connections, script, args.https)  # warm-up: pools, caches
        before, pk_before, rt_before = cpu_ticks(proc.pid), packets(engine), kernel_retransmits()
        r = wrk(target, args.duration, args.connections, script, args.https)
        after, pk_after, rt_after = cpu_ticks(proc.pid), packets(engine), kernel_retransmits()
        r["kernel_retransmits"] = rt_after - rt_before
        r["rss_mib"] = rss_kib(proc.pid) / 1024
    finally:
        stop_holders(holders)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(0.5)
    seconds = r["duration_us"] / 1e6
    reqs = max(r["requests"], 1)
    cpu_us = (after - before) / CLK_TCK * 1e6
    r.update(engine=engine, idle=idle, rps=r["requests"] / seconds, cpu_us_per_req=cpu_us / reqs,
             pkts_per_req=(pk_after - pk_before) / reqs,
             ns_per_pkt=cpu_us * 1000 / max(pk_after - pk_before, 1))
    print(f"{engine:9s} idle {idle:6d}: {r['rps']:8.0f} req/s p50 {r['p50']}us p99 {r['p99']}us "
          f"cpu {r['cpu_us_per_req']:.2f}us/req {r['pkts_per_req']:.2f} pkt/req {r['ns_per_pkt']:.0f} ns/pkt "
          f"rss {r['rss_mib']:.0f} MiB errors {r['errors']} kernel retransmits {r['kernel_retransmits']}",
          file=sys.stderr)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--idle", default="100,50000")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--https", action="store_true",
                    help="drive HTTPS keep-alive connections instead of plain HTTP")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--hold", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hold:
        target, n, source = args.hold.split(":")
        hold_main(target, int(n), source)
        return
    idles = [int(x) for x in args.idle.split(",")]
    ensure_tools()
    limit = fd_limit()
    subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-us-bench-")
    print(f"logs in {tmp}", file=sys.stderr)
    script = os.path.join(tmp, "report.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    runs = {}
    upstream = None
    try:
        make_netns()
        upstream = start_upstream(tmp)
        for _ in range(args.rounds):
            for idle in idles:
                for engine in ("uring", "userspace"):
                    if engine == "uring" and idle + args.connections + 100 > limit:
                        # Every io_uring connection is a descriptor (two with its upstream).
                        print(f"uring: {idle} idle connections exceed the open-files limit {limit}; skipped",
                              file=sys.stderr)
                        continue
                    runs.setdefault((engine, idle), []).append(measure(tmp, binary, engine, idle, args, script))
    finally:
        if upstream:
            upstream.terminate()
            upstream.wait()
        remove_netns()
    results = {}
    for key, rs in runs.items():
        ordered = sorted(rs, key=lambda r: r["rps"])
        results[key] = ordered[len(ordered) // 2]
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. One Sluice worker "
        f"pinned to CPU {CONTENDER_CPU} per engine; wrk (1 thread, {args.connections} keep-alive connections, "
        f"{args.duration} s) and the upstream (nginx, 1 KiB body) on CPU {LOAD_CPU}; all in a network namespace "
        "made by the script, the userspace engine on a multi-queue TAP (1 queue), smoltcp buffers 16 KiB.",
        "",
        f"Command: `python3 bench/userspace.py --duration {args.duration} --idle {args.idle} --rounds {args.rounds}"
        + (" --https`" if args.https else "`"),
        "",
        "| engine | idle connections | requests/s | p50 | p99 | CPU per request | packets per request | CPU per packet | RSS | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for idle in idles:
        for engine in ("uring", "userspace"):
            r = results.get((engine, idle))
            if r is None:
                lines.append(f"| {engine} | {idle} | not measurable here: the open-files limit is {limit} "
                             "and cannot be raised in this sandbox | | | | | | | |")
                continue
            lines.append(f"| {engine} | {idle} | {r['rps']:.0f} | {r['p50']} µs | {r['p99']} µs | "
                         f"{r['cpu_us_per_req']:.2f} µs | {r['pkts_per_req']:.2f} | {r['ns_per_pkt']:.0f} ns | "
                         f"{r['rss_mib']:.0f} MiB | {r['errors']} |")
    lines.append("")
    for idle in idles:
        if ("uring", idle) not in results:
            continue
        u, s = results[("uring", idle)], results[("userspace", idle)]
        lines.append(f"Ratios at {idle} idle connections, userspace/io_uring: requests/s **{s['rps'] / u['rps']:.2f}**, "
                     f"CPU per request **{s['cpu_us_per_req'] / u['cpu_us_per_req']:.2f}**, "
                     f"p99 **{s['p99'] / max(u['p99'], 1):.2f}**.")
    for engine in ("uring", "userspace"):
        measured = [i for i in idles if (engine, i) in results]
        lo, hi = measured[0], measured[-1]
        a, b = results[(engine, lo)], results[(engine, hi)]
        lines.append(f"{engine}: CPU per packet at {hi} vs {lo} idle connections: **{b['ns_per_pkt'] / a['ns_per_pkt']:.2f}x**.")
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_section("## Userspace engine vs io_uring engine (issue 7)", text)


if __name__ == "__main__":
    main()
