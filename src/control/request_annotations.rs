//! Reads the request-policy annotations of an Ingress (redirects, `app-root`,
//! `from-to-www-redirect`, `x-forwarded-prefix`, `use-regex`, `rewrite-target`, the source
//! ranges and CORS) into a typed [`RequestPolicy`], with the [`Annotations`] reader: either
//! prefix, ours winning; a bad value rejects only its field and is reported.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;

use super::annotations::Annotations;
use super::compile::Diagnostic;
use crate::core::route::RoutePolicy;
use crate::core::route::bandwidth::LimitRate;
use crate::core::route::basic_auth::{BasicAuth, PasswordHash, parse_htpasswd};
use crate::core::route::custom_errors::CustomErrors;
use crate::core::route::ext_auth::{self, AuthTarget, CacheRule, ExtAuth};
use crate::core::route::headers::{
    ConnectionHeader, HeaderSet, REQUEST_FORBIDDEN, RESPONSE_FORBIDDEN,
};
use crate::core::route::mirror::Mirror;
use crate::core::route::rate_limit::{DEFAULT_BURST_MULTIPLIER, Rate, RateLimits};
use crate::core::route::request_policy::{
    CORS_HEADERS, CORS_MAX_AGE, CORS_METHODS, CidrSet, Cors, OriginPattern, PathRegex, Redirect,
    RequestPolicy,
};

pub const PERMANENT_REDIRECT: &str = "permanent-redirect";
pub const PERMANENT_REDIRECT_CODE: &str = "permanent-redirect-code";
pub const TEMPORAL_REDIRECT: &str = "temporal-redirect";
pub const TEMPORAL_REDIRECT_CODE: &str = "temporal-redirect-code";
pub const APP_ROOT: &str = "app-root";
pub const FROM_TO_WWW_REDIRECT: &str = "from-to-www-redirect";
pub const X_FORWARDED_PREFIX: &str = "x-forwarded-prefix";
pub const USE_REGEX: &str = "use-regex";
pub const REWRITE_TARGET: &str = "rewrite-target";
pub const ALLOWLIST_SOURCE_RANGE: &str = "allowlist-source-range";
pub const WHITELIST_SOURCE_RANGE: &str = "whitelist-source-range";
pub const DENYLIST_SOURCE_RANGE: &str = "denylist-source-range";
pub const ENABLE_CORS: &str = "enable-cors";
pub const CORS_ALLOW_ORIGIN: &str = "cors-allow-origin";
pub const CORS_ALLOW_METHODS: &str = "cors-allow-methods";
pub const CORS_ALLOW_HEADERS: &str = "cors-allow-headers";
pub const CORS_ALLOW_CREDENTIALS: &str = "cors-allow-credentials";
pub const CORS_MAX_AGE_NAME: &str = "cors-max-age";
pub const CORS_EXPOSE_HEADERS: &str = "cors-expose-headers";
pub const AUTH_TYPE: &str = "auth-type";
pub const AUTH_SECRET: &str = "auth-secret";
pub const AUTH_SECRET_TYPE: &str = "auth-secret-type";
pub const AUTH_REALM: &str = "auth-realm";
pub const SERVER_ALIAS: &str = "server-alias";
pub const LIMIT_RPS: &str = "limit-rps";
pub const LIMIT_RPM: &str = "limit-rpm";
pub const LIMIT_CONNECTIONS: &str = "limit-connections";
pub const LIMIT_BURST_MULTIPLIER: &str = "limit-burst-multiplier";
pub const LIMIT_WHITELIST: &str = "limit-whitelist";
/// The newer name of `limit-whitelist` in ingress-nginx; wins when both are set.
pub const LIMIT_ALLOWLIST: &str = "limit-allowlist";
// Custom errors, headers and `satisfy`.
pub const CUSTOM_HTTP_ERRORS: &str = "custom-http-errors";
pub const DEFAULT_BACKEND: &str = "default-backend";
pub const DISABLE_PROXY_INTERCEPT_ERRORS: &str = "disable-proxy-intercept-errors";
pub const CONNECTION_PROXY_HEADER: &str = "connection-proxy-header";
pub const SATISFY: &str = "satisfy";
pub const LIMIT_RATE: &str = "limit-rate";
pub const LIMIT_RATE_AFTER: &str = "limit-rate-after";
/// `sluice.dev/` only: fields set on the request sent upstream, one `Name: value` a line.
pub const REQUEST_HEADERS: &str = "request-headers";
/// `sluice.dev/` only: fields set on the response, one `Name: value` a line.
pub const RESPONSE_HEADERS: &str = "response-headers";

