#!/usr/bin/env python3
"""Memory per idle keep-alive connection: Sluice vs nginx, one worker each.

Opens N client connections, sends one request on each and reads the answer (so each is a
real keep-alive connection that has carried a request), then measures the contender's RSS
growth (all its processes) and divides by N.

Usage: python3 bench/idle.py [--connections 10000] [--ports 18000]

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


def measure(name, proc, n):
    base.wait_port(base.PROXY_PORT)
    time.sleep(0.5)
    pids = base.family(proc.pid)
    before = rss_kib(pids)
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    # One connection at a time: each carries a request and its answer, then stays open idle.
    # (Sending all requests at once would measure the peak of 10,000 concurrent exchanges,
    # which allocators keep as RSS, not what an idle connection costs.)
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", base.PROXY_PORT))
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 1024:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        socks.append(s)
    time.sleep(1.0)
    after = rss_kib(base.family(proc.pid))
    for s in socks:
        s.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    per = (after - before) * 1024 / n
    print(f"{name}: RSS {before} KiB -> {after} KiB with {n} idle keep-alive connections: {per:.0f} bytes each",
          file=sys.stderr)
    return per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--ports", type=int, default=base.UPSTREAM_PORT,
                    help="upstream port; the proxy listens on the next two (default: run.py's ports)")
    args = ap.parse_args()
    if args.ports != base.UPSTREAM_PORT:
        base.UPSTREAM_PORT = args.ports
        base.PROXY_PORT = args.ports + 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base.ensure_tools()
    subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-idle-")
    upstream = base.start_upstream(tmp, port=base.UPSTREAM_PORT)
    try:
        s = measure("sluice", base.start_sluice(tmp, binary), args.connections)
        n = measure("nginx", base.start_nginx(tmp), args.connections)
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"Memory per idle keep-alive connection ({args.connections} connections, one request each): "
          f"Sluice {s:.0f} bytes, nginx {n:.0f} bytes; ratio {s / n:.2f}.")


if __name__ == "__main__":
    main()
