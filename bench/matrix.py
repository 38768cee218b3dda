#!/usr/bin/env python3
"""The performance matrix: Sluice vs nginx vs HAProxy over upstream kinds, body sizes,
connection counts and connection reuse, with what each proxy costs its peers.

Cells: upstream kind x body size x client connections x (keep-alive | a new connection per
request). Upstream kinds:
  memory   nginx `return 200` from memory (bodies up to 1 KiB: nginx's configuration parser
           caps a quoted string at 4 KiB, so larger bodies come from bench_upstream's `memory`
           shape, one write of head and body, and the table says so)
  static   nginx serving a file of that size with sendfile and tcp_nopush on (the common pod)
  split    bench_upstream: head and body in two writes with a pause between (Go/Node-like)
  chunked  bench_upstream: Transfer-Encoding chunked, the body in two chunks, three writes

For every cell and contender: requests/s, p50/p99 (wrk), the proxy's CPU per request
(utime+stime of its processes), the load side's CPU per request (whole-CPU accounting of the
other core from /proc/stat: wrk, the upstream, and the kernel work they cause), system calls
per request of the proxy (perf stat, raw_syscalls:sys_enter), and context switches per request
of the proxy and of the upstream (/proc/PID/task/*/status). An io_uring proxy's operations are
not system calls: Sluice's count is its io_uring_enter calls plus the rest, so compare its
context switches and load-side CPU rather than this column alone.

As in bench/run.py: one proxy worker pinned to CPU 0; wrk (one thread) and the upstream pinned
to CPU 1. Contenders are interleaved within each cell, over --rounds rounds; the median round
counts. No contender writes an access log (nginx and HAProxy are configured without one, Sluice
runs with `[log] access = false`).

Each measurement also says how busy each core was and so what it ran into ("limit"): the
proxy's core, the load core, both (95 % or more busy), or neither ("latency": each side spends
part of the time waiting for the other). The end of the table lists the cells where Sluice
missed one of issue 18's goals, grouped that way. With --perf DIR, every measurement also
records a CPU profile of each core (perf record -g) for reading what limits a cell
(bench/profile_summary.py summarises them per request).

Usage:
  python3 bench/matrix.py --quick                 # 4 kinds x 1 KiB x 64 conns x both reuses
  python3 bench/matrix.py [--kinds static,split] [--sizes 0,1k] [--connections 64,1000]
                          [--modes keepalive,close] [--duration 5] [--rounds 1] [--write-results]
Needs root (perf, sysctl, taskset), nginx, haproxy, wrk and perf (installed with apt-get if
missing). For new-connection cells it sets net.ipv4.tcp_tw_reuse=1 and widens
ip_local_port_range (restored at exit, also when stopped by SIGTERM or SIGHUP): without them the
client runs out of ports.
"""

import argparse
import datetime
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402

ROOT = base.ROOT
CPU, LOAD = base.CONTENDER_CPU, base.LOAD_CPU
UP, PROXY = base.UPSTREAM_PORT, base.PROXY_PORT
KINDS = ["memory", "static", "split", "chunked"]
SIZES = {"0": 0, "1k": 1024, "16k": 16 * 1024, "1m": 1024 * 1024}
NGINX_RETURN_MAX = 4000


def start_nginx_upstream(tmp, kind, size):
    if kind == "memory":
        return base.start_upstream(tmp, location=f'default_type text/plain; return 200 "{"x" * size}";',
                                   connections=19000)
    root = os.path.join(tmp, "www")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "body"), "wb") as f:
        f.write(b"x" * size)
    return base.start_upstream(
        tmp, location="default_type text/plain; sendfile on; tcp_nopush on; try_files /body =404;",
        root=root, connections=19000)