/// The request policy of `ing`'s annotations, `None` when none is set (or none parsed).
pub fn request_policy(
    a: &Annotations<'_>,
    ing: &Ingress,
    object: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<RequestPolicy>> {
    let temporal = a.get(TEMPORAL_REDIRECT, parse_url, &"no redirect", diags);
    let permanent = a.get(PERMANENT_REDIRECT, parse_url, &"no redirect", diags);
    // ingress-nginx: the temporal redirect wins when both are set.
    let redirect = match (temporal, permanent) {
        (Some(url), _) => Some(Redirect {
            code: a
                .get(TEMPORAL_REDIRECT_CODE, parse_redirect_code, &302, diags)
                .unwrap_or(302),
            url,
        }),
        (None, Some(url)) => Some(Redirect {
            code: a
                .get(PERMANENT_REDIRECT_CODE, parse_redirect_code, &301, diags)
                .unwrap_or(301),
            url,
        }),
        (None, None) => None,
    };
    let hosts: Vec<String> = ing
        .spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .filter_map(|r| r.host.as_deref())
        .filter(|h| !h.is_empty() && !h.starts_with("*."))
        .map(str::to_ascii_lowercase)
        .collect();
    let from_to_www =
        (a.bool(FROM_TO_WWW_REDIRECT, false, diags) && !hosts.is_empty()).then_some(hosts);
    let use_regex = a.bool(USE_REGEX, false, diags);
    let rewrite_target = a.get(REWRITE_TARGET, parse_target, &"no rewrite", diags);
    if use_regex || rewrite_target.is_some() {
        check_regex_paths(ing, object, diags);
    }
    let allow = a
        .get(ALLOWLIST_SOURCE_RANGE, parse_ranges, &"no allowlist", diags)
        .or_else(|| a.get(WHITELIST_SOURCE_RANGE, parse_ranges, &"no allowlist", diags));
    let policy = RequestPolicy {
        redirect,
        app_root: a.get(APP_ROOT, parse_app_root, &"no app-root", diags),
        from_to_www,
        forwarded_prefix: a.get(X_FORWARDED_PREFIX, parse_field_value, &"none", diags),
        use_regex,
        rewrite_target,
        path_regex: None,
        allow,
        deny: a.get(DENYLIST_SOURCE_RANGE, parse_ranges, &"no denylist", diags),
        cors: cors(a, diags),
        auth: None,
        aliases: a.get(SERVER_ALIAS, parse_aliases, &"no alias", diags),
        limits: limits(a, diags),
        // ext_auth and mirror: filled by `with_external_auth` (they resolve Service names).
        ..RequestPolicy::default()
    };
    let mut policy = policy;
    errors_headers_satisfy(&mut policy, a, ing, object, diags);
    (!policy.is_empty()).then(|| Arc::new(policy))
}

/// `policy` with basic authentication added when `ing` asks for it (`auth-type: basic`): the
/// users come from `auth-secret` in the Ingress's namespace, among `secrets`. A missing
/// Secret makes every request 503 (as in ingress-nginx); a bad htpasswd line is reported
/// (never with its hash) and skipped.
///
/// Not done: a change to the Secret alone is not picked up by an incremental compile until
/// the Ingress changes or the next full compile (the compiler does not track this
/// dependency yet).
pub fn with_basic_auth(
    policy: Option<Arc<RoutePolicy>>,
    ing: &Ingress,
    object: &str,
    secrets: &[Arc<Secret>],
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<RoutePolicy>> {
    let a = Annotations::of(ing, object);
    let kind = a.get(AUTH_TYPE, parse_auth_type, &"no authentication", diags);
    if kind != Some(AuthType::Basic) {
        return policy;
    }
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    let realm = a
        .get(AUTH_REALM, parse_realm, &"an empty realm", diags)
        .unwrap_or_default();
    let map = a
        .get(AUTH_SECRET_TYPE, parse_secret_type, &"auth-file", diags)
        .unwrap_or(false);
    let name = a.get(
        AUTH_SECRET,
        |v| parse_secret_ref(v, ns),
        &"none (every request answered 503)",
        diags,
    );
    let mut report = |message: String| {
        diags.push(Diagnostic {
            object: object.to_string(),
            field: format!("metadata.annotations[{AUTH_SECRET}]"),
            message,
        })
    };
    let secret = name.as_deref().and_then(|name| {
        let found = secrets.iter().find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref().unwrap_or("default") == ns
        });
        if found.is_none() {
            report(format!(
                "Secret {ns}/{name} not found; every request is answered 503"
            ));
        }
        found
    });
    let users = secret.map(|secret| {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let data = secret.data.iter().flatten();
        let mut users = Vec::new();
        if map {
            for (user, hash) in data {
                match std::str::from_utf8(&hash.0)
                    .map_err(|_| "not UTF-8".to_string())
                    .and_then(|h| PasswordHash::parse(h.trim()))
                {
                    Ok(h) => users.push((user.clone(), h)),
                    Err(why) => report(format!(
                        "Secret {ns}/{name} user {user:?}: {why}; user ignored"
                    )),
                }
            }
        } else {
            match data.into_iter().find(|(k, _)| k.as_str() == "auth") {
                None => report(format!(
                    "Secret {ns}/{name} has no key \"auth\"; no user can log in"
                )),
                Some((_, file)) => {
                    let (parsed, bad) = parse_htpasswd(&String::from_utf8_lossy(&file.0));
                    for (line, why) in bad {
                        report(format!(
                            "Secret {ns}/{name} key auth line {line}: {why}; line ignored"
                        ));
                    }
                    users = parsed;
                }
            }
        }
        users
    });
    let auth = BasicAuth { realm, users };
    let mut route = policy.as_deref().cloned().unwrap_or_default();
    let mut request = route.request.as_deref().cloned().unwrap_or_default();
    request.auth = Some(auth);
    route.request = Some(Arc::new(request));
    Some(Arc::new(route))
}

