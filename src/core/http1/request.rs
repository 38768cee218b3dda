//! Request heads: parsed once (httparse, zero-copy) and validated strictly into a
//! [`RequestHead`], a borrowed view into the read buffer.
//!
//! Guarantees: every accepted head has a well-formed target, a valid authority, exactly one
//! unambiguous body framing (RFC 9112 §6, the rules that prevent request smuggling) and only
//! expectations we can honour. Nothing here panics on any input.

use std::mem::MaybeUninit;

use super::{Framing, Limits, MAX_HEADERS_CAP, Version};
use crate::core::error::HttpError;

/// The request target (RFC 9112 §3.2), split but never normalized: the bytes are forwarded
/// exactly as received.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Target<'b> {
    /// `/path?query`
    Origin {
        path: &'b str,
        query: Option<&'b str>,
    },
    /// `http://authority/path?query`. An empty path is reported as `/` (RFC 9112 §3.2.1).
    Absolute {
        scheme: &'b str,
        authority: &'b str,
        path: &'b str,
        query: Option<&'b str>,
    },
    /// `*` (OPTIONS only).
    Asterisk,
}

/// A validated request head: views into the buffer it was parsed from.
#[derive(Clone, Debug)]
pub struct RequestHead<'b> {
    pub method: &'b str,
    pub target: Target<'b>,
    pub version: Version,
    /// `host[:port]` of the absolute-form target, else of the `Host` field; empty for an
    /// HTTP/1.0 request that names neither.
    pub authority: &'b str,
    /// Every field as received (names and values are httparse's views: values without
    /// surrounding whitespace).
    pub headers: &'b [httparse::Header<'b>],
    /// `None`, `Length` or `Chunked`; never `CloseDelimited` for a request.
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending its body (HTTP/1.1, with a body).
    pub expect_continue: bool,
    /// The `Upgrade` field's value when the request asks for an upgrade (`Connection: upgrade`
    /// plus an `Upgrade` field, HTTP/1.1 only). Whether it is relayed is the caller's choice
    /// ([`super::Upgrades::allows`]); the parser only reports it.
    pub upgrade: Option<&'b str>,
    /// Length of the head in bytes, including tolerated leading empty lines and the final CRLF.
    pub len: usize,
}

impl<'b> RequestHead<'b> {
    /// The authority without its port (`[v6]` literals keep their brackets).
    pub fn host(&self) -> &'b str {
        split_port(self.authority).0
    }

    /// The path without the query; `*` for the asterisk form.
    pub fn path(&self) -> &'b str {
        match self.target {
            Target::Origin { path, .. } | Target::Absolute { path, .. } => path,
            Target::Asterisk => "*",
        }
    }

    /// The query without its `?`, if the target has one.
    pub fn query(&self) -> Option<&'b str> {
        match self.target {
            Target::Origin { query, .. } | Target::Absolute { query, .. } => query,
            Target::Asterisk => None,
        }
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Idempotent methods (RFC 9110 §9.2.2): a retry after a failure is safe.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

/// Parses and validates a complete request head.
///
/// `head` is exactly the head found by [`super::HeadScanner::scan_request`] (which has already
/// enforced CRLF line endings, no NUL and the size limits). `storage` is the caller's header
/// array; at most `limits.max_headers` of it is used, and one field more is a 431.
pub fn parse_request_head<'b>(
    head: &'b [u8],
    limits: &Limits,
    storage: &'b mut [httparse::Header<'b>],
) -> Result<RequestHead<'b>, HttpError> {
    let cap = limits.max_headers.min(MAX_HEADERS_CAP).min(storage.len());
    let mut req = httparse::Request::new(&mut storage[..cap]);
    let parsed = req.parse(head);
    finish_request(req, parsed, head, limits)
}

/// Header storage that costs nothing to set up (the parser initialises what it uses); a
/// `[EMPTY_HEADER; MAX_HEADERS_CAP]` array would be a 6 KiB memset per request.
pub fn uninit_headers<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS_CAP] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP]
}

/// [`parse_request_head`] over uninitialised storage (see [`uninit_headers`]).
pub fn parse_request_head_uninit<'b>(
    head: &'b [u8],
    limits: &Limits,
    storage: &'b mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<RequestHead<'b>, HttpError> {
    let cap = limits.max_headers.min(MAX_HEADERS_CAP).min(storage.len());
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(head, &mut storage[..cap]);
    finish_request(req, parsed, head, limits)
}

