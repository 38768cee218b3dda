//! Sans-IO protocol core: no sockets, no rings, no clocks, no threads.
//!
//! Time and bytes are passed in; actions come out. Both engines (io_uring and the userspace
//! stack) drive this same code through the engine's driver. Dependencies point one way:
//! `host` ← `route`, `tls` ← `snapshot` (what the control thread publishes) ← `upstream`
//! (pickers, the worker's router); `conn` sees routing only through the `route::Router`
//! trait. Nothing here may import `engine`, `control`, `admin`, tokio, io-uring, smoltcp or
//! kube (enforced by `tests/layering.rs`).

pub mod client_addr;
pub mod conn;
pub mod error;
pub mod host;
pub mod http1;
pub mod proxy_protocol;
pub mod request_id;
pub mod route;
pub mod snapshot;
pub mod time;
pub mod tls;
pub mod tls_client;
pub mod upstream;
