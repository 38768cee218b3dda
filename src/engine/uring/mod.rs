//! The io_uring engine: a [`Transport`](crate::engine::driver::Transport) over one ring per
//! worker. `ring` is the kernel edge (the ring, provided receive buffers, completion tokens,
//! the socket system calls); `worker` is the adapter that turns completions into driver
//! events and the driver's sends, connects and closes into submissions, and runs the loop;
//! `tuning` is the ring's sizes from the config; `pass` moves large bodies from socket to
//! socket inside the kernel.

pub mod batch;
mod pass;
mod ring;
pub mod tuning;
pub(crate) mod worker;

pub use ring::*;
