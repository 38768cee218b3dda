//! The compatibility table: every `nginx.ingress.kubernetes.io/*` annotation ingress-nginx
//! documents, with what Sluice does with it ([`Fate`]). It is the single source for
//! `docs/annotations.md` ([`markdown`]; a test fails when the committed file differs), for the
//! warnings about ignored annotations on the Ingresses we serve ([`report_ignored`], called once
//! per Ingress from `annotations::route_policy`) and for `sluice migrate`.
//!
//! Changing what Sluice does with an annotation is a one-line change in [`CATALOG`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::networking::v1::Ingress;

use super::annotations::{NGINX, OURS};
use super::compile::Diagnostic;

/// What Sluice does with an annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fate {
    /// Read, with ingress-nginx's observable behaviour.
    Supported,
    /// Read, with a difference the note names.
    Differs,
    /// Not read (yet): the Ingress is served without it.
    NotYet,
    /// Never read: it carries nginx configuration text (or code), which Sluice does not run.
    Refused,
    /// Not in the table: ingress-nginx does not document it either. Ignored.
    Unknown,
}

impl Fate {
    /// Every fate, in report order.
    pub const ALL: [Fate; 5] = [
        Fate::Supported,
        Fate::Differs,
        Fate::NotYet,
        Fate::Refused,
        Fate::Unknown,
    ];

    /// The stable name used in reports, JSON and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Supported => "supported",
            Fate::Differs => "differs",
            Fate::NotYet => "not-yet",
            Fate::Refused => "refused",
            Fate::Unknown => "unknown",
        }
    }

    /// True when an Ingress carrying the annotation is served without it.
    pub fn is_ignored(self) -> bool {
        matches!(self, Fate::NotYet | Fate::Refused | Fate::Unknown)
    }

    fn label(self) -> &'static str {
        match self {
            Fate::Supported => "supported",
            Fate::Differs => "supported, with a difference",
            Fate::NotYet => "not supported yet",
            Fate::Refused => "refused for safety",
            Fate::Unknown => "not documented by ingress-nginx",
        }
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct Entry {
    /// The name after `nginx.ingress.kubernetes.io/`.
    pub name: &'static str,
    pub fate: Fate,
    /// Values with which Sluice already behaves as ingress-nginx does (compared without case),
    /// e.g. `backend-protocol: HTTP`: with one of these the annotation counts as supported.
    pub same_for: &'static [&'static str],
    /// The difference, what is missing, or why it is refused.
    pub note: &'static str,
}

use Fate::{Differs, NotYet, Refused, Supported};

const fn e(
    name: &'static str,
    fate: Fate,
    same_for: &'static [&'static str],
    note: &'static str,
) -> Entry {
    Entry {
        name,
        fate,
        same_for,
        note,
    }
}

const SNIPPET: &str = "nginx configuration text: never interpreted (snippets are how IngressNightmare-class CVEs happened)";

