//! Sluice: a thread-per-core ingress appliance for Kubernetes.
//!
//! `core` is sans-IO protocol logic (bytes and time in, actions out); `control` turns
//! Kubernetes objects into immutable route snapshots. See `ARCHITECTURE.md` in the shared design.
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod control;
pub mod core;
pub mod demo;
pub mod engine;
