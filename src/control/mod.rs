//! The control side: turns Kubernetes objects (from the cluster or from YAML files) into
//! immutable route snapshots. Pure compilation lives in `compile` (driven by `incremental`);
//! both sources (`files`, `watch`) hand their objects to the one update `pipeline`, which
//! compiles, publishes and waits for the workers on its own thread.

pub mod annotations;
pub mod catalog;
pub mod certs;
pub mod class;
pub mod compile;
pub mod files;
pub mod health_check;
pub mod incremental;
pub mod leader;
pub mod manifests;
pub mod migrate;
pub mod pipeline;
pub mod report;
pub mod request_annotations;
pub mod status;
pub mod watch;
