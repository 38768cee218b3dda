//! Custom error pages (`custom-http-errors`, `default-backend`): which upstream statuses a
//! route intercepts, where the error request goes, and the error request itself: the request
//! as it was sent upstream, with target `/`, no body, and the fields ingress-nginx gives its
//! error backend (`X-Code`, `X-Format`, `X-Original-URI`, `X-Namespace`, `X-Ingress-Name`,
//! `X-Service-Name`, `X-Service-Port`, `X-Request-ID`).
//!
//! Guarantees: the error request is built from values that are already header-safe (the
//! parsed request's fields, Kubernetes names, digits); the error backend's answer is passed
//! to the client unchanged and is never intercepted again.

use std::fmt;

use super::BackendId;
use crate::core::http1::local::{push_decimal, set_fields};

/// What a route does with error statuses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomErrors {
    /// `custom-http-errors`: the upstream statuses answered by the error backend instead
    /// (sorted, no repeats); empty when only `default-backend` is set.
    pub codes: Vec<u16>,
    /// `default-backend`: a Service of the Ingress's namespace (its first port), used for the
    /// error requests and when the route's own backend has no endpoints.
    pub service: Option<String>,
    /// `disable-proxy-intercept-errors`: upstream statuses are not intercepted (a route with
    /// no endpoints still goes to `default-backend`).
    pub no_intercept: bool,
    /// Where error requests go: `service`'s backend, else the controller's default backend.
    /// Set by the compiler; `None`: nowhere, every response passes unchanged.
    pub backend: Option<BackendId>,
}

/// Fields of the error request that are ours (the client's copies are dropped), and those
/// of a body or a tunnel, which the error request never has.
const OURS: [&str; 12] = [
    "x-code",
    "x-format",
    "x-original-uri",
    "x-namespace",
    "x-ingress-name",
    "x-service-name",
    "x-service-port",
    "content-length",
    "transfer-encoding",
    "expect",
    "upgrade",
    "connection",
];

impl CustomErrors {
    /// Whether an upstream answer with `status` goes to the error backend instead.
    pub fn intercepts(&self, status: u16) -> bool {
        !self.no_intercept && self.backend.is_some() && self.codes.binary_search(&status).is_ok()
    }

    /// Whether a route whose backend has no endpoints is answered by the error backend (with
    /// `X-Code: 503`): with `default-backend`, or when 503 is one of the codes (nginx's own 503
    /// goes through its `error_page` too).
    pub fn on_no_endpoints(&self) -> bool {
        self.backend.is_some() && (self.service.is_some() || self.codes.contains(&503))
    }
}

impl fmt::Display for CustomErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<String> = self.codes.iter().map(u16::to_string).collect();
        write!(f, "custom-errors={}", codes.join(","))?;
        if let Some(s) = &self.service {
            write!(f, " default-backend={s}")?;
        }
        if self.no_intercept {
            f.write_str(" no-intercept")?;
        }
        if self.backend.is_none() {
            f.write_str(" (no error backend)")?;
        }
        Ok(())
    }
}

/// What the error request says about the failed request.
#[derive(Copy, Clone, Debug)]
pub struct ErrorContext<'a> {
    /// The client's request target (`$request_uri`): path and query as received.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The client's `Accept` field, if any.
    pub accept: Option<&'a [u8]>,
    /// `namespace/name` of the matched Ingress.
    pub ingress: Option<&'a str>,
    /// `namespace/service:port` of the route's backend.
    pub backend: Option<&'a str>,
}