/// Custom errors (`custom-http-errors`, `default-backend`,
/// `disable-proxy-intercept-errors`), `connection-proxy-header`, `satisfy` and the
/// `sluice.dev/request-headers` / `response-headers` lists. The error backend itself is
/// resolved by the compiler (`Compiler::error_backend` in compile.rs).
fn errors_headers_satisfy(
    policy: &mut RequestPolicy,
    a: &Annotations<'_>,
    ing: &Ingress,
    object: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let codes = a
        .get(CUSTOM_HTTP_ERRORS, parse_error_codes, &"none", diags)
        .unwrap_or_default();
    let service = a.get(DEFAULT_BACKEND, parse_service_name, &"none", diags);
    if !codes.is_empty() || service.is_some() {
        policy.errors = Some(CustomErrors {
            codes,
            service,
            no_intercept: a.bool(DISABLE_PROXY_INTERCEPT_ERRORS, false, diags),
            backend: None,
        });
    }
    policy.connection = a.get(
        CONNECTION_PROXY_HEADER,
        ConnectionHeader::parse,
        &"none",
        diags,
    );
    policy.satisfy_any = a
        .get(SATISFY, parse_satisfy, &"all", diags)
        .unwrap_or(false);
    let rate = a
        .get(LIMIT_RATE, parse_kib, &"no limit", diags)
        .unwrap_or(0);
    if rate > 0 {
        let after = a.get(LIMIT_RATE_AFTER, parse_kib, &0, diags).unwrap_or(0);
        policy.limit_rate = Some(LimitRate {
            bytes_per_sec: rate,
            after,
        });
    }
    policy.request_headers = header_list(ing, object, REQUEST_HEADERS, &REQUEST_FORBIDDEN, diags);
    policy.response_headers =
        header_list(ing, object, RESPONSE_HEADERS, &RESPONSE_FORBIDDEN, diags);
}

