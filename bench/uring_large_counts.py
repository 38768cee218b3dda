#!/usr/bin/env python3
"""io_uring operation counts per response for large answers through Sluice (issue 18, large
bodies): counts, not speed, so the machine need not be quiet.

One Sluice worker on CPU 0; bench_upstream (`--shape memory`, one write of head and body) and
wrk (one thread, keep-alive) on CPU 1. While wrk runs, `perf stat` on the sluice process counts
io_uring submissions (all, and by opcode: receives, sends, zero-copy sends, cancels),
completions, ENOBUFS (-105) and ECANCELED (-125) completions, system calls and context
switches, and `perf record` of io_uring_complete gives the bytes per receive and per send
completion (the operation is the top byte of Sluice's user data). Counts are divided by the
responses delivered (bytes wrk read / body size), not by the responses wrk completed: at 1,000
connections a 1 MiB answer can outlast a short window.

Usage:
  python3 bench/uring_large_counts.py --binary target/dist/sluice \\
      --upstream-binary target/dist/examples/bench_upstream [--connections 1000] [--seconds 6]
      [--body 1048576] [--disable zc] [--env SLUICE_URING_RECV_BUDGET=131072]
      [--config '[buffers]\\nsize = "128KiB"']
Needs root (perf tracepoints), wrk, curl, taskset. Ports 28300 (upstream) and 28380 (Sluice).
"""
import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import bench_manifests  # noqa: E402

UP, PX = 28300, 28380
OPS = {"recv": 27, "send": 26, "send_zc": 47, "cancel": 14}
TOKEN_OPS = {1: "accept", 2: "recv", 3: "send", 4: "connect", 8: "cancel", 99: "zc notif"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--upstream-binary", required=True)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--body", type=int, default=1 << 20)
    ap.add_argument("--disable", default="", help="SLUICE_URING_DISABLE")
    ap.add_argument("--env", action="append", default=[], metavar="VAR=VALUE")
    ap.add_argument("--config", default="", help="more TOML for Sluice's config")
    args = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="uring-large-")
    os.chmod(tmp, 0o755)
    bench_manifests(tmp, "127.0.0.1", UP)
    with open(f"{tmp}/sluice.toml", "w") as f:
        f.write(f'workers = [0]\n[listen]\nhttp = "127.0.0.1:{PX}"\nadmin = "127.0.0.1:{PX + 1}"\n'
                f'[sources]\nmanifests = "{tmp}/manifests"\n[log]\naccess = false\n'
                + args.config.replace("\\n", "\n") + "\n")
    env = dict(os.environ, SLUICE_URING_DISABLE=args.disable)
    for kv in args.env:
        k, v = kv.split("=", 1)
        env[k] = v
    up = subprocess.Popen(["taskset", "-c", "1", args.upstream_binary, "--listen", f"127.0.0.1:{UP}",
                           "--shape", "memory", "--body", str(args.body)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = subprocess.Popen(["taskset", "-c", "0", args.binary, "run", "--config", f"{tmp}/sluice.toml"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{PX}/"
    wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", "--timeout", "10s"]
    try:
        for _ in range(100):
            if subprocess.run(["curl", "-sf", "-o", "/dev/null", url]).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(wrk + ["-d1s", url], capture_output=True)  # warm-up
        events = ["-e", "io_uring:io_uring_submit_req", "-e", "io_uring:io_uring_complete",
                  "-e", "raw_syscalls:sys_enter",
                  "-e", "io_uring:io_uring_complete", "--filter", "res == -105",
                  "-e", "io_uring:io_uring_complete", "--filter", "res == -125",
                  "-e", "context-switches"]
        names = ["SQEs", "CQEs", "system calls", "ENOBUFS", "ECANCELED", "context switches"]
        for name, code in OPS.items():
            events += ["-e", "io_uring:io_uring_submit_req", "--filter", f"opcode == {code}"]
            names.append(f"SQEs {name}")
        dur = str(args.seconds)
        stat = subprocess.Popen(["perf", "stat", "-x", ",", *events, "-p", str(p.pid), "--", "sleep", dur],
                                stderr=subprocess.PIPE, text=True)
        rec = subprocess.Popen(["perf", "record", "-q", "-o", f"{tmp}/perf.data", "-e",
                                "io_uring:io_uring_complete", "-p", str(p.pid), "--", "sleep", dur],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        w = subprocess.run(wrk + [f"-d{dur}s", url], capture_output=True, text=True)
        _, err = stat.communicate()
        rec.wait()
        done = re.search(r"(\d+) requests in", w.stdout)
        read = re.search(r"([\d.]+)([KMG]B) read", w.stdout)
        nbytes = float(read.group(1)) * {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[read.group(2)] if read else 0
        n = max(int(nbytes / args.body), 1)
        print(f"responses completed {done.group(1) if done else 0}, delivered {n} "
              f"({nbytes / (1 << 20):.0f} MiB read); per delivered response:")
        values = [l.split(",")[0] for l in err.splitlines() if l.count(",") > 3]
        for name, v in zip(names, values):
            v = int(v) if v.isdigit() else 0
            print(f"  {name:18s} {v:10d} {v / n:9.2f}")
        out = subprocess.run(["perf", "script", "-i", f"{tmp}/perf.data"], capture_output=True, text=True).stdout
        stats = {}
        for line in out.splitlines():
            m = re.search(r"user_data 0x([0-9a-f]+), result (-?\d+), cflags 0x([0-9a-f]+)", line)
            if not m:
                continue
            op, res, cflags = int(m.group(1), 16) >> 56, int(m.group(2)), int(m.group(3), 16)
            if cflags & 8:  # IORING_CQE_F_NOTIF
                op = 99
            s = stats.setdefault(op, [0, 0, 0])
            s[0] += 1
            if res > 0:
                s[1] += 1
                s[2] += res
        for op, (count, with_data, total) in sorted(stats.items()):
            print(f"  completions {TOKEN_OPS.get(op, op):9s} {count:9d} {count / n:9.2f} "
                  f"(with data {with_data}, {total / max(with_data, 1):.0f} bytes each)")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
        up.kill()
        up.wait()


if __name__ == "__main__":
    main()
