//! Re-emitting a request head towards the upstream: hop-by-hop fields removed, forwarding
//! fields set, body framing re-stated. Also the hop-by-hop rules the response side shares.
//!
//! OWNER: helper "http1-request" writes `write_upstream_request`. The hop-by-hop helpers below
//! are shared with the response side; keep their signatures.

/// Fields that are always hop-by-hop (RFC 9110 §7.6.1), plus the legacy ones proxies strip.
/// `Upgrade` is handled separately: kept only when tunnelling.
const ALWAYS_HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
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

#[cfg(test)]
mod hop_tests {
    use super::*;

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