/// The table, in ingress-nginx's documentation order of topics. One line per annotation.
#[rustfmt::skip]
pub const CATALOG: &[Entry] = &[
    // Rewrites and redirects
    e("rewrite-target", Differs, &[], "the path is matched as received, not as nginx's decoded, normalised $uri"),
    e("use-regex", Differs, &[], "every path of the host becomes a regex (Exact too); matched as received, not nginx's decoded $uri; a Prefix path's trailing / is dropped"),
    e("app-root", Supported, &[], "redirect of / to the application root"),
    e("permanent-redirect", Differs, &[], "nginx variables ($request_uri...) are not interpreted: a URL with $ is refused"),
    e("permanent-redirect-code", Supported, &[], "status of permanent-redirect"),
    e("temporal-redirect", Differs, &[], "nginx variables ($request_uri...) are not interpreted: a URL with $ is refused"),
    e("temporal-redirect-code", Supported, &[], "status of temporal-redirect"),
    e("from-to-www-redirect", Supported, &[], "www. <-> apex redirect"),
    e("preserve-trailing-slash", Differs, &[], "Sluice's HTTPS redirect always keeps the path exactly as sent, trailing slash included"),
    e("x-forwarded-prefix", Supported, &[], "X-Forwarded-Prefix request header"),
    e("server-alias", Differs, &[], "exact names only (no wildcard aliases); an alias does not take part in choosing the TLS certificate"),
    e("proxy-redirect-from", NotYet, &[], "Location/Refresh rewriting of upstream responses"),
    e("proxy-redirect-to", NotYet, &[], "Location/Refresh rewriting of upstream responses"),
    // HTTPS
    e("ssl-redirect", Differs, &[], "308 to https applies per host, not per location"),
    e("force-ssl-redirect", Differs, &[], "applies per host, not per location"),
    e("ssl-passthrough", NotYet, &[], "TLS passthrough (Sluice terminates TLS)"),
    e("ssl-ciphers", NotYet, &[], "fixed AEAD suites with forward secrecy (see README TLS)"),
    e("ssl-prefer-server-ciphers", Differs, &["true"], "the server's suite order is always preferred"),
    e("auth-tls-secret", NotYet, &[], "client-certificate authentication"),
    e("auth-tls-verify-depth", NotYet, &[], "client-certificate authentication"),
    e("auth-tls-verify-client", NotYet, &["off"], "client-certificate authentication"),
    e("auth-tls-error-page", NotYet, &[], "client-certificate authentication"),
    e("auth-tls-pass-certificate-to-upstream", NotYet, &["false"], "client-certificate authentication"),
    e("auth-tls-match-cn", NotYet, &[], "client-certificate authentication"),
    // Backends
    e("backend-protocol", Differs, &["http", "https"], "HTTP and HTTPS (HTTP/1.1, over TLS for HTTPS); GRPC, GRPCS, H2C (no HTTP/2 yet), AJP and FCGI are refused with a reason and the route is served over HTTP/1.1"),
    e("proxy-ssl-secret", Differs, &[], "read with backend-protocol HTTPS; the Secret must be in the Ingress's namespace: ca.crt verifies the upstream, tls.crt/tls.key are the client certificate"),
    e("proxy-ssl-ciphers", NotYet, &["DEFAULT"], "rustls's own suites (modern AEAD only) are offered; an OpenSSL cipher string is not read"),
    e("proxy-ssl-name", Differs, &[], "a DNS name or IP address (nginx variables are refused); without it the Host sent upstream is the name (nginx: $proxy_host)"),
    e("proxy-ssl-protocols", Differs, &["TLSv1.2", "TLSv1.2 TLSv1.3"], "TLSv1.2 and TLSv1.3 only: older versions are refused with a reason"),
    e("proxy-ssl-verify", Supported, &["off"], "verifies the upstream's chain against ca.crt of proxy-ssl-secret and the name (proxy-ssl-name, else the Host)"),
    e("proxy-ssl-verify-depth", Differs, &[], "counts the certificates the upstream presents, its own included; without the annotation no limit (nginx: 1)"),
    e("proxy-ssl-server-name", Supported, &["off"], "SNI: proxy-ssl-name, else the Host sent upstream"),
    e("proxy-http-version", Differs, &["1.1"], "upstream requests are always HTTP/1.1"),
    e("upstream-vhost", Differs, &[], "nginx variables ($host...) are not interpreted: a value with $ is refused"),
    e("service-upstream", Supported, &[], "the Service's ClusterIP and port as the one endpoint (headless: its endpoints, reported); a backend setting, decided by the oldest Ingress routing to the Service port"),
    e("load-balance", Supported, &[], "round_robin, ewma (and least_request); belongs to the backend: the oldest Ingress routing to a Service port decides it for every route to it, others are told"),
    e("upstream-hash-by", Differs, &[], "rendezvous hashing (not ketama): another pod than ingress-nginx's for the same key; a subset of nginx variables"),
    e("upstream-hash-by-subset", Differs, &["false"], "subsets picked by rendezvous hashing, not ingress-nginx's ketama ring: the same key may land on other pods than ingress-nginx would pick"),
    e("upstream-hash-by-subset-size", Supported, &[], "subset hashing"),
    e("default-backend", Supported, &[], "a Service of the Ingress's namespace (first port): answers when the route has no endpoints (X-Code: 503) and its custom errors"),
    e("custom-http-errors", Differs, &[], "the error request is the request as sent upstream with target / and no body (not intercepted while a request body is still being sent); without any default backend the upstream's answer passes (ingress-nginx's internal backend answers 404)"),
    e("disable-proxy-intercept-errors", Supported, &[], "custom-http-errors"),
    // Retries, affinity, canary
    e("proxy-next-upstream", Differs, &[], "a request is kept for a retry up to buffers.size (32 KiB): a larger body is not retried (nginx buffers the whole body by default)"),
    e("proxy-next-upstream-timeout", Supported, &[], "retries"),
    e("proxy-next-upstream-tries", Supported, &[], "retries"),
    e("affinity", Supported, &[], "cookie session affinity"),
    e("affinity-mode", Differs, &["persistent"], "balanced: the cookie holds a session key placed by rendezvous hashing (ingress-nginx: a consistent-hash ring), so added pods take about their share of sessions and a removed pod's sessions move; a new session starts on the pod load-balance picked"),
    e("affinity-canary-behavior", NotYet, &["sticky"], "only the default, sticky: a session pinned to a main or canary pod stays there; legacy is not read"),
    e("session-cookie-name", Supported, &[], "cookie session affinity"),
    e("session-cookie-path", Supported, &[], "cookie session affinity"),
    e("session-cookie-domain", Supported, &[], "cookie session affinity"),
    e("session-cookie-max-age", Supported, &[], "cookie session affinity"),
    e("session-cookie-expires", Supported, &[], "cookie session affinity"),
    e("session-cookie-secure", Supported, &[], "cookie session affinity"),
    e("session-cookie-samesite", Supported, &[], "cookie session affinity"),
    e("session-cookie-conditional-samesite-none", Supported, &[], "cookie session affinity"),
    e("session-cookie-change-on-failure", Supported, &[], "cookie session affinity"),
    e("canary", Differs, &[], "a canary applies to the main Ingress's rule with the same host, path and path type (ingress-nginx: to every location of the main backend); one canary per rule, the oldest"),
    e("canary-by-header", Supported, &[], "canary routing: always / never, else the next rule"),
    e("canary-by-header-value", Supported, &[], "canary routing: this exact value"),
    e("canary-by-header-pattern", Differs, &[], "Rust regex syntax (no look-around or backreferences, unlike PCRE); ignored when canary-by-header-value is set"),
    e("canary-by-cookie", Supported, &[], "canary routing: always / never, else the weight"),
    e("canary-weight", Supported, &[], "canary routing: a share of canary-weight-total, drawn per request"),
    e("canary-weight-total", Supported, &[], "canary routing (a total below 100 is refused: ingress-nginx uses 100 then)"),
    // Timeouts, sizes, buffering
    e("proxy-connect-timeout", Supported, &[], "whole seconds; also 500ms/30s/2m/1h; 0 refused"),
    e("proxy-read-timeout", Supported, &[], "whole seconds; also 500ms/30s/2m/1h; 0 refused"),
    e("proxy-send-timeout", Supported, &[], "whole seconds; also 500ms/30s/2m/1h; 0 refused"),
    e("client-body-timeout", Supported, &[], "a ConfigMap key in ingress-nginx; Sluice also reads it per Ingress"),
    e("proxy-body-size", Supported, &[], "nginx sizes (8m, 512k, 1g, bytes); 0 = unlimited; 413 above it"),
    e("client-body-buffer-size", Differs, &[], "request bodies are streamed, never buffered to disk: nothing to size"),
    e("proxy-request-buffering", Differs, &["off"], "request bodies are always streamed (nginx's off)"),
    e("proxy-buffering", Differs, &["off"], "responses are always streamed (nginx's off, ingress-nginx's default), except that output under `[buffers] postpone_output` (1,460 bytes) waits up to `postpone_timeout` (1 ms) for more of the response"),
    e("proxy-buffers-number", Differs, &[], "responses are streamed: nothing to size"),
    e("proxy-buffer-size", Differs, &[], "responses are streamed; the response head limit is the listener's"),
    e("proxy-max-temp-file-size", Differs, &[], "nothing is written to temporary files"),
    e("proxy-cookie-domain", NotYet, &["off"], "Set-Cookie rewriting"),
    e("proxy-cookie-path", NotYet, &["off"], "Set-Cookie rewriting"),
    e("connection-proxy-header", Supported, &[], "Connection header sent upstream (not on tunnels); close also keeps the connection out of the pool"),
    e("http2-push-preload", NotYet, &["false"], "HTTP/2 is not served"),
    // Access control and authentication
    e("whitelist-source-range", Supported, &[], "client address allowlist/denylist (403), on the real client address"),
    e("allowlist-source-range", Supported, &[], "client address allowlist/denylist (403), on the real client address"),
    e("denylist-source-range", Supported, &[], "client address allowlist/denylist (403), on the real client address"),
    e("auth-type", Differs, &[], "basic only; digest is refused"),
    e("auth-secret", Differs, &[], "a change to the Secret alone reaches the route at the next full compile or change of the Ingress"),
    e("auth-secret-type", Supported, &[], "basic authentication"),
    e("auth-realm", Supported, &[], "basic authentication"),
    e("auth-url", Differs, &[], "http:// only (no upstream TLS client yet); the host is an IP address or a Service name (svc.ns[.svc.cluster.local]) resolved to its cluster IP when the snapshot is built, never DNS; an unusable URL answers 503 as ingress-nginx; one request per connection (no keep-alive to the auth service); the wait is bounded by the route's proxy-read-timeout"),
    e("auth-method", Supported, &[], "external authentication"),
    e("auth-signin", Differs, &[], "variables: $host, $http_host, $scheme, $request_uri, $escaped_request_uri only (others are refused)"),
    e("auth-signin-redirect-param", Supported, &[], "external authentication"),
    e("auth-response-headers", Supported, &[], "external authentication"),
    e("auth-proxy-set-headers", NotYet, &[], "a ConfigMap of fields for the auth subrequest"),
    e("auth-request-redirect", Supported, &[], "external authentication"),
    e("auth-cache-key", Differs, &[], "per worker (ingress-nginx: a shared cache zone), bounded at 10,000 entries; scoped per Ingress and host; variables: $host, $http_host, $scheme, $request_uri, $uri, $args, $remote_addr, $remote_user, $http_*, $cookie_*"),
    e("auth-cache-duration", Supported, &[], "external authentication"),
    e("auth-keepalive", NotYet, &[], "one connection per auth subrequest"),
    e("auth-keepalive-share-vars", NotYet, &[], "external authentication"),
    e("auth-keepalive-requests", NotYet, &[], "external authentication"),
    e("auth-keepalive-timeout", NotYet, &[], "external authentication"),
    e("auth-always-set-cookie", NotYet, &[], "the auth answer's Set-Cookie reaches the client on the statuses nginx's add_header covers (2xx, 3xx), not on errors"),
    e("enable-global-auth", NotYet, &[], "global external authentication"),
    e("satisfy", Supported, &[], "any: source ranges, basic authentication or auth-url, the first that passes"),
    e("auth-snippet", Refused, &[], SNIPPET),
    // Rate limits
    e("limit-connections", Supported, &[], "per-client connection limit"),
    e("limit-rps", Supported, &[], "per-client request rate limit"),
    e("limit-rpm", Supported, &[], "per-client request rate limit"),
    e("limit-burst-multiplier", Supported, &[], "per-client request rate limit"),
    e("limit-whitelist", Supported, &[], "per-client request rate limit"),
    e("limit-allowlist", Supported, &[], "per-client request rate limit"),
    e("limit-rate", Supported, &[], "response bandwidth per connection (KiB/s), counted from the response head; paced by the worker's timers"),
    e("limit-rate-after", Supported, &[], "response bandwidth limit: KiB sent at full speed first"),
    e("global-rate-limit", NotYet, &[], "cluster-wide rate limit (memcached and Lua in ingress-nginx)"),
    e("global-rate-limit-window", NotYet, &[], "cluster-wide rate limit"),
    e("global-rate-limit-key", NotYet, &[], "cluster-wide rate limit"),
    e("global-rate-limit-ignored-cidrs", NotYet, &[], "cluster-wide rate limit"),
    // CORS and headers
    e("enable-cors", Supported, &["false"], "CORS headers and preflight answers"),
    e("cors-allow-origin", Differs, &[], "origins are matched whole (ingress-nginx anchors only the end)"),
    e("cors-allow-methods", Supported, &[], "CORS"),
    e("cors-allow-headers", Supported, &[], "CORS"),
    e("cors-expose-headers", Supported, &[], "CORS"),
    e("cors-allow-credentials", Supported, &[], "CORS"),
    e("cors-max-age", Supported, &[], "CORS"),
    e("custom-headers", NotYet, &[], "the ConfigMap is not read: put the fields in sluice.dev/response-headers (one Name: value a line)"),
    // Mirroring
    e("mirror-target", Differs, &[], "http:// only; the host is an IP address, localhost or a Service name resolved to its cluster IP (never DNS); at most 64 copies in flight per worker, more are dropped and counted; the answer is discarded at its first byte"),
    e("mirror-request-body", Differs, &[], "a body is copied only when it came whole with the head and is at most 64 KiB; otherwise the copy is dropped and counted"),
    e("mirror-host", Supported, &[], "request mirroring"),
    // Observability
    e("enable-access-log", NotYet, &["true"], "the access log is listener-wide"),
    e("enable-rewrite-log", Differs, &[], "no nginx rewrite log; nothing to enable"),
    e("enable-opentracing", NotYet, &["false"], "tracing"),
    e("opentracing-trust-incoming-span", NotYet, &[], "tracing"),
    e("enable-opentelemetry", NotYet, &["false"], "tracing"),
    e("opentelemetry-trust-incoming-span", NotYet, &[], "tracing"),
    e("opentelemetry-operation-name", NotYet, &[], "tracing"),
    e("enable-influxdb", NotYet, &["false"], "InfluxDB request metrics"),
    e("influxdb-measurement", NotYet, &[], "InfluxDB request metrics"),
    e("influxdb-port", NotYet, &[], "InfluxDB request metrics"),
    e("influxdb-host", NotYet, &[], "InfluxDB request metrics"),
    e("influxdb-server-name", NotYet, &[], "InfluxDB request metrics"),
    // Web application firewall
    e("enable-modsecurity", NotYet, &["false"], "no web application firewall"),
    e("enable-owasp-core-rules", NotYet, &["false"], "no web application firewall"),
    e("modsecurity-transaction-id", NotYet, &[], "no web application firewall"),
    e("modsecurity-snippet", Refused, &[], "ModSecurity rule text: never interpreted"),
    // nginx configuration text
    e("configuration-snippet", Refused, &[], SNIPPET),
    e("server-snippet", Refused, &[], SNIPPET),
    e("stream-snippet", Refused, &[], SNIPPET),
];

