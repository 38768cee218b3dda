//! External authentication (ingress-nginx's `auth-url` family): the typed settings of a
//! route, the subrequest written from the original request head, the reader of the auth
//! service's answer, the decision it leads to, and a bounded per-worker cache of decisions.
//!
//! Sans-IO: no sockets, no clock. The per-core driver carries the subrequest over one more
//! upstream connection; the connection machine waits for the decision without blocking.
//! Every value that reaches a header was checked when the snapshot was built (no CR/LF).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::core::http1::forward::is_hop_by_hop;
use crate::core::http1::request::RequestHead;
use crate::core::route::key::{Token, split_variables};
use crate::core::time::Instant;

/// Where the subrequest goes: an address resolved when the snapshot was built, the `Host`
/// field to send and the request target (path and query of `auth-url`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthTarget {
    pub endpoint: SocketAddr,
    /// `host[:port]` as written in the URL (the `Host` field of the subrequest).
    pub authority: String,
    /// `/path[?query]`.
    pub target: String,
}

/// The parts of an `http://host[:port]/path?query` URL (no userinfo, no fragment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Lower-case host (an IPv6 literal keeps its brackets).
    pub host: String,
    pub port: u16,
    /// The `host[:port]` as written.
    pub authority: String,
    pub target: String,
}

impl HttpUrl {
    /// Parses a plain-HTTP URL. `https://` is refused: Sluice has no upstream TLS client yet.
    pub fn parse(value: &str) -> Result<HttpUrl, String> {
        if value.bytes().any(|b| !(b'!'..=b'~').contains(&b)) {
            return Err(format!(
                "a URL is visible ASCII without spaces, got {value:?}"
            ));
        }
        let lower = value.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &value[7..]
        } else if lower.starts_with("https://") {
            return Err(format!(
                "https:// auth and mirror URLs need an upstream TLS client, which Sluice does not have yet; got {value:?}"
            ));
        } else {
            return Err(format!("expected an http:// URL, got {value:?}"));
        };
        if value.contains('#') {
            return Err(format!("a URL here has no fragment, got {value:?}"));
        }
        let (authority, target) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let target = if target.starts_with('?') {
            format!("/{target}")
        } else {
            target.to_string()
        };
        if authority.contains('@') {
            return Err(format!("a URL here has no user info, got {value:?}"));
        }
        let (host, port) =
            split_authority(authority).ok_or_else(|| format!("invalid url host in {value:?}"))?;
        Ok(HttpUrl {
            host: host.to_ascii_lowercase(),
            port,
            authority: authority.to_string(),
            target,
        })
    }

    /// The host as an address, when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }
}

/// `host[:port]` → host and port (80 by default). The host is an IP literal or a DNS name
/// of letters, digits, `-` and `.` with no empty label.
pub fn split_authority(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &authority[..end + 2];
        rest[..end].parse::<std::net::Ipv6Addr>().ok()?;
        match &authority[end + 2..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
    };
    if !host.starts_with('[') {
        let labels_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return None;
        }
    }
    Some((host, port))
}

/// One piece of a template (`auth-signin`, `auth-cache-key`, `mirror-target`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// `$host`: the request's host without port, lower-case.
    Host,
    /// `$http_host`: the `Host` as sent (with its port).
    HttpHost,
    /// `$scheme`: `http` or `https`.
    Scheme,
    /// `$request_uri`: path and query as sent.
    RequestUri,
    /// `$escaped_request_uri`: the same, escaped for a query parameter.
    EscapedRequestUri,
    /// `$uri`: the path.
    Uri,
    /// `$args`: the query (without `?`).
    Args,
    /// `$remote_addr`: the client's address.
    RemoteAddr,
    /// `$remote_user`: the user of a `Basic` `Authorization` field.
    RemoteUser,
    /// `$http_<name>`: a request field (lower-case name, `-` for `_`).
    Field(String),
    /// `$cookie_<name>`: a cookie of the request.
    Cookie(String),
}

/// A text with nginx-style variables, parsed once into typed pieces: only the variables of
/// [`Piece`] are known; any other `$name` is an error (never passed through as text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub Vec<Piece>);

