//! Helpers shared by the integration tests (the one helper folder): `binary` (a `sluice run`
//! process), `netns` (a network
//! namespace with a TAP or veth link for the userspace engine), `pods` (in-process upstream
//! pods on 127.0.0.1..=n), `mock_api` (a mock Kubernetes
//! API server) and `real_flow` (the end-to-end flow against any API server), `tls`
//! (certificates, Secrets and a rustls client). Each test binary
//! uses part of it.
#![allow(dead_code)]

pub mod binary;
pub mod mock_api;
pub mod netns;
pub mod pods;
pub mod real_flow;
pub mod tls;