/// Annotations of ours that ingress-nginx has no counterpart for: only `sluice.dev/<name>` is
/// read, so the ingress-nginx prefix on one is reported.
pub const OURS_ONLY: &[&str] = &[
    super::annotations::UPGRADE_PROTOCOLS,
    super::request_annotations::REQUEST_HEADERS,
    super::request_annotations::RESPONSE_HEADERS,
    super::health_check::HEALTH_CHECK_PATH,
    super::health_check::HEALTH_CHECK_INTERVAL,
    super::health_check::HEALTH_CHECK_TIMEOUT,
    super::health_check::HEALTH_CHECK_HEALTHY_THRESHOLD,
    super::health_check::HEALTH_CHECK_UNHEALTHY_THRESHOLD,
    super::health_check::HEALTH_CHECK_PORT,
    super::health_check::HEALTH_CHECK_EXPECTED_STATUS,
];

/// The row for `name` (without prefix).
pub fn lookup(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// One annotation of an Ingress, judged against the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The full key (`nginx.ingress.kubernetes.io/configuration-snippet`).
    pub key: String,
    pub value: String,
    pub fate: Fate,
    pub note: &'static str,
}

/// The fate of an annotation key and value, `None` for keys that are not ingress-nginx's
/// (nor a table name under our own prefix).
pub fn judge(key: &str, value: &str) -> Option<Judged> {
    let (name, ours) = match key.strip_prefix(NGINX) {
        Some(name) => (name, false),
        None => (key.strip_prefix(OURS)?, true),
    };
    let (fate, note) = match lookup(name) {
        Some(e)
            if e.same_for
                .iter()
                .any(|v| v.eq_ignore_ascii_case(value.trim())) =>
        {
            (Supported, "this value is what Sluice does anyway")
        }
        Some(e) => (e.fate, e.note),
        // Our own annotations are checked by the reader that defines them.
        None if ours => return None,
        None if OURS_ONLY.contains(&name) => (
            Fate::Unknown,
            "a Sluice annotation: only its sluice.dev/ form is read",
        ),
        None => (Fate::Unknown, "no such annotation (misspelt?)"),
    };
    Some(Judged {
        key: key.to_string(),
        value: value.to_string(),
        fate,
        note,
    })
}

