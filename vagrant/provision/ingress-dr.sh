#!/usr/bin/env bash
# An ingress node behind the LVS-DR director: the VIP on lo (the director forwards frames with
# the VIP as destination unchanged; Sluice, on the host network, listens on 0.0.0.0 and answers
# the client directly), and no ARP answers for it (only the director owns it on the wire).
set -euo pipefail
: "${VIP:?}"
cat >/etc/sysctl.d/90-lvs-dr.conf <<'SYSCTL'
net.ipv4.conf.all.arp_ignore = 1
net.ipv4.conf.all.arp_announce = 2
net.ipv4.conf.lo.arp_ignore = 1
net.ipv4.conf.lo.arp_announce = 2
SYSCTL
sysctl --system >/dev/null
cat >/etc/systemd/system/lvs-dr-vip.service <<UNIT
[Unit]
Description=LVS-DR: the VIP ${VIP} on lo
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip addr replace ${VIP}/32 dev lo
ExecStop=/sbin/ip addr del ${VIP}/32 dev lo

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now lvs-dr-vip.service
