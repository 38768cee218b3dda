# Sourced by .ci/run before `cargo test` (`source .ci/k8s.sh`): installs what the real
# Kubernetes API server needs, starts it (../shared/k8s/up.sh, beside the clone), and exports
# SLUICE_TEST_KUBECONFIG so `cargo test` runs the real-server suite (tests/k8s_real.rs) instead
# of skipping it; SLUICE_REQUIRE_K8S=1 makes a missing server a failure, not a skip. The tests
# that stop the server or need other flags (outage, 410 Gone) start private instances with the
# same scripts on other ports. The server is stopped when .ci/run exits.
# Also runnable on its own: `bash .ci/k8s.sh` starts the server and runs only tests/k8s_real.rs.

k8s_install() {
    local missing=()
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

k8s_up() {
    local scripts
    scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../shared/k8s" && pwd) || {
        echo "k8s: ../shared/k8s (the API server scripts) is not beside the clone" >&2
        return 1
    }
    SLUICE_K8S_SCRIPTS=$scripts
    SLUICE_TEST_KUBECONFIG=$("$scripts/up.sh")
    SLUICE_REQUIRE_K8S=1
    export SLUICE_K8S_SCRIPTS SLUICE_TEST_KUBECONFIG SLUICE_REQUIRE_K8S
    echo "k8s: real API server up, SLUICE_TEST_KUBECONFIG=$SLUICE_TEST_KUBECONFIG"
    trap '"$SLUICE_K8S_SCRIPTS/down.sh" --wipe' EXIT
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Run on its own.
    set -euo pipefail
    cd "$(dirname "$0")/.."
    k8s_install
    k8s_up
    cargo test --test k8s_real
else
    if declare -F step >/dev/null; then
        step "kubernetes: install" k8s_install
        step "kubernetes: start the real API server" k8s_up
    else
        k8s_install
        k8s_up
    fi
fi
