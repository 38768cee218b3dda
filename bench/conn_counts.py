#!/usr/bin/env python3
"""What a new connection costs Sluice's io_uring engine, in counts (not speed, so the machine
need not be quiet): a TCP connection per request (`Connection: close`) through one worker,
with each setting given, and per request: system calls by name, io_uring submissions by
opcode, completions, waits (io_uring_cqring_wait: an io_uring_enter that slept), deferred
task-work runs, work punted to io-wq threads, the worker's context switches, and the
batching window's timer firing (hrtimer io_cqring_min_timer_wakeup on the worker's CPU).

One worker pinned to CPU 0; wrk (one thread) and an nginx upstream (`return 200` with 1 KiB
from memory) on CPU 1; Sluice on 127.0.0.1:28280, the upstream on 127.0.0.1:28200 (not the
ports of bench/run.py, so it can run beside it).

Usage: python3 bench/conn_counts.py BINARY [--seconds 3] [--connections 64] [--keepalive]
           [--setting NAME=TOML=ENV ...]   (default settings: batch (the default config),
                                            nobatch ([uring] batch_window = "0us"))
Needs root (perf with tracepoints, taskset), nginx and wrk. Issue 18."""
import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import bench_manifests, wait_port  # noqa: E402

UP, PX = 28200, 28280
SYSCALLS = ["io_uring_enter", "shutdown", "getpeername", "getsockname", "close", "accept4",
            "setsockopt", "sendto", "socket", "connect", "epoll_wait", "futex"]
COUNTERS = ["task-clock", "raw_syscalls:sys_enter", "context-switches",
            "io_uring:io_uring_complete", "io_uring:io_uring_cqring_wait",
            "io_uring:io_uring_local_work_run", "io_uring:io_uring_task_work_run",
            "io_uring:io_uring_queue_async_work", "io_uring:io_uring_poll_arm",
            "io_uring:io_uring_file_get"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS]


def kallsym(name):
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == name:
                return parts[0]
    return None


def start_upstream(tmp):
    conf = os.path.join(tmp, "upstream.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; worker_cpu_affinity 10; worker_rlimit_nofile 20000;
daemon off; pid {tmp}/upstream.pid; error_log {tmp}/upstream-error.log;
events {{ worker_connections 19000; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UP} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 "{'x' * 1024}"; }} }} }}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_port(UP)
    return p


def start_sluice(tmp, binary, extra, env):
    manifests = bench_manifests(tmp, "127.0.0.1", UP)
    conf = os.path.join(tmp, "sluice.toml")
    with open(conf, "w") as f:
        f.write(f"""workers = [0]
[listen]
http = "127.0.0.1:{PX}"
admin = "127.0.0.1:{PX + 1}"
[sources]
manifests = "{manifests}"
[log]
access = false
{extra}
""")
    p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, **env))
    wait_port(PX)
    return p


def wrk(args, seconds):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s"]
    if not args.keepalive:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{PX}/"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return (int(m.group(1)) if m else 0), (errors.group(0) if errors else "")


def measure(args, binary, tmp, name, extra, env):
    p = start_sluice(tmp, binary, extra, env)
    try:
        wrk(args, 1)  # warm-up: the upstream pool
        events = ",".join(COUNTERS)
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", str(p.pid), "--",
                                 "sleep", str(args.seconds)],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        timer = None
        sym = kallsym("io_cqring_min_timer_wakeup")
        if sym:
            timer = subprocess.Popen(["perf", "stat", "-x,", "-C", "0", "-e",
                                      "timer:hrtimer_expire_entry", "--filter",
                                      f"function == 0x{sym}", "--", "sleep", str(args.seconds)],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        record = subprocess.Popen(["perf", "record", "-q", "-o", f"{tmp}/ops.data", "-e",
                                   "io_uring:io_uring_submit_req", "-p", str(p.pid), "--",
                                   "sleep", str(args.seconds)],
                                  stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        reqs, errors = wrk(args, args.seconds)
        counts = {}
        for line in perf.communicate()[1].splitlines():
            f = line.split(",")
            if len(f) > 2 and f[2] == "task-clock":
                # msec: reported as µs per request (CPU time: noisy on a loaded machine)
                counts["task-clock µs"] = float(f[0]) * 1000
            elif len(f) > 2 and f[0].isdigit():
                counts[f[2]] = int(f[0])
        if timer:
            for line in timer.communicate()[1].splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].isdigit():
                    counts["min-wait timer fired (CPU 0)"] = int(f[0])
        record.wait()
        ops = collections.Counter()
        script = subprocess.run(["perf", "script", "-i", f"{tmp}/ops.data"], capture_output=True,
                                text=True).stdout
        for line in script.splitlines():
            m = re.search(r"opcode (\w+)", line)
            if m:
                ops["submit " + m.group(1)] += 1
        counts.update(ops)
        os.remove(f"{tmp}/ops.data")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=15)
    return name, reqs, errors, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="settings interleaved, each round "
                    "a column")
    ap.add_argument("--keepalive", action="store_true", help="keep-alive instead of a new "
                    "connection per request")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=TOML=ENV",
                    help="a setting: NAME, TOML appended to the config ('\\n' for newlines), "
                         "ENV as VAR:VALUE (e.g. 'nofixed==SLUICE_URING_DISABLE:fixed')")
    args = ap.parse_args()
    settings = []
    for spec in args.setting or ["batch==", 'nobatch=[uring]\\nbatch_window = "0us"=']:
        # NAME=TOML=ENV: the TOML may hold '=' itself, the environment (VAR:VALUE) does not.
        name, _, rest = spec.partition("=")
        toml, _, env = rest.rpartition("=")
        var, _, value = env.partition(":")
        settings.append((name, toml.replace("\\n", "\n"), {var: value} if var else {}))
    tmp = tempfile.mkdtemp(prefix="sluice-conn-counts-")
    os.chmod(tmp, 0o755)
    up = start_upstream(tmp)
    results = []
    try:
        for r in range(args.rounds):
            for name, toml, env in settings:
                label = name if args.rounds == 1 else f"{name} #{r + 1}"
                results.append(measure(args, args.binary, tmp, label, toml, env))
    finally:
        up.terminate()
        up.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    keys = sorted({k for _, _, _, c in results for k in c},
                  key=lambda k: (not k.startswith(("task", "raw", "context", "min")), k))
    mode = "keep-alive" if args.keepalive else "new connection per request"
    print(f"{args.connections} connections, {mode}, {args.seconds} s; per request:")
    print("| count | " + " | ".join(n for n, _, _, _ in results) + " |")
    print("|---|" + "---|" * len(results))
    print("| requests | " + " | ".join(str(r) for _, r, _, _ in results) + " |")
    for k in keys:
        row = []
        for _, reqs, _, c in results:
            row.append(f"{c.get(k, 0) / max(reqs, 1):.3f}")
        print(f"| {k.replace('syscalls:sys_enter_', 'syscall ')} | " + " | ".join(row) + " |")
    for name, _, errors, _ in results:
        if errors:
            print(f"{name}: {errors}")


if __name__ == "__main__":
    main()
