#!/usr/bin/env bash
# Validates every manifest against the Kubernetes OpenAPI schemas, strictly (an unknown or
# misspelled field fails), with kubernetes-validate from PyPI (it ships the schemas: no
# network at validation time): manifests/*.yaml, and the DaemonSet with the userspace overlay
# (manifests/userspace/daemonset-patch.yaml) merged in. Also checks that the DaemonSet's image
# tag is the crate version. Versions: 1.30 (the oldest with the preStop `sleep` action the
# DaemonSet uses) and the newest the tool knows.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SLUICE_VALIDATE_VENV:-target/validate-venv}
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'kubernetes-validate==1.37.0'
fi
overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
"$VENV/bin/python" - "$overlay/40-daemonset-userspace.yaml" <<'PY'
# The strategic merge kubectl does for this patch: containers merged by name, lists of
# scalars replaced, maps merged.
import sys, yaml
base = yaml.safe_load(open("manifests/40-daemonset.yaml"))
patch = yaml.safe_load(open("manifests/userspace/daemonset-patch.yaml"))
def merge(b, p):
    if isinstance(b, dict) and isinstance(p, dict):
        for k, v in p.items():
            b[k] = merge(b.get(k), v) if k in b else v
        return b
    if isinstance(b, list) and isinstance(p, list) and p and isinstance(p[0], dict) and "name" in p[0]:
        by = {x["name"]: x for x in b}
        for x in p:
            if x["name"] in by:
                merge(by[x["name"]], x)
            else:
                b.append(x)
        return b
    return p
merged = merge(base, patch)
c = merged["spec"]["template"]["spec"]["containers"][0]
assert "userspace" in c["args"], c["args"]
assert set(c["securityContext"]["capabilities"]["add"]) == {"NET_BIND_SERVICE", "NET_ADMIN", "NET_RAW", "BPF"}
yaml.safe_dump(merged, open(sys.argv[1], "w"))
PY
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
grep -q "image: localhost/sluice:$version\$" manifests/40-daemonset.yaml ||
    { echo "validate-manifests: the DaemonSet's image is not localhost/sluice:$version" >&2; exit 1; }
status=0
for k in 1.30.0 1.37.0; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$k" manifests/*.yaml \
        "$overlay/40-daemonset-userspace.yaml" vagrant/apps.yaml || status=1
done
if [[ $status == 0 ]]; then
    echo "validate-manifests: $(find manifests -maxdepth 1 -name "*.yaml" | wc -l) files, the userspace overlay and vagrant/apps.yaml valid against Kubernetes 1.30 and 1.37 (strict)"
fi
exit $status
