#!/usr/bin/env python3
"""Updates at scale: 10,000 Ingresses with 10 hosts each (100,000 hosts) in 100 manifest files,
1,000 Services. Starts `sluice run` on that directory, then rewrites one file at a time and
reads the change -> all-workers propagation times from /metrics.

Usage: python3 bench/churn/scale.py [--changes 20]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HTTP, ADMIN = 18090, 18091
FILES, PER_FILE, HOSTS, SERVICES = 100, 100, 10, 1000


def ingress_file(f, generation):
    out = []
    for i in range(PER_FILE):
        n = f * PER_FILE + i
        svc = n % SERVICES
        rules = "".join(
            f"  - host: h{h}-{n}-g{generation}.example.com\n"
            f"    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: s{svc}, port: {{number: 80}}}}}}}}]}}\n"
            for h in range(HOSTS))
        out.append(f"apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i{n}, namespace: default}}\n"
                   f"spec:\n  ingressClassName: sluice\n  rules:\n{rules}")
    return "---\n".join(out)


def services_file():
    out = []
    for s in range(SERVICES):
        out.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n"
                   f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{s}-1, namespace: default, "
                   f"labels: {{kubernetes.io/service-name: s{s}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\n"
                   f"endpoints: [{{addresses: [\"10.{s // 250}.{s % 250}.1\"]}}, {{addresses: [\"10.{s // 250}.{s % 250}.2\"]}}]\n")
    return "---\n".join(out)


def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def metrics():
    return urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=10).read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--profile", "dist", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "dist", "sluice")
    d = tempfile.mkdtemp(prefix="sluice-scale-")
    write(os.path.join(d, "services.yaml"), services_file())
    for f in range(FILES):
        write(os.path.join(d, f"ingresses-{f:03}.yaml"), ingress_file(f, 0))
    t0 = time.time()
    p = subprocess.Popen([binary, "run", "--manifests", d, "--workers", "2", "--http", f"127.0.0.1:{HTTP}",
                          "--admin", f"127.0.0.1:{ADMIN}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.05)
    startup = time.time() - t0
    for c in range(1, args.changes + 1):
        f = c % FILES
        write(os.path.join(d, f"ingresses-{f:03}.yaml"), ingress_file(f, c))
        time.sleep(1.5)
    text = metrics()
    q = {m.group(1): float(m.group(2)) * 1e3 for m in
         re.finditer(r'sluice_snapshot_propagation_quantile_seconds\{quantile="([0-9.]+)"\} ([0-9.e+-]+)', text)}
    count = re.search(r"sluice_snapshot_propagation_seconds_count (\d+)", text).group(1)
    with open(f"/proc/{p.pid}/status") as fh:
        rss = [l for l in fh if l.startswith("VmRSS")][0].split()[1]
    p.terminate()
    p.wait()
    print(f"100 files, 10,000 Ingresses, 100,000 hosts, 1,000 Services; 2 workers.\n"
          f"Startup to ready: {startup:.2f} s. RSS after the changes: {int(rss) // 1024} MiB.\n"
          f"One file (100 Ingresses, 1,000 hosts) rewritten {args.changes} times, 1.5 s apart; change -> all workers "
          f"({count} samples): p50 {q['0.5']:.0f} ms, p99 {q['0.99']:.0f} ms, max {q['1']:.0f} ms.")


if __name__ == "__main__":
    main()