def start_upstream(tmp, kind, size, upstream_bin):
    """The upstream for one (kind, size), and how the table names it."""
    if kind == "static" or (kind == "memory" and size <= NGINX_RETURN_MAX):
        p, label = start_nginx_upstream(tmp, kind, size), f"nginx {kind}"
    else:
        shape = "memory" if kind == "memory" else kind
        p = subprocess.Popen(["taskset", "-c", LOAD, upstream_bin, "--listen", f"127.0.0.1:{UP}",
                              "--shape", shape, "--body", str(size)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        label = f"bench_upstream {shape}"
        base.wait_port(UP)
    return p, label


def proc_ticks_and_switches(pids):
    """utime+stime ticks and voluntary+involuntary context switches of these processes."""
    switches = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")  # every thread: Sluice's workers are threads
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            switches += int(line.split()[1])
            except FileNotFoundError:
                pass
    return base.cpu_ticks(pids), switches


def core_busy_ticks(cpu):
    """Busy ticks of one CPU (everything but idle and iowait) from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v) - v[3] - v[4]
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def wrk(duration, connections, script, close):
    cmd = ["taskset", "-c", LOAD, base.tool("wrk"), "-t1", f"-c{connections}", f"-d{duration}s",
           "--timeout", "5s", "-s", script]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{PROXY}/")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def measure(name, proc, upstream, cell, args, script):
    base.wait_port(PROXY)
    time.sleep(0.3)
    wrk(1, cell["connections"], script, cell["close"])  # warm-up: pools, caches
    pids = base.family(proc.pid)
    up_pids = base.family(upstream.pid)
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter",
                             "-p", ",".join(map(str, pids))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    records = []
    if args.perf:
        # Profiles of the proxy's core and of the load core (wrk, the upstream, and the kernel's
        # work for them), for reading what limits a cell; they cost a few per cent of each core,
        # so figures from a --perf run are for the profiles, not for the tables.
        os.makedirs(args.perf, exist_ok=True)
        stem = os.path.join(args.perf, f"{cell['kind']}-{cell['size_name']}-{cell['connections']}-"
                                       f"{cell['mode']}-{name}")
        for cpu, what in ((CPU, "proxy"), (LOAD, "load")):
            records.append(subprocess.Popen(
                ["perf", "record", "-q", "-F", "1999", "-g", "-C", cpu, "-o", f"{stem}-{what}.data"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    p_ticks0, p_cs0 = proc_ticks_and_switches(pids)
    _, u_cs0 = proc_ticks_and_switches(up_pids)
    load0, core0, t0 = core_busy_ticks(LOAD), core_busy_ticks(CPU), time.monotonic()
    r = wrk(args.duration, cell["connections"], script, cell["close"])
    load1, core1, t1 = core_busy_ticks(LOAD), core_busy_ticks(CPU), time.monotonic()
    p_ticks1, p_cs1 = proc_ticks_and_switches(pids)
    _, u_cs1 = proc_ticks_and_switches(up_pids)
    perf.send_signal(signal.SIGINT)
    for rec in records:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
    syscalls = 0
    for line in perf.communicate(timeout=10)[1].splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] == "raw_syscalls:sys_enter" and parts[0].isdigit():
            syscalls = int(parts[0])
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    time.sleep(0.3)
    n = max(r["requests"], 1)
    tick_us = 1e6 / base.CLK_TCK
    r.update(
        name=name,
        rps=r["requests"] / (r["duration_us"] / 1e6),
        cpu_us=(p_ticks1 - p_ticks0) * tick_us / n,
        load_us=(load1 - load0) * tick_us / n,
        syscalls=syscalls / n,
        proxy_cs=(p_cs1 - p_cs0) / n,
        upstream_cs=(u_cs1 - u_cs0) / n,
        proxy_busy=(core1 - core0) / base.CLK_TCK / (t1 - t0),
        load_busy=(load1 - load0) / base.CLK_TCK / (t1 - t0),
    )
    r["limit"] = limit(r)
    if args.perf:
        with open(f"{stem}.json", "w") as f:
            json.dump({"cell": {k: cell[k] for k in ("kind", "size_name", "connections", "mode")},
                       "contender": name, **{k: r[k] for k in ("requests", "rps", "cpu_us", "load_us",
                                                               "proxy_busy", "load_busy", "limit")}}, f)
    print(f"  {name:8s} {r['rps']:9.0f} req/s p50 {r['p50']}us p99 {r['p99']}us cpu {r['cpu_us']:.2f}us "
          f"load {r['load_us']:.2f}us sys {r['syscalls']:.2f} cs {r['proxy_cs']:.3f}/{r['upstream_cs']:.3f} "
          f"errors {r['errors']} busy {r['proxy_busy']:.0%}/{r['load_busy']:.0%} ({r['limit']})",
          file=sys.stderr)
    return r


BUSY = 0.95  # a core this busy over a measurement is what the cell ran into


def limit(r):
    """What a measurement ran into: the proxy's core, the load core (wrk and the upstream), both,
    or neither (then the exchange's latency: each side waits for the other)."""
    proxy, load = r["proxy_busy"] >= BUSY, r["load_busy"] >= BUSY
    return {(True, True): "both", (True, False): "proxy core", (False, True): "load core",
            (False, False): "latency"}[(proxy, load)]


def verdict(s, o, other, close):
    """Sluice against one contender in one cell, against issue 18's goals: requests/s at least
    1.3x nginx and 1.1x HAProxy with keep-alive, 1.0x with a new connection per request; proxy
    CPU per request at most 0.7x nginx's; load-side CPU per request not above nginx's."""
    misses = []
    need = 1.0 if close else (1.3 if other == "nginx" else 1.1)
    if s["rps"] < need * o["rps"]:
        misses.append(f"req/s < {need}x")
    if other == "nginx":
        if s["cpu_us"] > 0.7 * o["cpu_us"]:
            misses.append("CPU > 0.7x")
        if s["load_us"] > o["load_us"]:
            misses.append("load CPU > 1x")
    return misses


def set_sysctl(name, value):
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path) as f:
        old = f.read().strip()
    with open(path, "w") as f:
        f.write(value)
    return path, old


def build(args):
    if args.no_build:
        return
    subprocess.run(["cargo", "build", "--profile", args.profile, "--quiet", "--bin", "sluice",
                    "--example", "bench_upstream"], cwd=ROOT, check=True)


def cells(args):
    for kind in args.kinds:
        for size in args.sizes:
            for conns in args.connections:
                for mode in args.modes:
                    yield {"kind": kind, "size": size, "connections": conns, "mode": mode,
                           "close": mode == "close"}


def table(results, args):
    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. "
        f"One proxy worker each pinned to CPU {CPU}; wrk (1 thread) and the upstream on CPU {LOAD}; "
        f"{args.duration} s per measurement, median of {args.rounds} interleaved round(s).",
        "",
        f"Command: `python3 bench/matrix.py {' '.join(sys.argv[1:])}`",
        "",
        "Columns: req/s; p50/p99 (µs); proxy CPU µs per request; load-side (other core, whole) CPU "
        "µs per request; proxy system calls per request; context switches per request of the proxy "
        "and of the upstream. Ratios are Sluice's over the contender's (req/s: above 1 is better; "
        "CPU: below 1 is better).",
        "",
        "| upstream | body | conns | reuse | contender | req/s | p50 | p99 | proxy CPU | load CPU | "
        "syscalls | proxy cs | upstream cs | errors | busy proxy/load core | limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    missed = {}
    for cell, label, runs in results:
        for r in runs:
            lines.append(
                f"| {label} | {cell['size_name']} | {cell['connections']} | {cell['mode']} | {r['name']} | "
                f"{r['rps']:.0f} | {r['p50']} | {r['p99']} | {r['cpu_us']:.2f} | {r['load_us']:.2f} | "
                f"{r['syscalls']:.2f} | {r['proxy_cs']:.3f} | {r['upstream_cs']:.3f} | {r['errors']} | "
                f"{r['proxy_busy']:.0%}/{r['load_busy']:.0%} | {r['limit']} |")
        by = {r["name"]: r for r in runs}
        s = by.get("sluice")
        if s:
            parts = []
            for other in ("nginx", "haproxy"):
                o = by.get(other)
                if o and o["rps"] and o["cpu_us"] and o["load_us"]:
                    if max(s["errors"] / max(s["requests"], 1), o["errors"] / max(o["requests"], 1)) > 0.01:
                        # Requests past wrk's timeout or answered with an error count as served:
                        # such a cell says which contender failed, not which is faster.
                        parts.append(f"{other}: not comparable (errors: Sluice {s['errors']}, "
                                     f"{other} {o['errors']})")
                        continue
                    misses = verdict(s, o, other, cell["close"])
                    if misses:
                        missed.setdefault(s["limit"], []).append(
                            f"{label} {cell['size_name']} {cell['connections']} {cell['mode']} vs {other}")
                    parts.append(f"{other}: req/s {s['rps'] / o['rps']:.2f}, CPU {s['cpu_us'] / o['cpu_us']:.2f}, "
                                 f"load CPU {s['load_us'] / o['load_us']:.2f}"
                                 + (f" (missed: {', '.join(misses)})" if misses else " (goals held)"))
            ratios.append(f"- {label}, {cell['size_name']}, {cell['connections']} conns, {cell['mode']}: "
                          + "; ".join(parts) + f"; Sluice's limit: {s['limit']}")
    summary = ["", "Cells where Sluice missed a goal of issue 18 against a contender, by what Sluice's "
               "measurement ran into (a core at 95 % or more, or neither: latency):", ""]
    for what, cells_missed in sorted(missed.items()):
        summary.append(f"- {what}: {len(cells_missed)}: " + "; ".join(cells_missed))
    if not missed:
        summary.append("- none")
    return "\n".join(lines + ["", "Sluice's ratios per cell:", ""] + ratios + summary)



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--connections", default="64,1000,10000")
    ap.add_argument("--modes", default="keepalive,close")
    ap.add_argument("--contenders", default="sluice,nginx,haproxy")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="every kind, 1 KiB, 64 connections, both reuses")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--profile", default="dist",
                    help="cargo profile of the binaries (dist for figures; dev only checks the harness)")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--perf", metavar="DIR",
                    help="record a CPU profile (perf record -g) of the proxy's core and of the load "
                         "core during each measurement into DIR/<cell>-<contender>-{proxy,load}.data")
    ap.add_argument("--sluice-config", action="append", default=[], metavar="NAME=TOML",
                    help="one more Sluice contender, sluice-NAME, with TOML appended to its config "
                         "(e.g. 'nobatch=[uring]\\nbatch_window = \"0us\"'); repeatable")
    ap.add_argument("--sluice-env", action="append", default=[], metavar="NAME=VAR=VALUE",
                    help="one more Sluice contender, sluice-NAME, with VAR=VALUE in its environment "
                         "(e.g. 'nozc=SLUICE_URING_DISABLE=zc'); repeatable")
    ap.add_argument("--sluice-binary", action="append", default=[], metavar="NAME=PATH",
                    help="one more Sluice contender, sluice-NAME, run from another build; repeatable")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.connections = "1k", "64"
    args.kinds = args.kinds.split(",")
    for k in args.kinds:
        if k not in KINDS:
            ap.error(f"--kinds: unknown kind {k!r} (one of {', '.join(KINDS)})")
    for s in args.sizes.split(","):
        if s not in SIZES:
            ap.error(f"--sizes: unknown size {s!r} (one of {', '.join(SIZES)})")
    size_names = args.sizes.split(",")
    args.sizes = [SIZES[s] for s in size_names]
    args.connections = [int(c) for c in args.connections.split(",")]
    args.modes = args.modes.split(",")
    contenders = args.contenders.split(",")

    base.ensure_tools()
    build(args)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    out = os.path.join(target, "debug" if args.profile == "dev" else args.profile)
    binary = os.path.join(out, "sluice")
    upstream_bin = os.path.join(out, "examples", "bench_upstream")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # 10,000 client connections need 10,000 descriptors in wrk and twice that in a proxy at
    # worst; the soft limit goes up to the hard one (raising the hard one needs CAP_SYS_RESOURCE).
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(args.connections) * 2 + 100 > hard:
        print(f"warning: open-file limit {hard} is below what {max(args.connections)} connections "
              "may need in a proxy", file=sys.stderr)
    # A run stopped by SIGTERM or SIGHUP still restores what it changes (the `finally` below):
    # a port range left at 1024-65000 lets client sockets take ports that services and tests
    # listen on (a CI run's etcd could not bind its port).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    restore = [set_sysctl("net.ipv4.tcp_tw_reuse", "1"),
               set_sysctl("net.ipv4.ip_local_port_range", "1024\t65000")]
    tmp = tempfile.mkdtemp(prefix="sluice-matrix-")
    os.chmod(tmp, 0o755)  # nginx's workers (www-data) read the upstream's files from here
    script = os.path.join(tmp, "report.lua")
    with open(script, "w") as f:
        f.write(base.WRK_SCRIPT)
    # nginx and HAProxy run without an access log (bench/run.py), so Sluice does too.
    starters = {"sluice": lambda: base.start_sluice(tmp, binary, access_log=False),
                "nginx": lambda: base.start_nginx(tmp, connections=hard - 100),
                "haproxy": lambda: base.start_haproxy(tmp, maxconn=(hard - 300) // 2)}
    for spec in args.sluice_config:
        name, _, extra = spec.partition("=")
        extra = "\n" + extra.replace("\\n", "\n") + "\n"
        starters["sluice-" + name] = lambda extra=extra: base.start_sluice(tmp, binary, access_log=False,
                                                                         extra=extra)
        contenders.append("sluice-" + name)
    for spec in args.sluice_env:
        name, _, assignment = spec.partition("=")
        var, _, value = assignment.partition("=")
        starters["sluice-" + name] = lambda var=var, value=value: base.start_sluice(
            tmp, binary, access_log=False, env={var: value})
        contenders.append("sluice-" + name)
    for spec in args.sluice_binary:
        name, _, path = spec.partition("=")
        starters["sluice-" + name] = lambda path=path: base.start_sluice(tmp, path, access_log=False)
        contenders.append("sluice-" + name)
    results = []
    try:
        for cell in cells(args):
            cell["size_name"] = size_names[args.sizes.index(cell["size"])]
            upstream, label = start_upstream(tmp, cell["kind"], cell["size"], upstream_bin)
            print(f"{label}, {cell['size_name']}, {cell['connections']} conns, {cell['mode']}", file=sys.stderr)
            try:
                rounds = {name: [] for name in contenders}
                for _ in range(args.rounds):
                    for name in contenders:
                        proc = starters[name]()
                        try:
                            rounds[name].append(measure(name, proc, upstream, cell, args, script))
                        finally:
                            # measure() stops it; a run stopped midway must not leave it behind.
                            if proc.poll() is None:
                                proc.kill()
                                proc.wait()
            finally:
                upstream.terminate()
                upstream.wait()
                time.sleep(0.3)
            runs = []
            for name in contenders:
                ordered = sorted(rounds[name], key=lambda r: r["rps"])
                runs.append(ordered[len(ordered) // 2])
            results.append((cell, label, runs))
    finally:
        for path, old in restore:
            with open(path, "w") as f:
                f.write(old)
    text = table(results, args)
    print(text)
    if args.write_results:
        base.write_section("## Performance matrix (issue 18)", text)


if __name__ == "__main__":
    main()
