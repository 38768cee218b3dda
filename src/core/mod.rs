//! Sans-IO protocol core: no sockets, no rings, no clocks, no threads.
//!
//! Time and bytes are passed in; actions come out. Both engines (io_uring and the userspace
//! stack) drive this same code. Nothing here may import `engine`, `worker`, `control`, tokio,
//! io-uring, smoltcp or kube (enforced by `tests/layering.rs`).

pub mod conn;
pub mod error;
pub mod http1;
pub mod route;
pub mod time;
pub mod tls;
pub mod upstream;