/// `sluice.dev/<name>`: one `Name: value` a line (the one annotation read with line breaks:
/// LF separates fields; a CR anywhere refuses the whole list, reported).
fn header_list(
    ing: &Ingress,
    object: &str,
    name: &str,
    forbidden: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Option<HeaderSet> {
    let key = format!("{}{name}", super::annotations::OURS);
    let value = ing.metadata.annotations.as_ref()?.get(&key)?;
    let parsed = if value.contains('\r') {
        Err("contains a CR (fields are separated by line feeds only)".to_string())
    } else {
        HeaderSet::parse(value, forbidden)
    };
    parsed
        .map_err(|why| {
            diags.push(Diagnostic {
                object: object.to_string(),
                field: format!("metadata.annotations[{key}]"),
                message: format!("{why}; no field is set"),
            })
        })
        .ok()
}

/// `custom-http-errors`: comma-separated statuses from 300 to 599 (what nginx's
/// `error_page` takes); sorted, repeats dropped.
pub fn parse_error_codes(value: &str) -> Result<Vec<u16>, String> {
    let mut codes = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<u16>() {
            Ok(code @ 300..=599) => codes.push(code),
            _ => {
                return Err(format!(
                    "{entry:?} is not a status from 300 to 599 (expected e.g. 404,503)"
                ));
            }
        }
    }
    if codes.is_empty() {
        return Err("an empty list".to_string());
    }
    codes.sort_unstable();
    codes.dedup();
    Ok(codes)
}

/// `default-backend`: a Service name of the Ingress's namespace (a DNS-1035 label).
fn parse_service_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        return Err(format!(
            "expected the name of a Service in the Ingress's namespace, got {value:?}"
        ));
    }
    Ok(value.to_string())
}

/// `limit-rate`, `limit-rate-after`: a whole number of KiB (nginx's `k`), in bytes; 0: none.
pub fn parse_kib(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n <= 1 << 32 => Ok(n * 1024),
        _ => Err(format!(
            "expected a whole number of kilobytes, got {value:?}"
        )),
    }
}

/// `satisfy`: `any` (true) or `all`.
fn parse_satisfy(value: &str) -> Result<bool, String> {
    match value {
        "any" => Ok(true),
        "all" => Ok(false),
        other => Err(format!("expected any or all, got {other:?}")),
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum AuthType {
    Basic,
}

fn parse_auth_type(value: &str) -> Result<AuthType, String> {
    match value {
        "basic" => Ok(AuthType::Basic),
        "digest" => Err("digest authentication is not supported".to_string()),
        other => Err(format!("expected basic, got {other:?}")),
    }
}

/// `auth-file` (false) or `auth-map` (true).
fn parse_secret_type(value: &str) -> Result<bool, String> {
    match value {
        "auth-file" => Ok(false),
        "auth-map" => Ok(true),
        other => Err(format!("expected auth-file or auth-map, got {other:?}")),
    }
}

/// Goes inside a quoted string of a header: printable ASCII, no `"` or `\`.
fn parse_realm(value: &str) -> Result<String, String> {
    if value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        Ok(value.to_string())
    } else {
        Err(format!(
            "a realm is printable ASCII without '\"' or '\\', got {value:?}"
        ))
    }
}

/// `name` or `namespace/name` in the Ingress's own namespace.
fn parse_secret_ref(value: &str, ns: &str) -> Result<String, String> {
    let name = match value.split_once('/') {
        Some((other, _)) if other != ns => {
            return Err(format!(
                "a Secret of another namespace ({other}) is not read"
            ));
        }
        Some((_, name)) => name,
        None => value,
    };
    if name.is_empty() {
        return Err("an empty Secret name".to_string());
    }
    Ok(name.to_string())
}

fn cors(a: &Annotations<'_>, diags: &mut Vec<Diagnostic>) -> Option<Cors> {
    if !a.bool(ENABLE_CORS, false, diags) {
        return None;
    }
    let origins = a
        .get(CORS_ALLOW_ORIGIN, parse_origins, &"*", diags)
        .unwrap_or(None);
    let methods = a.get(
        CORS_ALLOW_METHODS,
        |v| parse_token_list(v, false),
        &CORS_METHODS,
        diags,
    );
    let headers = a.get(
        CORS_ALLOW_HEADERS,
        |v| parse_token_list(v, false),
        &CORS_HEADERS,
        diags,
    );
    let expose = a.get(
        CORS_EXPOSE_HEADERS,
        |v| parse_token_list(v, true),
        &"none",
        diags,
    );
    let credentials = a.bool(CORS_ALLOW_CREDENTIALS, true, diags);
    let max_age = a
        .get(
            CORS_MAX_AGE_NAME,
            |v| {
                v.parse::<u64>()
                    .map_err(|_| format!("expected seconds, got {v:?}"))
            },
            &CORS_MAX_AGE,
            diags,
        )
        .unwrap_or(CORS_MAX_AGE);
    Some(Cors::new(
        origins,
        methods.as_deref().unwrap_or(CORS_METHODS),
        headers.as_deref().unwrap_or(CORS_HEADERS),
        credentials,
        expose.as_deref(),
        max_age,
    ))
}

/// Every path of the Ingress must compile as a regex once its host's paths are regexes; one
/// that does not is reported (the route table then matches it literally).
fn check_regex_paths(ing: &Ingress, object: &str, diags: &mut Vec<Diagnostic>) {
    let rules = ing.spec.iter().flat_map(|s| s.rules.iter().flatten());
    for (i, rule) in rules.enumerate() {
        let paths = rule.http.iter().flat_map(|h| h.paths.iter());
        for (j, p) in paths.enumerate() {
            let path = p.path.as_deref().unwrap_or("/");
            if let Err(why) = PathRegex::compile(path) {
                diags.push(Diagnostic {
                    object: object.to_string(),
                    field: format!("spec.rules[{i}].http.paths[{j}].path"),
                    message: format!("{why}; matched literally (use-regex/rewrite-target)"),
                });
            }
        }
    }
}

/// Visible ASCII only: the value goes into a request line or a header as is.
fn visible(value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} must be non-empty visible ASCII without spaces, got {value:?}"
        ));
    }
    Ok(())
}

