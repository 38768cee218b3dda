#!/usr/bin/env bash
# The control plane: kubeadm init on the private network with the lab's fixed bootstrap
# token (so the other nodes join without a file passed between machines), flannel.
set -euo pipefail
: "${NODE_IP:?}"
TOKEN=${KUBEADM_TOKEN:-sluice.0lab0token0only0}
POD_CIDR=10.244.0.0/16

if [[ ! -f /etc/kubernetes/admin.conf ]]; then
    kubeadm init --apiserver-advertise-address "$NODE_IP" --pod-network-cidr "$POD_CIDR" \
        --token "$TOKEN" --token-ttl 0 --node-name cp
fi
mkdir -p /root/.kube /home/vagrant/.kube
cp /etc/kubernetes/admin.conf /root/.kube/config
cp /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown -R vagrant: /home/vagrant/.kube
export KUBECONFIG=/etc/kubernetes/admin.conf

# flannel, told to use the private network's interface (eth0 is Vagrant's NAT).
curl -fsSL https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml |
    sed "s|- --kube-subnet-mgr|- --kube-subnet-mgr\n        - --iface-can-reach=${NODE_IP}|" |
    kubectl apply -f -
