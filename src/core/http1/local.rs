//! Responses Sluice generates itself (errors, redirects, 100 Continue). Always correctly
//! framed, with a short text body and the configured `Server` field (`sluice` by default);
//! never any peer-controlled bytes.

use super::Version;
use super::request::{RequestHead, Target};
use crate::core::error::Status;
use httparse::Header;

/// Appends a complete error (or other locally generated) response to `out`.
///
/// The body is `"<code> <reason>\n"`. With `close`, the response says `Connection: close` and
/// the caller must close after writing it. `head_request` suppresses the body (not its length).
/// `server` is the `Server` value (`None`: no such field).
pub fn write_local_response(
    status: Status,
    version: Version,
    close: bool,
    head_request: bool,
    server: Option<&str>,
    out: &mut Vec<u8>,
) {
    let reason = status.reason();
    let body_len = 3 + 1 + reason.len() + 1;
    let proto = match version {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    };
    out.extend_from_slice(proto.as_bytes());
    out.push(b' ');
    push_status_code(status.0, out);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    push_server(server, out);
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(body_len as u64, out);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        push_status_code(status.0, out);
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.push(b'\n');
    }
}

/// Appends a `308 Permanent Redirect` to `https://` + the request's host and target (the
/// method and body are kept by a 308). Returns false, writing nothing, when the host is not a
/// plain DNS name (it is copied into `Location`, so nothing else may pass).
pub fn write_https_redirect(
    head: &RequestHead<'_>,
    https_port: u16,
    close: bool,
    server: Option<&str>,
    out: &mut Vec<u8>,
) -> bool {
    let host = head.host();
    let host = host.strip_suffix('.').unwrap_or(host);
    let dns = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let (path, query) = match head.target {
        Target::Origin { path, query } | Target::Absolute { path, query, .. } => (path, query),
        Target::Asterisk => return false,
    };
    if !dns {
        return false;
    }
    let proto: &[u8] = match head.version {
        Version::Http10 => b"HTTP/1.0",
        Version::Http11 => b"HTTP/1.1",
    };
    out.extend_from_slice(proto);
    out.extend_from_slice(b" 308 Permanent Redirect\r\n");
    push_server(server, out);
    out.extend_from_slice(b"Location: https://");
    for b in host.bytes() {
        out.push(b.to_ascii_lowercase());
    }
    if https_port != 443 {
        out.push(b':');
        push_decimal(u64::from(https_port), out);
    }
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    let body: &[u8] = b"308 Permanent Redirect\n";
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_decimal(body.len() as u64, out);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if head.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head.is_head() {
        out.extend_from_slice(body);
    }
    true
}

/// Adds `Strict-Transport-Security: value` to the response head that starts at `head_start`
/// in `out` (its body, if any, follows it), unless the upstream sent its own field.
pub fn add_hsts(upstream: &[Header<'_>], value: &str, head_start: usize, out: &mut Vec<u8>) {
    if upstream
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("strict-transport-security"))
    {
        return;
    }
    let Some(end) = out
        .get(head_start..)
        .and_then(|head| memchr::memmem::find(head, b"\r\n\r\n"))
    else {
        return;
    };
    let at = head_start + end + 2;
    let field_len = b"Strict-Transport-Security: \r\n".len() + value.len();
    let old_len = out.len();
    // Make room after the last field (when the head is all there is, only its final CRLF
    // moves), then write the field into it: no temporary buffer.
    out.resize(old_len + field_len, 0);
    out.copy_within(at..old_len, at + field_len);
    let mut slot = &mut out[at..at + field_len];
    for part in [b"Strict-Transport-Security: ", value.as_bytes(), b"\r\n"] {
        let (head, rest) = slot.split_at_mut(part.len());
        head.copy_from_slice(part);
        slot = rest;
    }
}

fn redirect_reason(code: u16) -> &'static str {
    match code {
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        _ => "Redirect",
    }
}

