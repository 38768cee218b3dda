#!/usr/bin/env bash
# The director: keepalived holds the VIP by VRRP and programs IPVS (LVS) virtual servers for
# :80 and :443 in direct-routing mode to the two ingress nodes, each health-checked with
# GET /readyz on :10254 (Sluice fails it when it starts draining, before it stops accepting).
# A second director with the same script and priority 90 (DIRECTOR_PRIORITY) takes the VIP
# over if this one fails.
set -euo pipefail
: "${VIP:?}" "${NET:?}"
export DEBIAN_FRONTEND=noninteractive
PRIORITY=${DIRECTOR_PRIORITY:-100}
STATE=MASTER
[[ $PRIORITY -lt 100 ]] && STATE=BACKUP
IFACE=$(ip -o -4 addr show | awk -v net="$NET." 'index($4, net) == 1 {print $2; exit}')

apt-get update -qq
apt-get install -y -qq keepalived ipvsadm >/dev/null
modprobe ip_vs
echo ip_vs >/etc/modules-load.d/ipvs.conf

real_servers() {
    local port=$1 ip
    for ip in "$NET.11" "$NET.12"; do
        cat <<RS
    real_server $ip $port {
        weight 1
        HTTP_GET {
            url {
                path /readyz
                status_code 200
            }
            connect_port 10254
            connect_timeout 1
            retry 1
            delay_before_retry 1
        }
    }
RS
    done
}

virtual_server() {
    local port=$1
    cat <<VS
virtual_server $VIP $port {
    delay_loop 1
    lb_algo wlc
    lb_kind DR
    protocol TCP
$(real_servers "$port")
}
VS
}

cat >/etc/keepalived/keepalived.conf <<CONF
global_defs {
    router_id sluice-director
}

vrrp_instance sluice_vip {
    state $STATE
    interface $IFACE
    virtual_router_id 51
    priority $PRIORITY
    advert_int 1
    authentication {
        auth_type PASS
        auth_pass sluicelb
    }
    virtual_ipaddress {
        $VIP/24 dev $IFACE
    }
}

$(virtual_server 80)

$(virtual_server 443)
CONF
systemctl enable keepalived
systemctl restart keepalived
