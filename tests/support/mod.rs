//! Helpers shared by the integration tests (the one helper folder): `binary` (a `sluice run`
//! process), `netns` (a network
//! namespace with a TAP or veth link for the userspace engine), `mock_api` (a mock Kubernetes
//! API server) and `real_flow` (the end-to-end flow against any API server), `tls`
//! (certificates, Secrets and a rustls client). Each test binary
//! uses part of it.
#![allow(dead_code)]

pub mod binary;
pub mod mock_api;
pub mod netns;
pub mod real_flow;
pub mod tls;
