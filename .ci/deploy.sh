#!/usr/bin/env bash
# CI for the deployable parts (issue 14): builds the shipped binary once (`dist` profile,
# fat LTO), validates the manifests against the Kubernetes OpenAPI schemas, builds the
# container image with buildah and runs it with podman (200 through it, under Sluice's
# seccomp profile; the default profile's refusal checked), runs the HA tier lab in network
# namespaces (steady / drain / kill), and checks the Vagrant lab's scripts (shellcheck) and
# Vagrantfile (ruby -c). Runs as root on a fresh Debian machine; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() {
    local name=$1
    shift
    local start=$SECONDS
    echo "==> $name"
    "$@"
    echo "<== $name: $((SECONDS - start)) s"
}

# apt waits for another apt (unattended-upgrades on a fresh machine) instead of failing.
install_tools() {
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # buildah/podman (+ runc: Debian 12's crun refuses cgroup-hybrid hosts), setcap for the
    # image's file capability, curl for the checks, wrk/haproxy/nginx/iproute2 for the lab,
    # the Vagrant lab's checks (the linter and ruby), gcc for aws-lc-rs.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        buildah podman runc golang-github-containers-common uidmap libcap2-bin curl \
        ca-certificates wrk haproxy nginx-light iproute2 shellcheck ruby gcc libc6-dev >/dev/null
}

build_dist() {
    cargo build --profile dist --bin sluice --quiet
    ls -l target/dist/sluice
}

check_vagrant() {
    shellcheck scripts/*.sh vagrant/*.sh vagrant/provision/*.sh .ci/deploy.sh
    ruby -c vagrant/Vagrantfile
}

step "install tools (deploy)" install_tools
step "cargo build --profile dist" build_dist
step "validate manifests (kubernetes-validate, strict)" scripts/validate-manifests.sh
step "container image (buildah, podman)" env SLUICE_BIN=target/dist/sluice scripts/image.sh
step "HA tier lab (network namespaces)" python3 lab/ha_lab.py --sluice target/dist/sluice
step "vagrant lab: shellcheck, ruby -c" check_vagrant
