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
//!   say so (that is the backpressure), and arms one timer at [`Conn::deadline`];
//! * when [`Conn::new_hold`] says small response output is being held back (to go out with
//!   the rest, [`ConnConfig::postpone_output`]), it calls [`Conn::hold_expired`] at the time
//!   that names.
//!
//! The machine never blocks, never reads a clock and never allocates per byte.
//!
//! Between requests a connection can be parked: [`Conn::park`] writes the little it must
//! remember (addresses, settings, the request-id sequence, when it went idle) into a
//! [`Parked`], and the machine itself, with its buffers, can serve another connection;
//! [`Parked::wake`] makes a machine again (reusing a spare one's allocations). An idle
//! keep-alive connection then costs a `Parked` and owns no buffer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::core::client_addr::ForwardedTrust;
use crate::core::error::{HttpError, Status};
use crate::core::http1::body::{BodyDecoder, BodyEncoder, Decoded, Peer};
use crate::core::http1::forward::{ForwardInfo, UpstreamEdits, write_upstream_request_edited};
use crate::core::http1::request::{
    parse_request_head_uninit, parse_whole_request_head, uninit_headers,
};
use crate::core::http1::response::{
    ClientSide, RequestContext, parse_response_head_uninit, write_client_response,
};
use crate::core::http1::scan::{HeadScanner, Scan};
use crate::core::http1::{Framing, Limits, RequestHead, Upgrades, Version, local};
use crate::core::request_id;
use crate::core::route::bandwidth::Pacer;
use crate::core::route::custom_errors::{self, ErrorContext};
pub use crate::core::route::ext_auth::AuthCall;
use crate::core::route::ext_auth::{AuthDecision, Origin};
use crate::core::route::headers::HeaderSet;
pub use crate::core::route::mirror::MirrorCall;
use crate::core::route::rate_limit::ConnTicket;
use crate::core::route::request_policy::{RequestView, Verdict};
use crate::core::route::upstream_tls::UpstreamTls;
use crate::core::route::{BackendId, RouteDecision, RoutePolicy, Router};
use crate::core::time::Instant;
use crate::core::upstream::affinity;
use crate::core::upstream::hash::KeySource;
use crate::core::upstream::health::OutlierConfig;
use crate::core::upstream::retry::{self, Attempts, Failure, NextUpstream};
use crate::core::upstream::vhost;

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
    /// `Strict-Transport-Security` value added to proxied responses (HTTPS listeners).
    pub hsts: Option<Arc<str>>,
    /// The HTTPS port named in redirects from a plain listener (443 is left out).
    pub https_port: u16,
    /// `Server` value on every response: ours, and proxied ones whose upstream sent none.
    /// `None`: no `Server` field is added.
    pub server: Option<Arc<str>>,
    /// Upgrade protocols relayed as tunnels (WebSocket by default, never `h2c`); a request
    /// for any other upgrade is forwarded as plain HTTP/1.1 without its `Upgrade` field.
    pub upgrades: Upgrades,
    /// `X-Request-ID` upstream (the client's, else one generated from this seed, random per
    /// process: see `config::Config::conn_config`); `None`: the client's field passes like
    /// any other and none is generated (the in-memory tests' exact heads).
    pub request_id_seed: Option<u64>,
    /// Keep a [`RequestRecord`] of each request for the access log.
    pub record_requests: bool,
    /// Passive health of endpoints (`[outlier]`); the driver gives it to its worker's picker.
    pub outlier: OutlierConfig,
    /// Peers whose `X-Forwarded-For` names the real client ([`Conn::client_addr`]).
    pub forwarded: ForwardedTrust,
    /// Connections start with a PROXY protocol header (read by the engine before anything
    /// else, then given to [`Conn::set_proxied`]); one without it is closed.
    pub proxy_protocol: bool,
    /// Status answered to a request refused by a route's `limit-rps`, `limit-rpm` or
    /// `limit-connections` (`[http] limit_req_status_code`; 503 as in ingress-nginx).
    pub limit_status: u16,
    /// Fields set on every request sent upstream (`[http] proxy_set_headers`); a route's
    /// `sluice.dev/request-headers` are applied after them (a field of both: the route's).
    pub request_headers: Option<HeaderSet>,
    /// Response output for the client smaller than this many bytes is held back while more
    /// of the response is expected, and sent with what follows (`[buffers] postpone_output`,
    /// nginx's `postpone_output`; the appliance's default is 1,460, one Ethernet segment's
    /// payload; at most `buffer_size` counts): see [`Conn::take_client_output`]. 0 turns it
    /// off, as in this default (the in-memory tests take each piece of output as it is made).
    pub postpone_output: usize,
    /// The longest that held-back output waits for more of the response (`[buffers]
    /// postpone_timeout`, [`POSTPONE_BOUND`] by default): an upstream that sends its head and
    /// then stalls still has that head at the client after this.
    pub postpone_timeout: Duration,
}

/// The default [`ConnConfig::postpone_timeout`]: 1 ms, well under what a client notices and
/// far longer than the pause between a head and a body written one after the other.
pub const POSTPONE_BOUND: Duration = Duration::from_millis(1);

/// What the access log says about the current (or last) request of a connection; kept
/// only with [`ConnConfig::record_requests`], its strings reused from request to request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub host: String,
    pub path: String,
    /// The query, without `?` (empty: none).
    pub query: String,
    /// `HTTP/1.1` or `HTTP/1.0` (empty before a head was parsed).
    pub protocol: &'static str,
    pub referer: String,
    pub user_agent: String,
    /// The `X-Request-ID` sent upstream (empty for a request answered locally).
    pub request_id: String,
    /// Request bytes read from the client (head and body, after TLS).
    pub bytes_in: u64,
    /// Response bytes queued for the client (head and body, before TLS).
    pub bytes_out: u64,
    /// The status the upstream answered (`None`: Sluice answered itself).
    pub upstream_status: Option<u16>,
    /// Response bytes read from the upstream (with `upstream_status`).
    pub upstream_bytes: u64,
    /// The matched backend, `namespace/service:port` (empty: none matched). Kept even
    /// without [`ConnConfig::record_requests`] (the per-backend counters read it).
    pub route: String,
}

impl RequestRecord {
    /// No request (what a parked connection reports).
    pub const EMPTY: RequestRecord = RequestRecord {
        method: String::new(),
        host: String::new(),
        path: String::new(),
        query: String::new(),
        protocol: "",
        referer: String::new(),
        user_agent: String::new(),
        request_id: String::new(),
        bytes_in: 0,
        bytes_out: 0,
        upstream_status: None,
        upstream_bytes: 0,
        route: String::new(),
    };

    /// Empties it, keeping its strings' allocations.
    fn reuse(&mut self) {
        for s in [
            &mut self.method,
            &mut self.host,
            &mut self.path,
            &mut self.query,
            &mut self.referer,
            &mut self.user_agent,
            &mut self.request_id,
            &mut self.route,
        ] {
            s.clear();
        }
        self.protocol = "";
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.upstream_status = None;
        self.upstream_bytes = 0;
    }
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            buffer_size: 32 * 1024,
            scheme: Scheme::Http,
            hsts: None,
            https_port: 443,
            server: Some("sluice".into()),
            upgrades: Upgrades::default(),
            request_id_seed: None,
            record_requests: false,
            outlier: OutlierConfig::default(),
            forwarded: ForwardedTrust::none(),
            proxy_protocol: false,
            limit_status: 503,
            request_headers: None,
            postpone_output: 0,
            postpone_timeout: POSTPONE_BOUND,
        }
    }
}

/// The upgrade protocols relayed for a request: its route's list, else the listener's.
fn upgrades_of<'a>(config: &'a ConnConfig, policy: &'a Option<Arc<RoutePolicy>>) -> &'a Upgrades {
    policy
        .as_deref()
        .and_then(|p| p.upgrades.as_ref())
        .unwrap_or(&config.upgrades)
}

/// How long a streaming exchange may make no progress: while the request body streams, the
/// route's `client-body-timeout` / `proxy-send-timeout` (the shorter when both are set); once
/// it is done, its `proxy-read-timeout`; the listener's `body_idle` for what it does not set.
/// The route's retry settings, or ingress-nginx's defaults.
fn next_upstream(policy: &Option<Arc<RoutePolicy>>) -> &NextUpstream {
    policy
        .as_deref()
        .and_then(|p| p.next_upstream.as_ref())
        .unwrap_or(&NextUpstream::DEFAULT)
}

