//! Upstream response heads: strict parsing (the same rules as requests, errors are the
//! upstream's and become 502), the framing of the body that follows (RFC 9112 §6.3), and the
//! head re-emitted towards the client with the body re-framed for the client's version.

use std::mem::MaybeUninit;

use super::forward::{is_hop_by_hop, nominating_fields, push_field, push_framing};
use super::local::push_decimal;
use super::request::{TransferCodings, connection_list, parse_content_length};
use super::{Framing, Limits, MAX_HEADERS_CAP, Version};
use crate::core::error::HttpError;

/// A parsed and validated response head: a view into the read buffer.
#[derive(Clone, Debug)]
pub struct ResponseHead<'b> {
    pub status: u16,
    pub reason: &'b str,
    pub version: Version,
    pub headers: &'b [httparse::Header<'b>],
    /// How the body that follows is delimited.
    pub framing: Framing,
    /// The upstream connection can carry another request after this response.
    pub reusable: bool,
    /// The `Upgrade` field of a 101 (always present: a 101 without one is refused); `None`
    /// for every other status. The caller checks it names a protocol it relays.
    pub upgrade: Option<&'b str>,
    /// Length of the head in bytes.
    pub len: usize,
}

impl ResponseHead<'_> {
    /// 1xx other than 101: an interim response, followed by the real one.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Whether the body must reach the client as it comes, never held back to be sent with
    /// later bytes: a 101 (a tunnel follows), `Content-Type: text/event-stream` (server-sent
    /// events), `X-Accel-Buffering: no` (the upstream asks for it, as nginx honours it), and
    /// a body delimited by the close of the connection (an HTTP/1.0-style stream).
    pub fn streams(&self) -> bool {
        if self.status == 101 || self.framing == Framing::CloseDelimited {
            return true;
        }
        self.headers.iter().any(|h| {
            let value = h.value.trim_ascii();
            if h.name.eq_ignore_ascii_case("content-type") {
                let media = value.split(|&b| b == b';').next().unwrap_or_default();
                media
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"text/event-stream")
            } else if h.name.eq_ignore_ascii_case("x-accel-buffering") {
                value.eq_ignore_ascii_case(b"no")
            } else {
                false
            }
        })
    }
}

/// What the response answers: decides which bodies exist and whether 101 is acceptable.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    pub head_request: bool,
    pub upgrade_requested: bool,
}

/// Parses a complete response head (the caller found its end with the scanner).
pub fn parse_response_head<'b>(
    head: &'b [u8],
    limits: &Limits,
    storage: &'b mut [httparse::Header<'b>],
    req: RequestContext,
) -> Result<ResponseHead<'b>, HttpError> {
    let cap = limits.max_headers.min(MAX_HEADERS_CAP).min(storage.len());
    let mut resp = httparse::Response::new(&mut storage[..cap]);
    let parsed = resp.parse(head);
    finish_response(resp, parsed, req)
}

/// [`parse_response_head`] over uninitialised storage (see
/// [`super::request::uninit_headers`]).
pub fn parse_response_head_uninit<'b>(
    head: &'b [u8],
    limits: &Limits,
    storage: &'b mut [MaybeUninit<httparse::Header<'b>>],
    req: RequestContext,
) -> Result<ResponseHead<'b>, HttpError> {
    let cap = limits.max_headers.min(MAX_HEADERS_CAP).min(storage.len());
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        head,
        &mut storage[..cap],
    );
    finish_response(resp, parsed, req)
}

fn bad(detail: &'static str) -> HttpError {
    HttpError::upstream(502, detail)
}

