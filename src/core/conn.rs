//! The per-connection proxy state machine: bytes and time in, actions out.
//!
//! An engine owns the sockets and drives one [`Conn`] per accepted client connection:
//!
//! * it feeds events: [`Conn::client_data`], [`Conn::client_eof`], [`Conn::upstream_connected`],
//!   [`Conn::upstream_data`], [`Conn::upstream_eof`], [`Conn::timer`], …
//! * it drains requests with [`Conn::poll_action`] (connect to an endpoint, release the upstream
//!   connection, close) until `None`;
//! * it takes output buffers with [`Conn::take_client_output`] / [`Conn::take_upstream_output`]
//!   and hands them back, with how much was written, to [`Conn::client_sent`] /
//!   [`Conn::upstream_sent`]; a buffer handed out is owned by the engine (the kernel may still
//!   be reading it) until it comes back;
//! * it reads from a socket only while [`Conn::wants_client_read`] / [`Conn::wants_upstream_read`]
//!   say so (that is the backpressure), and arms one timer at [`Conn::deadline`].
//!
//! The machine never blocks, never reads a clock and never allocates per byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::core::http1::Limits;
use crate::core::route::Router;
use crate::core::time::Instant;

/// Timeouts of one connection. Defaults follow what ingress-nginx users are used to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end → 408 and close.
    pub request_head: Duration,
    /// Idle keep-alive connection between requests → close (silently).
    pub keep_alive: Duration,
    /// Establishing the upstream connection → 502 (nginx answers 504 on connect timeout; we
    /// follow it: 504).
    pub upstream_connect: Duration,
    /// From the request being sent to the first byte of the response head → 504.
    pub upstream_response: Duration,
    /// No progress in either direction while a body streams → close.
    pub body_idle: Duration,
    /// After an error response, how long we keep reading (and discarding) what the client still
    /// sends so the response is not destroyed by a TCP reset.
    pub linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_head: Duration::from_secs(10),
            keep_alive: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            body_idle: Duration::from_secs(60),
            linger: Duration::from_secs(5),
        }
    }
}

/// `X-Forwarded-Proto` of a listener.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Settings shared by every connection of a listener (one `Arc` per worker).
#[derive(Clone, Debug)]
pub struct ConnConfig {
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Capacity of each direction's buffer; reading stops when it is full (backpressure).
    pub buffer_size: usize,
    pub scheme: Scheme,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            buffer_size: 32 * 1024,
            scheme: Scheme::Http,
        }
    }
}

/// Addresses of an accepted connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// What the machine asks its engine to do. Drained with [`Conn::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Get an upstream connection to `endpoint` and report back with
    /// [`Conn::upstream_connected`] or [`Conn::upstream_connect_failed`]. With `fresh`, the
    /// connection must be new (not from the keep-alive pool): a pooled one just failed.
    Connect { endpoint: SocketAddr, fresh: bool },
    /// The machine is done with its upstream connection: back to the pool when `reusable`,
    /// otherwise close it.
    ReleaseUpstream { reusable: bool },
    /// One request/response exchange finished with this status (for metrics and logs).
    Completed { status: u16 },
    /// All output is flushed: shut down the client's write side (FIN) and keep reading.
    ShutdownClientWrite,
    /// Close the client connection now. The machine is finished.
    CloseClient,
}

/// One client connection and, while a request is in flight, its upstream connection.
pub struct Conn {
    _private: (),
}

impl Conn {
    pub fn new(_info: ClientInfo, _config: Arc<ConnConfig>, _now: Instant) -> Conn {
        todo!("conn machine")
    }

    /// Bytes read from the client. Call only while [`Conn::wants_client_read`].
    pub fn client_data(&mut self, _data: &[u8], _now: Instant, _router: &mut dyn Router) {
        todo!()
    }

    /// The client half-closed (read returned 0).
    pub fn client_eof(&mut self, _now: Instant) {
        todo!()
    }

    /// The client socket failed (reset, error): abandon everything.
    pub fn client_error(&mut self, _now: Instant) {
        todo!()
    }

    /// Bytes to send to the client, if any and if no send of ours is in flight.
    pub fn take_client_output(&mut self) -> Option<Vec<u8>> {
        todo!()
    }

    /// A buffer from [`Conn::take_client_output`] comes back; `written` bytes of it were sent.
    pub fn client_sent(&mut self, _buf: Vec<u8>, _written: usize, _now: Instant) {
        todo!()
    }

    /// The upstream connection asked for by [`Action::Connect`] is ready; `reused` when it came
    /// from the keep-alive pool.
    pub fn upstream_connected(&mut self, _now: Instant, _reused: bool) {
        todo!()
    }

    /// The upstream connection asked for could not be made.
    pub fn upstream_connect_failed(&mut self, _now: Instant) {
        todo!()
    }

    /// Bytes read from the upstream. Call only while [`Conn::wants_upstream_read`].
    pub fn upstream_data(&mut self, _data: &[u8], _now: Instant) {
        todo!()
    }

    /// The upstream closed its side (read returned 0).
    pub fn upstream_eof(&mut self, _now: Instant) {
        todo!()
    }

    /// The upstream socket failed (reset, error).
    pub fn upstream_error(&mut self, _now: Instant) {
        todo!()
    }

    /// Bytes to send upstream, if any and if no send of ours is in flight.
    pub fn take_upstream_output(&mut self) -> Option<Vec<u8>> {
        todo!()
    }

    /// A buffer from [`Conn::take_upstream_output`] comes back; `written` bytes of it were sent.
    pub fn upstream_sent(&mut self, _buf: Vec<u8>, _written: usize, _now: Instant) {
        todo!()
    }

    /// The timer armed at [`Conn::deadline`] fired (late or early firing is harmless).
    pub fn timer(&mut self, _now: Instant) {
        todo!()
    }

    /// When the machine next needs [`Conn::timer`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        todo!()
    }

    /// The next thing the engine must do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        todo!()
    }

    pub fn wants_client_read(&self) -> bool {
        todo!()
    }

    pub fn wants_upstream_read(&self) -> bool {
        todo!()
    }

    /// Graceful shutdown: finish the exchange in flight (if any), then close instead of
    /// keeping alive. An idle connection closes at once.
    pub fn begin_shutdown(&mut self, _now: Instant) {
        todo!()
    }

    /// Between requests with nothing buffered or in flight.
    pub fn is_idle(&self) -> bool {
        todo!()
    }

    /// [`Action::CloseClient`] has been issued; the engine may drop the machine.
    pub fn is_closed(&self) -> bool {
        todo!()
    }
}
