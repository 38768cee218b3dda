#!/usr/bin/env python3
"""Route churn under constant load, measured by JMeter and by Locust: Sluice vs nginx vs
HAProxy, one after the other in one run, each tool's error rate read from its own result files.

    python3 bench/loadtest/run.py [--tool locust|jmeter|both] [--duration 30] [--every 1]
                                  [--users 16] [--write-results]

Per contender: the same two nginx upstreams and the same route changes as bench/churn/run.py
(its configuration functions are reused): every --every seconds the endpoint set of the routes
alternates between upstream 0, upstream 1 and both, and an extra host comes and goes.
  * Sluice: the manifests directory is rewritten (atomic rename); nothing reloads.
  * nginx: its config is rewritten and `nginx -s reload` (SIGHUP).
  * HAProxy: its config is rewritten and the master re-executes the workers (SIGUSR2).
The load: --users keep-alive clients alternating two hosts, main.test (a named route) and
other.test (the default backend), without think time, for --duration seconds.
  * Locust (PyPI `locust`, FastHttpUser): bench/loadtest/locustfile.py, `--headless -u -r -t
    --csv`; errors from its *_stats.csv "Aggregated" row (Failure Count / Request Count).
  * JMeter (Debian `jmeter` + `jmeter-http`): bench/loadtest/two-hosts.jmx, `-n -l out.jtl`;
    errors from the .jtl's `success` column.
Tools are looked up on PATH; LOCUST=/path/to/locust and JMETER=/path/to/jmeter override.
The proxy runs on CPU 0, the tool and the upstreams on CPU 1 (taskset).
"""

import argparse
import csv
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import run as base  # noqa: E402  bench/run.py: tool lookup, wait_port
import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("churn", os.path.join(os.path.dirname(HERE), "churn", "run.py"))
churn = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(churn)

# Ports of its own (bench/churn/run.py's functions read these module globals), so that a churn
# benchmark running at the same time on this machine's loopback cannot answer our requests.
churn.UP = [18300, 18301]
churn.PROXY = PROXY = 18380
churn.ADMIN = ADMIN = 18381


def locust_cmd(args, tmp, name):
    exe = os.environ.get("LOCUST") or shutil.which("locust")
    prefix = os.path.join(tmp, f"locust-{name}")
    cmd = [exe, "-f", os.path.join(HERE, "locustfile.py"), "--headless", "-u", str(args.users),
           "-r", str(args.users), "-t", f"{args.duration}s", "--host", f"http://127.0.0.1:{PROXY}",
           "--csv", prefix, "--only-summary", "--stop-timeout", "5", "--loglevel", "WARNING"]
    return cmd, prefix


def locust_result(prefix):
    with open(prefix + "_stats.csv") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return int(row["Request Count"]), int(row["Failure Count"])
    raise RuntimeError("no Aggregated row in " + prefix + "_stats.csv")


DEBIAN_JMETER = "/usr/share/jmeter/bin/ApacheJMeter.jar"


def jmeter_exe(tmp):
    """JMETER=path, else Debian's JMeter 2.13 through DebianJMeter.java (see there), else PATH."""
    if os.environ.get("JMETER"):
        return [os.environ["JMETER"]]
    if os.path.exists(DEBIAN_JMETER) and shutil.which("javac"):
        classes = os.path.join(tmp, "jmeter-launcher")
        if not os.path.exists(os.path.join(classes, "DebianJMeter.class")):
            subprocess.run(["javac", "-cp", DEBIAN_JMETER, "-d", classes,
                            os.path.join(HERE, "DebianJMeter.java")], check=True)
        return ["java", "-cp", f"{classes}:{DEBIAN_JMETER}", "-Djmeter.home=/usr/share/jmeter", "DebianJMeter"]
    return [shutil.which("jmeter")]


def jmeter_cmd(args, tmp, name):
    jtl = os.path.join(tmp, f"jmeter-{name}.jtl")
    cmd = [*jmeter_exe(tmp), "-n", "-t", os.path.join(HERE, "two-hosts.jmx"), "-l", jtl, "-j", jtl + ".log",
           f"-Jport={PROXY}", f"-Jthreads={args.users}", f"-Jduration={args.duration}",
           "-Jjmeter.save.saveservice.output_format=csv",
           "-Jjmeter.save.saveservice.print_field_names=true"]
    return cmd, jtl


def jmeter_result(jtl):
    """Samples and failed samples from the .jtl (CSV; the `success` column, the 8th by default)."""
    total = failed = 0
    with open(jtl) as f:
        rows = list(csv.reader(f))
    column = 7
    if rows and rows[0] and rows[0][0] == "timeStamp":
        column = rows[0].index("success")
        rows = rows[1:]
    for row in rows:
        total += 1
        if row[column].strip().lower() != "true":
            failed += 1
    return total, failed


def run_tool(tool, args, tmp, name, apply_change):
    """Runs one tool for --duration while the routes change every --every seconds."""
    if tool == "locust":
        cmd, out = locust_cmd(args, tmp, name)
    else:
        cmd, out = jmeter_cmd(args, tmp, name)
    load = subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, f"{tool}-{name}.stderr"), "w"))
    changes = 0
    start = time.time()
    while load.poll() is None and time.time() - start < args.duration:
        time.sleep(args.every)
        changes += 1
        apply_change(changes)
    load.wait(timeout=args.duration + 120)
    total, failed = locust_result(out) if tool == "locust" else jmeter_result(out)
    return {"tool": tool, "name": name, "requests": total, "failed": failed, "changes": changes,
            "seconds": args.duration}