/// Fast path for a head that is already whole in `buf` (the common case: one read brings the
/// entire request head). Parses it with one pass of httparse instead of scanning first, then
/// checks what the scanner would have enforced with cheap vectorised searches: no NUL, CRLF
/// line endings only (httparse itself rejects a CR that is not followed by LF, so as many CRs
/// as lines means no line ended in a bare LF), request line and head within their limits.
///
/// `None` when the head is incomplete, over a limit or malformed in any way: the caller then
/// takes the slow path ([`super::HeadScanner`] and [`parse_request_head_uninit`]), which
/// produces the exact status. A `Some` result is identical to what the slow path returns
/// (a property test holds the two together).
pub fn parse_whole_request_head<'b>(
    buf: &'b [u8],
    limits: &Limits,
    storage: &'b mut [MaybeUninit<httparse::Header<'b>>],
) -> Option<Result<RequestHead<'b>, HttpError>> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    match window.first() {
        None | Some(b'\r') | Some(b'\n') => return None,
        Some(_) => {}
    }
    let cap = limits.max_headers.min(MAX_HEADERS_CAP).min(storage.len());
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(window, &mut storage[..cap]) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    let head = &window[..len];
    let line_end = memchr::memchr(b'\n', head)?;
    if line_end == 0 || line_end - 1 > limits.max_request_line || memchr::memchr(0, head).is_some()
    {
        return None;
    }
    let lines = req.headers.len() + 2;
    if memchr::memchr_iter(b'\r', head).count() != lines {
        return None;
    }
    Some(finish_request(
        req,
        Ok(httparse::Status::Complete(len)),
        head,
        limits,
    ))
}

/// Validation shared by every parse entry point, once httparse has run.
fn finish_request<'b>(
    req: httparse::Request<'b, 'b>,
    parsed: httparse::Result<usize>,
    head: &'b [u8],
    limits: &Limits,
) -> Result<RequestHead<'b>, HttpError> {
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(HttpError::client(400, "incomplete head")),
        Err(e) => return Err(map_parse_error(e, head)),
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    let headers: &'b [httparse::Header<'b>] = headers;
    let (Some(method), Some(raw_target), Some(version)) = (method, path, version) else {
        return Err(HttpError::client(400, "incomplete request line"));
    };
    let version = match version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(HttpError::client(505, "unsupported HTTP version")),
    };
    if method == "CONNECT" {
        return Err(HttpError::client(501, "CONNECT is not supported"));
    }
    let target = parse_target(method, raw_target)?;

    let fields = scan_fields(headers, version)?;

    let authority = match target {
        Target::Absolute { authority, .. } => authority,
        _ => fields.host.unwrap_or(""),
    };
    if version == Version::Http11 && fields.host.is_none() {
        return Err(HttpError::client(400, "missing Host"));
    }

    let framing = match (fields.content_length, fields.chunked) {
        (Some(_), true) => {
            return Err(HttpError::client(
                400,
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (Some(n), false) => {
            if limits.max_body_bytes.is_some_and(|max| n > max) {
                return Err(HttpError::client(413, "request body too large"));
            }
            Framing::Length(n)
        }
        (None, true) => Framing::Chunked,
        (None, false) => Framing::None,
    };

    let keep_alive = match version {
        Version::Http11 => !fields.close,
        Version::Http10 => fields.keep_alive && !fields.close,
    };
    let upgrade = match (version, fields.connection_upgrade, fields.upgrade) {
        (Version::Http11, true, Some(proto)) => Some(proto),
        _ => None,
    };

    Ok(RequestHead {
        method,
        target,
        version,
        authority,
        headers,
        framing,
        keep_alive,
        expect_continue: fields.expect_continue
            && version == Version::Http11
            && framing != Framing::None,
        upgrade,
        len,
    })
}

/// Maps httparse's error to the status we answer with.
fn map_parse_error(e: httparse::Error, head: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::client(431, "too many header fields"),
        // httparse stops at the first space after the target: the line decides 400 or 505.
        httparse::Error::Version | httparse::Error::Token => {
            match check_request_line(first_line(head)) {
                Err(err) => err,
                Ok(()) if e == httparse::Error::Version => {
                    HttpError::client(400, "malformed HTTP version")
                }
                Ok(()) => HttpError::client(400, "malformed request line"),
            }
        }
        httparse::Error::HeaderName => HttpError::client(400, "invalid header field name"),
        httparse::Error::HeaderValue => HttpError::client(400, "invalid header field value"),
        httparse::Error::NewLine => HttpError::client(400, "invalid line ending"),
        _ => HttpError::client(400, "malformed request head"),
    }
}

/// The start line of `head`, after tolerated leading empty lines, without its CRLF.
fn first_line(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let rest = &head[start..];
    let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
    &rest[..end]
}

/// The shape of a request line (RFC 9112 §3): `method SP request-target SP HTTP-version`,
/// exactly one space each, the method a token, the target without whitespace or control
/// bytes. Checked as soon as the line is complete, before the field section arrives.
///
/// A line without a version (HTTP/0.9's `GET /`) or with whitespace inside the target is
/// malformed: 400. Only a well-formed line naming a version we do not speak (`HTTP/2.0`,
/// `HTTP/1.2`) is a 505. The finer rules of the target (forms, `#`, non-ASCII) are
/// [`parse_target`]'s.
pub(crate) fn check_request_line(line: &[u8]) -> Result<(), HttpError> {
    let Some(sp) = memchr::memchr(b' ', line) else {
        return Err(HttpError::client(400, "request line without a target"));
    };
    let (method, rest) = (&line[..sp], &line[sp + 1..]);
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::client(400, "malformed method"));
    }
    let Some(sp) = memchr::memrchr(b' ', rest) else {
        return Err(HttpError::client(400, "request line without a version"));
    };
    let (target, version) = (&rest[..sp], &rest[sp + 1..]);
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::client(
            400,
            "whitespace or control byte in request target",
        ));
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Ok(()),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(HttpError::client(505, "unsupported HTTP version"))
        }
        _ => Err(HttpError::client(400, "malformed HTTP version")),
    }
}

