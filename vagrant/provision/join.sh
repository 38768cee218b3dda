#!/usr/bin/env bash
# A worker or ingress node joins the cluster with the lab's fixed bootstrap token. Ingress
# nodes also get the Sluice image from /sluice/target/image/sluice.tar (built on the host by
# scripts/image.sh and `podman save`), so nothing is pulled for it.
set -euo pipefail
TOKEN=${KUBEADM_TOKEN:-sluice.0lab0token0only0}
CP=${NET:?}.10

if [[ ! -f /etc/kubernetes/kubelet.conf ]]; then
    # Lab only: the CA is not pinned (the token is public in this repository).
    kubeadm join "$CP:6443" --token "$TOKEN" --discovery-token-unsafe-skip-ca-verification \
        --node-name "$(hostname)"
fi
if [[ $(hostname) == ingress* ]]; then
    if [[ -f /sluice/target/image/sluice.tar ]]; then
        ctr -n k8s.io images import /sluice/target/image/sluice.tar
    else
        echo "join.sh: no /sluice/target/image/sluice.tar: build it on the host first (see vagrant/README.md)" >&2
    fi
fi