fn idle_timeout(t: &Timeouts, policy: Option<&RoutePolicy>, request_done: bool) -> Duration {
    let Some(p) = policy else {
        return t.body_idle;
    };
    let route = if request_done {
        p.read_timeout
    } else {
        match (p.client_body_timeout, p.send_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    };
    route.unwrap_or(t.body_idle)
}

/// What a hash key (`upstream-hash-by`) reads of a request: its head and the client address.
struct RequestKey<'a, 'b> {
    head: &'a RequestHead<'b>,
    ip: std::net::IpAddr,
}

impl KeySource for RequestKey<'_, '_> {
    fn remote_ip(&self) -> std::net::IpAddr {
        self.ip
    }

    fn host(&self) -> &str {
        self.head.host()
    }

    fn path(&self) -> &str {
        self.head.path()
    }

    fn query(&self) -> Option<&str> {
        self.head.query()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What a route's request policy reads of a request.
fn request_view<'h>(
    head: &RequestHead<'h>,
    scheme: &'h str,
    client: std::net::IpAddr,
) -> RequestView<'h> {
    let field = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    RequestView {
        method: head.method,
        host: head.host(),
        path: head.path(),
        query: head.query(),
        scheme,
        origin: field("origin"),
        client,
        authorization: field("authorization"),
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
    /// With `tls` (`backend-protocol: HTTPS`), it speaks TLS with that config, for the name
    /// [`Conn::upstream_tls_host`] gives, and is reported connected once the handshake is
    /// done; a pooled one must have been made with the same config and name.
    Connect {
        endpoint: SocketAddr,
        fresh: bool,
        tls: Option<Arc<UpstreamTls>>,
    },
    /// The machine is done with its upstream connection: back to the pool when `reusable`,
    /// otherwise close it.
    ReleaseUpstream { reusable: bool },
    /// One request/response exchange finished with this status (for metrics and logs).
    Completed { status: u16 },
    /// All output is flushed: shut down the client's write side (FIN) and keep reading.
    ShutdownClientWrite,
    /// Close the client connection now. The machine is finished.
    CloseClient,
    /// Ask the route's auth service (`auth-url`) and report with [`Conn::auth_done`] (from
    /// the worker's cache of answers, or over a connection of its own). The machine waits,
    /// without reading the request body, until then or its deadline.
    Authorize(Box<AuthCall>),
    /// The decision is no longer wanted (the wait timed out): drop the auth exchange.
    CancelAuth,
    /// Send this copy of the request to the route's mirror and discard the answer.
    Mirror(Box<MirrorCall>),
}

/// Bytes received and not yet consumed. Consuming a prefix only moves an offset; the buffer is
/// compacted when appending, so no byte is moved more than once per message.
#[derive(Default)]
struct InBuf {
    data: Vec<u8>,
    pos: usize,
    /// Bytes consumed since the connection opened (the access log's bytes in).
    consumed: u64,
}

impl InBuf {
    fn bytes(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    fn len(&self) -> usize {
        self.data.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.data.len() - self.pos);
        self.consumed += n as u64;
        self.pos += n;
        if self.pos == self.data.len() {
            self.data.clear();
            self.pos = 0;
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.data.drain(..self.pos);
            self.pos = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    fn clear(&mut self) {
        self.data.clear();
        self.pos = 0;
    }

    /// Whether [`InBuf::hand_over`] can give `out` this buffer, for a body decoded from all of
    /// it (`used` bytes, `payload` of them data) that `encoder` sends as it is: nothing was
    /// consumed from its front, every byte is payload, and `out` is empty.
    fn can_hand_over(
        &self,
        used: usize,
        payload: usize,
        encoder: &BodyEncoder,
        out: &[u8],
    ) -> bool {
        self.pos == 0
            && used == self.data.len()
            && payload == used
            && used > 0
            && encoder.passes_through()
            && out.is_empty()
    }

    /// Consumes every byte into `out` (see [`InBuf::can_hand_over`]) by handing over the
    /// buffer itself, not a copy: what a large body does, piece by piece, on its way from the
    /// upstream to the client. `out`'s empty buffer becomes this one.
    fn hand_over(&mut self, out: &mut Vec<u8>) {
        debug_assert!(out.is_empty() && self.pos == 0);
        self.consumed += self.data.len() as u64;
        std::mem::swap(&mut self.data, out);
        self.data.clear();
    }

    /// Gives the memory back while idle (a keep-alive connection should cost next to nothing).
    fn release_if_empty(&mut self) {
        if self.is_empty() && self.data.capacity() > IDLE_KEEP_CAPACITY {
            self.data = Vec::new();
        }
    }
}

/// Bytes queued for one peer, and the buffer the engine holds while a send is in flight.
#[derive(Default)]
struct OutBuf {
    queued: Vec<u8>,
    in_flight: usize,
    sending: bool,
    /// Bytes acknowledged as written since the connection opened.
    written: u64,
}

impl OutBuf {
    fn take(&mut self) -> Option<Vec<u8>> {
        if self.sending || self.queued.is_empty() {
            return None;
        }
        self.sending = true;
        self.in_flight = self.queued.len();
        Some(std::mem::take(&mut self.queued))
    }

    /// [`OutBuf::take`], at most `max` bytes (the rest stays queued).
    fn take_at_most(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.queued.len() <= max {
            return self.take();
        }
        if self.sending || max == 0 {
            return None;
        }
        let rest = self.queued.split_off(max);
        self.sending = true;
        self.in_flight = max;
        Some(std::mem::replace(&mut self.queued, rest))
    }

    /// Returns how many bytes were really written (0 for a buffer we were not expecting).
    fn sent(&mut self, mut buf: Vec<u8>, written: usize) -> usize {
        if !self.sending {
            return 0;
        }
        self.sending = false;
        self.in_flight = 0;
        let written = written.min(buf.len());
        self.written += written as u64;
        if written < buf.len() {
            buf.drain(..written);
            buf.extend_from_slice(&self.queued);
            self.queued = buf;
        } else if self.queued.is_empty() {
            buf.clear();
            self.queued = buf;
        }
        written
    }

    /// Bytes ever queued: written, in flight or waiting (the access log's bytes out).
    fn total(&self) -> u64 {
        self.written + self.pending() as u64
    }

    /// Bytes not yet acknowledged as written.
    fn pending(&self) -> usize {
        self.queued.len() + self.in_flight
    }

    fn is_flushed(&self) -> bool {
        self.pending() == 0
    }

    /// Forgets everything, including a buffer in flight (the engine drops it).
    fn reset(&mut self) {
        self.queued.clear();
        self.in_flight = 0;
        self.sending = false;
    }

    fn release_if_empty(&mut self) {
        if self.is_flushed() && self.queued.capacity() > IDLE_KEEP_CAPACITY {
            self.queued = Vec::new();
        }
    }
}

/// Buffers larger than this are freed when a connection goes idle. Smaller ones are kept for
/// the next request: freeing and reallocating every buffer on every request measured 7-10 %
/// more CPU per request in `bench/run.py`. A parked connection ([`Conn::park`]) holds none:
/// they stay with its machine, which serves the next connection that wakes; this bounds what
/// such a spare machine keeps.
const IDLE_KEEP_CAPACITY: usize = 4096;

/// What we remember of a request once its head has been forwarded.
#[derive(Clone, Copy, Debug)]
struct RequestMeta {
    version: Version,
    head_request: bool,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
    has_body: bool,
    /// Not POST, LOCK or PATCH (retries).
    idempotent: bool,
}

impl RequestMeta {
    /// Before a head is parsed we know nothing: answer as HTTP/1.1 and close.
    const UNKNOWN: RequestMeta = RequestMeta {
        version: Version::Http11,
        head_request: false,
        keep_alive: false,
        expect_continue: false,
        upgrade: false,
        has_body: false,
        idempotent: true,
    };
}

/// The response side of an exchange.
enum Response {
    /// Waiting for (the rest of) the upstream's response head.
    Head,
    /// Streaming the body to the client.
    Body {
        decoder: BodyDecoder,
        encoder: BodyEncoder,
        keep_alive: bool,
        reusable: bool,
        /// Nothing of it is held back ([`ConnConfig::postpone_output`]): the response must
        /// stream ([`ResponseHead::streams`](crate::core::http1::response::ResponseHead::streams)),
        /// or a hold already ran out ([`ConnConfig::postpone_timeout`]).
        stream: bool,
    },
    /// Fully queued for the client.
    Done { keep_alive: bool, reusable: bool },
}

/// One request in flight towards one upstream endpoint.
struct Exchange {
    req: RequestMeta,
    /// The matched backend (a retry picks another of its endpoints).
    backend: BackendId,
    endpoint: SocketAddr,
    /// The endpoints tried for this request, and when the first attempt started.
    attempts: Attempts,
    /// `100 Continue` was written for this request (not again after a retry).
    continued: bool,
    /// Cookie affinity: the endpoint id the request's cookie named, if any.
    sticky: Option<u64>,
    /// Cookie affinity: the matched rule's path (the cookie's default `Path`); reused.
    sticky_path: String,
    /// Cookie affinity: the client mishandles `SameSite=None`.
    old_client: bool,
    /// The upstream connection came from the keep-alive pool.
    reused: bool,
    /// Already retried once on a fresh connection.
    retried: bool,
    /// The matched route's policy (`None`: the listener's settings).
    policy: Option<Arc<RoutePolicy>>,
    /// The request body still streaming to the upstream; `None` once finished (or absent).
    body: Option<(BodyDecoder, BodyEncoder)>,
    response: Response,
    status: u16,
    /// A response head has been queued for the client: errors can no longer be reported.
    response_started: bool,
    /// Where in the client's queued output the response head starts, while the engine has
    /// not taken it yet: until then a framing error in the body can still become a 502.
    head_pending: Option<usize>,
    /// When we started waiting for the response head (reset by upstream progress).
    waiting_since: Instant,
    /// The route's CORS applies: `Access-Control-Allow-Origin` for the response.
    cors_origin: Option<Box<str>>,
    /// `auth-url`: the auth answer's `Set-Cookie`, for the response.
    auth_cookie: Option<Arc<[u8]>>,
    /// Custom errors: the error request for this request, but for its `X-Code` (see
    /// `custom_errors::prepare`); empty when the route has no error backend. Reused.
    error_head: Vec<u8>,
    /// This exchange is the error request for that status (its answer is passed as is).
    error_code: Option<u16>,
}

impl Exchange {
    fn request_done(&self) -> bool {
        self.body.is_none()
    }
}

/// The connection's state. Each variant holds exactly what that state needs.
enum State {
    /// Between requests, or reading a request head. `started` is the first byte of the head.
    Head {
        idle_since: Instant,
        first: bool,
        started: Option<Instant>,
    },
    /// Waiting for the route's auth service (`auth-url`): the request body stays unread.
    /// `signin`: where a 401 sends the client.
    Authorizing {
        ex: Box<Exchange>,
        since: Instant,
        signin: Option<String>,
    },
    /// Waiting for the upstream connection. (Exchanges are boxed: an idle connection, the
    /// common case, then carries only a few words of state.)
    Connecting {
        ex: Box<Exchange>,
        since: Instant,
    },
    /// Request and response streaming.
    Proxying {
        ex: Box<Exchange>,
    },
    /// After a 101: bytes flow both ways untouched, until neither side has sent anything for
    /// `idle` (the route's `proxy-read-timeout`, else its `proxy-send-timeout`, else the
    /// listener's `body_idle`).
    Tunnel {
        idle: Duration,
    },
    /// Flushing the last output, then FIN, then reading until the client closes (linger).
    Closing {
        shut: bool,
        linger_until: Option<Instant>,
        linger: bool,
    },
    Closed,
}

/// One client connection and, while a request is in flight, its upstream connection.
pub struct Conn {
    /// Base and count of this connection's generated `X-Request-ID`s.
    request_id_base: Option<u64>,
    requests: u64,
    record: RequestRecord,
    info: ClientInfo,
    /// The source a PROXY protocol header named (`None`: the socket's peer stands).
    proxied: Option<SocketAddr>,
    /// The current request's real client ([`Conn::client_addr`]).
    client_ip: std::net::IpAddr,
    /// Where the current request's bytes in and out started counting.
    in_mark: u64,
    out_mark: u64,
    upstream_mark: u64,
    config: Arc<ConnConfig>,
    state: State,
    cin: InBuf,
    cout: OutBuf,
    uin: InBuf,
    uout: OutBuf,
    scanner: HeadScanner,
    /// Nothing of the next head has been scanned yet: the whole-head fast path may apply.
    head_fresh: bool,
    /// The upstream head of a bodiless request, kept to replay it once on a fresh connection
    /// when a pooled connection turns out to be dead. Reused across requests.
    /// For retries to another endpoint it also holds the head and body of other requests,
    /// up to `buffer_size` bytes (see [`retry::REPLAY_NOTE`]).
    replay: Vec<u8>,
    /// `replay` holds every byte of the current request sent (or queued) upstream.
    replayable: bool,
    /// The last exchange's box, reused by the next request (one allocation fewer each).
    spare_exchange: Option<Box<Exchange>>,
    /// The `Host` sent upstream by the current request, kept only on routes with upstream
    /// TLS (the name their connections are made for); reused from request to request.
    upstream_host: String,
    actions: VecDeque<Action>,
    last_activity: Instant,
    client_eof: bool,
    /// The upstream closed its side; what is buffered is still delivered.
    upstream_eof: bool,
    /// An upstream connection is ours (asked for and not yet released).
    has_upstream: bool,
    shutting_down: bool,
    /// The client's unit of its route's `limit-connections`, held while its request is in
    /// flight (given back in `enter_idle`, `enter_closing`, `close_now` or on drop).
    limit_ticket: Option<ConnTicket>,
    /// A mirror copy waiting for the auth decision.
    pending_mirror: Option<Box<MirrorCall>>,
    /// `limit-rate`: the pacing of the current response's bytes to the client (it keeps the
    /// time of the connection's last event, which it reads when the engine takes output).
    pace: Option<Box<Pacer>>,
    /// Client output held back ([`ConnConfig::postpone_output`]): since when, and whether the
    /// engine was told ([`Conn::new_hold`]).
    held: Option<(Instant, bool)>,
}

impl Conn {
    /// The current (or last) request, for the access log (empty unless
    /// [`ConnConfig::record_requests`]).
    pub fn request_record(&self) -> &RequestRecord {
        &self.record
    }

    /// The connection's peer as far as Sluice can tell: the source its PROXY protocol
    /// header named, else the socket's peer.
    pub fn peer_addr(&self) -> SocketAddr {
        self.proxied.unwrap_or(self.info.peer)
    }

    /// The real client of the current (or last) request: [`Conn::peer_addr`], or what a
    /// trusted proxy's `X-Forwarded-For` says ([`ConnConfig::forwarded`]). The one address
    /// features that act on the client (allowlists, hashing, `X-Real-IP`) read.
    pub fn client_addr(&self) -> std::net::IpAddr {
        self.client_ip
    }

    /// The connection's PROXY protocol header named `source` as the client: it replaces the
    /// socket's peer from now on (call before any request byte).
    pub fn set_proxied(&mut self, source: SocketAddr) {
        self.proxied = Some(source);
        self.client_ip = source.ip().to_canonical();
    }

    /// Queues `Completed`, with the record's byte counts and upstream status.
    fn completed(&mut self, status: u16, upstream_status: Option<u16>) {
        let r = &mut self.record;
        r.bytes_in = self.cin.consumed - self.in_mark;
        r.bytes_out = self.cout.total() - self.out_mark;
        r.upstream_status = upstream_status;
        r.upstream_bytes = self.uin.consumed - self.upstream_mark;
        self.actions.push_back(Action::Completed { status });
    }

    pub fn new(info: ClientInfo, config: Arc<ConnConfig>, now: Instant) -> Conn {
        Conn::from_parked(Parked::new(info, config, now))
    }

    /// A machine in the state `p` remembers: between requests, nothing buffered.
    fn from_parked(p: Parked) -> Conn {
        let Parked {
            config,
            info,
            proxied,
            request_id_base,
            requests,
            idle_since: now,
            first,
        } = p;
        Conn {
            request_id_base,
            requests,
            record: RequestRecord::default(),
            info,
            proxied,
            client_ip: proxied.unwrap_or(info.peer).ip().to_canonical(),
            in_mark: 0,
            out_mark: 0,
            upstream_mark: 0,
            config,
            state: State::Head {
                idle_since: now,
                first,
                started: None,
            },
            cin: InBuf::default(),
            cout: OutBuf::default(),
            uin: InBuf::default(),
            uout: OutBuf::default(),
            scanner: HeadScanner::new(),
            head_fresh: true,
            replay: Vec::new(),
            replayable: false,
            spare_exchange: None,
            upstream_host: String::new(),
            actions: VecDeque::new(),
            last_activity: now,
            client_eof: false,
            upstream_eof: false,
            has_upstream: false,
            shutting_down: false,
            limit_ticket: None,
            pending_mirror: None,
            pace: None,
            held: None,
        }
    }

    /// Bytes read from the client. Call only while [`Conn::wants_client_read`].
    pub fn client_data(&mut self, data: &[u8], now: Instant, router: &mut dyn Router) {
        if data.is_empty() {
            return;
        }
        self.last_activity = now;
        match self.state {
            State::Closed => return,
            // Lingering: what the client still sends is read and dropped.
            State::Closing { .. } => return,
            _ => {}
        }
        self.cin.extend(data);
        self.drive(now, router);
    }

    /// The client half-closed (read returned 0).
    pub fn client_eof(&mut self, now: Instant, router: &mut dyn Router) {
        self.client_eof = true;
        self.last_activity = now;
        match &self.state {
            State::Closed => return,
            State::Head { .. } => {
                // Requests already buffered are still answered (see `try_start_request`).
            }
            State::Connecting { ex, .. }
            | State::Proxying { ex }
            | State::Authorizing { ex, .. } => {
                // A client may half-close after a complete request and still read the answer.
                if !ex.request_done() || ex.req.upgrade {
                    self.abort();
                }
            }
            State::Tunnel { .. } => self.abort(),
            State::Closing { .. } => {}
        }
        self.drive(now, router);
    }

    /// The client socket failed (reset, error): abandon everything.
    pub fn client_error(&mut self, _now: Instant) {
        self.release_upstream(false);
        self.close_now();
    }

    /// Bytes to send to the client, if any and if no send of ours is in flight.
    ///
    /// Small output is postponed, as nginx's write filter does (`postpone_output`): while a
    /// response body is still expected from the upstream and fewer than
    /// [`ConnConfig::postpone_output`] bytes are queued (a rewritten head, the first small
    /// piece of a body), this returns `None` and the bytes wait for the rest, so that the
    /// client gets head and body in one segment and wakes once. They go as soon as the queue
    /// reaches the threshold, the response is complete (or cut), or the hold's time
    /// ([`ConnConfig::postpone_timeout`]) has passed ([`Conn::hold_expired`]); after that the
    /// rest of the response is never held. Nothing is held of a response that must stream
    /// (a 101, server-sent events, `X-Accel-Buffering: no`, a close-delimited body: see
    /// [`ResponseHead::streams`](crate::core::http1::response::ResponseHead::streams)), of a
    /// paced (`limit-rate`) one, of our own answers, or between responses.
    pub fn take_client_output(&mut self) -> Option<Vec<u8>> {
        if matches!(self.state, State::Closed) {
            return None;
        }
        if self.holds_output() {
            // Since the event that made the output (the time the engine last gave us).
            self.held.get_or_insert((self.last_activity, false));
            return None;
        }
        self.held = None;
        let out = match &mut self.pace {
            None => self.cout.take(),
            Some(pace) => {
                let allowed = pace.allowance_now(self.cout.queued.len()).ok()?;
                let out = self.cout.take_at_most(allowed);
                if let Some(buf) = &out {
                    pace.record(buf.len());
                }
                out
            }
        };
        if out.is_some()
            && let State::Proxying { ex } = &mut self.state
        {
            ex.head_pending = None;
        }
        out
    }

    /// Whether [`Conn::take_client_output`] holds the queued output back now.
    fn holds_output(&self) -> bool {
        let limit = self.config.postpone_output.min(self.config.buffer_size);
        let queued = self.cout.queued.len();
        if queued == 0 || queued >= limit || self.cout.sending || self.pace.is_some() {
            return false;
        }
        let State::Proxying { ex } = &self.state else {
            return false;
        };
        matches!(ex.response, Response::Body { stream: false, .. }) && !self.upstream_eof
    }

    /// Client output began to be held back ([`Conn::take_client_output`]) since the last
    /// call: when the hold runs out (once per hold). The engine then calls
    /// [`Conn::hold_expired`] at that time (a hold that ended earlier makes it a no-op).
    pub fn new_hold(&mut self) -> Option<Instant> {
        match &mut self.held {
            Some((since, told)) if !*told => {
                *told = true;
                Some(*since + self.config.postpone_timeout)
            }
            _ => None,
        }
    }

    /// Client output is held back now.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// The hold's time ([`ConnConfig::postpone_timeout`]) may have passed for held output
    /// (`now`): if so, the output is released (the next [`Conn::take_client_output`] returns
    /// it) and the rest of the response streams unheld (its upstream pauses: it is a stream,
    /// or slow). True when something was released.
    pub fn hold_expired(&mut self, now: Instant) -> bool {
        let Some((since, _)) = self.held else {
            return false;
        };
        if now < since + self.config.postpone_timeout {
            return false;
        }
        self.held = None;
        if let State::Proxying { ex } = &mut self.state
            && let Response::Body { stream, .. } = &mut ex.response
        {
            *stream = true;
        }
        true
    }

    /// A buffer from [`Conn::take_client_output`] comes back; `written` bytes of it were sent.
    pub fn client_sent(
        &mut self,
        buf: Vec<u8>,
        written: usize,
        now: Instant,
        router: &mut dyn Router,
    ) {
        if self.cout.sent(buf, written) > 0 {
            self.last_activity = now;
        }
        self.drive(now, router);
    }

    /// The rest of the response body, when it may go from the upstream socket to the client's
    /// without passing through this machine (an engine that can splice moves it in the
    /// kernel): a Content-Length body that goes out byte for byte (no chunking added), not
    /// paced (`limit-rate`), after the whole request went upstream, before the upstream
    /// closed. It may start once [`Conn::pass_ready`]; [`Conn::passed`] counts what moved.
    pub fn passable(&self) -> Option<u64> {
        let State::Proxying { ex } = &self.state else {
            return None;
        };
        let Response::Body {
            decoder, encoder, ..
        } = &ex.response
        else {
            return None;
        };
        if !encoder.passes_through()
            || !ex.request_done()
            || !self.uout.is_flushed()
            || self.pace.is_some()
            || self.upstream_eof
        {
            return None;
        }
        decoder.length_remaining().filter(|&n| n > 0)
    }

    /// Whether a [`Conn::passable`] body can start moving peer to peer now: every byte
    /// received from the upstream is consumed and every byte for the client written, so the
    /// bytes that move next are the next ones of the body, on both sockets.
    pub fn pass_ready(&self) -> bool {
        self.uin.is_empty() && self.cout.is_flushed() && self.held.is_none()
    }

    /// `n` bytes of a [`Conn::passable`] body went from the upstream to the client without
    /// passing through here: they count as received and written (the access log's bytes,
    /// the body's framing), and the response is complete once the last one did.
    pub fn passed(&mut self, n: u64, now: Instant, router: &mut dyn Router) {
        let State::Proxying { ex } = &mut self.state else {
            return;
        };
        let Response::Body {
            decoder,
            encoder,
            keep_alive,
            reusable,
            ..
        } = &mut ex.response
        else {
            return;
        };
        let n = decoder.skip(n);
        if n > 0 {
            self.uin.consumed += n;
            self.cout.written += n;
            self.last_activity = now;
        }
        if decoder.is_done() {
            encoder.finish(&[], &mut self.cout.queued);
            ex.response = Response::Done {
                keep_alive: *keep_alive,
                reusable: *reusable,
            };
        }
        self.drive(now, router);
    }

    /// The upstream connection asked for by [`Action::Connect`] is ready; `reused` when it came
    /// from the keep-alive pool.
    pub fn upstream_connected(&mut self, now: Instant, reused: bool, router: &mut dyn Router) {
        let State::Connecting { .. } = self.state else {
            return;
        };
        let State::Connecting { mut ex, .. } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        ex.reused = reused;
        ex.waiting_since = now;
        // The client waits for our go-ahead before sending its body; only now is it useful.
        if ex.req.expect_continue
            && !ex.continued
            && !ex.request_done()
            && ex.req.version == Version::Http11
            && self.cin.is_empty()
        {
            local::write_continue(&mut self.cout.queued);
            ex.continued = true;
        }
        self.state = State::Proxying { ex };
        self.last_activity = now;
        self.drive(now, router);
    }

    /// The upstream connection asked for could not be made.
    pub fn upstream_connect_failed(&mut self, now: Instant, router: &mut dyn Router) {
        if let State::Connecting { .. } = self.state {
            if self.try_retry(Failure::Error, now, router) {
                self.drive(now, router);
                return;
            }
            if self.intercept_error(502, now, router) {
                self.drive(now, router);
                return;
            }
            self.uout.reset();
            self.fail(
                HttpError::upstream(502, "could not connect to the upstream"),
                now,
                false,
            );
            self.drive(now, router);
        }
    }

    /// Bytes read from the upstream. Call only while [`Conn::wants_upstream_read`].
    pub fn upstream_data(&mut self, data: &[u8], now: Instant, router: &mut dyn Router) {
        if data.is_empty() {
            return;
        }
        match self.state {
            State::Proxying { .. } | State::Tunnel { .. } => {}
            _ => return,
        }
        self.last_activity = now;
        self.uin.extend(data);
        self.drive(now, router);
    }

    /// The upstream closed its side (read returned 0).
    pub fn upstream_eof(&mut self, now: Instant, router: &mut dyn Router) {
        self.upstream_lost(now, router, true);
    }

    /// The upstream socket failed (reset, error).
    pub fn upstream_error(&mut self, now: Instant, router: &mut dyn Router) {
        self.upstream_lost(now, router, false);
    }

    /// Bytes to send upstream, if any and if no send of ours is in flight.
    pub fn take_upstream_output(&mut self) -> Option<Vec<u8>> {
        match self.state {
            State::Proxying { .. } | State::Tunnel { .. } => self.uout.take(),
            _ => None,
        }
    }

    /// A buffer from [`Conn::take_upstream_output`] comes back; `written` bytes of it were sent.
    pub fn upstream_sent(
        &mut self,
        buf: Vec<u8>,
        written: usize,
        now: Instant,
        router: &mut dyn Router,
    ) {
        if self.uout.sent(buf, written) > 0 {
            self.last_activity = now;
            if let State::Proxying { ex } = &mut self.state
                && matches!(ex.response, Response::Head)
            {
                ex.waiting_since = now;
            }
        }
        self.drive(now, router);
    }

    /// The timer armed at [`Conn::deadline`] fired (late or early firing is harmless).
    pub fn timer(&mut self, now: Instant, router: &mut dyn Router) {
        if let Some(pace) = &mut self.pace {
            pace.tick(now);
        }
        // A pacing wake-up only lets the engine take more output.
        match self.state_deadline() {
            Some(deadline) if now >= deadline => {}
            _ => return,
        }
        // Connecting, or waiting for the head of a response to a whole request: `timeout`.
        let retryable = match &self.state {
            State::Connecting { .. } => true,
            State::Proxying { ex } => matches!(ex.response, Response::Head) && ex.request_done(),
            _ => false,
        };
        if retryable
            && (self.try_retry(Failure::Timeout, now, router)
                || self.intercept_error(504, now, router))
        {
            self.drive(now, router);
            return;
        }
        match &self.state {
            State::Head {
                started: Some(_), ..
            } => {
                self.fail(
                    HttpError::client(408, "request head not received in time"),
                    now,
                    true,
                );
            }
            State::Head { .. } => {
                // Idle keep-alive (or a connection that never sent a byte): close quietly.
                self.enter_closing(false);
            }
            State::Connecting { .. } => {
                self.fail(
                    HttpError::upstream(504, "upstream connect timed out"),
                    now,
                    false,
                );
            }
            State::Proxying { ex }
                if !ex.request_done()
                    && self.uout.is_flushed()
                    && matches!(ex.response, Response::Head) =>
            {
                // Everything the client sent is upstream: it is the client that stalls.
                let err = HttpError::client(408, "request body not received in time");
                self.fail(err, now, true);
            }
            State::Proxying { ex } => {
                let detail = if matches!(ex.response, Response::Head) {
                    "upstream did not respond in time"
                } else {
                    "body transfer stalled"
                };
                self.fail(HttpError::upstream(504, detail), now, true);
            }
            State::Authorizing { .. } => {
                // The auth service did not answer in time: 500, and its exchange is dropped.
                self.actions.push_back(Action::CancelAuth);
                self.auth_answer(AuthDecision::Error, now, router);
                return;
            }
            State::Tunnel { .. } => self.abort(),
            State::Closing { .. } => self.close_now(),
            State::Closed => {}
        }
        self.drive(now, router);
    }

    /// When the machine next needs [`Conn::timer`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        let state = self.state_deadline();
        let pace = self.pace.as_ref().and_then(|p| {
            if self.cout.sending || self.cout.queued.is_empty() {
                return None;
            }
            p.allowance_now(self.cout.queued.len()).err()
        });
        match (state, pace) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`Conn::deadline`] without pacing: the timeouts of the current state.
    fn state_deadline(&self) -> Option<Instant> {
        let t = &self.config.timeouts;
        match &self.state {
            State::Head {
                started: Some(started),
                ..
            } => Some(*started + t.request_head),
            State::Head {
                idle_since, first, ..
            } => {
                if !self.cout.is_flushed() {
                    // Still writing the previous response: the client must keep reading.
                    Some(self.last_activity + t.body_idle)
                } else if *first {
                    Some(*idle_since + t.request_head)
                } else {
                    Some(*idle_since + t.keep_alive)
                }
            }
            State::Authorizing { since, ex, .. } => {
                // The auth exchange has the route's proxy-read-timeout (ingress-nginx's auth
                // location inherits the location's proxy timeouts).
                let p = ex.policy.as_deref();
                Some(
                    *since
                        + p.and_then(|p| p.read_timeout)
                            .unwrap_or(t.upstream_response),
                )
            }
            State::Connecting { since, ex } => {
                let p = ex.policy.as_deref();
                Some(
                    *since
                        + p.and_then(|p| p.connect_timeout)
                            .unwrap_or(t.upstream_connect),
                )
            }
            State::Proxying { ex } => {
                let p = ex.policy.as_deref();
                match ex.response {
                    Response::Head if self.uout.is_flushed() && ex.request_done() => Some(
                        ex.waiting_since
                            + p.and_then(|p| p.read_timeout)
                                .unwrap_or(t.upstream_response),
                    ),
                    _ => Some(self.last_activity + idle_timeout(t, p, ex.request_done())),
                }
            }
            State::Tunnel { idle } => Some(self.last_activity + *idle),
            State::Closing {
                linger_until: Some(until),
                ..
            } => Some(*until),
            State::Closing { .. } => Some(self.last_activity + t.body_idle),
            State::Closed => None,
        }
    }

    /// The next thing the engine must do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn wants_client_read(&self) -> bool {
        if self.client_eof {
            return false;
        }
        let cap = self.config.buffer_size;
        match self.state {
            State::Closed => false,
            State::Closing { .. } => true,
            State::Head { .. } => self.cin.len() <= cap.max(self.config.limits.max_head_bytes),
            State::Connecting { .. }
            | State::Proxying { .. }
            | State::Tunnel { .. }
            | State::Authorizing { .. } => self.cin.len() < cap,
        }
    }

    pub fn wants_upstream_read(&self) -> bool {
        match self.state {
            State::Proxying { .. } | State::Tunnel { .. } => {
                self.uin.len() < self.config.buffer_size
            }
            _ => false,
        }
    }

    /// Graceful shutdown: finish the exchange in flight (if any), then close instead of
    /// keeping alive. An idle connection closes at once.
    pub fn begin_shutdown(&mut self, _now: Instant) {
        self.shutting_down = true;
        if let State::Closing { shut: true, .. } = self.state {
            // Already answered and half-closed: no reason to linger through a shutdown.
            self.close_now();
            return;
        }
        if self.is_idle() {
            self.enter_closing(false);
            self.drive_closing();
        }
    }

    /// Between requests with nothing buffered or in flight.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head { started: None, .. })
            && self.cin.is_empty()
            && self.cout.is_flushed()
    }

    /// [`Action::CloseClient`] has been issued; the engine may drop the machine.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Between requests with nothing buffered, in flight, owed or held (no action waiting,
    /// no upstream, no limit ticket, the client still open, no shutdown): writes what the
    /// connection must remember into `into` (the [`Parked`] this machine was made from) and
    /// returns true. The machine then belongs to no connection: it may serve another one
    /// ([`Parked::wake`]). Otherwise returns false and changes nothing.
    pub fn park(&mut self, into: &mut Parked) -> bool {
        let State::Head {
            idle_since,
            first,
            started: None,
        } = self.state
        else {
            return false;
        };
        if !self.cin.is_empty()
            || !self.uin.is_empty()
            || !self.cout.is_flushed()
            || !self.uout.is_flushed()
            || !self.actions.is_empty()
            || self.has_upstream
            || self.client_eof
            || self.shutting_down
            || self.limit_ticket.is_some()
        {
            return false;
        }
        into.proxied = self.proxied;
        into.requests = self.requests;
        into.idle_since = idle_since;
        into.first = first;
        self.held = None;
        self.trim();
        true
    }

    /// Takes this machine out of service (its connection is closed or parked): drops what
    /// belongs to a request (limit ticket, exchange, buffered bytes) and frees buffers larger
    /// than [`IDLE_KEEP_CAPACITY`]; what is left are allocations for the next connection.
    pub fn retire(&mut self) {
        self.limit_ticket = None;
        if let State::Connecting { ex, .. } | State::Proxying { ex } =
            std::mem::replace(&mut self.state, State::Closed)
        {
            self.spare_exchange = Some(ex);
        }
        self.cin.clear();
        self.uin.clear();
        self.cout.reset();
        self.uout.reset();
        self.actions.clear();
        self.held = None;
        self.trim();
    }

    fn trim(&mut self) {
        self.cin.release_if_empty();
        self.uin.release_if_empty();
        self.cout.release_if_empty();
        self.uout.release_if_empty();
        self.replay.clear();
        if self.replay.capacity() > IDLE_KEEP_CAPACITY {
            self.replay = Vec::new();
        }
        if let Some(ex) = &mut self.spare_exchange {
            // A spare exchange keeps its allocations, not the route it last served.
            ex.policy = None;
            ex.body = None;
            ex.cors_origin = None;
        }
    }

    /// Moves `old`'s allocations (buffers, strings, the spare exchange, the action queue)
    /// into this fresh machine, emptied.
    fn adopt(&mut self, mut old: Conn) {
        old.retire();
        self.cin.data = std::mem::take(&mut old.cin.data);
        self.uin.data = std::mem::take(&mut old.uin.data);
        self.cout.queued = std::mem::take(&mut old.cout.queued);
        self.uout.queued = std::mem::take(&mut old.uout.queued);
        self.replay = std::mem::take(&mut old.replay);
        self.spare_exchange = old.spare_exchange.take();
        self.actions = std::mem::take(&mut old.actions);
        self.record = std::mem::take(&mut old.record);
        self.record.reuse();
    }
}

/// What a connection keeps between requests while it is parked ([`Conn::park`]): its
/// settings, addresses, request-id sequence and when it went idle. No buffer, no machine.
#[derive(Clone, Debug)]
pub struct Parked {
    config: Arc<ConnConfig>,
    info: ClientInfo,
    /// The source its PROXY protocol header named.
    proxied: Option<SocketAddr>,
    request_id_base: Option<u64>,
    requests: u64,
    idle_since: Instant,
    /// No request has started on it yet.
    first: bool,
}

impl Parked {
    /// A connection just accepted: nothing received yet.
    pub fn new(info: ClientInfo, config: Arc<ConnConfig>, now: Instant) -> Parked {
        Parked {
            request_id_base: config
                .request_id_seed
                .map(|seed| request_id::connection_base(seed, info.peer, info.local, now)),
            config,
            info,
            proxied: None,
            requests: 0,
            idle_since: now,
            first: true,
        }
    }

    /// A machine for this connection, exactly as the parked one was: `spare` (a machine
    /// that [`Conn::park`]ed or [`Conn::retire`]d, of any connection) lends its box and its
    /// allocations, so waking does not call the allocator once the worker is warm.
    pub fn wake(&self, spare: Option<Box<Conn>>) -> Box<Conn> {
        let fresh = Conn::from_parked(self.clone());
        match spare {
            None => Box::new(fresh),
            Some(mut conn) => {
                let old = std::mem::replace(&mut *conn, fresh);
                conn.adopt(old);
                conn
            }
        }
    }

    /// As [`Conn::deadline`] for the idle machine: the keep-alive timeout (or, before the
    /// first request, the request-head timeout) from when it went idle.
    pub fn deadline(&self) -> Instant {
        let t = &self.config.timeouts;
        let timeout = if self.first {
            t.request_head
        } else {
            t.keep_alive
        };
        self.idle_since + timeout
    }

    /// As [`Conn::peer_addr`].
    pub fn peer_addr(&self) -> SocketAddr {
        self.proxied.unwrap_or(self.info.peer)
    }

    /// As [`Conn::set_proxied`].
    pub fn set_proxied(&mut self, source: SocketAddr) {
        self.proxied = Some(source);
    }
}

/// The pipeline stages, in the order a request meets them:
///
/// 1. `start_request`: scan and parse the head, route it, write the upstream head (or answer
///    locally), ask for an upstream connection.
/// 2. `pump`: stream the request body up and the response (head, then body) down, each through
///    a bounded buffer; a full buffer stops the stage that fills it (backpressure).
/// 3. `complete_exchange`: release the upstream connection, then keep alive or close.
/// 4. `drive_closing`: flush, FIN, linger, close.
impl Conn {
    /// Runs stages until none can progress. Bounded: every turn consumes input or changes
    /// state, and both are finite.
    fn drive(&mut self, now: Instant, router: &mut dyn Router) {
        if let Some(pace) = &mut self.pace {
            pace.tick(now);
        }
        loop {
            let progressed = match self.state {
                State::Head { .. } => self.try_start_request(now, router),
                State::Connecting { .. } => self.pump_request_body(),
                State::Authorizing { .. } => false,
                State::Proxying { .. } => self.pump(now, router),
                State::Tunnel { .. } => self.pump_tunnel(),
                State::Closing { .. } => {
                    self.drive_closing();
                    false
                }
                State::Closed => false,
            };
            if !progressed {
                break;
            }
        }
    }

    fn try_start_request(&mut self, now: Instant, router: &mut dyn Router) -> bool {
        if self.cin.is_empty() {
            if self.client_eof || self.shutting_down && self.cout.is_flushed() {
                self.enter_closing(false);
                return true;
            }
            self.cin.release_if_empty();
            self.uin.release_if_empty();
            self.cout.release_if_empty();
            self.uout.release_if_empty();
            // Kept (emptied) when small: the next request's head goes into it without an
            // allocation.
            self.replay.clear();
            if self.replay.capacity() > IDLE_KEEP_CAPACITY {
                self.replay = Vec::new();
            }
            if let Some(spare) = &mut self.spare_exchange
                && spare.error_head.capacity() > IDLE_KEEP_CAPACITY
            {
                spare.error_head = Vec::new();
            }
            return false;
        }
        // Pipelined requests are answered in order: the next head waits for the previous
        // response to leave, which also bounds what one connection can queue.
        if !self.cout.is_flushed() {
            return false;
        }
        if let State::Head { started, .. } = &mut self.state
            && started.is_none()
        {
            *started = Some(now);
            // The previous response is flushed: its pacing is over.
            self.pace = None;
            self.in_mark = self.cin.consumed;
            self.out_mark = self.cout.total();
            // A new request: nothing of the last one's record may be logged for it (a head
            // that times out or fails to parse is logged with empty fields).
            let r = &mut self.record;
            r.method.clear();
            r.host.clear();
            r.path.clear();
            r.query.clear();
            r.protocol = "";
            r.referer.clear();
            r.user_agent.clear();
            r.request_id.clear();
            r.route.clear();
        }
        // Fast path: a head that arrived whole is parsed in one pass, no incremental scan.
        if self.head_fresh {
            self.head_fresh = false;
            if self.start_request(None, now, router) {
                return true;
            }
        }
        match self
            .scanner
            .scan_request(self.cin.bytes(), &self.config.limits)
        {
            Err(err) => {
                self.fail(err, now, true);
                true
            }
            Ok(Scan::Partial) if self.client_eof => {
                // The rest of this head will never come.
                self.cin.clear();
                self.enter_closing(false);
                true
            }
            Ok(Scan::Partial) => false,
            Ok(Scan::Complete(len)) => self.start_request(Some(len), now, router),
        }
    }

    /// Stage 1: parse, route and forward (or answer) a complete head. With `scanned` the
    /// scanner found the head's length; without it, try the whole-head fast path, and return
    /// false (having done nothing) if it does not apply.
    fn start_request(
        &mut self,
        scanned: Option<usize>,
        now: Instant,
        router: &mut dyn Router,
    ) -> bool {
        // The body limit is the route's: checked once the route is known.
        let limits = &Limits {
            max_body_bytes: None,
            ..self.config.limits.clone()
        };
        let mut storage = uninit_headers();
        let parsed = match scanned {
            None => match parse_whole_request_head(self.cin.bytes(), limits, &mut storage) {
                Some(parsed) => parsed,
                None => return false,
            },
            Some(len) => parse_request_head_uninit(&self.cin.bytes()[..len], limits, &mut storage),
        };
        let head = match parsed {
            Ok(head) => head,
            Err(err) => {
                if self.config.record_requests {
                    self.record = RequestRecord::default();
                }
                self.fail(err, now, true);
                return true;
            }
        };
        let len = scanned.unwrap_or(head.len);
        self.scanner.reset();
        if self.config.record_requests {
            let r = &mut self.record;
            r.method.clear();
            r.method.push_str(head.method);
            r.host.clear();
            r.host.push_str(head.host());
            r.path.clear();
            r.path.push_str(head.path());
            r.query.clear();
            r.query.push_str(head.query().unwrap_or(""));
            r.protocol = match head.version {
                Version::Http10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            };
            r.referer.clear();
            r.user_agent.clear();
            for h in head.headers.iter() {
                let field = if h.name.eq_ignore_ascii_case("referer") {
                    &mut r.referer
                } else if h.name.eq_ignore_ascii_case("user-agent") {
                    &mut r.user_agent
                } else {
                    continue;
                };
                if field.is_empty() {
                    field.push_str(&String::from_utf8_lossy(h.value));
                }
            }
            r.request_id.clear();
        }
        self.record.route.clear();
        let peer = self.peer_addr().ip().to_canonical();
        self.client_ip = if self.config.forwarded.enabled() {
            let xff = head
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                .map(|h| h.value);
            self.config.forwarded.client(peer, xff)
        } else {
            peer
        };
        let req = RequestMeta {
            version: head.version,
            head_request: head.is_head(),
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            // Decided once the route is known (its policy may allow other protocols).
            upgrade: false,
            has_body: head.framing != Framing::None,
            idempotent: retry::idempotent(head.method),
        };
        if self.config.scheme == Scheme::Http && router.redirect_https(head.host()) {
            // ingress-nginx answers a location's `return` (redirects, app-root, the CORS
            // preflight) before its SSL redirect; address lists and auth come after it.
            if let Some(rp) = router
                .policy_of(head.host(), head.path())
                .and_then(|p| p.request.clone())
            {
                let client = self.client_ip;
                let verdict = rp.verdict(&request_view(&head, self.config.scheme.as_str(), client));
                if matches!(
                    verdict,
                    Verdict::Redirect { .. } | Verdict::Preflight { .. }
                ) {
                    self.cin.consume(len);
                    self.answer_policy(verdict, &rp, req, now);
                    return true;
                }
            }
            let close = req.has_body || !req.keep_alive || self.shutting_down || self.client_eof;
            let out = &mut self.cout.queued;
            let server = self.config.server.as_deref();
            if local::write_https_redirect(&head, self.config.https_port, close, server, out) {
                self.scanner.reset();
                self.cin.consume(len);
                self.completed(308, None);
                if close {
                    self.enter_closing(req.has_body);
                } else {
                    self.enter_idle(now);
                }
                return true;
            }
        }
        let key = RequestKey {
            head: &head,
            ip: self.client_ip,
        };
        let mut decision = router.route_request(head.host(), head.path(), &key, now);
        let mut req = req;
        let policy = match &mut decision {
            RouteDecision::Forward {
                policy, backend, ..
            } => {
                // `namespace/ingress/service:port` (the Ingress and its Services share the
                // namespace); a default backend without an Ingress: `namespace/service:port`.
                if let Some(name) = router.backend_name(*backend) {
                    match (router.routed_ingress(), name.split_once('/')) {
                        (Some(ingress), Some((_, service))) => {
                            self.record.route.push_str(ingress);
                            self.record.route.push('/');
                            self.record.route.push_str(service);
                        }
                        _ => self.record.route.push_str(name),
                    }
                }
                policy.take()
            }
            RouteDecision::NoEndpoints => router.policy_of(head.host(), head.path()),
            RouteDecision::NotFound => None,
        };
        // Cookie affinity: what the request's cookie named, the rule's path, the client.
        let sticky = match policy.as_deref().and_then(|p| p.affinity.as_ref()) {
            Some(a) => (
                a.requested(key.header("cookie")),
                match a.path {
                    Some(_) => String::new(),
                    None => router
                        .rule_path(head.host(), head.path())
                        .unwrap_or("/")
                        .to_string(),
                },
                a.conditional_samesite_none
                    && key
                        .header("user-agent")
                        .is_some_and(affinity::samesite_none_incompatible),
            ),
            None => (None, String::new(), false),
        };
        // Only an allowed protocol becomes a tunnel; any other upgrade request (h2c above
        // all) goes upstream as plain HTTP/1.1, its Upgrade and HTTP2-Settings stripped.
        req.upgrade = head
            .upgrade
            .is_some_and(|proto| upgrades_of(&self.config, &policy).allows(proto));
        // Request policy (redirects, preflights, address lists): may answer here.
        let request_policy = policy.as_ref().and_then(|p| p.request.clone());
        let mut cors_origin = None;
        let mut rewritten = None;
        let mut waive_ext_auth = false;
        if let Some(rp) = request_policy.as_deref() {
            let view = request_view(&head, self.config.scheme.as_str(), self.client_ip);
            let verdict = rp.verdict(&view);
            // Rate and connection limits run after the rewrite phase's answers (redirects,
            // preflight) and before the access phase (address lists, auth), as nginx's
            // limit_req / limit_conn (preaccess phase).
            if !matches!(
                verdict,
                Verdict::Redirect { .. } | Verdict::Preflight { .. }
            ) && let Some(limits) = &rp.limits
            {
                match limits.admit(view.client, now) {
                    Ok(ticket) => self.limit_ticket = ticket,
                    Err(_) => {
                        self.cin.consume(len);
                        self.answer_locally(Status(self.config.limit_status), req, now);
                        return true;
                    }
                }
            }
            waive_ext_auth = verdict == Verdict::Satisfied;
            if !matches!(verdict, Verdict::Pass | Verdict::Satisfied) {
                self.cin.consume(len);
                self.answer_policy(verdict, rp, req, now);
                return true;
            }
            cors_origin = rp.cors.as_ref().and_then(|c| c.allow_origin(view.origin));
            rewritten = rp.rewrite(head.path(), head.query());
        }
        // Custom errors: the route's backend has no endpoints, its error backend answers.
        let errors = request_policy.as_deref().and_then(|p| p.errors.as_ref());
        let routed_backend = match &decision {
            RouteDecision::Forward { backend, .. } => Some(*backend),
            _ => router.routed_backend(),
        };
        let mut error_first = None;
        if let RouteDecision::NoEndpoints = decision
            && let Some(errors) = errors.filter(|e| e.on_no_endpoints())
            && let Some(backend) = errors.backend
            && let Some(endpoint) = router.retry_pick(backend, &[], now)
        {
            error_first = Some(503);
            decision = RouteDecision::Forward {
                backend,
                endpoint,
                policy: None,
            };
            // The error request is never a tunnel, and has no body: the client's is left
            // unread, then we close.
            req.upgrade = false;
            if req.has_body {
                req.has_body = false;
                req.keep_alive = false;
            }
        }
        let max_body = match policy.as_deref().and_then(|p| p.max_body_bytes) {
            Some(route) => route,
            None => self.config.limits.max_body_bytes,
        };
        if let (RouteDecision::Forward { .. }, Framing::Length(n)) = (&decision, head.framing)
            && max_body.is_some_and(|max| n > max)
        {
            self.fail(HttpError::client(413, "request body too large"), now, true);
            return true;
        }
        let limits = &Limits {
            max_body_bytes: max_body,
            ..limits.clone()
        };
        let mut error_head = self
            .spare_exchange
            .as_mut()
            .map(|spare| std::mem::take(&mut spare.error_head))
            .unwrap_or_default();
        error_head.clear();
        let body = req.has_body.then(|| {
            (
                BodyDecoder::new(head.framing, Peer::Client, limits),
                BodyEncoder::new(head.framing),
            )
        });
        // `auth-url`: the subrequest and signin location; `mirror-target`: the copy.
        let mut auth_wait = None;
        let mut mirror = None;
        if let RouteDecision::Forward { .. } = decision {
            let mut generated = [0u8; 32];
            let request_id = match self.request_id_base {
                None => "",
                Some(base) => request_id::incoming(head.headers)
                    .unwrap_or_else(|| request_id::generate(base, self.requests, &mut generated)),
            };
            self.requests += 1;
            if self.config.record_requests {
                self.record.request_id.push_str(request_id);
            }
            let info = ForwardInfo {
                client_ip: peer,
                proto: self.config.scheme.as_str(),
                port: self.info.local.port(),
                tunnel: req.upgrade,
                request_id,
            };
            self.uout.reset();
            let edits = UpstreamEdits {
                target: rewritten.as_deref(),
                forwarded_prefix: request_policy
                    .as_deref()
                    .and_then(|p| p.forwarded_prefix.as_deref()),
                real_ip: Some(self.client_ip),
            };
            write_upstream_request_edited(&head, &info, &edits, &mut self.uout.queued);
            let vhost = policy.as_deref().and_then(|p| p.upstream_vhost.as_deref());
            if let Some(host) = vhost {
                vhost::replace_host(&mut self.uout.queued, 0, host);
            }
            if let Some(rp) = request_policy.as_deref() {
                let origin = Origin::of(&head, self.config.scheme.as_str(), self.client_ip);
                auth_wait = rp
                    .ext_auth
                    .as_ref()
                    .filter(|_| !waive_ext_auth)
                    .and_then(|a| a.call(&origin, request_id));
                mirror = rp
                    .mirror
                    .as_ref()
                    .map(|m| m.call(&origin, head.framing, &self.cin.bytes()[len..]));
            }
            if let Some(set) = &self.config.request_headers {
                set.apply(&mut self.uout.queued, 0);
            }
            if let Some(rp) = request_policy.as_deref() {
                if let Some(set) = &rp.request_headers {
                    set.apply(&mut self.uout.queued, 0);
                }
                if let Some(c) = &rp.connection
                    && !req.upgrade
                {
                    c.apply(&mut self.uout.queued, 0);
                }
            }
            if let Some(errors) = errors
                && errors.backend.is_some()
            {
                let ctx = ErrorContext {
                    path: head.path(),
                    query: head.query(),
                    accept: key.header("accept"),
                    ingress: router.routed_ingress(),
                    backend: routed_backend.and_then(|b| router.backend_name(b)),
                };
                custom_errors::prepare(&self.uout.queued, &ctx, &mut error_head);
                if let Some(code) = error_first {
                    self.uout.queued.clear();
                    custom_errors::finish(&error_head, code, &mut self.uout.queued);
                }
            }
            self.upstream_host.clear();
            if policy.as_deref().is_some_and(|p| p.upstream_tls.is_some()) {
                self.upstream_host.push_str(vhost.unwrap_or(head.host()));
            }
        }
        self.cin.consume(len);

        let (backend, endpoint) = match decision {
            RouteDecision::Forward {
                backend, endpoint, ..
            } => (backend, endpoint),
            RouteDecision::NotFound => {
                self.answer_locally(Status::NOT_FOUND, req, now);
                return true;
            }
            RouteDecision::NoEndpoints => {
                self.answer_locally(Status::SERVICE_UNAVAILABLE, req, now);
                return true;
            }
        };
        // Kept for a replay on a fresh connection, or a retry elsewhere: a bodiless head
        // always; a head with a body only when the route may retry (its body follows, in
        // `pump_request_body`, up to `buffer_size`).
        self.replay.clear();
        let retries = next_upstream(&policy);
        let keep = !req.upgrade
            && (!req.has_body || !retries.conditions.is_off() && retries.tries != 1)
            && self.uout.queued.len() <= self.config.buffer_size;
        if keep {
            self.replay.extend_from_slice(&self.uout.queued);
        }
        self.replayable = keep;
        let (mut attempts, mut sticky_path) = self
            .spare_exchange
            .as_mut()
            .map(|spare| {
                (
                    std::mem::take(&mut spare.attempts),
                    std::mem::take(&mut spare.sticky_path),
                )
            })
            .unwrap_or_default();
        attempts.start(endpoint, now);
        sticky_path.clear();
        sticky_path.push_str(&sticky.1);
        self.uin.clear();
        self.upstream_mark = self.uin.consumed;
        self.upstream_eof = false;
        if auth_wait.is_none() {
            if let Some(call) = mirror.take() {
                self.actions.push_back(Action::Mirror(call));
            }
            let tls = policy.as_deref().and_then(|p| p.upstream_tls.clone());
            self.connect(endpoint, false, tls);
        }
        let exchange = Exchange {
            req,
            backend,
            endpoint,
            attempts,
            continued: false,
            sticky: sticky.0,
            sticky_path,
            old_client: sticky.2,
            reused: false,
            retried: false,
            policy,
            body,
            response: Response::Head,
            status: 0,
            response_started: false,
            head_pending: None,
            waiting_since: now,
            cors_origin,
            auth_cookie: None,
            error_head,
            error_code: error_first,
        };
        let ex = match self.spare_exchange.take() {
            Some(mut spare) => {
                *spare = exchange;
                spare
            }
            None => Box::new(exchange),
        };
        self.state = match auth_wait {
            None => State::Connecting { ex, since: now },
            Some((call, signin)) => {
                self.actions.push_back(Action::Authorize(call));
                // A mirror copy waits for the decision (ingress-nginx mirrors after access).
                self.pending_mirror = mirror;
                State::Authorizing {
                    ex,
                    since: now,
                    signin,
                }
            }
        };
        true
    }

    /// The auth service's decision for the request waiting in [`State::Authorizing`]
    /// (ignored in any other state: it came too late).
    pub fn auth_done(&mut self, decision: AuthDecision, now: Instant, router: &mut dyn Router) {
        if matches!(self.state, State::Authorizing { .. }) {
            self.auth_answer(decision, now, router);
        }
    }

    /// Goes on with the request after `decision`: upstream (with the auth answer's fields)
    /// or answered here.
    fn auth_answer(&mut self, decision: AuthDecision, now: Instant, router: &mut dyn Router) {
        let State::Authorizing { ex, signin, .. } =
            std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        // Until answered below (`Closed` would keep `enter_closing` from working).
        self.state = State::Head {
            idle_since: now,
            first: false,
            started: Some(now),
        };
        let mirror = self.pending_mirror.take();
        let rp = ex.policy.as_deref().and_then(|p| p.request.clone());
        match decision {
            AuthDecision::Allow { fields, cookie } => {
                if let Some(auth) = rp.as_deref().and_then(|r| r.ext_auth.as_deref())
                    && !auth.response_headers.is_empty()
                {
                    let names: Vec<&str> =
                        auth.response_headers.iter().map(String::as_str).collect();
                    local::set_fields(&mut self.uout.queued, 0, &names, &fields);
                    if self.replayable {
                        self.replay.clear();
                        if self.uout.queued.len() <= self.config.buffer_size {
                            self.replay.extend_from_slice(&self.uout.queued);
                        } else {
                            self.replayable = false;
                        }
                    }
                }
                if let Some(call) = mirror {
                    self.actions.push_back(Action::Mirror(call));
                }
                let mut ex = ex;
                ex.auth_cookie = cookie;
                let tls = ex.policy.as_deref().and_then(|p| p.upstream_tls.clone());
                self.connect(ex.endpoint, false, tls);
                self.state = State::Connecting { ex, since: now };
            }
            AuthDecision::Deny {
                status,
                www_authenticate,
                cookie,
            } => {
                let req = ex.req;
                self.spare_exchange = Some(ex);
                match (status, signin, rp) {
                    (401, Some(location), Some(rp)) => {
                        let verdict = Verdict::Redirect {
                            code: 302,
                            location,
                        };
                        let head_start = self.cout.queued.len();
                        self.answer_policy(verdict, &rp, req, now);
                        if let Some(cookie) = cookie {
                            add_set_cookie(&mut self.cout.queued, head_start, &cookie);
                        }
                    }
                    _ => {
                        let head_start = self.cout.queued.len();
                        self.answer_locally(Status(status), req, now);
                        if let Some(value) = www_authenticate {
                            let mut field = b"WWW-Authenticate: ".to_vec();
                            field.extend_from_slice(&value);
                            field.extend_from_slice(b"\r\n");
                            local::set_fields(&mut self.cout.queued, head_start, &[], &field);
                        }
                    }
                }
            }
            AuthDecision::Error => {
                let req = ex.req;
                self.spare_exchange = Some(ex);
                self.answer_locally(Status(500), req, now);
            }
        }
        self.drive(now, router);
    }

    /// A route's request policy answers the request itself (its head is consumed).
    fn answer_policy(
        &mut self,
        verdict: Verdict,
        rp: &crate::core::route::request_policy::RequestPolicy,
        req: RequestMeta,
        now: Instant,
    ) {
        let close = req.has_body || !req.keep_alive || self.shutting_down || self.client_eof;
        let head_start = self.cout.queued.len();
        let server = self.config.server.as_deref();
        let out = &mut self.cout.queued;
        let status = match verdict {
            // Callers answer only other verdicts.
            Verdict::Pass | Verdict::Satisfied => return,
            Verdict::Forbidden => return self.answer_locally(Status(403), req, now),
            Verdict::Unavailable => {
                return self.answer_locally(Status::SERVICE_UNAVAILABLE, req, now);
            }
            Verdict::Unauthorized => {
                let realm = rp.auth.as_ref().map_or("", |a| a.realm.as_str());
                local::write_unauthorized(realm, req.version, close, req.head_request, server, out);
                401
            }
            Verdict::Redirect { code, location } => {
                local::write_redirect(
                    code,
                    &location,
                    req.version,
                    close,
                    req.head_request,
                    server,
                    out,
                );
                code
            }
            Verdict::Preflight { allow_origin } => {
                let fields = rp.cors.as_ref().map_or("", |c| c.fields.as_str());
                local::write_preflight(&allow_origin, fields, req.version, close, server, out);
                204
            }
        };
        if let Some(hsts) = &self.config.hsts {
            local::add_hsts(&[], hsts, head_start, &mut self.cout.queued);
        }
        self.actions.push_back(Action::Completed { status });
        if close {
            self.enter_closing(req.has_body);
        } else {
            self.enter_idle(now);
        }
    }

    /// A response we generate for a request that was parsed but not forwarded (404, 503).
    fn answer_locally(&mut self, status: Status, req: RequestMeta, now: Instant) {
        // The body was not read: its end is unknown unless there was none.
        let close = req.has_body || !req.keep_alive || self.shutting_down || self.client_eof;
        let head_start = self.cout.queued.len();
        local::write_local_response(
            status,
            req.version,
            close,
            req.head_request,
            self.config.server.as_deref(),
            &mut self.cout.queued,
        );
        if let Some(hsts) = &self.config.hsts {
            local::add_hsts(&[], hsts, head_start, &mut self.cout.queued);
        }
        self.completed(status.0, None);
        if close {
            self.enter_closing(req.has_body);
        } else {
            self.enter_idle(now);
        }
    }

    /// Request body: client input → upstream output, while the upstream buffer has room.
    fn pump_request_body(&mut self) -> bool {
        let cap = self.config.buffer_size;
        let ex = match &mut self.state {
            State::Connecting { ex, .. } | State::Proxying { ex } => ex,
            _ => return false,
        };
        let Some((decoder, encoder)) = &mut ex.body else {
            return false;
        };
        let mut progressed = false;
        let mut failure = None;
        let before = self.uout.queued.len();
        while self.uout.pending() < cap {
            match decoder.decode(self.cin.bytes()) {
                Err(err) => {
                    failure = Some(err);
                    break;
                }
                Ok((used, Decoded::Data(data))) => {
                    // As for response bodies: the buffer itself when it is all payload.
                    if self
                        .cin
                        .can_hand_over(used, data.len(), encoder, &self.uout.queued)
                    {
                        self.cin.hand_over(&mut self.uout.queued);
                    } else {
                        encoder.encode(data, &mut self.uout.queued);
                        self.cin.consume(used);
                    }
                    progressed = true;
                }
                Ok((used, Decoded::Done)) => {
                    encoder.finish(decoder.trailers(), &mut self.uout.queued);
                    self.cin.consume(used);
                    ex.body = None;
                    progressed = true;
                    break;
                }
                Ok((used, Decoded::NeedMore)) => {
                    self.cin.consume(used);
                    progressed |= used > 0;
                    break;
                }
            }
        }
        if self.replayable {
            // Keep what was added for a retry, while it fits (see `retry::REPLAY_NOTE`).
            let added = &self.uout.queued[before..];
            if self.replay.len() + added.len() <= cap {
                self.replay.extend_from_slice(added);
            } else {
                self.replayable = false;
                self.replay.clear();
            }
        }
        if let Some(err) = failure {
            let now = self.last_activity;
            self.fail(err, now, true);
            return true;
        }
        progressed
    }

    /// Stage 2 while proxying: both directions, then completion.
    fn pump(&mut self, now: Instant, router: &mut dyn Router) -> bool {
        let mut progressed = self.pump_request_body();
        if !matches!(self.state, State::Proxying { .. }) {
            return progressed;
        }
        progressed |= self.pump_response(now, router);
        let State::Proxying { ex } = &self.state else {
            return progressed;
        };
        if let Response::Done { .. } = ex.response {
            if ex.request_done() && !self.uout.is_flushed() {
                // The upstream answered while our last request bytes are still being written:
                // wait for the write so the connection goes back to the pool in a clean state.
                return progressed;
            }
            self.complete_exchange(now);
            return true;
        }
        progressed
    }

    fn pump_response(&mut self, now: Instant, router: &mut dyn Router) -> bool {
        let cap = self.config.buffer_size;
        let mut progressed = false;
        loop {
            let State::Proxying { ex } = &mut self.state else {
                return progressed;
            };
            match &mut ex.response {
                Response::Done { .. } => return progressed,
                Response::Head => {
                    if self.uin.is_empty() {
                        return progressed;
                    }
                    let len = match self
                        .scanner
                        .scan_response(self.uin.bytes(), &self.config.limits)
                    {
                        Ok(Scan::Partial) => return progressed,
                        Ok(Scan::Complete(len)) => len,
                        Err(err) => {
                            self.scanner.reset();
                            if !self.try_retry(Failure::InvalidHeader, now, router) {
                                self.fail(err, now, false);
                            }
                            return true;
                        }
                    };
                    self.scanner.reset();
                    if !self.start_response(len, now, router) {
                        return true;
                    }
                    progressed = true;
                }
                Response::Body {
                    decoder,
                    encoder,
                    keep_alive,
                    reusable,
                    ..
                } => {
                    if self.cout.pending() >= cap {
                        return progressed;
                    }
                    match decoder.decode(self.uin.bytes()) {
                        Err(err) => {
                            if let Some(at) = ex.head_pending {
                                // The head has not left yet: take it (and any body after it)
                                // back and answer 502 instead.
                                self.cout.queued.truncate(at);
                                ex.response_started = false;
                                self.fail(err, now, false);
                            } else {
                                // Mid-body: the client already has a head, so it can only be
                                // cut.
                                self.abort();
                            }
                            return true;
                        }
                        Ok((used, Decoded::Data(data))) => {
                            // The whole input is payload that goes out as it is: the buffer
                            // itself goes to the client's queue when that is empty (a large
                            // body is not copied a second time in user space).
                            if self
                                .uin
                                .can_hand_over(used, data.len(), encoder, &self.cout.queued)
                            {
                                self.uin.hand_over(&mut self.cout.queued);
                            } else {
                                encoder.encode(data, &mut self.cout.queued);
                                self.uin.consume(used);
                            }
                            progressed = true;
                        }
                        Ok((used, Decoded::Done)) => {
                            encoder.finish(decoder.trailers(), &mut self.cout.queued);
                            self.uin.consume(used);
                            ex.response = Response::Done {
                                keep_alive: *keep_alive,
                                reusable: *reusable,
                            };
                            return true;
                        }
                        Ok((used, Decoded::NeedMore)) => {
                            self.uin.consume(used);
                            if self.upstream_eof && self.uin.is_empty() {
                                // Close-delimited bodies end exactly here; others are cut short.
                                if decoder.eof().is_err() {
                                    self.abort();
                                    return true;
                                }
                                encoder.finish(&[], &mut self.cout.queued);
                                // The client's framing did not depend on the close (it was
                                // re-chunked or is close-delimited, in which case
                                // `keep_alive` is already false).
                                ex.response = Response::Done {
                                    keep_alive: *keep_alive,
                                    reusable: false,
                                };
                                return true;
                            }
                            return progressed || used > 0;
                        }
                    }
                }
            }
        }
    }

    /// The response head is complete in `uin[..len]`. Returns false if the exchange failed.
    fn start_response(&mut self, len: usize, now: Instant, router: &mut dyn Router) -> bool {
        let State::Proxying { ex } = &self.state else {
            return false;
        };
        let limits = &self.config.limits;
        let mut storage = uninit_headers();
        let ctx = RequestContext {
            head_request: ex.req.head_request,
            upgrade_requested: ex.req.upgrade,
        };
        let resp =
            match parse_response_head_uninit(&self.uin.bytes()[..len], limits, &mut storage, ctx) {
                Ok(resp) => resp,
                Err(err) => {
                    if !self.try_retry(Failure::InvalidHeader, now, router) {
                        self.fail(err, now, false);
                    }
                    return false;
                }
            };
        if !resp.is_interim() {
            self.report(resp.status < 500, now, router);
        }
        // A status the route retries: the head is dropped before the client sees any of it.
        if !resp.is_interim()
            && let Some(endpoint) = self.retry_target(Failure::Status(resp.status), now, router)
        {
            self.retry_to(endpoint, now);
            return false;
        }
        // A status the route sends to its error backend: dropped before the client sees it.
        if !resp.is_interim()
            && resp.status != 101
            && let Some((backend, endpoint)) = self.error_target(resp.status, now, router)
        {
            self.send_error(resp.status, backend, endpoint, now);
            return false;
        }
        let State::Proxying { ex } = &mut self.state else {
            return false;
        };
        if resp.is_interim() {
            // 100 Continue and friends: we answered the client's expectation ourselves.
            self.uin.consume(len);
            return true;
        }
        if resp
            .upgrade
            .is_some_and(|proto| !upgrades_of(&self.config, &ex.policy).allows(proto))
        {
            // We only asked for allowed protocols; the upstream may not switch to another.
            self.fail(
                HttpError::upstream(502, "101 to a protocol that is not relayed"),
                now,
                false,
            );
            return false;
        }
        let client = ClientSide {
            version: ex.req.version,
            // A request body still arriving when the answer starts means we will close.
            keep_alive: ex.req.keep_alive
                && ex.request_done()
                && !self.shutting_down
                && !self.client_eof,
            head_request: ex.req.head_request,
            server: self.config.server.as_deref(),
        };
        let head_start = self.cout.queued.len();
        let framing = write_client_response(&resp, &client, &mut self.cout.queued);
        if let Some(hsts) = &self.config.hsts {
            local::add_hsts(resp.headers, hsts, head_start, &mut self.cout.queued);
        }
        if let Some(origin) = &ex.cors_origin
            && let Some(cors) = ex
                .policy
                .as_deref()
                .and_then(|p| p.request.as_deref())
                .and_then(|r| r.cors.as_ref())
        {
            let block = format!("Access-Control-Allow-Origin: {origin}\r\n{}", cors.fields);
            local::set_fields(
                &mut self.cout.queued,
                head_start,
                &crate::core::route::request_policy::CORS_FIELDS,
                block.as_bytes(),
            );
        }
        if let Some(cookie) = &ex.auth_cookie
            && crate::core::route::ext_auth::adds_header(resp.status)
        {
            add_set_cookie(&mut self.cout.queued, head_start, cookie);
        }
        if let Some(set) = ex
            .policy
            .as_deref()
            .and_then(|p| p.request.as_deref())
            .and_then(|r| r.response_headers.as_ref())
            && resp.status != 101
        {
            set.apply(&mut self.cout.queued, head_start);
        }
        if let Some(a) = ex.policy.as_deref().and_then(|p| p.affinity.as_ref())
            && resp.status != 101
            && ex.error_code.is_none()
        {
            // A new cookie unless the client's already names this endpoint (or, after a
            // retry without `change-on-failure`, the endpoint it was pinned to).
            let first = ex.attempts.tried().first().copied();
            let mut names = |ep: SocketAddr| {
                ex.sticky
                    .is_some_and(|id| router.affinity_names(ex.backend, a.mode, id, ep, now))
            };
            let keep = names(ex.endpoint) || !a.change_on_failure && first.is_some_and(names);
            let value = match keep {
                true => None,
                false => router.affinity_value(ex.backend, a.mode, ex.endpoint),
            };
            if let Some(id) = value {
                let ctx = affinity::CookieContext {
                    rule_path: &ex.sticky_path,
                    https: self.config.scheme == Scheme::Https,
                    unix_now: router.unix_time(now),
                    old_client: ex.old_client,
                };
                let value = affinity::set_cookie(a, id, &ctx);
                affinity::insert_field(&mut self.cout.queued, head_start, "Set-Cookie", &value);
            }
        }
        if let Some(limit) = ex
            .policy
            .as_deref()
            .and_then(|p| p.request.as_deref())
            .and_then(|r| r.limit_rate)
            && resp.status != 101
        {
            // Counted from this head (nginx counts what the connection sent).
            let pacer = Pacer::new(limit, now);
            match &mut self.pace {
                Some(p) => **p = pacer,
                None => self.pace = Some(Box::new(pacer)),
            }
        }
        ex.status = resp.status;
        ex.response_started = true;
        ex.head_pending = (!self.cout.sending).then_some(head_start);
        let upgraded = resp.status == 101;
        let reusable = resp.reusable;
        let upstream_framing = resp.framing;
        let stream = resp.streams();
        self.uin.consume(len);
        if upgraded {
            let r = &mut self.record;
            r.bytes_in = self.cin.consumed - self.in_mark;
            r.bytes_out = self.cout.total() - self.out_mark;
            r.upstream_status = Some(101);
            r.upstream_bytes = self.uin.consumed - self.upstream_mark;
            self.actions.push_back(Action::Completed { status: 101 });
            let p = ex.policy.as_deref();
            let idle = p
                .and_then(|p| p.read_timeout.or(p.send_timeout))
                .unwrap_or(self.config.timeouts.body_idle);
            self.state = State::Tunnel { idle };
            return true;
        }
        ex.response = Response::Body {
            decoder: BodyDecoder::new(upstream_framing, Peer::Upstream, limits),
            encoder: BodyEncoder::new(framing.framing),
            keep_alive: framing.keep_alive,
            reusable,
            stream,
        };
        true
    }

    /// Stage 3: the response is fully queued for the client.
    fn complete_exchange(&mut self, now: Instant) {
        let State::Proxying { ex } = &self.state else {
            return;
        };
        let Response::Done {
            keep_alive,
            reusable,
        } = ex.response
        else {
            return;
        };
        let status = ex.status;
        let request_done = ex.request_done();
        // `connection-proxy-header: close` told the upstream not to keep the connection.
        let told_close = ex
            .policy
            .as_deref()
            .and_then(|p| p.request.as_deref())
            .and_then(|r| r.connection.as_ref())
            .is_some_and(|c| c.closes());
        // The upstream answered before it had the whole request, or sent more than one
        // response: its connection is in an unknown state.
        let reusable = reusable
            && !told_close
            && request_done
            && self.uout.is_flushed()
            && self.uin.is_empty();
        self.release_upstream(reusable);
        self.completed(status, Some(status));
        if keep_alive && request_done && !self.shutting_down && !self.client_eof {
            self.enter_idle(now);
        } else {
            self.enter_closing(!request_done || !self.cin.is_empty());
        }
    }

    /// After a 101: copy bytes both ways, bounded by the buffers.
    fn pump_tunnel(&mut self) -> bool {
        let cap = self.config.buffer_size;
        let mut progressed = false;
        let room = cap.saturating_sub(self.uout.pending()).min(self.cin.len());
        if room > 0 {
            self.uout
                .queued
                .extend_from_slice(&self.cin.bytes()[..room]);
            self.cin.consume(room);
            progressed = true;
        }
        let room = cap.saturating_sub(self.cout.pending()).min(self.uin.len());
        if room > 0 {
            self.cout
                .queued
                .extend_from_slice(&self.uin.bytes()[..room]);
            self.uin.consume(room);
            progressed = true;
        }
        progressed
    }

    fn upstream_lost(&mut self, now: Instant, router: &mut dyn Router, clean_eof: bool) {
        self.last_activity = now;
        match &mut self.state {
            State::Proxying { ex } => {
                let nothing_received = matches!(ex.response, Response::Head) && self.uin.is_empty();
                if nothing_received
                    && ex.reused
                    && !ex.retried
                    && !ex.req.has_body
                    && !self.replay.is_empty()
                {
                    // A pooled connection the upstream had already closed: the request never
                    // reached it. Replay it once on a fresh connection.
                    ex.retried = true;
                    let endpoint = ex.endpoint;
                    let tls = ex.policy.as_deref().and_then(|p| p.upstream_tls.clone());
                    self.release_upstream(false);
                    self.connect(endpoint, true, tls);
                    self.uout.queued.extend_from_slice(&self.replay);
                    let State::Proxying { ex } = std::mem::replace(&mut self.state, State::Closed)
                    else {
                        return;
                    };
                    self.state = State::Connecting { ex, since: now };
                    return;
                }
                let head_pending = matches!(ex.response, Response::Head);
                if head_pending
                    && (self.try_retry(Failure::Error, now, router)
                        || self.intercept_error(502, now, router))
                {
                    self.drive(now, router);
                    return;
                }
                let State::Proxying { ex } = &mut self.state else {
                    return;
                };
                match ex.response {
                    Response::Body { .. } if clean_eof => self.upstream_eof = true,
                    Response::Body { .. } => self.abort(),
                    _ => self.fail(
                        HttpError::upstream(
                            502,
                            "upstream closed the connection before responding",
                        ),
                        now,
                        false,
                    ),
                }
            }
            State::Tunnel { .. } => {
                // Deliver what the upstream said last, then close.
                self.pump_tunnel();
                self.release_upstream(false);
                self.enter_closing(false);
            }
            _ => return,
        }
        self.drive(now, router);
    }

    /// Custom errors: when the route sends `status` to its error backend (and nothing of the
    /// answer has reached the client, and the whole request was sent), drops the current
    /// upstream and sends the error request instead. False (nothing changed) otherwise, also
    /// when the error backend has no endpoint: then the answer passes as it is.
    fn intercept_error(&mut self, status: u16, now: Instant, router: &mut dyn Router) -> bool {
        match self.error_target(status, now, router) {
            Some((backend, endpoint)) => {
                self.send_error(status, backend, endpoint, now);
                true
            }
            None => false,
        }
    }

    /// The error backend and endpoint `status` goes to (see [`Conn::intercept_error`]).
    fn error_target(
        &self,
        status: u16,
        now: Instant,
        router: &mut dyn Router,
    ) -> Option<(BackendId, SocketAddr)> {
        let (State::Connecting { ex, .. } | State::Proxying { ex }) = &self.state else {
            return None;
        };
        if ex.error_code.is_some()
            || ex.error_head.is_empty()
            || ex.response_started
            || !ex.request_done()
        {
            return None;
        }
        let errors = ex
            .policy
            .as_deref()
            .and_then(|p| p.request.as_deref())
            .and_then(|r| r.errors.as_ref());
        let backend = errors
            .filter(|e| e.intercepts(status))
            .and_then(|e| e.backend)?;
        Some((backend, router.retry_pick(backend, &[], now)?))
    }

    /// Drops the current upstream and sends the error request for `status` to `endpoint` of
    /// the error backend `backend`.
    fn send_error(&mut self, status: u16, backend: BackendId, endpoint: SocketAddr, now: Instant) {
        self.release_upstream(false);
        self.scanner.reset();
        let mut ex = match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting { ex, .. } | State::Proxying { ex } => ex,
            other => {
                self.state = other;
                return;
            }
        };
        ex.error_code = Some(status);
        ex.backend = backend;
        ex.endpoint = endpoint;
        ex.attempts.add(endpoint);
        ex.reused = false;
        ex.retried = false;
        ex.req.has_body = false;
        ex.req.upgrade = false;
        ex.response = Response::Head;
        ex.status = 0;
        ex.head_pending = None;
        ex.waiting_since = now;
        ex.cors_origin = None;
        self.uout.reset();
        custom_errors::finish(&ex.error_head, status, &mut self.uout.queued);
        // A pooled connection found dead is replayed once; never retried elsewhere.
        self.replay.clear();
        self.replay.extend_from_slice(&self.uout.queued);
        self.replayable = false;
        // The error backend is another Service: plain HTTP, whatever the route's pods speak.
        self.connect(endpoint, false, None);
        self.state = State::Connecting { ex, since: now };
    }

    /// Passes the failed attempt to another endpoint if the route's `proxy-next-upstream`
    /// and the request allow it ([`retry::decide`]); false (nothing changed) otherwise.
    /// The attempt failed: this is also reported to passive health.
    fn try_retry(&mut self, failure: Failure, now: Instant, router: &mut dyn Router) -> bool {
        self.report(false, now, router);
        match self.retry_target(failure, now, router) {
            Some(endpoint) => {
                self.retry_to(endpoint, now);
                true
            }
            None => false,
        }
    }

    /// Tells passive health (outlier ejection) how the current attempt went.
    fn report(&self, ok: bool, now: Instant, router: &mut dyn Router) {
        if let State::Connecting { ex, .. } | State::Proxying { ex } = &self.state {
            router.report(ex.endpoint, ok, now);
        }
    }

    /// The endpoint a retry of the current exchange goes to, if it may be retried.
    fn retry_target(
        &self,
        failure: Failure,
        now: Instant,
        router: &mut dyn Router,
    ) -> Option<SocketAddr> {
        let (ex, sent) = match &self.state {
            State::Connecting { ex, .. } => (ex, false),
            State::Proxying { ex } => (ex, true),
            _ => return None,
        };
        let policy = next_upstream(&ex.policy);
        if !policy.conditions.covers(failure) {
            return None;
        }
        let facts = retry::Facts {
            idempotent: ex.req.idempotent,
            sent,
            response_started: ex.response_started,
            replayable: self.replayable && !ex.req.upgrade,
        };
        retry::decide(policy, &ex.attempts, failure, facts, now).ok()?;
        router.retry_pick(ex.backend, ex.attempts.tried(), now)
    }

    /// Drops the current upstream connection and sends the request again, from `replay`,
    /// to `endpoint`.
    fn retry_to(&mut self, endpoint: SocketAddr, now: Instant) {
        self.release_upstream(false);
        self.scanner.reset();
        let ex = match std::mem::replace(&mut self.state, State::Closed) {
            State::Connecting { ex, .. } | State::Proxying { ex } => ex,
            other => {
                self.state = other;
                return;
            }
        };
        let mut ex = ex;
        ex.attempts.add(endpoint);
        ex.endpoint = endpoint;
        ex.reused = false;
        ex.response = Response::Head;
        ex.status = 0;
        ex.head_pending = None;
        ex.waiting_since = now;
        self.uout.queued.extend_from_slice(&self.replay);
        let tls = ex.policy.as_deref().and_then(|p| p.upstream_tls.clone());
        self.connect(endpoint, false, tls);
        self.state = State::Connecting { ex, since: now };
    }

    /// Report `err` to the client if it still can be, and go on or close.
    ///
    /// `client_stream_doubtful`: the client's byte stream is in an unknown state (a framing
    /// error, a timeout while it sends): close after the response.
    fn fail(&mut self, err: HttpError, now: Instant, client_stream_doubtful: bool) {
        let (req, started, request_done) = match &self.state {
            State::Connecting { ex, .. } | State::Proxying { ex } => {
                (ex.req, ex.response_started, ex.request_done())
            }
            _ => (RequestMeta::UNKNOWN, false, false),
        };
        let in_exchange = matches!(
            self.state,
            State::Connecting { .. } | State::Proxying { .. }
        );
        self.release_upstream(false);
        if started {
            // A response head is already on its way: cut the connection so the client sees
            // a truncated message rather than a wrong one.
            self.abort();
            return;
        }
        let close = client_stream_doubtful
            || err.must_close()
            || in_exchange && !request_done
            || !req.keep_alive
            || self.shutting_down
            || self.client_eof;
        self.cin.consume(if close { self.cin.len() } else { 0 });
        let head_start = self.cout.queued.len();
        local::write_local_response(
            err.status,
            req.version,
            close,
            req.head_request,
            self.config.server.as_deref(),
            &mut self.cout.queued,
        );
        if let Some(hsts) = &self.config.hsts {
            local::add_hsts(&[], hsts, head_start, &mut self.cout.queued);
        }
        self.completed(err.status.0, None);
        if close {
            self.enter_closing(client_stream_doubtful || in_exchange && !request_done);
        } else {
            self.enter_idle(now);
        }
    }

    /// Cut everything: drop the upstream, flush what the client already has queued, close.
    fn abort(&mut self) {
        self.release_upstream(false);
        self.cin.clear();
        self.enter_closing(false);
    }

    fn connect(&mut self, endpoint: SocketAddr, fresh: bool, tls: Option<Arc<UpstreamTls>>) {
        self.has_upstream = true;
        self.upstream_eof = false;
        self.actions.push_back(Action::Connect {
            endpoint,
            fresh,
            tls,
        });
    }

    /// The `Host` the current request is sent upstream with (its own, or `upstream-vhost`):
    /// the TLS name of an [`Action::Connect`] with `tls` when the route sets no
    /// `proxy-ssl-name`. Empty on routes without upstream TLS.
    pub fn upstream_tls_host(&self) -> &str {
        &self.upstream_host
    }

    /// Hands the upstream connection back (to the pool when `reusable`). Whatever was still
    /// buffered for or from it is dropped; a send still in flight stays with the engine.
    fn release_upstream(&mut self, reusable: bool) {
        if self.has_upstream {
            self.has_upstream = false;
            self.actions.push_back(Action::ReleaseUpstream { reusable });
        }
        self.uout.reset();
        self.uin.clear();
    }

    fn enter_idle(&mut self, now: Instant) {
        self.limit_ticket = None;
        self.scanner.reset();
        self.head_fresh = true;
        let done = std::mem::replace(
            &mut self.state,
            State::Head {
                idle_since: now,
                first: false,
                started: None,
            },
        );
        if let State::Connecting { ex, .. } | State::Proxying { ex } = done {
            self.spare_exchange = Some(ex);
        }
    }

    /// Close once the output is flushed. With `linger`, the client may still be sending (a
    /// body we did not read, pipelined requests): after our FIN we keep reading and dropping
    /// its bytes for a while, so a reset does not destroy the response it has not read yet.
    fn enter_closing(&mut self, linger: bool) {
        self.limit_ticket = None;
        if matches!(self.state, State::Closed | State::Closing { .. }) {
            return;
        }
        self.state = State::Closing {
            shut: false,
            linger_until: None,
            linger,
        };
    }

    /// Stage 4: once the output is flushed, FIN; then close at once, or (lingering) once the
    /// client closes too or the linger time is up.
    fn drive_closing(&mut self) {
        let State::Closing {
            shut,
            linger_until,
            linger,
        } = &mut self.state
        else {
            return;
        };
        if !self.cout.is_flushed() {
            return;
        }
        if self.client_eof {
            self.close_now();
            return;
        }
        if !*shut {
            *shut = true;
            self.actions.push_back(Action::ShutdownClientWrite);
            if !*linger {
                self.close_now();
                return;
            }
            *linger_until = Some(self.last_activity + self.config.timeouts.linger);
        }
    }

    fn close_now(&mut self) {
        self.limit_ticket = None;
        if matches!(self.state, State::Closed) {
            return;
        }
        self.cin.clear();
        self.uin.clear();
        self.cout.reset();
        self.uout.reset();
        self.state = State::Closed;
        self.actions.push_back(Action::CloseClient);
    }
}