impl Template {
    /// `allowed` says which variables this template may use (by their `$` name).
    pub fn parse(value: &str, allowed: &[&str]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        for token in split_variables(value)? {
            let name = match token {
                Token::Text(t) => {
                    pieces.push(Piece::Text(t.to_string()));
                    continue;
                }
                Token::Variable(name) => name,
            };
            let piece = match name {
                "host" => Piece::Host,
                "http_host" => Piece::HttpHost,
                "scheme" => Piece::Scheme,
                "request_uri" => Piece::RequestUri,
                "escaped_request_uri" => Piece::EscapedRequestUri,
                "uri" => Piece::Uri,
                "args" => Piece::Args,
                "remote_addr" => Piece::RemoteAddr,
                "remote_user" => Piece::RemoteUser,
                n if n.starts_with("http_") && n.len() > 5 => {
                    Piece::Field(n[5..].to_ascii_lowercase().replace('_', "-"))
                }
                n if n.starts_with("cookie_") && n.len() > 7 => Piece::Cookie(n[7..].to_string()),
                n => return Err(format!("${n} is not a variable Sluice knows, in {value:?}")),
            };
            let key = match &piece {
                Piece::Field(_) => "http_",
                Piece::Cookie(_) => "cookie_",
                _ => name,
            };
            if !allowed.contains(&key) {
                return Err(format!("${name} cannot be used here, in {value:?}"));
            }
            pieces.push(piece);
        }
        Ok(Template(pieces))
    }

    /// Whether the template uses no variable.
    pub fn is_literal(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    /// Appends the template's text for `req` to `out`. A value that is not visible ASCII
    /// (a header with obs-text, say) is left out, so the result is always safe in a field.
    pub fn render(&self, req: &Origin<'_>, out: &mut String) {
        for piece in &self.0 {
            let start = out.len();
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Host => out.push_str(&req.host.to_ascii_lowercase()),
                Piece::HttpHost => out.push_str(req.authority),
                Piece::Scheme => out.push_str(req.scheme),
                Piece::RequestUri => req.push_request_uri(out),
                Piece::EscapedRequestUri => {
                    let mut uri = String::new();
                    req.push_request_uri(&mut uri);
                    query_escape(&uri, out);
                }
                Piece::Uri => out.push_str(req.path),
                Piece::Args => out.push_str(req.query.unwrap_or("")),
                Piece::RemoteAddr => out.push_str(&req.client.to_string()),
                Piece::RemoteUser => {
                    if let Some(user) = req.field("authorization").and_then(basic_user) {
                        out.push_str(&user);
                    }
                }
                Piece::Field(name) => {
                    if let Some(v) = req.field(name) {
                        out.push_str(&String::from_utf8_lossy(v));
                    }
                }
                Piece::Cookie(name) => {
                    if let Some(v) = req.cookie(name) {
                        out.push_str(v);
                    }
                }
            }
            if out[start..].bytes().any(|b| !(b' '..=b'~').contains(&b)) {
                out.truncate(start);
            }
        }
    }
}

/// The user of `Basic <base64(user:password)>`.
fn basic_user(value: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, cred) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(cred.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    Some(decoded.split_once(':')?.0.to_string())
}

