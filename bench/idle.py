#!/usr/bin/env python3
"""Memory per idle keep-alive connection: Sluice vs nginx, one worker each.

Opens N client connections, sends one request on each and reads the answer (so each is a
real keep-alive connection that has carried a request), then measures the contender's RSS
growth (all its processes) and divides by N.

Before that, each contender is warmed up with --warmup requests on one keep-alive connection
(default 2000): what a worker pays once, whatever its connections (the pages of Sluice's
16 MiB receive-buffer ring that short messages touch, its free list of connection machines,
allocator arenas, code paged in), is then paid before the first measurement, as on a server
that has been running. --warmup 0 measures from a cold start as this script did before
2026-12-05: at 10,000 connections Sluice's figure then includes about 400 bytes per connection
of ring pages (1,024 buffers, a page each, touched by the first 1,024 receives). Both figures
are printed with the second half's alone (RSS growth from N/2 to N connections, divided by
N/2): the cost of one more idle connection.

Usage: python3 bench/idle.py [--connections 10000] [--warmup 2000] [--ports 18000]
                             [--binary PATH]

--ports moves the upstream to that port and the proxy to the next two (default 18000: the
upstream on 18000, the proxy on 18080 and 18081, as bench/run.py), so that this can run while
something else holds run.py's ports.
"""

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += int([l for l in f if l.startswith("VmRSS")][0].split()[1])
    return total


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data or len(data) < 1024:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def warm_up(requests):
    """`requests` requests, one after another, on one keep-alive connection (then closed)."""
    if requests <= 0:
        return
    with socket.create_connection(("127.0.0.1", base.PROXY_PORT)) as s:
        for _ in range(requests):
            s.sendall(REQUEST)
            read_response(s)


def measure(name, proc, n, warmup):
    base.wait_port(base.PROXY_PORT)
    warm_up(warmup)
    time.sleep(0.5)
    pids = base.family(proc.pid)
    before = rss_kib(pids)
    socks = []
    req = REQUEST
    # One connection at a time: each carries a request and its answer, then stays open idle.
    # (Sending all requests at once would measure the peak of 10,000 concurrent exchanges,
    # which allocators keep as RSS, not what an idle connection costs.)
    half = None
    for i in range(n):
        if i == n // 2:
            half = rss_kib(base.family(proc.pid))
        s = socket.create_connection(("127.0.0.1", base.PROXY_PORT))
        s.sendall(req)
        read_response(s)
        socks.append(s)
    time.sleep(1.0)
    after = rss_kib(base.family(proc.pid))
    for s in socks:
        s.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    per = (after - before) * 1024 / n
    # The second half alone: what one more idle connection costs once fixed costs (pages
    # touched once per worker, warm free lists) are paid.
    marginal = (after - half) * 1024 / (n - n // 2)
    print(f"{name}: RSS {before} KiB -> {half} KiB at {n // 2} -> {after} KiB with {n} idle keep-alive "
          f"connections: {per:.0f} bytes each; the second half {marginal:.0f} bytes each",
          file=sys.stderr)
    return per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=2000,
                    help="requests on one connection before measuring (0: a cold start)")
    ap.add_argument("--binary", help="the sluice binary to measure (default: build --profile dist)")
    ap.add_argument("--ports", type=int, default=base.UPSTREAM_PORT,
                    help="upstream port; the proxy listens on the next two (default: run.py's ports)")
    args = ap.parse_args()
    if args.ports != base.UPSTREAM_PORT:
        base.UPSTREAM_PORT = args.ports
        base.PROXY_PORT = args.ports + 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base.ensure_tools()
    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-idle-")
    upstream = base.start_upstream(tmp, port=base.UPSTREAM_PORT)
    try:
        s = measure("sluice", base.start_sluice(tmp, binary), args.connections, args.warmup)
        n = measure("nginx", base.start_nginx(tmp), args.connections, args.warmup)
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"Memory per idle keep-alive connection ({args.connections} connections, one request each, "
          f"after {args.warmup} warm-up requests): "
          f"Sluice {s:.0f} bytes, nginx {n:.0f} bytes; ratio {s / n:.2f}.")


if __name__ == "__main__":
    main()