def contenders(binary, tmp):
    """(name, start() -> (process, apply_change), stop(process))."""
    mdir = os.path.join(tmp, "manifests")
    os.makedirs(mdir, exist_ok=True)
    sconf = os.path.join(tmp, "sluice.toml")
    with open(sconf, "w") as f:
        f.write(f'workers = [0]\n[listen]\nhttp = "127.0.0.1:{PROXY}"\nadmin = "127.0.0.1:{ADMIN}"\n'
                f'https = "127.0.0.1:{PROXY + 10}"\n[sources]\nmanifests = "{mdir}"\n')

    def sluice():
        churn.write_atomic(os.path.join(mdir, "routes.yaml"), churn.sluice_routes(0))
        p = subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", sconf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return p, lambda c: churn.write_atomic(os.path.join(mdir, "routes.yaml"), churn.sluice_routes(c))

    nconf = os.path.join(tmp, "nginx.conf")

    def nginx():
        with open(nconf, "w") as f:
            f.write(churn.nginx_conf(tmp, 0))
        p = subprocess.Popen(["taskset", "-c", "0", base.tool("nginx"), "-c", nconf, "-p", tmp, "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def change(c):
            with open(nconf, "w") as f:
                f.write(churn.nginx_conf(tmp, c))
            p.send_signal(signal.SIGHUP)
        return p, change

    hconf = os.path.join(tmp, "haproxy.cfg")

    def haproxy():
        with open(hconf, "w") as f:
            f.write(churn.haproxy_conf(0))
        p = subprocess.Popen(["taskset", "-c", "0", base.tool("haproxy"), "-W", "-db", "-f", hconf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def change(c):
            with open(hconf, "w") as f:
                f.write(churn.haproxy_conf(c))
            p.send_signal(signal.SIGUSR2)
        return p, change

    stops = {"sluice": signal.SIGTERM, "nginx": signal.SIGQUIT, "haproxy": signal.SIGTERM}
    return [(n, f, stops[n]) for n, f in (("sluice", sluice), ("nginx", nginx), ("haproxy", haproxy))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", choices=["locust", "jmeter", "both"], default="both")
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between route changes")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--only", help="comma-separated contenders (sluice,nginx,haproxy)")
    ap.add_argument("--sluice", help="use this binary instead of building the dist profile")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    tools = ["locust", "jmeter"] if args.tool == "both" else [args.tool]
    for t in tools:
        exe = os.environ.get(t.upper()) or shutil.which(t)
        if not exe:
            sys.exit(f"loadtest: {t} not found (pip install locust / apt-get install jmeter jmeter-http)")
    base.ensure_tools()
    if args.sluice:
        binary = os.path.abspath(args.sluice)
    else:
        subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    tmp = tempfile.mkdtemp(prefix="sluice-loadtest-")
    ups = churn.start_upstreams(tmp)
    results = []
    only = set(args.only.split(",")) if args.only else None
    try:
        for tool in tools:
            for name, start, stop in contenders(binary, tmp):
                if only and name not in only:
                    continue
                p, change = start()
                base.wait_port(PROXY)
                try:
                    r = run_tool(tool, args, tmp, name, change)
                finally:
                    p.send_signal(stop)
                    p.wait(timeout=60)
                    time.sleep(0.5)
                rate = 100.0 * r["failed"] / r["requests"] if r["requests"] else float("nan")
                r["rate"] = rate
                print(f"{tool:>6} {name:<8} requests {r['requests']:>8} failed {r['failed']:>6} "
                      f"error rate {rate:.3f} % ({r['changes']} route changes)", file=sys.stderr)
                results.append(r)
    finally:
        for u in ups:
            u.terminate()
            u.wait()

    lines = [
        f"Date: {datetime.date.today()}. Machine: {os.cpu_count()} vCPU, {os.uname().release}. Each contender: one "
        f"worker on CPU 0; the load tool and two nginx upstreams on CPU 1; {args.users} keep-alive users alternating "
        f"hosts main.test and other.test for {args.duration} s; a route change every {args.every:g} s "
        f"(bench/churn/run.py's changes: endpoint set rotates, an extra host comes and goes).",
        "",
        f"Command: `python3 bench/loadtest/run.py --tool {args.tool} --duration {args.duration} "
        f"--every {args.every:g} --users {args.users}`",
        "",
        "| tool | contender | route changes | requests | failed | error rate |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['tool']} | {r['name']} | {r['changes']} | {r['requests']} | {r['failed']} | "
                     f"{r['rate']:.3f} % |")
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        path = os.path.join(ROOT, "bench", "RESULTS.md")
        with open(path) as f:
            existing = f.read()
        existing = existing.rstrip() + "\n\n### Run: " + ", ".join(tools) + "\n\n" + text + "\n"
        with open(path, "w") as f:
            f.write(existing)


if __name__ == "__main__":
    main()
