#!/usr/bin/env python3
"""Summarises the CPU profiles that `bench/matrix.py --perf DIR` records: for every measurement
(cell x contender), the microseconds per request each core spent, by process, and the symbols
that cost most per request. Per request, so that contenders that served different numbers of
requests compare: the load core's time is what wrk, the upstream and the kernel work they cause
cost for each request the proxy forwarded.

Usage: python3 bench/profile_summary.py DIR [--top 8] [--match static-1k-64]
Needs perf. Samples are cpu-clock periods (nanoseconds). The idle task (`swapper`) is left
out: on this project's VM, perf's sampling finds a loaded core idle more often than the
kernel's own accounting in /proc/stat does (a load core at 99-100 % busy there showed 20-25 %
idle samples), so the cores' busy shares come from the matrix (/proc/stat), and the profiles
say what the busy time was spent on.
"""

import argparse
import glob
import json
import os
import subprocess
import sys


def rows(data, sort):
    """(nanoseconds, key columns) for each line of a flat perf report sorted by `sort`."""
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                          "-g", "none", "--show-total-period"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1].isdigit():
            yield int(parts[1]), parts[2:]


def summary(stem, top):
    with open(stem + ".json") as f:
        meta = json.load(f)
    n = max(meta["requests"], 1)
    c = meta["cell"]
    lines = [f"#### {c['kind']} {c['size_name']}, {c['connections']} conns, {c['mode']}: "
             f"{meta['contender']}",
             "",
             f"{meta['rps']:.0f} req/s; proxy CPU {meta['cpu_us']:.2f} µs/req, load core "
             f"{meta['load_us']:.2f} µs/req; cores busy {meta['proxy_busy']:.0%} (proxy) / "
             f"{meta['load_busy']:.0%} (load): {meta['limit']}",
             ""]
    for core in ("proxy", "load"):
        data = f"{stem}-{core}.data"
        if not os.path.exists(data):
            continue
        by_comm = [(ns / 1e3 / n, key[0]) for ns, key in rows(data, "comm") if key[0] != "swapper"]
        lines.append(f"- {core} core, µs per request by process: " + ", ".join(
            f"{comm} {us:.2f}" for us, comm in by_comm if us >= 0.05))
        syms = [(ns / 1e3 / n, key) for ns, key in rows(data, "comm,sym")
                if key[0] != "swapper"][:top]
        lines.append(f"- {core} core, top symbols (µs per request): " + "; ".join(
            f"{key[0]} {key[-1]} {us:.2f}" for us, key in syms))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--match", default="", help="only measurements whose file name contains this")
    args = ap.parse_args()
    stems = sorted(p[:-5] for p in glob.glob(os.path.join(args.dir, "*.json")) if args.match in p)
    if not stems:
        sys.exit(f"no measurements in {args.dir} (record them with bench/matrix.py --perf)")
    print("\n\n".join(summary(s, args.top) for s in stems))


if __name__ == "__main__":
    main()