/// Adds `Set-Cookie: <value>` to the response head at `head_start` (the auth answer's).
fn add_set_cookie(out: &mut Vec<u8>, head_start: usize, value: &[u8]) {
    let mut field = Vec::with_capacity(value.len() + 14);
    field.extend_from_slice(b"Set-Cookie: ");
    field.extend_from_slice(value);
    field.extend_from_slice(b"\r\n");
    local::set_fields(out, head_start, &[], &field);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::http1::Framing;

    /// Input that is all payload, sent as it is, moves to an empty output as the buffer itself
    /// (the same allocation) and counts as consumed; input with framing in it, with bytes
    /// after the payload, consumed from the front, or an output that already holds bytes is
    /// left for the caller to copy.
    #[test]
    fn a_whole_payload_buffer_is_handed_over_not_copied() {
        let plain = BodyEncoder::new(Framing::Length(10));
        let chunked = BodyEncoder::new(Framing::Chunked);
        let mut input = InBuf::default();
        input.extend(b"0123456789");
        let at = input.data.as_ptr();
        let mut out = Vec::new();
        assert!(!input.can_hand_over(10, 10, &chunked, &out));
        assert!(!input.can_hand_over(10, 8, &plain, &out), "framing in it");
        assert!(!input.can_hand_over(9, 9, &plain, &out), "bytes after it");
        assert!(
            !input.can_hand_over(10, 10, &plain, b"x"),
            "output not empty"
        );
        assert!(input.can_hand_over(10, 10, &plain, &out));
        input.hand_over(&mut out);
        assert_eq!(out, b"0123456789");
        assert_eq!(out.as_ptr(), at, "the same buffer, not a copy");
        assert!(input.is_empty());
        assert_eq!(input.consumed, 10);
        input.extend(b"abc");
        input.consume(1);
        assert!(
            !input.can_hand_over(2, 2, &plain, &[]),
            "consumed from the front"
        );
        assert!(
            !InBuf::default().can_hand_over(0, 0, &plain, &[]),
            "nothing to hand"
        );
    }
}
