#!/usr/bin/env bash
# After `vagrant up`: deploys Sluice and the sample apps on the lab cluster, then prints the
# VIP and a curl through it, and runs that curl from this machine.
set -euo pipefail
cd "$(dirname "$0")"
VIP=192.168.56.100
vagrant ssh cp -c "sudo bash /sluice/vagrant/provision/deploy.sh"
echo
echo "VIP: $VIP (keepalived on the director, LVS-DR to ingress1 and ingress2)"
echo "Try: curl -H 'Host: hello.lab' http://$VIP/"
for _ in $(seq 1 30); do
    if curl -fsS -m 2 -H 'Host: hello.lab' "http://$VIP/"; then
        exit 0
    fi
    sleep 2
done
echo "lab.sh: no answer through the VIP yet; see vagrant/README.md (troubleshooting)" >&2
exit 1
