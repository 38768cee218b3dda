//! The Kubernetes source against a real API server (kube-apiserver v1.28 + etcd from
//! `../shared/k8s/`, which CI starts and exports as `SLUICE_TEST_KUBECONFIG`): pods live in a
//! network namespace the test makes (a real API server refuses loopback endpoint addresses),
//! traffic goes through Sluice's real engine to them. Without the variable a test says it was
//! skipped (and fails in CI):
//!
//! ```sh
//! export SLUICE_TEST_KUBECONFIG=$(../shared/k8s/up.sh)
//! cargo test --test k8s_real
//! ```
//!
//! Needs root (network namespaces). The tests that stop the API server or need other flags
//! (outage, 410 Gone) start a private instance of their own on other ports.
// Wall-clock instants only bound waits; nothing here asserts on speed.
#![allow(clippy::disallowed_methods)]

mod support;

use support::real_flow::real_kubeconfig;

#[test]
fn routes_status_and_endpoints_follow_a_real_api_server() {
    let Some(kubeconfig) = real_kubeconfig("routes_status_and_endpoints_follow_a_real_api_server")
    else {
        return;
    };
    support::real_flow::run(&kubeconfig);
}
