//! Re-emitting a request head towards the upstream: hop-by-hop fields removed, forwarding
//! fields set, body framing re-stated. Also the hop-by-hop rules the response side shares.
//!
//! OWNER: helper "http1-request" writes `write_upstream_request`. The hop-by-hop helpers below
//! are shared with the response side; keep their signatures.

use std::io::Write as _;
use std::net::IpAddr;

use super::Framing;
use super::local::push_decimal;
use super::request::{RequestHead, Target};

/// Fields that are always hop-by-hop (RFC 9110 §7.6.1), plus the legacy ones proxies strip,
/// plus `HTTP2-Settings` (RFC 7540 §3.2.1: it only ever accompanies an `h2c` upgrade, which is
/// never relayed). `Upgrade` is handled separately: re-added by us only when tunnelling.
const ALWAYS_HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
];

/// Tokens of every `Connection` field, trimmed and in original case (compare case-insensitively).
pub fn connection_tokens<'b>(
    headers: &'b [httparse::Header<'b>],
) -> impl Iterator<Item = &'b str> + 'b {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| std::str::from_utf8(h.value).unwrap_or("").split(','))
        .map(|t| t.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|t| !t.is_empty())
}

/// True when `name` must not be forwarded: always-hop-by-hop fields, `Upgrade` (callers that
/// tunnel re-add it), and every field named by a `Connection` token.
pub fn is_hop_by_hop(name: &str, headers: &[httparse::Header<'_>]) -> bool {
    if name.eq_ignore_ascii_case("upgrade")
        || ALWAYS_HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
    {
        return true;
    }
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(name))
}

/// What the listener knows about the client connection, for the forwarding fields.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ForwardInfo<'a> {
    /// Peer address of the client connection.
    pub client_ip: IpAddr,
    /// `http` or `https`: the scheme the client used to reach us.
    pub proto: &'a str,
    /// The listener port the client connected to.
    pub port: u16,
    /// The request is an upgrade we are going to tunnel (its protocols are allowed, see
    /// [`super::upgrade::Upgrades::allows`]): send `Connection: upgrade` and the `Upgrade`
    /// field. Otherwise neither is sent and the request goes upstream as plain HTTP/1.1.
    pub tunnel: bool,
    /// `X-Request-ID` sent upstream in place of any the client sent; empty: none is added
    /// and the client's field passes like any other.
    pub request_id: &'a str,
}

/// Fields we replace with our own values, never forwarding what the client sent.
const REPLACED: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Appends the head of `head` as sent to the upstream (always HTTP/1.1, origin-form).
///
/// Order: request line; `Host`; every end-to-end field in original order and bytes (minus
/// hop-by-hop fields, `Host`, `Content-Length`, `Transfer-Encoding`, `Expect` and the
/// forwarding fields); `X-Forwarded-For` (the client's values, then `client_ip`);
/// `X-Forwarded-Proto`, `X-Forwarded-Host` (unless the authority is empty),
/// `X-Forwarded-Port`, `X-Real-IP`; `X-Request-ID` (when `info` has one); the body framing; `Connection: upgrade` and `Upgrade`
/// when tunnelling; the final CRLF. Allocates nothing except by growing `out`.
pub fn write_upstream_request(head: &RequestHead<'_>, info: &ForwardInfo<'_>, out: &mut Vec<u8>) {
    write_upstream_request_edited(head, info, &UpstreamEdits::default(), out);
}

/// What the head sent upstream changes from the request's: a route's request policy, and
/// the real client.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamEdits<'a> {
    /// Path and query sent instead of the request's (`rewrite-target`); visible ASCII.
    pub target: Option<&'a str>,
    /// `X-Forwarded-Prefix` sent in place of any the client sent (`x-forwarded-prefix`).
    pub forwarded_prefix: Option<&'a str>,
    /// `X-Real-IP`: the real client, when a trusted proxy's `X-Forwarded-For` or a PROXY
    /// protocol header named one; `None`: `info.client_ip`. `X-Forwarded-For` still ends with
    /// `info.client_ip`, the address that connected to us.
    pub real_ip: Option<IpAddr>,
}

