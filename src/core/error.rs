//! The one error type of the protocol core. Every error knows the status it maps to on the
//! wire, who caused it (client, upstream, us) and whether the connection can continue.

use std::fmt;

/// Who caused an error: decides logging, metrics and whether a retry can help.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Culprit {
    Client,
    Upstream,
    Internal,
}

/// An HTTP status code we generate ourselves.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const BAD_REQUEST: Status = Status(400);
    pub const NOT_FOUND: Status = Status(404);
    pub const REQUEST_TIMEOUT: Status = Status(408);
    pub const PAYLOAD_TOO_LARGE: Status = Status(413);
    pub const URI_TOO_LONG: Status = Status(414);
    pub const HEADER_FIELDS_TOO_LARGE: Status = Status(431);
    pub const NOT_IMPLEMENTED: Status = Status(501);
    pub const BAD_GATEWAY: Status = Status(502);
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    pub const GATEWAY_TIMEOUT: Status = Status(504);
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);

    /// The standard reason phrase, used in generated responses.
    pub fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            301 => "Moved Permanently",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            411 => "Length Required",
            413 => "Content Too Large",
            414 => "URI Too Long",
            417 => "Expectation Failed",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "Unknown",
        }
    }
}

/// A protocol error: the status to answer with and a short, fixed explanation.
///
/// `detail` is static text written by us, never bytes from the peer, so it is safe to log and
/// to put in a generated response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: Status,
    pub culprit: Culprit,
    pub detail: &'static str,
}

impl HttpError {
    pub const fn client(status: u16, detail: &'static str) -> Self {
        HttpError {
            status: Status(status),
            culprit: Culprit::Client,
            detail,
        }
    }

    pub const fn upstream(status: u16, detail: &'static str) -> Self {
        HttpError {
            status: Status(status),
            culprit: Culprit::Upstream,
            detail,
        }
    }

    pub const fn internal(status: u16, detail: &'static str) -> Self {
        HttpError {
            status: Status(status),
            culprit: Culprit::Internal,
            detail,
        }
    }

    /// Errors in message framing leave the byte stream in an unknown state: the connection
    /// must close after the error response. Everything we generate for a client-caused error
    /// closes, which is always safe.
    pub fn must_close(&self) -> bool {
        self.culprit == Culprit::Client
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.0,
            self.status.reason(),
            self.detail
        )
    }
}

impl std::error::Error for HttpError {}