/// Go's `url.QueryEscape` (what ingress-nginx's `rd=` value looks like): letters, digits and
/// `-_.~` kept, space as `+`, everything else `%XX`.
pub fn query_escape(value: &str, out: &mut String) {
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

/// What of the original request the subrequest, templates and cache keys read.
#[derive(Copy, Clone, Debug)]
pub struct Origin<'a> {
    pub method: &'a str,
    /// `host[:port]` as sent.
    pub authority: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub scheme: &'a str,
    pub client: IpAddr,
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> Origin<'a> {
    pub fn of(head: &'a RequestHead<'a>, scheme: &'a str, client: IpAddr) -> Origin<'a> {
        Origin {
            method: head.method,
            authority: head.authority,
            host: head.host(),
            path: head.path(),
            query: head.query(),
            scheme,
            client,
            headers: head.headers,
        }
    }

    pub fn field(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    pub fn push_request_uri(&self, out: &mut String) {
        out.push_str(self.path);
        if let Some(q) = self.query {
            out.push('?');
            out.push_str(q);
        }
    }
}

/// Statuses (`None`: any) and how long an answer with one of them is kept.
pub type Durations = Vec<(Option<Vec<u16>>, Duration)>;

/// `auth-cache-key` and `auth-cache-duration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRule {
    pub key: Template,
    /// Statuses (`None`: any) and how long an answer with one of them is kept.
    pub durations: Durations,
}

impl CacheRule {
    /// How long an answer with `status` is kept (`None`: not cached).
    pub fn duration(&self, status: u16) -> Option<Duration> {
        self.durations
            .iter()
            .find(|(codes, _)| codes.as_ref().is_none_or(|c| c.contains(&status)))
            .map(|(_, d)| *d)
    }
}

/// ingress-nginx's default `auth-cache-duration`.
pub const DEFAULT_CACHE_DURATION: &str = "200 202 401 5m";

/// Parses `200 202 401 5m` (codes, then an nginx time: `ms`, `s`, `m`, `h`, `d`; `any` for
/// every status); entries separated by `,`.
pub fn parse_cache_durations(value: &str) -> Result<Durations, String> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let words: Vec<&str> = entry.split_ascii_whitespace().collect();
        let Some((time, codes)) = words.split_last() else {
            continue;
        };
        let duration = parse_nginx_time(time)
            .ok_or_else(|| format!("{time:?} is not a duration like 5m, in {value:?}"))?;
        let codes = if codes.is_empty() || codes == ["any"] {
            None
        } else {
            let mut list = Vec::new();
            for c in codes {
                match c.parse::<u16>() {
                    Ok(n @ 100..=599) => list.push(n),
                    _ => return Err(format!("{c:?} is not a status code, in {value:?}")),
                }
            }
            Some(list)
        };
        out.push((codes, duration));
    }
    if out.is_empty() {
        return Err(format!(
            "expected codes and a duration like {DEFAULT_CACHE_DURATION:?}, got {value:?}"
        ));
    }
    Ok(out)
}

fn parse_nginx_time(value: &str) -> Option<Duration> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let n: u64 = value[..split].parse().ok()?;
    let secs = match &value[split..] {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The external authentication of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtAuth {
    /// `namespace/name` of the Ingress: the scope of cached answers.
    pub scope: Arc<str>,
    /// `None`: `auth-url` was set but cannot be used (bad URL, unknown Service): every
    /// request is answered 503, as ingress-nginx denies such a location.
    pub target: Option<AuthTarget>,
    /// `auth-method` (`None`: the original request's method).
    pub method: Option<String>,
    /// `auth-response-headers`: fields copied from a 2xx answer into the upstream request
    /// (lower-case names; the client's own fields of those names are dropped).
    pub response_headers: Vec<String>,
    /// `auth-request-redirect`: the `X-Auth-Request-Redirect` value (default: the request URI).
    pub request_redirect: Option<String>,
    /// `auth-signin`: a 401 becomes a 302 to this URL with the original URL in `redirect_param`.
    pub signin: Option<Template>,
    /// `auth-signin-redirect-param` (`rd` by default).
    pub redirect_param: String,
    /// `auth-proxy-set-headers` is a ConfigMap reference: not read (reported).
    /// `auth-cache-key` with `auth-cache-duration`.
    pub cache: Option<CacheRule>,
}

/// Variables a signin URL may use.
pub const SIGNIN_VARIABLES: &[&str] = &[
    "host",
    "http_host",
    "scheme",
    "request_uri",
    "escaped_request_uri",
];

/// Variables a cache key may use.
pub const CACHE_KEY_VARIABLES: &[&str] = &[
    "host",
    "http_host",
    "scheme",
    "request_uri",
    "uri",
    "args",
    "remote_addr",
    "remote_user",
    "http_",
    "cookie_",
];

/// Fields the subrequest sets itself (the client's copies are not passed on).
const SET_BY_SUBREQUEST: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "expect",
    "x-forwarded-proto",
    "x-request-id",
    "x-original-uri",
    "x-scheme",
    "x-original-url",
    "x-original-method",
    "x-sent-from",
    "x-real-ip",
    "x-forwarded-for",
    "x-auth-request-redirect",
];