/// Splits and checks the request target (RFC 9112 §3.2). No normalization.
fn parse_target<'b>(method: &str, raw: &'b str) -> Result<Target<'b>, HttpError> {
    if raw
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b >= 0x80 || b == b'#')
    {
        return Err(HttpError::client(400, "invalid byte in request target"));
    }
    if raw == "*" {
        return if method == "OPTIONS" {
            Ok(Target::Asterisk)
        } else {
            Err(HttpError::client(400, "asterisk-form is only for OPTIONS"))
        };
    }
    if raw.starts_with('/') {
        let (path, query) = split_query(raw);
        return Ok(Target::Origin { path, query });
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(HttpError::client(400, "invalid request target"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(HttpError::client(
            400,
            "unsupported scheme in request target",
        ));
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(authority_end);
    if !valid_authority(authority) {
        return Err(HttpError::client(
            400,
            "invalid authority in request target",
        ));
    }
    let (path, query) = split_query(path_and_query);
    let path = if path.is_empty() { "/" } else { path };
    Ok(Target::Absolute {
        scheme,
        authority,
        path,
        query,
    })
}

fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (s, None),
    }
}

/// Splits `host[:port]` at the port colon (aware of `[v6]` literals).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let host_end = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => i + 1,
            None => return (authority, None),
        }
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, rest) = authority.split_at(host_end);
    match rest.strip_prefix(':') {
        Some(port) => (host, Some(port)),
        None if rest.is_empty() => (host, None),
        // Junk after `]` that is not a port: report it as an (invalid) port.
        None => (host, Some(rest)),
    }
}

/// `host [ ":" port ]` where host is a bracketed IPv6 literal or a name / IPv4 address made
/// of letters, digits, `-`, `.`, `_` and `~`, and port is 1 to 5 digits up to 65535.
///
/// Deliberately stricter than RFC 3986 `reg-name` (no sub-delims, no percent-encoding, no
/// empty port): a host is a routing key and nothing else.
pub fn valid_authority(authority: &str) -> bool {
    let (host, port) = split_port(authority);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    };
    let port_ok = match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65535)
        }
    };
    host_ok && port_ok
}