/// [`write_upstream_request`] with `edits`.
pub fn write_upstream_request_edited(
    head: &RequestHead<'_>,
    info: &ForwardInfo<'_>,
    edits: &UpstreamEdits<'_>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    match head.target {
        _ if edits.target.is_some() => {
            out.extend_from_slice(edits.target.unwrap_or_default().as_bytes());
        }
        Target::Origin { path, query } | Target::Absolute { path, query, .. } => {
            out.extend_from_slice(path.as_bytes());
            if let Some(query) = query {
                out.push(b'?');
                out.extend_from_slice(query.as_bytes());
            }
        }
        Target::Asterisk => out.push(b'*'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost:");
    if !head.authority.is_empty() {
        out.push(b' ');
        out.extend_from_slice(head.authority.as_bytes());
    }
    out.extend_from_slice(b"\r\n");

    let connection = nominating_fields(head.headers);

    for h in head.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("expect")
            || REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r))
            || (!info.request_id.is_empty() && name.eq_ignore_ascii_case("x-request-id"))
            || (edits.forwarded_prefix.is_some() && name.eq_ignore_ascii_case("x-forwarded-prefix"))
            || is_hop_by_hop(name, connection)
        {
            continue;
        }
        push_field(name.as_bytes(), h.value, out);
    }

    let client_ip = info.client_ip.to_canonical();
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in head.headers {
        // A client that lists X-Forwarded-For in `Connection` asked for it to be dropped.
        if h.name.eq_ignore_ascii_case("x-forwarded-for")
            && !h.value.is_empty()
            && !is_hop_by_hop(h.name, connection)
        {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
    push_ip(client_ip, out);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(info.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !head.authority.is_empty() {
        push_field(b"X-Forwarded-Host", head.authority.as_bytes(), out);
    }
    out.extend_from_slice(b"X-Forwarded-Port: ");
    push_decimal(u64::from(info.port), out);
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    push_ip(edits.real_ip.unwrap_or(info.client_ip).to_canonical(), out);
    out.extend_from_slice(b"\r\n");
    if !info.request_id.is_empty() {
        push_field(b"X-Request-ID", info.request_id.as_bytes(), out);
    }
    if let Some(prefix) = edits.forwarded_prefix {
        push_field(b"X-Forwarded-Prefix", prefix.as_bytes(), out);
    }

    push_framing(head.framing, out);
    if info.tunnel
        && let Some(proto) = head.upgrade
    {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_field(b"Upgrade", proto.as_bytes(), out);
    }
    out.extend_from_slice(b"\r\n");
}

/// What to pass to [`is_hop_by_hop`] as the `Connection` fields: all of `headers` when a
/// `Connection` field names other fields, nothing when it only carries options (keep-alive,
/// close, upgrade), so the common case costs one look instead of one per field. (`Close` is a
/// reserved field name, RFC 9110 §18.4, so it cannot name a real field.)
pub fn nominating_fields<'h, 'b>(
    headers: &'h [httparse::Header<'b>],
) -> &'h [httparse::Header<'b>] {
    let nominates = connection_tokens(headers).any(|t| {
        !t.eq_ignore_ascii_case("keep-alive")
            && !t.eq_ignore_ascii_case("close")
            && !t.eq_ignore_ascii_case("upgrade")
    });
    if nominates { headers } else { &[] }
}

/// Re-states a body's framing: `Content-Length: n` or `Transfer-Encoding: chunked` (nothing
/// for no body or a close-delimited one).
pub(crate) fn push_framing(framing: Framing, out: &mut Vec<u8>) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(n, out);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::CloseDelimited => {}
    }
}

pub(crate) fn push_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        // Dotted quad by hand: `fmt` costs about 1 % of an HTTPS request's CPU here.
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(u64::from(octet), out);
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod hop_tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_displays_them() {
        let addrs: [IpAddr; 6] = [
            [0, 0, 0, 0].into(),
            [127, 0, 0, 1].into(),
            [10, 200, 9, 255].into(),
            [255, 255, 255, 255].into(),
            "2001:db8::1".parse().unwrap(),
            "::ffff:1.2.3.4".parse().unwrap(),
        ];
        for ip in addrs {
            let mut out = b"x ".to_vec();
            push_ip(ip, &mut out);
            assert_eq!(out, format!("x {ip}").into_bytes());
        }
    }

    #[test]
    fn connection_named_fields_are_hop_by_hop() {
        let headers = [
            httparse::Header {
                name: "Connection",
                value: b"keep-alive, X-Secret ,",
            },
            httparse::Header {
                name: "X-Secret",
                value: b"1",
            },
        ];
        assert!(is_hop_by_hop("x-secret", &headers));
        assert!(is_hop_by_hop("Keep-Alive", &headers));
        assert!(is_hop_by_hop("TE", &headers));
        assert!(is_hop_by_hop("Upgrade", &headers));
        assert!(!is_hop_by_hop("User-Agent", &headers));
        assert_eq!(
            connection_tokens(&headers).collect::<Vec<_>>(),
            vec!["keep-alive", "X-Secret"]
        );
    }
}
