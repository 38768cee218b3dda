//! HTTP/1.1 on the wire: head parsing (httparse, zero-copy views into the read buffer), strict
//! message framing (RFC 9112 §6), body codecs, and re-emission of heads towards the peer.
//!
//! Parsing goes in two steps so a growing buffer is never re-parsed from the start:
//! [`HeadScanner`] finds the end of the head incrementally (and enforces the size limits), then
//! the head is parsed and validated exactly once.

pub mod body;
pub mod forward;
pub mod local;
pub mod request;
pub mod response;
pub mod scan;
pub mod upgrade;

/// Upper bound on the configurable number of header fields (the size of the stack array that
/// httparse fills).
pub const MAX_HEADERS_CAP: usize = 256;

/// Parser limits. Every limit maps to a specific status when exceeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole head (request line + fields + final CRLF). Exceeded → 431.
    pub max_head_bytes: usize,
    /// Request line alone. Exceeded → 414.
    pub max_request_line: usize,
    /// Number of header fields, at most [`MAX_HEADERS_CAP`]. Exceeded → 431.
    pub max_headers: usize,
    /// Bytes of chunk extensions on one chunk-size line. Exceeded → 400.
    pub max_chunk_ext: usize,
    /// Bytes of the trailer section of a chunked body. Exceeded → 431 (request) / 502 (response).
    pub max_trailer_bytes: usize,
    /// Largest request body accepted; `None` = unlimited. Exceeded → 413.
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 32 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 100,
            max_chunk_ext: 1024,
            max_trailer_bytes: 8 * 1024,
            max_body_bytes: None,
        }
    }
}

/// HTTP versions we speak. Anything else is answered with 505.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a message body is delimited on the wire (RFC 9112 §6.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` (chunked being the final coding).
    Chunked,
    /// Until the sender closes (responses only).
    CloseDelimited,
}

pub use forward::{ForwardInfo, write_upstream_request};
pub use request::{RequestHead, Target, parse_request_head};
pub use scan::{HeadScanner, Scan};
pub use upgrade::Upgrades;