/// What the field section says, gathered in one pass.
#[derive(Default)]
struct Fields<'b> {
    host: Option<&'b str>,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    connection_upgrade: bool,
    upgrade: Option<&'b str>,
    expect_continue: bool,
}

fn scan_fields<'b>(
    headers: &'b [httparse::Header<'b>],
    version: Version,
) -> Result<Fields<'b>, HttpError> {
    let mut f = Fields::default();
    let mut host_count = 0usize;
    let mut upgrade_count = 0usize;
    let mut te = TransferCodings::default();
    let mut saw_te = false;
    for h in headers {
        let name = h.name;
        // Dispatch on length first: most fields are none of ours and cost one compare.
        if !matches!(name.len(), 4 | 6 | 7 | 10 | 14 | 17) {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            host_count += 1;
            if host_count > 1 {
                return Err(HttpError::client(400, "more than one Host"));
            }
            let host = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| valid_authority(v))
                .ok_or(HttpError::client(400, "invalid Host"))?;
            f.host = Some(host);
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if f.content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::client(400, "conflicting Content-Length"));
            }
            f.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            saw_te = true;
            te.add_field(h.value)?;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in connection_list(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    f.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    f.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    f.connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_count += 1;
            if upgrade_count > 1 {
                return Err(HttpError::client(400, "more than one Upgrade"));
            }
            let value = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or(HttpError::client(400, "invalid Upgrade"))?;
            f.upgrade = Some(value);
        } else if name.eq_ignore_ascii_case("expect") {
            // RFC 9110 §10.1.1: `100-continue` is the only expectation defined.
            if !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::client(417, "unsupported expectation"));
            }
            f.expect_continue = true;
        }
    }
    if saw_te {
        if version == Version::Http10 {
            // RFC 9112 §6.1: a 1.0 peer cannot have meant chunked; the framing is unreliable.
            return Err(HttpError::client(400, "Transfer-Encoding in HTTP/1.0"));
        }
        te.finish()?;
        f.chunked = true;
    }
    Ok(f)
}

/// `Content-Length = 1*DIGIT`, also accepting a comma list of identical values (RFC 9112
/// §6.3 item 5). Anything else (signs, inner spaces, empty, hex, overflow) is a 400.
pub(crate) fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let bad = HttpError::client(400, "invalid Content-Length");
    let mut result: Option<u64> = None;
    for element in value.split(|&b| b == b',') {
        let element = trim_ows(element);
        if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        let mut n: u64 = 0;
        for &d in element {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or_else(|| bad.clone())?;
        }
        if result.is_some_and(|prev| prev != n) {
            return Err(HttpError::client(400, "conflicting Content-Length"));
        }
        result = Some(n);
    }
    result.ok_or(bad)
}

/// The transfer codings of all `Transfer-Encoding` fields, in order. We accept exactly one
/// coding, `chunked`: anything else we cannot decode (501), and a list where `chunked` is
/// repeated or not last cannot be framed at all (400).
#[derive(Default)]
pub(crate) struct TransferCodings {
    pub(crate) codings: usize,
    pub(crate) chunked_at: Option<usize>,
    pub(crate) chunked_twice: bool,
}

impl TransferCodings {
    pub(crate) fn add_field(&mut self, value: &[u8]) -> Result<(), HttpError> {
        for element in value.split(|&b| b == b',') {
            let coding = trim_ows(element);
            if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
                return Err(HttpError::client(400, "malformed Transfer-Encoding"));
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                if self.chunked_at.is_some() {
                    self.chunked_twice = true;
                }
                self.chunked_at = Some(self.codings);
            }
            self.codings += 1;
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), HttpError> {
        if self.chunked_twice {
            return Err(HttpError::client(400, "chunked applied more than once"));
        }
        match self.chunked_at {
            Some(i) if i + 1 != self.codings => {
                Err(HttpError::client(400, "chunked is not the final coding"))
            }
            Some(_) if self.codings == 1 => Ok(()),
            _ => Err(HttpError::client(501, "unsupported transfer coding")),
        }
    }
}