/// A redirect URL: absolute `http(s)://…` (ingress-nginx refuses other schemes). nginx
/// variables (`$request_uri`…) are not interpreted, so a `$` is refused.
pub fn parse_url(value: &str) -> Result<String, String> {
    visible(value, "a redirect URL")?;
    let lower = value.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || value.len() <= 8 {
        return Err(format!(
            "expected an http:// or https:// URL, got {value:?}"
        ));
    }
    if value.contains('$') {
        return Err(format!(
            "nginx variables are not interpreted, got {value:?}"
        ));
    }
    Ok(value.to_string())
}

/// A redirect status: 300 to 308, as ingress-nginx accepts.
pub fn parse_redirect_code(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(code @ 300..=308) => Ok(code),
        _ => Err(format!(
            "expected a redirect status 300 to 308, got {value:?}"
        )),
    }
}

fn parse_app_root(value: &str) -> Result<String, String> {
    visible(value, "app-root")?;
    if !value.starts_with('/') || value.starts_with("//") {
        return Err(format!("expected a path starting with '/', got {value:?}"));
    }
    Ok(value.to_string())
}

fn parse_target(value: &str) -> Result<String, String> {
    visible(value, "rewrite-target")?;
    if value.contains('#') {
        return Err(format!("a request target has no fragment, got {value:?}"));
    }
    Ok(value.to_string())
}

fn parse_field_value(value: &str) -> Result<String, String> {
    if value.is_empty() || value.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("expected a header value, got {value:?}"));
    }
    Ok(value.to_string())
}

/// A comma-separated list of networks (`10.0.0.0/8`) or addresses (`192.168.1.7`, one
/// address), IPv4 or IPv6.
pub fn parse_ranges(value: &str) -> Result<CidrSet, String> {
    let mut nets = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let net = match entry.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match entry.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "{entry:?} is not a network like 10.0.0.0/8 or an address"
                    ));
                }
            },
        };
        nets.push(net);
    }
    if nets.is_empty() {
        return Err("an empty list".to_string());
    }
    Ok(CidrSet::new(&nets))
}

/// `server-alias`: comma-separated exact host names, lower-cased.
fn parse_aliases(value: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.starts_with("*.") {
            return Err(format!("{entry:?}: an alias must be an exact host name"));
        }
        super::compile::check_host(entry).map_err(|why| format!("{entry:?}: {why}"))?;
        let lower = entry.to_ascii_lowercase();
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    if out.is_empty() {
        return Err("an empty list".to_string());
    }
    Ok(out)
}

/// A count for `limit-*`: a non-negative integer (0: no limit, as in ingress-nginx).
pub fn parse_limit(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("expected a whole number of requests, got {value:?}"))
}

/// `limit-burst-multiplier`: a positive integer.
fn parse_multiplier(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1, got {value:?}")),
    }
}