/// Every ingress-nginx annotation of `ing` (and table names under our prefix), in key order.
pub fn judge_all(ing: &Ingress) -> Vec<Judged> {
    ing.metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, v)| judge(k, v))
        .collect()
}

/// Counts of ignored annotations by fate, shown in `/metrics`.
static IGNORED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// Per object: the version last counted, and its ignored keys.
type Seen = BTreeMap<String, (String, BTreeSet<String>)>;
static SEEN: Mutex<Seen> = Mutex::new(BTreeMap::new());

/// The version of an object as reports name it: its generation, else its resourceVersion.
fn version(ing: &Ingress) -> String {
    match (&ing.metadata.generation, &ing.metadata.resource_version) {
        (Some(g), _) => format!("generation {g}"),
        (None, Some(rv)) => format!("resourceVersion {rv}"),
        (None, None) => String::new(),
    }
}

/// The hook (called from `annotations::route_policy` for every Ingress we serve): one
/// [`Diagnostic`] per ignored annotation (not yet supported, refused, unknown), naming the object
/// version so that the log line and Warning Event come once per version of the object; and
/// the `sluice_annotations_ignored_total` counter, counted once per object version and key.
pub fn report_ignored(ing: &Ingress, object: &str, diags: &mut Vec<Diagnostic>) {
    let version = version(ing);
    let ignored: Vec<Judged> = judge_all(ing)
        .into_iter()
        .filter(|j| j.fate.is_ignored())
        .collect();
    count_once(object, &version, &ignored);
    for j in ignored {
        let at = if version.is_empty() {
            String::new()
        } else {
            format!(" ({version})")
        };
        diags.push(Diagnostic {
            object: object.to_string(),
            field: format!("metadata.annotations[{}]", j.key),
            message: format!(
                "{}: {}; the Ingress is served without it{at}",
                j.fate.label(),
                j.note
            ),
        });
    }
}

