//! Header fields a route (or the listener) sets on requests sent upstream or on responses
//! sent to the client: `sluice.dev/request-headers`, `sluice.dev/response-headers`,
//! `[http] proxy_set_headers`, and `connection-proxy-header`.
//!
//! Guarantees: a [`HeaderSet`] only exists parsed and checked: names are RFC 9110 tokens,
//! values are visible ASCII, spaces and tabs (never CR, LF or another control byte), and
//! fields that decide framing or the connection cannot be set. Setting replaces every field
//! of that name (nginx's `proxy_set_header` / `more_set_headers`).

use std::fmt;
use std::sync::Arc;

use crate::core::http1::local::set_fields;

/// Fields a request set may never touch: they decide the framing or the connection, or have
/// their own setting (`Host`: `upstream-vhost`).
pub const REQUEST_FORBIDDEN: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "http2-settings",
];

/// Fields a response set may never touch.
pub const RESPONSE_FORBIDDEN: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Most distinct field names in one set.
pub const MAX_NAMES: usize = 32;

/// A checked list of `Name: value` fields, rendered once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSet(Arc<Rendered>);

#[derive(Debug, PartialEq, Eq)]
struct Rendered {
    /// Lower-case, no repeats, at most [`MAX_NAMES`].
    names: Vec<String>,
    /// Every field, `Name: value\r\n`.
    block: Vec<u8>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl HeaderSet {
    /// One field a line (`Name: value`; blank lines are skipped); `forbidden` lists the
    /// lower-case names that may not be set. The whole list is refused on the first bad line.
    pub fn parse(text: &str, forbidden: &[&str]) -> Result<HeaderSet, String> {
        let mut fields = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |why: String| format!("line {}: {why}", i + 1);
            let Some((name, value)) = line.split_once(':') else {
                return Err(at(format!("expected `Name: value`, got {line:?}")));
            };
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(at(format!("{name:?} is not a field name")));
            }
            let value = value.trim_matches(|c| c == ' ' || c == '\t');
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
            {
                return Err(at(format!(
                    "the value of {name} must be visible ASCII (no CR, LF or other control \
                     bytes), got {value:?}"
                )));
            }
            let lower = name.to_ascii_lowercase();
            if forbidden.contains(&lower.as_str()) {
                return Err(at(format!("{name} cannot be set here")));
            }
            fields.push((name.to_string(), lower, value.to_string()));
        }
        if fields.is_empty() {
            return Err("no fields".to_string());
        }
        let set = HeaderSet::from_fields(fields);
        if set.0.names.len() > MAX_NAMES {
            return Err(format!("more than {MAX_NAMES} field names"));
        }
        Ok(set)
    }

    fn from_fields(fields: Vec<(String, String, String)>) -> HeaderSet {
        let mut names: Vec<String> = Vec::new();
        let mut block = Vec::new();
        for (name, lower, value) in fields {
            if !names.contains(&lower) {
                names.push(lower);
            }
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        HeaderSet(Arc::new(Rendered { names, block }))
    }

    /// In the head starting at `head_start` in `out` (its first line kept), removes every
    /// field of these names and appends these fields.
    pub fn apply(&self, out: &mut Vec<u8>, head_start: usize) {
        let mut names = [""; MAX_NAMES];
        let n = self.0.names.len().min(names.len());
        for (slot, name) in names.iter_mut().zip(&self.0.names) {
            *slot = name.as_str();
        }
        set_fields(out, head_start, &names[..n], &self.0.block);
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.block.split(|&b| b == b'\n').count() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.0.block.is_empty()
    }
}

impl fmt::Display for HeaderSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.names.join(","))
    }
}

/// `connection-proxy-header`: the `Connection` value sent upstream (one or more tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionHeader(Box<str>);

impl ConnectionHeader {
    /// Comma-separated tokens (`keep-alive`, `close`, …); `upgrade` is refused (tunnels send
    /// their own).
    pub fn parse(value: &str) -> Result<ConnectionHeader, String> {
        let tokens: Vec<&str> = value.split(',').map(str::trim).collect();
        let ok = tokens
            .iter()
            .all(|t| !t.is_empty() && t.bytes().all(is_tchar));
        if !ok {
            return Err(format!(
                "expected connection options such as keep-alive or close, got {value:?}"
            ));
        }
        if tokens.iter().any(|t| t.eq_ignore_ascii_case("upgrade")) {
            return Err("upgrade is sent for tunnels only".to_string());
        }
        Ok(ConnectionHeader(tokens.join(", ").into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The upstream is told to close: its connection is not pooled.
    pub fn closes(&self) -> bool {
        self.0
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }

    /// Adds `Connection: <value>` to the upstream head starting at `head_start` in `out`
    /// (replacing any other).
    pub fn apply(&self, out: &mut Vec<u8>, head_start: usize) {
        let mut block = Vec::with_capacity(self.0.len() + 14);
        block.extend_from_slice(b"Connection: ");
        block.extend_from_slice(self.0.as_bytes());
        block.extend_from_slice(b"\r\n");
        set_fields(out, head_start, &["connection"], &block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_checked_and_replace_fields() {
        let set = HeaderSet::parse(
            "X-Custom: one\n\nX-Other:  two words \nx-custom: three",
            &REQUEST_FORBIDDEN,
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Custom: client\r\n\r\nbody".to_vec();
        set.apply(&mut head, 0);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nX-Custom: one\r\nX-Other: two words\r\n\
             x-custom: three\r\n\r\nbody"
        );
        for bad in [
            "X-A: b\rSet-Cookie: x",
            "X-A: b\u{0}",
            "X A: b",
            "X-A",
            "X-A:",
            "Host: evil",
            "Content-Length: 0",
            "",
        ] {
            assert!(
                HeaderSet::parse(bad, &REQUEST_FORBIDDEN).is_err(),
                "{bad:?}"
            );
        }
        assert!(HeaderSet::parse("Host: ok", &RESPONSE_FORBIDDEN).is_ok());
    }

    #[test]
    fn connection_values() {
        let keep = ConnectionHeader::parse("keep-alive").unwrap();
        assert!(!keep.closes());
        assert!(ConnectionHeader::parse("Close").unwrap().closes());
        assert!(ConnectionHeader::parse("upgrade").is_err());
        assert!(ConnectionHeader::parse("close\r\nX: y").is_err());
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        keep.apply(&mut head, 0);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        );
    }
}