/// Non-empty, OWS-trimmed elements of a comma list.
pub(crate) fn connection_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `tchar` of RFC 9110 §5.6.2.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &[u8]) -> Result<(String, Framing, String), HttpError> {
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let limits = Limits {
            max_headers: 16,
            ..Limits::default()
        };
        let h = parse_request_head(head, &limits, &mut storage)?;
        Ok((
            format!("{:?}", h.target),
            h.framing,
            h.authority.to_string(),
        ))
    }

    #[test]
    fn authority_syntax() {
        for ok in [
            "a",
            "example.com",
            "example.com:8080",
            "10.0.0.1:1",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]:65535",
            "under_score.local",
        ] {
            assert!(valid_authority(ok), "{ok}");
        }
        for bad in [
            "", ":80", "a:", "a:65536", "a:+1", "a:123456", "user@a", "a b", "[::1", "[zz::1]",
            "[::1]x", "a:80:80", "a/b", "a%20", "é.com",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }

    #[test]
    fn host_strips_port() {
        assert_eq!(split_port("a.b:80"), ("a.b", Some("80")));
        assert_eq!(split_port("[::1]:80"), ("[::1]", Some("80")));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
        assert_eq!(split_port("a.b"), ("a.b", None));
    }

    #[test]
    fn content_length_grammar() {
        assert_eq!(parse_content_length(b"0"), Ok(0));
        assert_eq!(parse_content_length(b"007"), Ok(7));
        assert_eq!(parse_content_length(b"5, 5,5"), Ok(5));
        assert_eq!(parse_content_length(b"18446744073709551615"), Ok(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5 5",
            b"5,6",
            b"5,",
            b"0x10",
            b"18446744073709551616",
            b"1e3",
        ] {
            assert_eq!(parse_content_length(bad).unwrap_err().status.0, 400);
        }
    }

    #[test]
    fn absolute_form_without_path() {
        let (target, _, authority) =
            parse(b"GET http://a.example?x HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
        let expected = Target::Absolute {
            scheme: "http",
            authority: "a.example",
            path: "/",
            query: Some("x"),
        };
        assert_eq!(target, format!("{expected:?}"));
        assert_eq!(authority, "a.example");
    }

    #[test]
    fn small_storage_is_respected() {
        let mut storage = [httparse::EMPTY_HEADER; 4];
        let limits = Limits::default(); // asks for 100, storage has 4
        let err = parse_request_head(
            b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n",
            &limits,
            &mut storage,
        )
        .unwrap_err();
        assert_eq!(err.status.0, 431);
    }

    #[test]
    fn request_line_classification() {
        let status = |line: &[u8]| check_request_line(line).map_err(|e| e.status.0);
        for ok in [
            &b"GET / HTTP/1.1"[..],
            b"X /a?b HTTP/1.0",
            b"OPTIONS * HTTP/1.1",
        ] {
            assert_eq!(status(ok), Ok(()), "{ok:?}");
        }
        for v505 in [&b"GET / HTTP/2.0"[..], b"GET / HTTP/1.2", b"PRI * HTTP/2.0"] {
            assert_eq!(status(v505), Err(505), "{v505:?}");
        }
        for bad in [
            &b"GET /"[..],
            b"GET",
            b"",
            b"GET /a b HTTP/1.1",
            b"GET /a b HTTP/2.0",
            b"GET  / HTTP/1.1",
            b"GET HTTP/1.1",
            b"GET /a\tb HTTP/1.1",
            b"GET / http/1.1",
            b"GET / HTTP/1.10",
            b"GET / HTTP/1.1 ",
            b"GE(T / HTTP/1.1",
            b" GET / HTTP/1.1",
        ] {
            assert_eq!(status(bad), Err(400), "{bad:?}");
        }
        assert_eq!(first_line(b"\r\nGET / HTTP/1.2\r\n\r\n"), b"GET / HTTP/1.2");
    }

    #[test]
    fn never_panics_on_garbage() {
        // A cheap deterministic fuzz: every prefix and every single-byte mutation of a request.
        let base = b"POST http://[::1]:8/a?b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n";
        for n in 0..=base.len() {
            let _ = parse(&base[..n]);
        }
        for i in 0..base.len() {
            for b in [0u8, b'\t', b'\n', b'\r', b' ', b':', b',', b'[', 0x7f, 0xff] {
                let mut m = base.to_vec();
                m[i] = b;
                let _ = parse(&m);
            }
        }
    }
}
