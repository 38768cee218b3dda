#!/usr/bin/env bash
# Run on the control plane (vagrant/lab.sh does): labels and taints the ingress nodes,
# applies manifests/ and the sample apps, waits for Sluice to be ready on both ingress nodes.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf
kubectl wait --for=condition=Ready node --all --timeout=600s
for n in ingress1 ingress2; do
    kubectl label node "$n" node-role.kubernetes.io/ingress=true --overwrite
    kubectl taint node "$n" node-role.kubernetes.io/ingress=true:NoSchedule --overwrite
done
kubectl apply -f /sluice/manifests/
kubectl apply -f /sluice/vagrant/apps.yaml
kubectl -n sluice rollout status daemonset/sluice --timeout=600s
kubectl -n lab rollout status deployment/hello --timeout=600s
kubectl get nodes -o wide
kubectl -n sluice get pods -o wide
