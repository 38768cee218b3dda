//! The io_uring engine: a [`Transport`](crate::engine::driver::Transport) over one ring per
//! worker. `ring` is the kernel edge (the ring, provided receive buffers, completion tokens,
//! the socket system calls); `worker` is the adapter that turns completions into driver
//! events and the driver's sends, connects and closes into submissions, and runs the loop;
//! `tuning` is the ring's sizes from the config.

pub mod batch;
mod ring;
pub mod tuning;
pub(crate) mod worker;

pub use ring::*;