/// The rate and connection limits, `None` when none is set (or none parsed).
fn limits(a: &Annotations<'_>, diags: &mut Vec<Diagnostic>) -> Option<RateLimits> {
    let rps = a.get(LIMIT_RPS, parse_limit, &"no limit", diags);
    let rpm = a.get(LIMIT_RPM, parse_limit, &"no limit", diags);
    let conns = a.get(LIMIT_CONNECTIONS, parse_limit, &"no limit", diags);
    if rps.unwrap_or(0) == 0 && rpm.unwrap_or(0) == 0 && conns.unwrap_or(0) == 0 {
        return None;
    }
    let multiplier = a
        .get(
            LIMIT_BURST_MULTIPLIER,
            parse_multiplier,
            &DEFAULT_BURST_MULTIPLIER,
            diags,
        )
        .unwrap_or(DEFAULT_BURST_MULTIPLIER);
    let whitelist = a
        .get(LIMIT_ALLOWLIST, parse_ranges, &"none", diags)
        .or_else(|| a.get(LIMIT_WHITELIST, parse_ranges, &"none", diags));
    RateLimits::new(
        rps.map(Rate::per_second),
        rpm.map(Rate::per_minute),
        conns,
        multiplier,
        whitelist,
    )
}

/// `*` (`None`: any origin) or a comma-separated list of origins.
fn parse_origins(value: &str) -> Result<Option<Vec<OriginPattern>>, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() || entries.contains(&"*") {
        return Ok(None);
    }
    entries
        .into_iter()
        .map(OriginPattern::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A list of methods or field names (letters, digits, `-`, `_`; `*` when `star`), separated
/// by commas and spaces; kept as written.
fn parse_token_list(value: &str, star: bool) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.split(',').all(|t| {
            let t = t.trim();
            !t.is_empty()
                && (star && t == "*"
                    || t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        });
    if !ok {
        return Err(format!(
            "expected a comma-separated list of names, got {value:?}"
        ));
    }
    Ok(value.to_string())
}

// --- External authentication (`auth-url` …) and mirroring (`mirror-target` …) -------------

pub const AUTH_URL: &str = "auth-url";
pub const AUTH_METHOD: &str = "auth-method";
pub const AUTH_RESPONSE_HEADERS: &str = "auth-response-headers";
pub const AUTH_REQUEST_REDIRECT: &str = "auth-request-redirect";
pub const AUTH_SIGNIN: &str = "auth-signin";
pub const AUTH_SIGNIN_REDIRECT_PARAM: &str = "auth-signin-redirect-param";
pub const AUTH_CACHE_KEY: &str = "auth-cache-key";
pub const AUTH_CACHE_DURATION: &str = "auth-cache-duration";
pub const MIRROR_TARGET: &str = "mirror-target";
pub const MIRROR_REQUEST_BODY: &str = "mirror-request-body";
pub const MIRROR_HOST: &str = "mirror-host";

/// Whether `name` is set under either prefix (even to a value that does not parse).
fn present(ing: &Ingress, name: &str) -> bool {
    use super::annotations::{NGINX, OURS};
    ing.metadata.annotations.as_ref().is_some_and(|m| {
        m.contains_key(&format!("{OURS}{name}")) || m.contains_key(&format!("{NGINX}{name}"))
    })
}

/// `policy` with external authentication and mirroring added when `ing` asks for them.
///
/// Where the auth service (and the mirror) is: an IP literal, or a Service name
/// `svc.ns`, `svc.ns.svc` or `svc.ns.svc.cluster.local`, resolved here, when the snapshot is
/// built, to the Service's cluster IP among `services` (the URL's port is the Service
/// port). No DNS lookup is ever made, on the control thread or on a worker: any other host
/// name is refused and reported. An `auth-url` that cannot be used denies the Ingress's
/// locations (503, as ingress-nginx does for an invalid `auth-url`); a `mirror-target` that
/// cannot be used only turns mirroring off.
///
/// Not done: like `auth-secret`, a change to the Service alone is picked up by the next
/// compile of the Ingress, not by itself.
pub fn with_external_auth(
    policy: Option<Arc<RoutePolicy>>,
    ing: &Ingress,
    object: &str,
    services: &[Arc<Service>],
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<RoutePolicy>> {
    let a = Annotations::of(ing, object);
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    let report = |diags: &mut Vec<Diagnostic>, name: &str, message: String| {
        diags.push(Diagnostic {
            object: object.to_string(),
            field: format!("metadata.annotations[{name}]"),
            message,
        })
    };
    // `auth-snippet` (refused) and `auth-proxy-set-headers` (not read) are reported by the
    // catalog, as every ignored annotation.
    let ext_auth = present(ing, AUTH_URL).then(|| {
        let denied = "every request of the Ingress answered 503 (location denied)";
        let target = a
            .get(AUTH_URL, ext_auth::HttpUrl::parse, &denied, diags)
            .and_then(|url| match resolve(&url.host, url.port, ns, services) {
                Ok(endpoint) => Some(AuthTarget {
                    endpoint,
                    authority: url.authority,
                    target: url.target,
                }),
                Err(why) => {
                    report(diags, AUTH_URL, format!("{why}; {denied}"));
                    None
                }
            });
        let cache = a
            .get(
                AUTH_CACHE_KEY,
                |v| ext_auth::Template::parse(v, ext_auth::CACHE_KEY_VARIABLES),
                &"no caching",
                diags,
            )
            .map(|key| CacheRule {
                key,
                durations: a
                    .get(
                        AUTH_CACHE_DURATION,
                        ext_auth::parse_cache_durations,
                        &ext_auth::DEFAULT_CACHE_DURATION,
                        diags,
                    )
                    .unwrap_or_else(|| {
                        ext_auth::parse_cache_durations(ext_auth::DEFAULT_CACHE_DURATION)
                            .unwrap_or_default()
                    }),
            });
        Arc::new(ExtAuth {
            scope: object.into(),
            target,
            method: a.get(AUTH_METHOD, parse_method, &"the request's method", diags),
            response_headers: a
                .get(AUTH_RESPONSE_HEADERS, parse_field_names, &"none", diags)
                .unwrap_or_default(),
            request_redirect: a.get(
                AUTH_REQUEST_REDIRECT,
                parse_field_value,
                &"the request URI",
                diags,
            ),
            signin: a.get(
                AUTH_SIGNIN,
                parse_signin,
                &"no signin redirect (401 is returned)",
                diags,
            ),
            redirect_param: a
                .get(AUTH_SIGNIN_REDIRECT_PARAM, parse_param_name, &"rd", diags)
                .unwrap_or_else(|| "rd".to_string()),
            cache,
        })
    });
    let mirror = a
        .get(MIRROR_TARGET, Mirror::parse_target, &"no mirroring", diags)
        .and_then(|(authority, target)| {
            let (host, port) = ext_auth::split_authority(&authority)?;
            match resolve(&host.to_ascii_lowercase(), port, ns, services) {
                Ok(endpoint) => Some(Arc::new(Mirror {
                    endpoint,
                    authority: authority.clone(),
                    target,
                    host: a.get(MIRROR_HOST, parse_host_name, &"the target's host", diags),
                    request_body: a
                        .get(MIRROR_REQUEST_BODY, parse_on_off, &"on", diags)
                        .unwrap_or(true),
                })),
                Err(why) => {
                    report(diags, MIRROR_TARGET, format!("{why}; no mirroring"));
                    None
                }
            }
        });
    if ext_auth.is_none() && mirror.is_none() {
        return policy;
    }
    let mut route = policy.as_deref().cloned().unwrap_or_default();
    let mut request = route.request.as_deref().cloned().unwrap_or_default();
    request.ext_auth = ext_auth;
    request.mirror = mirror;
    route.request = Some(Arc::new(request));
    Some(Arc::new(route))
}

/// An IP literal, or a Service name of the cluster resolved to its cluster IP.
fn resolve(
    host: &str,
    port: u16,
    ns: &str,
    services: &[Arc<Service>],
) -> Result<std::net::SocketAddr, String> {
    // `localhost` (ingress-nginx's docs use it) is this node: no lookup needed.
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, port));
    }
    let name = host.trim_end_matches('.');
    let name = name
        .strip_suffix(".svc.cluster.local")
        .or_else(|| name.strip_suffix(".svc"))
        .unwrap_or(name);
    let Some((svc, svc_ns)) = name.split_once('.').filter(|(_, n)| !n.contains('.')) else {
        return Err(format!(
            "{host:?} is neither an IP address nor a Service name like svc.{ns}.svc.cluster.local \
             (Sluice resolves no DNS names)"
        ));
    };
    let found = services.iter().find(|s| {
        s.metadata.name.as_deref() == Some(svc)
            && s.metadata.namespace.as_deref().unwrap_or("default") == svc_ns
    });
    let Some(service) = found else {
        return Err(format!("Service {svc_ns}/{svc} not found"));
    };
    let ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .ok_or_else(|| format!("Service {svc_ns}/{svc} has no cluster IP"))?;
    Ok(std::net::SocketAddr::new(ip, port))
}

