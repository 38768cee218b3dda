//! Request mirroring (ingress-nginx's `mirror-target`, `mirror-request-body`, `mirror-host`):
//! the typed settings of a route and the copy of a request sent to the shadow target.
//!
//! Sans-IO. The per-core driver sends the copy over its own connection and discards the
//! answer; the real request never waits for it, and a copy that cannot be made (too many in
//! flight, a body not at hand) is dropped and counted, never queued without bound.

use std::net::SocketAddr;

use super::ext_auth::{Origin, Piece, Template};
use crate::core::http1::Framing;
use crate::core::http1::forward::is_hop_by_hop;

/// Variables a mirror target's path may use.
pub const TARGET_VARIABLES: &[&str] = &["request_uri", "uri", "args", "host", "scheme"];

/// Largest request body copied to a mirror (a larger one, or one not yet received whole
/// with its head, means the copy is dropped).
pub const MAX_MIRROR_BODY: usize = 64 * 1024;

/// The mirror of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// Resolved when the snapshot was built.
    pub endpoint: SocketAddr,
    /// `host[:port]` of `mirror-target`, the default `Host` of the copy.
    pub authority: String,
    /// The target of the copy (`$request_uri` and friends filled in per request).
    pub target: Template,
    /// `mirror-host`: the `Host` of the copy instead.
    pub host: Option<String>,
    /// `mirror-request-body` (on by default): the copy carries the body.
    pub request_body: bool,
}

/// A copy of a request, ready to send (the connection machine's `Action::Mirror`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorCall {
    pub endpoint: SocketAddr,
    /// `None`: the copy could not be made (its body was not at hand whole): count it as
    /// dropped.
    pub request: Option<Vec<u8>>,
}

impl Mirror {
    /// The copy of `req` (`after`: what the client sent after the head). A body is copied
    /// only when it is at hand whole (a `Content-Length` body of at most
    /// [`MAX_MIRROR_BODY`] that came with the head); otherwise the call carries no copy.
    pub fn call(&self, req: &Origin<'_>, framing: Framing, after: &[u8]) -> Box<MirrorCall> {
        let body = match framing {
            Framing::None => None,
            _ if !self.request_body => None,
            Framing::Length(n) if n <= MAX_MIRROR_BODY as u64 && after.len() as u64 >= n => {
                Some(&after[..n as usize])
            }
            _ => {
                return Box::new(MirrorCall {
                    endpoint: self.endpoint,
                    request: None,
                });
            }
        };
        let mut request = Vec::with_capacity(512);
        self.write_request(req, body, &mut request);
        Box::new(MirrorCall {
            endpoint: self.endpoint,
            request: Some(request),
        })
    }

    /// Splits `http://host[:port]/path-with-$variables` into its literal authority and its
    /// target template.
    pub fn parse_target(value: &str) -> Result<(String, Template), String> {
        if value.bytes().any(|b| !(b'!'..=b'~').contains(&b)) {
            return Err(format!(
                "a URL is visible ASCII without spaces, got {value:?}"
            ));
        }
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(format!(
                "https:// mirror targets need an upstream TLS client, which Sluice does not have yet; got {value:?}"
            ));
        }
        if !lower.starts_with("http://") {
            return Err(format!("expected an http:// URL, got {value:?}"));
        }
        let rest = &value[7..];
        let (authority, path) = match rest.find(['/', '$', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if authority.contains('$') || super::ext_auth::split_authority(authority).is_none() {
            return Err(format!(
                "the host of a mirror target must be written out, got {value:?}"
            ));
        }
        let mut target = Template::parse(path, TARGET_VARIABLES)?;
        // `http://host$request_uri` is the common form; `http://host/$request_uri` (as in
        // ingress-nginx's docs) would double the slash: one is dropped.
        if let [Piece::Text(t), Piece::RequestUri | Piece::Uri, ..] = target.0.as_mut_slice()
            && t == "/"
        {
            target.0.remove(0);
        }
        if target.0.is_empty() {
            target.0.push(Piece::Text("/".into()));
        }
        Ok((authority.to_string(), target))
    }

    /// Writes the copy of `req` (with `body`, when given) into `out`: the original method,
    /// the target filled in, `Host` (`mirror-host` or the target's), the original fields but
    /// hop-by-hop and framing ones, `X-Original-URI`, and `Connection: close`.
    pub fn write_request(&self, req: &Origin<'_>, body: Option<&[u8]>, out: &mut Vec<u8>) {
        let mut target = String::new();
        self.target.render(req, &mut target);
        if !target.starts_with('/') {
            target.insert(0, '/');
        }
        let mut uri = String::new();
        req.push_request_uri(&mut uri);
        let host = self.host.as_deref().unwrap_or(&self.authority);
        for part in [
            req.method,
            " ",
            &target,
            " HTTP/1.1\r\nHost: ",
            host,
            "\r\n",
        ] {
            out.extend_from_slice(part.as_bytes());
        }
        for h in req.headers {
            let skip = [
                "host",
                "content-length",
                "transfer-encoding",
                "expect",
                "x-original-uri",
            ]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n));
            if skip || is_hop_by_hop(h.name, req.headers) {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        for part in ["X-Original-URI: ", &uri, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
        if let Some(body) = body {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        if let Some(body) = body {
            out.extend_from_slice(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_copies() {
        assert!(Mirror::parse_target("https://m/").is_err());
        assert!(Mirror::parse_target("http://$host/").is_err());
        assert!(Mirror::parse_target("http://m/$evil").is_err());
        let (authority, target) =
            Mirror::parse_target("http://mirror.shop.svc.cluster.local$request_uri").unwrap();
        assert_eq!(authority, "mirror.shop.svc.cluster.local");
        assert_eq!(target.0, vec![Piece::RequestUri]);
        let (authority, target) = Mirror::parse_target("http://10.0.0.9:81/$request_uri").unwrap();
        let m = Mirror {
            endpoint: "10.0.0.9:81".parse().unwrap(),
            authority,
            target,
            host: None,
            request_body: true,
        };
        let headers = [
            httparse::Header {
                name: "Host",
                value: b"app",
            },
            httparse::Header {
                name: "Content-Length",
                value: b"2",
            },
            httparse::Header {
                name: "X-A",
                value: b"1",
            },
        ];
        let req = Origin {
            method: "POST",
            authority: "app",
            host: "app",
            path: "/p",
            query: Some("q=1"),
            scheme: "http",
            client: "10.1.1.1".parse().unwrap(),
            headers: &headers,
        };
        let mut out = Vec::new();
        m.write_request(&req, Some(b"hi"), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nHost: 10.0.0.9:81\r\nX-A: 1\r\nX-Original-URI: /p?q=1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
    }
}
