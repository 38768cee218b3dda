//! Against a real API server (kind, k3s, minikube, a lab cluster): the flow in
//! `tests/support/real_flow.rs` (apply objects in a throw-away namespace, send traffic through
//! Sluice to an in-process upstream, change the EndpointSlice, check the status Sluice
//! writes). Ignored unless asked for; when asked for without `SLUICE_TEST_KUBECONFIG` it fails
//! (it does not pass silently):
//!
//! ```sh
//! SLUICE_TEST_KUBECONFIG=~/.kube/config cargo test --test k8s_real -- --ignored
//! ```
//!
//! The cluster must accept an EndpointSlice address of 127.0.0.1 (the upstream runs here).

mod support;

#[test]
#[ignore = "needs a real API server: set SLUICE_TEST_KUBECONFIG"]
fn against_a_real_api_server() {
    let Some(kubeconfig) = std::env::var_os("SLUICE_TEST_KUBECONFIG") else {
        panic!("SLUICE_TEST_KUBECONFIG is not set: this test needs a real API server");
    };
    support::real_flow::run(std::path::Path::new(&kubeconfig));
}