fn finish_response<'b>(
    resp: httparse::Response<'b, 'b>,
    parsed: httparse::Result<usize>,
    req: RequestContext,
) -> Result<ResponseHead<'b>, HttpError> {
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(bad("incomplete response head")),
        Err(httparse::Error::TooManyHeaders) => return Err(bad("too many response header fields")),
        Err(_) => return Err(bad("malformed response head")),
    };
    let httparse::Response {
        version,
        code,
        reason,
        headers,
    } = resp;
    let headers: &'b [httparse::Header<'b>] = headers;
    let (Some(version), Some(status)) = (version, code) else {
        return Err(bad("incomplete status line"));
    };
    let version = match version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(bad("unsupported response version")),
    };
    if !(100..=599).contains(&status) {
        return Err(bad("status code out of range"));
    }
    if status == 101 && !req.upgrade_requested {
        return Err(bad("101 without an upgrade request"));
    }
    let upgrade = if status == 101 {
        // RFC 9110 §15.2.2: a 101 names the protocol switched to; we must know which it is.
        let value = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .ok_or_else(|| bad("101 without an Upgrade field"))?;
        Some(value)
    } else {
        None
    };

    let mut content_length: Option<u64> = None;
    let mut codings = TransferCodings::default();
    let mut saw_te = false;
    let mut close = false;
    let mut keep_alive = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value).map_err(|_| bad("invalid Content-Length"))?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(bad("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            saw_te = true;
            codings
                .add_field(h.value)
                .map_err(|_| bad("malformed Transfer-Encoding"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in connection_list(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }

    let bodiless = req.head_request || status < 200 || status == 204 || status == 304;
    if saw_te && content_length.is_some() && !bodiless {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    let framing = if bodiless {
        Framing::None
    } else if saw_te {
        if codings.chunked_twice {
            return Err(bad("chunked applied more than once"));
        }
        match codings.chunked_at {
            Some(0) if codings.codings == 1 => Framing::Chunked,
            // Other transfer codings (gzip, chunked; chunked, gzip; …) would reach the client
            // still coded once the Transfer-Encoding field is gone: we do not decode them.
            _ => return Err(bad("unsupported transfer coding")),
        }
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::CloseDelimited,
        }
    };
    let persistent = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    Ok(ResponseHead {
        status,
        reason: reason.unwrap_or(""),
        version,
        headers,
        framing,
        reusable: persistent && framing != Framing::CloseDelimited && status != 101,
        upgrade,
        len,
    })
}

/// The client a response goes to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ClientSide<'a> {
    pub version: Version,
    /// The client wants its connection kept and we are willing.
    pub keep_alive: bool,
    pub head_request: bool,
    /// `Server` value added when the upstream sent none (`None`: add nothing).
    pub server: Option<&'a str>,
}

/// How the body is framed towards the client, and whether its connection stays open.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ClientFraming {
    pub framing: Framing,
    pub keep_alive: bool,
}

/// Fields an upstream addresses to the proxy in front of it, never forwarded to the client:
/// nginx's `proxy_hide_header` defaults (`X-Accel-*` instructions and the `X-Pad` filler of
/// old Apache versions). `X-Accel-Buffering` is read first ([`ResponseHead::streams`]).
pub const PROXY_ONLY_FIELDS: [&str; 6] = [
    "x-accel-buffering",
    "x-accel-charset",
    "x-accel-expires",
    "x-accel-limit-rate",
    "x-accel-redirect",
    "x-pad",
];

/// True when `name` is one of [`PROXY_ONLY_FIELDS`].
pub fn is_proxy_only(name: &str) -> bool {
    PROXY_ONLY_FIELDS
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

/// Appends the response head for the client and says how its body must be framed.
///
/// The status line carries the client's version with the upstream's code and reason; then
/// `Server: <client.server>` unless the upstream sent its own `Server` (which is kept); every
/// end-to-end field follows in original order and bytes; hop-by-hop fields and the fields
/// meant for the proxy ([`PROXY_ONLY_FIELDS`]) are dropped and the framing is re-stated last:
/// a chunked or close-delimited body is chunked for an HTTP/1.1 client and close-delimited for
/// HTTP/1.0 (which then cannot keep its connection).
pub fn write_client_response(
    resp: &ResponseHead<'_>,
    client: &ClientSide<'_>,
    out: &mut Vec<u8>,
) -> ClientFraming {
    let (framing, keep_alive) = match (resp.framing, client.version) {
        (Framing::Length(n), _) => (Framing::Length(n), client.keep_alive),
        (Framing::None, _) => (Framing::None, client.keep_alive),
        (Framing::Chunked | Framing::CloseDelimited, Version::Http11) => {
            (Framing::Chunked, client.keep_alive)
        }
        (Framing::Chunked | Framing::CloseDelimited, Version::Http10) => {
            (Framing::CloseDelimited, false)
        }
    };
    let upgrade = resp.status == 101;
    // HEAD and 304 answers describe the body a GET would get: their length passes through.
    let keep_length = resp.framing == Framing::None && (client.head_request || resp.status == 304);

    out.extend_from_slice(match client.version {
        Version::Http10 => b"HTTP/1.0 ",
        Version::Http11 => b"HTTP/1.1 ",
    });
    push_decimal(u64::from(resp.status), out);
    out.push(b' ');
    out.extend_from_slice(resp.reason.as_bytes());
    out.extend_from_slice(b"\r\n");

    let connection = nominating_fields(resp.headers);
    if let Some(server) = client.server
        && !resp
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("server") && !is_hop_by_hop(h.name, connection))
    {
        push_field(b"Server", server.as_bytes(), out);
    }
    for h in resp.headers {
        let name = h.name;
        let keep = if name.eq_ignore_ascii_case("content-length") {
            keep_length
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade
        } else {
            !is_hop_by_hop(name, connection) && !is_proxy_only(name)
        };
        if keep {
            push_field(name.as_bytes(), h.value, out);
        }
    }

    push_framing(framing, out);
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ClientFraming {
        framing,
        keep_alive: keep_alive && !upgrade,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::http1::request::uninit_headers;

    /// The client's head for the upstream head `wire` (a GET from an HTTP/1.1 client), and
    /// whether the response streams.
    fn rewrite(wire: &[u8]) -> (String, bool) {
        let mut storage = uninit_headers();
        let req = RequestContext {
            head_request: false,
            upgrade_requested: false,
        };
        let resp = parse_response_head_uninit(wire, &Limits::default(), &mut storage, req)
            .expect("a valid head");
        let client = ClientSide {
            version: Version::Http11,
            keep_alive: true,
            head_request: false,
            server: Some("sluice"),
        };
        let mut out = Vec::new();
        write_client_response(&resp, &client, &mut out);
        (String::from_utf8(out).unwrap(), resp.streams())
    }

    /// nginx's hidden fields never reach the client, in any case of their names;
    /// `X-Accel-Buffering: no` still makes the response stream; other fields, `X-Accel-`
    /// ones nginx passes included, are kept in order.
    #[test]
    fn fields_meant_for_the_proxy_are_not_forwarded() {
        let (head, streams) = rewrite(
            b"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nContent-Type: text/plain\r\n\
              x-accel-redirect: /internal/x\r\nX-ACCEL-EXPIRES: 60\r\nX-Accel-Limit-Rate: 1024\r\n\
              X-Accel-Charset: utf-8\r\nX-Pad: avoid browser bug\r\nX-Accelerated: yes\r\n\
              Cache-Control: no-store\r\nContent-Length: 2\r\n\r\n",
        );
        assert!(
            streams,
            "X-Accel-Buffering: no was read before it was dropped"
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Type: text/plain\r\n\
             X-Accelerated: yes\r\nCache-Control: no-store\r\nContent-Length: 2\r\n\r\n"
        );
        for f in PROXY_ONLY_FIELDS {
            assert!(is_proxy_only(&f.to_ascii_uppercase()), "{f}");
        }
        assert!(!is_proxy_only("X-Accel"));
    }
}
