#!/usr/bin/env python3
"""Operation counts per request for Sluice's io_uring engine with each optional feature turned
off in turn (SLUICE_URING_DISABLE=fixed / bundle / zc / all three): counts, not speed, so the
machine need not be quiet. For each cell and setting, `perf stat` on the sluice process counts
io_uring submissions (io_uring_submit_req), completions (io_uring_complete), descriptor
lookups (io_uring_file_get: what registered descriptors remove), system calls
(raw_syscalls:sys_enter) and ENOBUFS completions (a receive that found no buffer), divided by
the requests wrk completed in the same window. One worker, an nginx upstream (1 KiB from
memory, a 1 MiB static file) on 127.0.0.1:28000, Sluice on 127.0.0.1:28080.

Usage: python3 bench/uring_counts.py BINARY [seconds] [cell-substring]
Needs perf (with tracepoint access), nginx, wrk and curl. Issue 18."""
import os, subprocess, sys, tempfile, time, json, re, signal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import bench_manifests  # noqa: E402  (bench/run.py: the one benchmark manifest writer)

BIN = sys.argv[1]
DUR = int(sys.argv[2]) if len(sys.argv) > 2 else 4
UP, PX = 28000, 28080
tmp = tempfile.mkdtemp(prefix="c18b-")
os.chmod(tmp, 0o755)
os.makedirs(f"{tmp}/www", exist_ok=True)
open(f"{tmp}/www/big", "wb").write(bytes(i % 251 for i in range(1 << 20)))
open(f"{tmp}/nginx.conf", "w").write(f"""
worker_processes 1; worker_rlimit_nofile 65536; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/err.log;
events {{ worker_connections 30000;  }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{UP} backlog=4096; keepalive_requests 1000000;
    location = / {{ return 200 "{'x' * 1024}"; }}
    location /big {{ root {tmp}/www; sendfile on; }} }} }}
""")
bench_manifests(tmp, "127.0.0.1", UP)
open(f"{tmp}/sluice.toml", "w").write(f"""workers = [0]
[listen]
http = "127.0.0.1:{PX}"
admin = "127.0.0.1:{PX+1}"
[sources]
manifests = "{tmp}/manifests"
[log]
access = false
""")
ng = subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(0.5)
EVENTS = ["io_uring:io_uring_submit_req", "io_uring:io_uring_complete", "io_uring:io_uring_file_get",
          "raw_syscalls:sys_enter"]
cells = [("1KiB keep-alive c64", ["-c64"], "/"),
         ("1KiB new conn c16", ["-c16", "-H", "Connection: close"], "/"),
         ("1MiB keep-alive c8", ["-c8"], "/big"),
         ("1KiB keep-alive c10000", ["-c10000", "--timeout", "10s"], "/")]
configs = ["", "fixed", "bundle", "zc", "fixed,bundle,zc"]
rows = []
if len(sys.argv) > 3:
    cells = [c for c in cells if sys.argv[3] in c[0]]
try:
    for cell, args, path in cells:
        for off in configs:
            env = dict(os.environ, SLUICE_URING_DISABLE=off)
            p = subprocess.Popen([BIN, "run", "--config", f"{tmp}/sluice.toml"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                try:
                    subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{PX}/"], check=True)
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.1)
            perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS), "-e", "io_uring:io_uring_complete", "--filter", "res == -105", "-p", str(p.pid),
                                     "--", "sleep", str(DUR)], stderr=subprocess.PIPE, text=True)
            w = subprocess.run(["wrk", "-t1", *args, f"-d{DUR}s", f"http://127.0.0.1:{PX}{path}"],
                               capture_output=True, text=True)
            _, err = perf.communicate()
            m = re.search(r"(\d+) requests in", w.stdout)
            reqs = int(m.group(1)) if m else 0
            counts = {}
            for line in err.splitlines():
                f = line.split(",")
                if len(f) > 3 and f[2] in EVENTS:
                    if f[2] in counts:
                        counts["enobufs"] = int(f[0]) if f[0].isdigit() else 0
                    else:
                        counts[f[2]] = int(f[0]) if f[0].isdigit() else 0
            p.send_signal(signal.SIGTERM); p.wait()
            row = [cell, off or "(all on)", reqs] + [round(counts.get(e, 0) / max(reqs, 1), 2) for e in EVENTS] + [counts.get("enobufs", 0)]
            rows.append(row)
            print(row, flush=True)
finally:
    ng.send_signal(signal.SIGQUIT); ng.wait()
print("| cell | disabled | requests | SQEs/req | CQEs/req | file_get/req | syscalls/req | ENOBUFS completions |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(str(x) for x in r) + " |")