fn push_status_line(version: Version, code: u16, reason: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(match version {
        Version::Http10 => b"HTTP/1.0 ",
        Version::Http11 => b"HTTP/1.1 ",
    });
    push_status_code(code, out);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_connection(version: Version, close: bool, out: &mut Vec<u8>) {
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

/// Appends a redirect (`code` 300–308, from a route's request policy) to `location`, which
/// the compiler checked to be visible ASCII (or which we built from a checked host and the
/// parsed path). The body is `"<code> <reason>\n"`, suppressed for HEAD.
#[allow(clippy::too_many_arguments)]
pub fn write_redirect(
    code: u16,
    location: &str,
    version: Version,
    close: bool,
    head_request: bool,
    server: Option<&str>,
    out: &mut Vec<u8>,
) {
    let reason = redirect_reason(code);
    push_status_line(version, code, reason, out);
    push_server(server, out);
    out.extend_from_slice(b"Location: ");
    out.extend_from_slice(location.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_decimal((3 + 1 + reason.len() + 1) as u64, out);
    out.extend_from_slice(b"\r\n");
    push_connection(version, close, out);
    out.extend_from_slice(b"\r\n");
    if !head_request {
        push_status_code(code, out);
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.push(b'\n');
    }
}

/// Appends `401 Unauthorized` with `WWW-Authenticate: Basic realm="<realm>"` (the realm was
/// checked at compile time: visible ASCII and spaces, no `"` or `\\`).
pub fn write_unauthorized(
    realm: &str,
    version: Version,
    close: bool,
    head_request: bool,
    server: Option<&str>,
    out: &mut Vec<u8>,
) {
    let body: &[u8] = b"401 Unauthorized\n";
    push_status_line(version, 401, "Unauthorized", out);
    push_server(server, out);
    out.extend_from_slice(b"WWW-Authenticate: Basic realm=\"");
    out.extend_from_slice(realm.as_bytes());
    out.extend_from_slice(b"\"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_decimal(body.len() as u64, out);
    out.extend_from_slice(b"\r\n");
    push_connection(version, close, out);
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(body);
    }
}

/// Appends the answer to a CORS preflight as ingress-nginx gives it: `204 No Content` with
/// `Access-Control-Allow-Origin: allow_origin`, the route's other CORS `fields` (each ending
/// in CRLF), `Content-Type: text/plain charset=UTF-8` and `Content-Length: 0`.
pub fn write_preflight(
    allow_origin: &str,
    fields: &str,
    version: Version,
    close: bool,
    server: Option<&str>,
    out: &mut Vec<u8>,
) {
    push_status_line(version, 204, "No Content", out);
    push_server(server, out);
    out.extend_from_slice(b"Access-Control-Allow-Origin: ");
    out.extend_from_slice(allow_origin.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(fields.as_bytes());
    out.extend_from_slice(b"Content-Type: text/plain charset=UTF-8\r\nContent-Length: 0\r\n");
    push_connection(version, close, out);
    out.extend_from_slice(b"\r\n");
}

/// In the response head that starts at `head_start` in `out` (its body, if any, follows),
/// removes every field named in `names` (lower-case) and adds `block` (complete fields, each
/// ending in CRLF) at the end of the head: nginx's `more_set_headers`.
pub fn set_fields(out: &mut Vec<u8>, head_start: usize, names: &[&str], block: &[u8]) {
    let Some(end) = out
        .get(head_start..)
        .and_then(|head| memchr::memmem::find(head, b"\r\n\r\n"))
    else {
        return;
    };
    let head_end = head_start + end + 2;
    let tail = out.split_off(head_end);
    let head = out.split_off(head_start);
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    if let Some(status) = lines.next() {
        out.extend_from_slice(status);
    }
    for line in lines {
        let name = line.split(|&b| b == b':').next().unwrap_or(line);
        let drop = names
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()));
        if !drop {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(block);
    out.extend_from_slice(&tail);
}

fn push_server(server: Option<&str>, out: &mut Vec<u8>) {
    if let Some(server) = server {
        out.extend_from_slice(b"Server: ");
        out.extend_from_slice(server.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `HTTP/1.1 100 Continue`, sent when we start reading a body the client is waiting to send.
pub fn write_continue(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

fn push_status_code(code: u16, out: &mut Vec<u8>) {
    let code = code.clamp(100, 999);
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
}

/// Appends `n` in decimal without allocating.
pub fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_framed_and_closes() {
        let mut out = Vec::new();
        write_local_response(
            Status::NOT_FOUND,
            Version::Http11,
            true,
            false,
            Some("sluice"),
            &mut out,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nServer: sluice\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 14\r\nConnection: close\r\n\r\n404 Not Found\n"
        );
    }

    #[test]
    fn head_request_gets_length_but_no_body() {
        let mut out = Vec::new();
        write_local_response(
            Status::SERVICE_UNAVAILABLE,
            Version::Http10,
            false,
            true,
            None,
            &mut out,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.0 503 Service Unavailable\r\n"));
        assert!(!text.contains("Server:"), "{text}");
        assert!(text.contains("Content-Length: 24\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn hsts_goes_into_the_head_before_the_body() {
        let mut out = b"earlier".to_vec();
        let start = out.len();
        write_local_response(
            Status::NOT_FOUND,
            Version::Http11,
            false,
            false,
            Some("edge"),
            &mut out,
        );
        add_hsts(&[], "max-age=1", start, &mut out);
        let text = std::str::from_utf8(&out[start..]).unwrap();
        assert!(
            text.ends_with(
                "Content-Length: 14\r\nStrict-Transport-Security: max-age=1\r\n\r\n404 Not Found\n"
            ),
            "{text}"
        );
        assert!(out.starts_with(b"earlier"));
        let mut head_only = b"body of the last one HTTP/1.1 200 OK\r\nA: b\r\n\r\n".to_vec();
        add_hsts(&[], "max-age=2", 21, &mut head_only);
        assert_eq!(
            head_only,
            b"body of the last one HTTP/1.1 200 OK\r\nA: b\r\nStrict-Transport-Security: max-age=2\r\n\r\n"
        );
        let upstream = [httparse::Header {
            name: "Strict-Transport-Security",
            value: b"max-age=5",
        }];
        let before = out.clone();
        add_hsts(&upstream, "max-age=1", start, &mut out);
        assert_eq!(out, before, "the upstream's own field is kept");
    }

    #[test]
    fn redirects_preflights_and_set_fields() {
        let mut out = Vec::new();
        write_redirect(
            302,
            "http://a.example/foo",
            Version::Http11,
            false,
            false,
            None,
            &mut out,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 302 Found\r\nLocation: http://a.example/foo\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\n\r\n302 Found\n"
        );
        let mut out = Vec::new();
        write_preflight(
            "*",
            "Access-Control-Max-Age: 5\r\n",
            Version::Http11,
            true,
            None,
            &mut out,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Max-Age: 5\r\n"), "{text}");
        assert!(
            text.ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"),
            "{text}"
        );
        let mut out =
            b"x HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: evil\r\nA: b\r\n\r\nbody".to_vec();
        set_fields(
            &mut out,
            2,
            &["access-control-allow-origin"],
            b"Access-Control-Allow-Origin: *\r\n",
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "x HTTP/1.1 200 OK\r\nA: b\r\nAccess-Control-Allow-Origin: *\r\n\r\nbody"
        );
    }

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(n, &mut out);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