/// An auth subrequest, ready to send (the connection machine's `Action::Authorize`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCall {
    pub auth: Arc<ExtAuth>,
    pub endpoint: SocketAddr,
    pub request: Vec<u8>,
    /// Where the answer may be cached (`None`: not cached).
    pub cache_key: Option<String>,
}

impl ExtAuth {
    /// The subrequest for `req` and the signin location (`None`: an `auth-url` that cannot
    /// be used, which the request policy's verdict already answered with 503).
    pub fn call(
        self: &Arc<Self>,
        req: &Origin<'_>,
        request_id: &str,
    ) -> Option<(Box<AuthCall>, Option<String>)> {
        let target = self.target.as_ref()?;
        let mut request = Vec::with_capacity(512);
        self.write_request(target, req, request_id, &mut request);
        let call = AuthCall {
            auth: self.clone(),
            endpoint: target.endpoint,
            request,
            cache_key: self.cache_key(req),
        };
        Some((Box::new(call), self.signin_location(req)))
    }

    /// Writes the subrequest for `req` into `out`: the `auth-method` (else the original
    /// method) to the URL's path, the original fields (not its body, never hop-by-hop ones)
    /// and ingress-nginx's own: `X-Original-URL`, `X-Original-Method`, `X-Sent-From`,
    /// `X-Real-IP`, `X-Forwarded-For`, `X-Auth-Request-Redirect` (`X-Original-URI` and
    /// `X-Scheme` too with `auth-method`), `X-Request-ID` when there is one. One request per
    /// connection (`Connection: close`).
    pub fn write_request(
        &self,
        target: &AuthTarget,
        req: &Origin<'_>,
        request_id: &str,
        out: &mut Vec<u8>,
    ) {
        let mut uri = String::new();
        req.push_request_uri(&mut uri);
        let method = self.method.as_deref().unwrap_or(req.method);
        push(out, &[method, " ", &target.target, " HTTP/1.1\r\n"]);
        push(out, &["Host: ", &target.authority, "\r\n"]);
        for h in req.headers {
            let name = h.name;
            if SET_BY_SUBREQUEST
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s))
                || is_hop_by_hop(name, req.headers)
            {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if self.method.is_some() {
            push(out, &["X-Original-URI: ", &uri, "\r\n"]);
            push(out, &["X-Scheme: ", req.scheme, "\r\n"]);
        }
        push(
            out,
            &[
                "X-Original-URL: ",
                req.scheme,
                "://",
                req.authority,
                &uri,
                "\r\n",
            ],
        );
        push(out, &["X-Original-Method: ", req.method, "\r\n"]);
        out.extend_from_slice(b"X-Sent-From: nginx-ingress-controller\r\n");
        let client = req.client.to_string();
        push(out, &["X-Real-IP: ", &client, "\r\n"]);
        push(out, &["X-Forwarded-For: ", &client, "\r\n"]);
        let redirect = self.request_redirect.as_deref().unwrap_or(&uri);
        push(out, &["X-Auth-Request-Redirect: ", redirect, "\r\n"]);
        if !request_id.is_empty() {
            push(out, &["X-Request-ID: ", request_id, "\r\n"]);
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    }

    /// The decision for the auth service's answer (`None`: no usable answer: 500).
    pub fn decide(&self, reply: Option<&AuthReply>) -> AuthDecision {
        let Some(reply) = reply else {
            return AuthDecision::Error;
        };
        match reply.status {
            200..=299 => AuthDecision::Allow {
                fields: Arc::new(render_fields(&self.response_headers, &reply.fields)),
                cookie: reply.field("set-cookie").map(Into::into),
            },
            401 => AuthDecision::Deny {
                status: 401,
                www_authenticate: reply.field("www-authenticate").map(Into::into),
                cookie: reply.field("set-cookie").map(Into::into),
            },
            403 => AuthDecision::Deny {
                status: 403,
                www_authenticate: None,
                cookie: None,
            },
            _ => AuthDecision::Error,
        }
    }

    /// The cache key of `req` (`None`: no caching for this route).
    pub fn cache_key(&self, req: &Origin<'_>) -> Option<String> {
        let rule = self.cache.as_ref()?;
        let mut key = String::with_capacity(64);
        key.push_str(&self.scope);
        key.push('\0');
        key.push_str(&req.host.to_ascii_lowercase());
        key.push('\0');
        rule.key.render(req, &mut key);
        Some(key)
    }

    /// The `Location` of the signin redirect for `req`: the signin URL, then
    /// `<param>=<scheme>://<host><escaped request URI>` unless the URL already has the
    /// parameter (ingress-nginx's `buildAuthSignURL`).
    pub fn signin_location(&self, req: &Origin<'_>) -> Option<String> {
        let signin = self.signin.as_ref()?;
        let mut url = String::new();
        signin.render(req, &mut url);
        let param = format!("{}=", self.redirect_param);
        let has_param = url
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with(&param)));
        if !has_param {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&param);
            url.push_str(req.scheme);
            url.push_str("://");
            if req
                .authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            {
                url.push_str(req.authority);
            }
            let mut uri = String::new();
            req.push_request_uri(&mut uri);
            query_escape(&uri, &mut url);
        }
        Some(url)
    }
}