/// An HTTP method token (upper-case letters, as ingress-nginx's `auth-method` check).
fn parse_method(value: &str) -> Result<String, String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_string())
    } else {
        Err(format!("expected a method like GET or POST, got {value:?}"))
    }
}

/// A comma-separated list of header names (tokens), lower-cased.
fn parse_field_names(value: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    let token = |n: &str| {
        n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if names.is_empty() || !names.iter().all(|n| token(n)) {
        return Err(format!(
            "expected header names separated by commas, got {value:?}"
        ));
    }
    Ok(names.into_iter().map(|n| n.to_ascii_lowercase()).collect())
}

/// A query parameter name (letters, digits, `-`, `_`, `.`).
fn parse_param_name(value: &str) -> Result<String, String> {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        Ok(value.to_string())
    } else {
        Err(format!("expected a parameter name, got {value:?}"))
    }
}

/// A host name for a `Host` field (letters, digits, `-`, `.`, an optional `:port`).
fn parse_host_name(value: &str) -> Result<String, String> {
    ext_auth::split_authority(value)
        .map(|_| value.to_string())
        .ok_or_else(|| format!("expected a host name, got {value:?}"))
}

/// An absolute `http(s)://` URL (it goes into a `Location`) with the variables of
/// [`ext_auth::SIGNIN_VARIABLES`].
fn parse_signin(value: &str) -> Result<ext_auth::Template, String> {
    visible(value, "a signin URL")?;
    let lower = value.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || value.len() <= 8 {
        return Err(format!(
            "expected an http:// or https:// URL, got {value:?}"
        ));
    }
    ext_auth::Template::parse(value, ext_auth::SIGNIN_VARIABLES)
}