/// Writes into `out` (cleared) the error request for the upstream head `upstream` (as
/// `write_upstream_request` wrote it, with the route's edits), all but its `X-Code` field and
/// final CRLF: see [`finish`]. `out` is reused from request to request.
pub fn prepare(upstream: &[u8], ctx: &ErrorContext<'_>, out: &mut Vec<u8>) {
    out.clear();
    let Some(line_end) = memchr::memchr(b'\n', upstream) else {
        return;
    };
    let method = upstream.split(|&b| b == b' ').next().unwrap_or(b"GET");
    out.extend_from_slice(method);
    out.extend_from_slice(b" / HTTP/1.1\r\n");
    out.extend_from_slice(&upstream[line_end + 1..]);
    let mut block = Vec::with_capacity(256);
    if let Some(accept) = ctx.accept.filter(|a| !a.is_empty()) {
        field(b"X-Format", accept, &mut block);
    }
    let mut uri = Vec::with_capacity(ctx.path.len() + 1);
    uri.extend_from_slice(ctx.path.as_bytes());
    if let Some(q) = ctx.query {
        uri.push(b'?');
        uri.extend_from_slice(q.as_bytes());
    }
    field(b"X-Original-URI", &uri, &mut block);
    if let Some((ns, name)) = ctx.ingress.and_then(|i| i.split_once('/')) {
        field(b"X-Namespace", ns.as_bytes(), &mut block);
        field(b"X-Ingress-Name", name.as_bytes(), &mut block);
    }
    if let Some((service, port)) = ctx
        .backend
        .and_then(|b| b.split_once('/'))
        .and_then(|(_, rest)| rest.rsplit_once(':'))
    {
        field(b"X-Service-Name", service.as_bytes(), &mut block);
        field(b"X-Service-Port", port.as_bytes(), &mut block);
    }
    // The head ends with an empty line; what follows the last field is our block.
    set_fields(out, 0, &OURS, &block);
    // `set_fields` keeps the empty line after the block: drop it, `finish` adds it.
    if out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
    } else {
        out.clear();
    }
}

/// Appends to `out` the error request `prepared` by [`prepare`] for status `code`, or
/// nothing when there is none.
pub fn finish(prepared: &[u8], code: u16, out: &mut Vec<u8>) {
    if prepared.is_empty() {
        return;
    }
    out.extend_from_slice(prepared);
    out.extend_from_slice(b"X-Code: ");
    push_decimal(u64::from(code), out);
    out.extend_from_slice(b"\r\n\r\n");
}

fn field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_no_endpoints() {
        let mut e = CustomErrors {
            codes: vec![404, 503],
            backend: Some(BackendId(3)),
            ..CustomErrors::default()
        };
        assert!(e.intercepts(404) && e.intercepts(503) && !e.intercepts(500));
        assert!(e.on_no_endpoints());
        e.codes = vec![404];
        assert!(!e.on_no_endpoints());
        e.service = Some("errors".into());
        assert!(e.on_no_endpoints());
        e.no_intercept = true;
        assert!(!e.intercepts(404) && e.on_no_endpoints());
        e.backend = None;
        assert!(!e.on_no_endpoints());
    }

    #[test]
    fn the_error_request_keeps_the_fields_and_drops_the_body() {
        let upstream =
            b"POST /api/x?y=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: application/json\r\n\
            X-Code: 999\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 5\r\n\r\n";
        let ctx = ErrorContext {
            path: "/api/x",
            query: Some("y=1"),
            accept: Some(b"application/json"),
            ingress: Some("shop/web"),
            backend: Some("shop/api:http"),
        };
        let mut prepared = Vec::new();
        prepare(upstream, &ctx, &mut prepared);
        let mut out = Vec::new();
        finish(&prepared, 404, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST / HTTP/1.1\r\nHost: shop.example\r\nAccept: application/json\r\n\
             X-Forwarded-For: 10.0.0.1\r\nX-Format: application/json\r\n\
             X-Original-URI: /api/x?y=1\r\nX-Namespace: shop\r\nX-Ingress-Name: web\r\n\
             X-Service-Name: api\r\nX-Service-Port: http\r\nX-Code: 404\r\n\r\n"
        );
        let mut none = Vec::new();
        finish(&[], 404, &mut none);
        assert!(none.is_empty());
    }
}