fn push(out: &mut Vec<u8>, parts: &[&str]) {
    for p in parts {
        out.extend_from_slice(p.as_bytes());
    }
}

/// The upstream fields for the listed names, from the auth answer's fields (first value of
/// each; a name the answer lacks is sent nowhere).
fn render_fields(names: &[String], fields: &[(Box<str>, Box<[u8]>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        if let Some((n, v)) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// What the auth service's answer decides for the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// Forward it, with these complete fields (each ending in CRLF) added upstream. The
    /// answer's (first) `Set-Cookie` goes to the client on a response nginx's `add_header`
    /// would add it to (ingress-nginx: `add_header Set-Cookie $auth_cookie`).
    Allow {
        fields: Arc<Vec<u8>>,
        cookie: Option<Arc<[u8]>>,
    },
    /// 401 (to the signin URL when there is one, with the answer's `Set-Cookie`) or 403.
    Deny {
        status: u16,
        www_authenticate: Option<Box<[u8]>>,
        cookie: Option<Arc<[u8]>>,
    },
    /// Any other status, no answer, or no answer in time: 500.
    Error,
}

/// The parts of the auth service's answer that matter: its status and fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthReply {
    pub status: u16,
    pub fields: Vec<(Box<str>, Box<[u8]>)>,
}

impl AuthReply {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &**v)
    }
}

/// Largest answer head read from an auth service; a longer one is an error (500).
pub const MAX_REPLY_HEAD: usize = 16 * 1024;

/// Reads an answer head from bytes as they come; the body is never read.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
}

/// What [`ReplyReader::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyProgress {
    NeedMore,
    Done(AuthReply),
    Bad,
}

impl ReplyReader {
    pub fn feed(&mut self, data: &[u8]) -> ReplyProgress {
        self.buf.extend_from_slice(data);
        loop {
            let mut storage = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut storage);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    // An interim answer (100 Continue) is skipped.
                    if (100..200).contains(&status) && status != 101 {
                        self.buf.drain(..len);
                        continue;
                    }
                    let fields = resp
                        .headers
                        .iter()
                        .map(|h| (Box::from(h.name), Box::from(h.value)))
                        .collect();
                    return ReplyProgress::Done(AuthReply { status, fields });
                }
                Ok(httparse::Status::Partial) if self.buf.len() <= MAX_REPLY_HEAD => {
                    return ReplyProgress::NeedMore;
                }
                _ => return ReplyProgress::Bad,
            }
        }
    }
}

/// What a worker remembers of recent answers, per key, until they expire. Bounded: once
/// full, expired entries are dropped, and if none are, a new answer is not remembered.
#[derive(Debug)]
pub struct AuthCache {
    entries: HashMap<String, (Instant, AuthDecision)>,
    cap: usize,
}

impl AuthCache {
    pub fn new(cap: usize) -> AuthCache {
        AuthCache {
            entries: HashMap::new(),
            cap,
        }
    }

    pub fn get(&self, key: &str, now: Instant) -> Option<&AuthDecision> {
        self.entries
            .get(key)
            .filter(|(until, _)| now < *until)
            .map(|(_, d)| d)
    }