/// `on` / `off` as nginx writes a flag (ingress-nginx's `mirror-request-body`); `true` and
/// `false` are read too.
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("expected on or off, got {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert!(parse_url("http://redirect.example.com").is_ok());
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https://x.example$request_uri").is_err());
        assert!(parse_url("https://x.example/a b").is_err());
        assert_eq!(parse_redirect_code("308"), Ok(308));
        assert!(parse_redirect_code("200").is_err());
        assert!(parse_ranges("10.0.0.0/8, 192.168.1.7,2001:db8::/32").is_ok());
        assert!(parse_ranges("10.0.0.0/33").is_err());
        assert!(parse_ranges("").is_err());
        assert!(parse_token_list("GET, POST", false).is_ok());
        assert!(parse_token_list("GET;POST", false).is_err());
        assert_eq!(parse_origins("*"), Ok(None));
        assert!(parse_app_root("//evil.example").is_err());
        assert_eq!(parse_limit("5"), Ok(5));
        assert_eq!(parse_limit("0"), Ok(0));
        for bad in ["-1", "1.5", "five", "", "99999999999"] {
            assert!(parse_limit(bad).is_err(), "{bad}");
        }
        assert!(parse_multiplier("0").is_err());
        assert_eq!(
            parse_aliases("Foo.example.com, bar.example.com,foo.example.com"),
            Ok(vec![
                "foo.example.com".to_string(),
                "bar.example.com".to_string()
            ])
        );
        assert!(parse_aliases("*.example.com").is_err());
        assert!(parse_aliases("a b.example").is_err());
        assert!(parse_aliases("x.example\r\nSet-Cookie: a").is_err());
        assert_eq!(parse_error_codes("503, 404,404"), Ok(vec![404, 503]));
        for bad in ["", "200", "600", "4o4", "404;503"] {
            assert!(parse_error_codes(bad).is_err(), "{bad}");
        }
        assert!(parse_service_name("errors-svc").is_ok());
        for bad in ["", "ns/errors", "Errors", "-x", "a b"] {
            assert!(parse_service_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_kib("8"), Ok(8192));
        assert!(parse_kib("8k").is_err() && parse_kib("-1").is_err());
        assert_eq!(parse_satisfy("any"), Ok(true));
        assert!(parse_satisfy("some").is_err());
    }
}