fn count_once(object: &str, version: &str, ignored: &[Judged]) {
    let Ok(mut seen) = SEEN.lock() else {
        return;
    };
    if ignored.is_empty() {
        seen.remove(object);
        return;
    }
    let entry = seen
        .entry(object.to_string())
        .or_insert_with(|| (version.to_string(), BTreeSet::new()));
    if entry.0 != version {
        *entry = (version.to_string(), BTreeSet::new());
    }
    for j in ignored {
        if entry.1.insert(j.key.clone()) {
            let i = Fate::ALL.iter().position(|f| *f == j.fate).unwrap_or(0);
            IGNORED[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How many ignored annotations of `fate` were counted so far (process-wide).
pub fn ignored_total(fate: Fate) -> u64 {
    let i = Fate::ALL.iter().position(|f| *f == fate).unwrap_or(0);
    IGNORED[i].load(Ordering::Relaxed)
}

/// Prometheus text for `sluice_annotations_ignored_total{fate=...}`.
pub fn render_metrics(out: &mut String) {
    let name = "sluice_annotations_ignored_total";
    let _ = writeln!(
        out,
        "# HELP {name} Annotations ignored on served Ingresses (once per object version and key), by fate."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for fate in Fate::ALL.into_iter().filter(|f| f.is_ignored()) {
        let _ = writeln!(
            out,
            "{name}{{fate=\"{}\"}} {}",
            fate.as_str(),
            ignored_total(fate)
        );
    }
}

/// `docs/annotations.md`, rendered from [`CATALOG`].
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str("# ingress-nginx annotations in Sluice\n\n");
    out.push_str(
        "Generated from `src/control/catalog.rs` by the test \
         `control::catalog::tests::docs_annotations_md_is_generated_from_the_catalog` \
         (`SLUICE_BLESS=1 cargo test --lib control::catalog` rewrites it); do not edit by hand.\n\n",
    );
    out.push_str(
        "Every annotation is read under both prefixes, `nginx.ingress.kubernetes.io/<name>` and \
         `sluice.dev/<name>` (ours wins). Fates:\n\n\
         * **supported**: read, with ingress-nginx's observable behaviour;\n\
         * **differs**: read or already Sluice's behaviour, with the difference in the note;\n\
         * **not-yet**: not read; the Ingress is served without it;\n\
         * **refused**: never read, because its value is nginx configuration text.\n\n\
         A not-yet, refused or undocumented annotation on an Ingress Sluice serves gets a log line \
         and a Warning Event once per version of the object, `sluice check` lists it, and \
         `sluice_annotations_ignored_total{fate}` counts it. Where a value is listed under \
         \"Same when\", that value is what Sluice does anyway and the annotation counts as \
         supported. `sluice migrate` reports all of this per Ingress (see the README).\n\n",
    );
    let _ = writeln!(out, "| Annotation | Fate | Same when | Note |");
    let _ = writeln!(out, "|---|---|---|---|");
    let mut rows: Vec<&Entry> = CATALOG.iter().collect();
    rows.sort_by_key(|e| e.name);
    for e in rows {
        let same = e
            .same_for
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            e.name,
            e.fate.as_str(),
            same,
            e.note.replace('|', "\\|")
        );
    }
    let mut counts = BTreeMap::new();
    for e in CATALOG {
        *counts.entry(e.fate).or_insert(0usize) += 1;
    }
    out.push('\n');
    let summary: Vec<String> = counts
        .iter()
        .map(|(f, n)| format!("{n} {}", f.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "{} annotations: {}.",
        CATALOG.len(),
        summary.join(", ")
    );
    out.push_str(
        "\n## Sluice's own annotations\n\n\
         ingress-nginx has no counterpart for these: only their `sluice.dev/<name>` form is read, \
         and the ingress-nginx prefix on one is reported as undocumented. The README's annotation \
         table says what each does.\n\n",
    );
    for name in OURS_ONLY {
        let _ = writeln!(out, "* `sluice.dev/{name}`");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_snippets_are_refused() {
        let mut names = BTreeSet::new();
        for e in CATALOG {
            assert!(names.insert(e.name), "{} twice", e.name);
            assert!(!e.name.contains('/'), "{}", e.name);
        }
        assert!(CATALOG.len() >= 120, "{} entries", CATALOG.len());
        for e in CATALOG.iter().filter(|e| e.name.ends_with("snippet")) {
            assert_eq!(e.fate, Refused, "{}", e.name);
        }
    }

    #[test]
    fn the_annotations_sluice_reads_today_are_not_reported_as_ignored() {
        use super::super::annotations as a;
        for name in [
            a::PROXY_CONNECT_TIMEOUT,
            a::PROXY_READ_TIMEOUT,
            a::PROXY_SEND_TIMEOUT,
            a::CLIENT_BODY_TIMEOUT,
            a::PROXY_BODY_SIZE,
            a::LOAD_BALANCE,
            a::UPSTREAM_HASH_BY,
            "ssl-redirect",
            "force-ssl-redirect",
        ] {
            let e = lookup(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(!e.fate.is_ignored(), "{name}");
        }
    }

    #[test]
    fn values_sluice_already_behaves_like_count_as_supported() {
        let key = format!("{NGINX}auth-tls-verify-client");
        assert_eq!(judge(&key, "off").map(|j| j.fate), Some(Supported));
        assert_eq!(judge(&key, "on").map(|j| j.fate), Some(NotYet));
        // A value the reader itself refuses is its own report, not the catalog's.
        let key = format!("{NGINX}backend-protocol");
        assert_eq!(judge(&key, "GRPC").map(|j| j.fate), Some(Differs));
        let unknown = format!("{NGINX}no-such-thing");
        assert_eq!(judge(&unknown, "x").map(|j| j.fate), Some(Fate::Unknown));
        assert_eq!(judge("sluice.dev/upgrade-protocols", "websocket"), None);
        let nginx_ours = format!("{NGINX}upgrade-protocols");
        assert_eq!(
            judge(&nginx_ours, "websocket").map(|j| j.fate),
            Some(Fate::Unknown)
        );
        assert_eq!(judge("kubernetes.io/ingress.class", "nginx"), None);
        assert_eq!(
            judge("sluice.dev/configuration-snippet", "x").map(|j| j.fate),
            Some(Refused)
        );
    }

    fn ingress(generation: Option<i64>, annotations: &[(&str, &str)]) -> Ingress {
        let mut ing = Ingress::default();
        ing.metadata.generation = generation;
        ing.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (format!("{NGINX}{k}"), v.to_string()))
                .collect(),
        );
        ing
    }

    #[test]
    fn ignored_annotations_are_reported_with_the_version_and_counted_once_per_version() {
        let object = "Ingress catalog-test/counted";
        let before = ignored_total(Fate::Unknown);
        let v1 = ingress(
            Some(1),
            &[("catalog-test-unknown", "x"), ("proxy-body-size", "1m")],
        );
        let mut diags = Vec::new();
        report_ignored(&v1, object, &mut diags);
        report_ignored(&v1, object, &mut diags);
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert_eq!(
            diags[0].field,
            "metadata.annotations[nginx.ingress.kubernetes.io/catalog-test-unknown]"
        );
        assert_eq!(
            diags[0].message,
            "not documented by ingress-nginx: no such annotation (misspelt?); \
             the Ingress is served without it (generation 1)"
        );
        assert_eq!(ignored_total(Fate::Unknown) - before, 1);
        // A new version counts again; dropping the annotation forgets the object.
        let v2 = ingress(Some(2), &[("catalog-test-unknown", "x")]);
        report_ignored(&v2, object, &mut Vec::new());
        assert_eq!(ignored_total(Fate::Unknown) - before, 2);
        report_ignored(&ingress(Some(3), &[]), object, &mut Vec::new());
        assert!(SEEN.lock().unwrap().get(object).is_none());
        // Without a version (a manifest file): counted once while unchanged.
        let plain = ingress(None, &[("catalog-test-unknown", "x")]);
        let mut diags = Vec::new();
        report_ignored(&plain, "Ingress catalog-test/plain", &mut diags);
        report_ignored(&plain, "Ingress catalog-test/plain", &mut Vec::new());
        assert!(diags[0].message.ends_with("served without it"));
        assert_eq!(ignored_total(Fate::Unknown) - before, 3);
        let mut text = String::new();
        render_metrics(&mut text);
        assert!(text.contains("# TYPE sluice_annotations_ignored_total counter\n"));
        assert!(text.contains("sluice_annotations_ignored_total{fate=\"refused\"} "));
        assert!(!text.contains("fate=\"supported\""));
    }

    /// The only way `docs/annotations.md` is written: `SLUICE_BLESS=1` rewrites it, otherwise
    /// a difference fails.
    #[test]
    fn docs_annotations_md_is_generated_from_the_catalog() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/annotations.md");
        let want = markdown();
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&path, &want).expect("write docs/annotations.md");
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/annotations.md is out of date: run SLUICE_BLESS=1 cargo test --lib control::catalog"
        );
    }
}