    /// Remembers `decision` (for an answer with `status`) when the route's rule says so.
    pub fn put(
        &mut self,
        rule: &CacheRule,
        key: String,
        status: u16,
        decision: &AuthDecision,
        now: Instant,
    ) {
        let Some(ttl) = rule.duration(status) else {
            return;
        };
        if self.entries.len() >= self.cap && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (until, _)| now < *until);
            if self.entries.len() >= self.cap {
                return;
            }
        }
        self.entries.insert(key, (now + ttl, decision.clone()));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The statuses nginx's `add_header` adds a field to (without `always`): where the auth
/// answer's `Set-Cookie` goes.
pub fn adds_header(status: u16) -> bool {
    matches!(
        status,
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin<'a>(headers: &'a [httparse::Header<'a>]) -> Origin<'a> {
        Origin {
            method: "GET",
            authority: "auth:8080",
            host: "auth",
            path: "/",
            query: Some("a=b&c=d"),
            scheme: "http",
            client: "10.1.2.3".parse().unwrap(),
            headers,
        }
    }

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://10.0.0.7:9000/basic-auth/user/password?x=1").unwrap();
        assert_eq!(u.ip(), Some("10.0.0.7".parse().unwrap()));
        assert_eq!(
            (u.port, u.target.as_str()),
            (9000, "/basic-auth/user/password?x=1")
        );
        let u = HttpUrl::parse("http://Auth.NS.svc.cluster.local").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("auth.ns.svc.cluster.local", 80, "/")
        );
        assert_eq!(
            HttpUrl::parse("http://[::1]:81/a").unwrap().ip(),
            Some("::1".parse().unwrap())
        );
        for bad in [
            "https://invalid..auth.url",
            "http://invalid..auth.url",
            "http://a b/",
            "http://a/\r\nX: y",
            "ftp://a/",
            "http://u:p@a/",
            "http://a:99999/",
            "http://$host/path",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signin_redirects_carry_the_original_url() {
        let h = [];
        let mut a = ExtAuth {
            scope: "ns/ing".into(),
            target: None,
            method: None,
            response_headers: vec![],
            request_redirect: None,
            signin: Some(Template::parse("http://$host/auth/start", SIGNIN_VARIABLES).unwrap()),
            redirect_param: "rd".into(),
            cache: None,
        };
        assert_eq!(
            a.signin_location(&origin(&h)).unwrap(),
            "http://auth/auth/start?rd=http://auth:8080%2F%3Fa%3Db%26c%3Dd"
        );
        a.redirect_param = "orig".into();
        a.signin = Some(Template::parse("https://login/?orig=x", SIGNIN_VARIABLES).unwrap());
        assert_eq!(
            a.signin_location(&origin(&h)).unwrap(),
            "https://login/?orig=x"
        );
        assert!(Template::parse("http://$evil/", SIGNIN_VARIABLES).is_err());
        assert!(Template::parse("$remote_addr", SIGNIN_VARIABLES).is_err());
    }

    #[test]
    fn replies_and_decisions() {
        let mut r = ReplyReader::default();
        assert_eq!(
            r.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-User: "),
            ReplyProgress::NeedMore
        );
        let ReplyProgress::Done(reply) = r.feed(b"alice\r\nX-Other: 1\r\n\r\nbody") else {
            panic!("complete");
        };
        let a = ExtAuth {
            scope: "ns/ing".into(),
            target: None,
            method: None,
            response_headers: vec!["x-user".into(), "x-missing".into()],
            request_redirect: None,
            signin: None,
            redirect_param: "rd".into(),
            cache: None,
        };
        assert_eq!(
            a.decide(Some(&reply)),
            AuthDecision::Allow {
                fields: Arc::new(b"X-User: alice\r\n".to_vec()),
                cookie: None,
            }
        );
        let deny = AuthReply {
            status: 401,
            fields: vec![("WWW-Authenticate".into(), b"Basic".to_vec().into())],
        };
        assert!(matches!(
            a.decide(Some(&deny)),
            AuthDecision::Deny {
                status: 401,
                www_authenticate: Some(_),
                ..
            }
        ));
        let other = AuthReply {
            status: 302,
            fields: vec![],
        };
        assert_eq!(a.decide(Some(&other)), AuthDecision::Error);
        assert_eq!(a.decide(None), AuthDecision::Error);
        let mut r = ReplyReader::default();
        assert_eq!(r.feed(&vec![b'a'; MAX_REPLY_HEAD + 1]), ReplyProgress::Bad);
    }

    #[test]
    fn subrequest_head() {
        let headers = [
            httparse::Header {
                name: "Host",
                value: b"auth:8080",
            },
            httparse::Header {
                name: "Authorization",
                value: b"Basic dXNlcjpwYXNzd29yZA==",
            },
            httparse::Header {
                name: "Content-Length",
                value: b"5",
            },
            httparse::Header {
                name: "Connection",
                value: b"keep-alive, X-Hop",
            },
            httparse::Header {
                name: "X-Hop",
                value: b"1",
            },
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"6.6.6.6",
            },
        ];
        let a = ExtAuth {
            scope: "ns/ing".into(),
            target: None,
            method: Some("POST".into()),
            response_headers: vec![],
            request_redirect: None,
            signin: None,
            redirect_param: "rd".into(),
            cache: None,
        };
        let t = AuthTarget {
            endpoint: "10.0.0.7:80".parse().unwrap(),
            authority: "auth.example".into(),
            target: "/check".into(),
        };
        let mut out = Vec::new();
        a.write_request(&t, &origin(&headers), "", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("POST /check HTTP/1.1\r\nHost: auth.example\r\n"),
            "{text}"
        );
        assert!(text.contains("Authorization: Basic dXNlcjpwYXNzd29yZA==\r\n"));
        assert!(text.contains("X-Original-URL: http://auth:8080/?a=b&c=d\r\n"));
        assert!(
            text.contains("X-Original-Method: GET\r\nX-Sent-From: nginx-ingress-controller\r\n")
        );
        assert!(text.contains("X-Original-URI: /?a=b&c=d\r\n"));
        assert!(text.contains("X-Forwarded-For: 10.1.2.3\r\n"));
        assert!(text.contains("X-Auth-Request-Redirect: /?a=b&c=d\r\n"));
        assert!(
            !text.contains("6.6.6.6")
                && !text.contains("X-Hop")
                && !text.contains("Content-Length")
        );
        assert!(text.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn cache_keys_scope_and_bounds() {
        let rule = CacheRule {
            key: Template::parse("$remote_user$http_authorization", CACHE_KEY_VARIABLES).unwrap(),
            durations: parse_cache_durations("200 202 401 5m").unwrap(),
        };
        assert_eq!(rule.duration(200), Some(Duration::from_secs(300)));
        assert_eq!(rule.duration(403), None);
        assert_eq!(
            parse_cache_durations("200 10m, any 1s").unwrap()[1],
            (None, Duration::from_secs(1))
        );
        assert!(parse_cache_durations("200 5x").is_err());
        assert!(parse_cache_durations("").is_err());
        let headers = [httparse::Header {
            name: "Authorization",
            value: b"Basic dXNlcjpwYXNzd29yZA==",
        }];
        let a = ExtAuth {
            scope: "ns/ing".into(),
            target: None,
            method: None,
            response_headers: vec![],
            request_redirect: None,
            signin: None,
            redirect_param: "rd".into(),
            cache: Some(rule.clone()),
        };
        let key = a.cache_key(&origin(&headers)).unwrap();
        assert_eq!(key, "ns/ing\0auth\0userBasic dXNlcjpwYXNzd29yZA==");
        let mut cache = AuthCache::new(2);
        let t0 = Instant::ZERO;
        let allow = AuthDecision::Allow {
            fields: Arc::new(Vec::new()),
            cookie: None,
        };
        cache.put(&rule, key.clone(), 200, &allow, t0);
        cache.put(&rule, "other".into(), 403, &AuthDecision::Error, t0);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&key, t0 + Duration::from_secs(299)), Some(&allow));
        assert_eq!(cache.get(&key, t0 + Duration::from_secs(300)), None);
        cache.put(&rule, "b".into(), 200, &allow, t0);
        cache.put(&rule, "c".into(), 200, &allow, t0);
        assert_eq!(cache.len(), 2, "bounded");
        cache.put(
            &rule,
            "d".into(),
            200,
            &allow,
            t0 + Duration::from_secs(301),
        );
        assert_eq!(cache.len(), 1, "expired entries make room");
    }
}
