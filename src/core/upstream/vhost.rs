//! `upstream-vhost`: the `Host` field sent upstream in place of the client's (the client's
//! authority still goes in `X-Forwarded-Host`). The value is a checked host name, with an
//! optional port; it replaces the field in the head already written, without re-parsing.

use std::sync::Arc;

/// A host for `upstream-vhost`: a DNS name, an IPv4 address or a bracketed IPv6 address,
/// with an optional `:port`. nginx variables (`$host`) are not expanded: they are refused.
pub fn parse(value: &str) -> Result<Arc<str>, String> {
    if value.contains('$') {
        return Err(format!(
            "{value:?}: variables are not supported, give the host name itself"
        ));
    }
    let (host, port) = match value.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (value, None),
        Some((h, p)) => (h, Some(p)),
        None => (value, None),
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if host_ok && port_ok {
        Ok(Arc::from(value))
    } else {
        Err(format!(
            "{value:?} is not a host name (with an optional :port)"
        ))
    }
}

/// Replaces the value of the `Host` field that follows the request line of the upstream head
/// starting at `head_start` in `out` (as `write_upstream_request` writes it).
pub fn replace_host(out: &mut Vec<u8>, head_start: usize, host: &str) {
    let Some(head) = out.get(head_start..) else {
        return;
    };
    let Some(line_end) = memchr::memmem::find(head, b"\r\n") else {
        return;
    };
    let field = head_start + line_end + 2;
    if !out[field..].starts_with(b"Host:") {
        return;
    }
    let value = field + b"Host:".len();
    let Some(end) = memchr::memmem::find(&out[value..], b"\r\n") else {
        return;
    };
    let replacement = [b" ", host.as_bytes()].concat();
    out.splice(value..value + end, replacement);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked() {
        for ok in [
            "upstreamvhost.bar.com",
            "a.b:8080",
            "10.0.0.1",
            "[::1]:80",
            "svc_1.local",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "$host",
            "a b",
            "a.b:0",
            "a.b:http",
            "",
            "x\r\nEvil: 1",
            "[zz]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_host_field_is_replaced() {
        let mut out =
            b"prevGET / HTTP/1.1\r\nHost: client.test\r\nX-Forwarded-Host: client.test\r\n\r\n"
                .to_vec();
        replace_host(&mut out, 4, "upstream.test");
        assert_eq!(
            out,
            b"prevGET / HTTP/1.1\r\nHost: upstream.test\r\nX-Forwarded-Host: client.test\r\n\r\n"
                .to_vec()
        );
        let mut empty = b"GET / HTTP/1.0\r\nHost:\r\n\r\n".to_vec();
        replace_host(&mut empty, 0, "u");
        assert_eq!(empty, b"GET / HTTP/1.0\r\nHost: u\r\n\r\n".to_vec());
    }
}
