//! The control side: turns Kubernetes objects (from the cluster or from YAML files) into
//! immutable route snapshots. Pure compilation lives in `compile`; I/O lives elsewhere.

pub mod annotations;
pub mod certs;
pub mod class;
pub mod compile;
pub mod files;
pub mod incremental;
pub mod leader;
pub mod manifests;
pub mod pipeline;
pub mod report;
pub mod status;
pub mod watch;
