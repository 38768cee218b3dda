//! Request policies from ingress-nginx annotations through real sockets: a `sluice run`
//! process over a manifests directory, an in-process upstream that echoes the request head
//! it received. Each test says which ingress-nginx e2e test (`test/e2e/annotations/*.go` in
//! kubernetes/ingress-nginx) its expectations come from.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::binary::{self, Answer, Sluice};

mod support;

/// An upstream on 127.0.0.1 answering 200 with the request head it got as the body. A path
/// containing `acao` also gets `Access-Control-Allow-Origin: upstream` in the answer.
fn echo_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || echo(stream));
        }
    });
    port
}

fn echo(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            buf.drain(..end + 4);
            let extra = if head.split(' ').nth(1).unwrap_or("").contains("acao") {
                "Access-Control-Allow-Origin: upstream\r\n"
            } else {
                ""
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{head}",
                head.len()
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// An Ingress `name` for `host` with `paths` (`(path, pathType)`) to `app:80`.
fn ingress(name: &str, host: &str, paths: &[(&str, &str)], annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: {}\n", serde_json::to_string(v).unwrap()))
        .collect();
    let paths: Vec<String> = paths
        .iter()
        .map(|(p, t)| {
            format!(
                "          - path: {}\n            pathType: {t}\n            backend: {{service: {{name: app, port: {{number: 80}}}}}}\n",
                serde_json::to_string(p).unwrap()
            )
        })
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n{}\
         spec:\n  ingressClassName: sluice\n  rules:\n    - host: {host}\n      http:\n        paths:\n{}---\n",
        if annotations.is_empty() {
            "    {}\n".to_string()
        } else {
            annotations.concat()
        },
        paths.concat()
    )
    .replace("annotations:\n    {}", "annotations: {}")
}

fn backend(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    )
}

fn sluice(name: &str, ingresses: &[String]) -> Sluice {
    let port = echo_upstream();
    let yaml = format!("{}{}", ingresses.concat(), backend(port));
    binary::start(&format!("reqpol-{name}"), &[("app.yaml", &yaml)], "", 1)
}

/// One request (`method target`, `Host`, extra fields) on a fresh connection.
fn send(s: &Sluice, method: &str, target: &str, host: &str, extra: &str) -> Answer {
    s.send(method, target, host, extra)
}

fn get(s: &Sluice, target: &str, host: &str) -> Answer {
    send(s, "GET", target, host, "")
}

/// The request line the upstream received.
fn upstream_line(a: &Answer) -> &str {
    assert_eq!(a.status, 200, "{}", a.body);
    a.body.lines().next().unwrap()
}

const NGINX: &str = "nginx.ingress.kubernetes.io/";

fn ann(name: &str, value: &str) -> (String, String) {
    (format!("{NGINX}{name}"), value.to_string())
}

fn ing(name: &str, host: &str, paths: &[(&str, &str)], annotations: &[(String, String)]) -> String {
    let refs: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ingress(name, host, paths, &refs)
}

const ROOT: &[(&str, &str)] = &[("/", "Prefix")];

// redirect.go: "should respond with a standard redirect code" / "a custom redirect code".
#[test]
fn permanent_and_temporal_redirects() {
    let s = sluice(
        "redirect",
        &[
            ing(
                "perm",
                "redirect",
                &[("/something", "Prefix")],
                &[ann("permanent-redirect", "http://redirect.example.com")],
            ),
            ing(
                "perm-code",
                "redirect-code",
                &[("/something", "Prefix")],
                &[
                    ann("permanent-redirect", "http://redirect.example.com"),
                    ann("permanent-redirect-code", "302"),
                ],
            ),
            ing(
                "temp",
                "temporal",
                ROOT,
                &[ann("temporal-redirect", "https://temp.example.com/x")],
            ),
            ing(
                "temp-code",
                "temporal-code",
                ROOT,
                &[
                    ann("temporal-redirect", "https://temp.example.com/x"),
                    ann("temporal-redirect-code", "307"),
                    // ingress-nginx: the temporal redirect wins over a permanent one.
                    ann("permanent-redirect", "https://perm.example.com/"),
                ],
            ),
            ing(
                "bad-code",
                "bad-code",
                ROOT,
                &[
                    ann("permanent-redirect", "http://redirect.example.com"),
                    ann("permanent-redirect-code", "200"),
                ],
            ),
        ],
    );
    let a = get(&s, "/something", "redirect");
    assert_eq!(a.status, 301);
    assert_eq!(a.header("location"), Some("http://redirect.example.com"));
    let a = get(&s, "/something", "redirect-code");
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), Some("http://redirect.example.com"));
    let a = get(&s, "/anything?q=1", "temporal");
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), Some("https://temp.example.com/x"));
    let a = get(&s, "/", "temporal-code");
    assert_eq!(a.status, 307);
    assert_eq!(a.header("location"), Some("https://temp.example.com/x"));
    // A code outside 300–308 is refused: the default 301 applies.
    assert_eq!(get(&s, "/", "bad-code").status, 301);
    // HEAD: same status and Location, no body.
    let a = send(&s, "HEAD", "/something", "redirect", "");
    assert_eq!((a.status, a.body.as_str()), (301, ""));
}

// approot.go: "should redirect to /foo".
#[test]
fn app_root_redirects_only_the_root() {
    let s = sluice(
        "approot",
        &[ing(
            "approot",
            "approot.bar.com",
            ROOT,
            &[ann("app-root", "/foo")],
        )],
    );
    let a = get(&s, "/", "approot.bar.com");
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), Some("http://approot.bar.com/foo"));
    assert_eq!(
        upstream_line(&get(&s, "/foo", "approot.bar.com")),
        "GET /foo HTTP/1.1"
    );
}

// fromtowwwredirect.go: "should redirect from www HTTP to HTTP".
#[test]
fn from_to_www_redirects_the_twin_host() {
    let s = sluice(
        "www",
        &[
            ing(
                "www",
                "fromtowwwredirect.bar.com",
                ROOT,
                &[ann("from-to-www-redirect", "true")],
            ),
            ing(
                "to-www",
                "www.other.bar.com",
                ROOT,
                &[ann("from-to-www-redirect", "true")],
            ),
        ],
    );
    let a = get(&s, "/foo", "www.fromtowwwredirect.bar.com");
    assert_eq!(a.status, 308);
    assert_eq!(
        a.header("location"),
        Some("http://fromtowwwredirect.bar.com/foo")
    );
    let a = get(&s, "/a?b=c", "other.bar.com:80");
    assert_eq!(a.status, 308);
    assert_eq!(a.header("location"), Some("http://www.other.bar.com/a?b=c"));
    assert_eq!(
        upstream_line(&get(&s, "/foo", "fromtowwwredirect.bar.com")),
        "GET /foo HTTP/1.1"
    );
    // A host that is nobody's twin is still a 404.
    assert_eq!(get(&s, "/", "www.unknown.bar.com").status, 404);
}

// xforwardedprefix.go: "should set the X-Forwarded-Prefix to the annotation value".
#[test]
fn x_forwarded_prefix_is_sent_upstream() {
    let s = sluice(
        "xfp",
        &[
            ing(
                "xfp",
                "xfp.foo.com",
                ROOT,
                &[ann("x-forwarded-prefix", "/test/value")],
            ),
            ing("plain", "plain.foo.com", ROOT, &[]),
        ],
    );
    let a = send(
        &s,
        "GET",
        "/",
        "xfp.foo.com",
        "X-Forwarded-Prefix: /client\r\n",
    );
    assert!(
        a.body.contains("X-Forwarded-Prefix: /test/value\r\n"),
        "{}",
        a.body
    );
    assert!(!a.body.contains("/client"), "{}", a.body);
    let a = get(&s, "/", "plain.foo.com");
    assert!(!a.body.contains("X-Forwarded-Prefix"), "{}", a.body);
}

// rewrite.go: "should rewrite request URL" (lower and mixed case), "should use correct
// longest path match", and the docs' capture-group example.
#[test]
fn rewrite_target_with_regex_paths() {
    let s = sluice(
        "rewrite",
        &[
            ing(
                "rewrite",
                "rewrite.foo.com",
                &[("/something", "ImplementationSpecific")],
                &[ann("rewrite-target", "/")],
            ),
            ing(
                "kube-lego",
                "rewrite.bar.com",
                &[("/.well-known/acme/challenge", "Prefix")],
                &[],
            ),
            ing(
                "rewrite-index",
                "rewrite.bar.com",
                ROOT,
                &[ann("rewrite-target", "/new/backend")],
            ),
            ing(
                "captures",
                "captures.foo.com",
                &[("/something(/|$)(.*)", "ImplementationSpecific")],
                &[ann("rewrite-target", "/$2"), ann("use-regex", "true")],
            ),
        ],
    );
    assert_eq!(
        upstream_line(&get(&s, "/something", "rewrite.foo.com")),
        "GET / HTTP/1.1"
    );
    assert_eq!(
        upstream_line(&get(&s, "/SomeThing", "rewrite.foo.com")),
        "GET / HTTP/1.1"
    );
    assert_eq!(
        upstream_line(&get(&s, "/.well-known/acme/challenge", "rewrite.bar.com")),
        "GET /.well-known/acme/challenge HTTP/1.1"
    );
    assert_eq!(
        upstream_line(&get(&s, "/other?x=1", "rewrite.bar.com")),
        "GET /new/backend?x=1 HTTP/1.1"
    );
    assert_eq!(
        upstream_line(&get(&s, "/something/new/path?q=2", "captures.foo.com")),
        "GET /new/path?q=2 HTTP/1.1"
    );
    assert_eq!(
        upstream_line(&get(&s, "/something", "captures.foo.com")),
        "GET / HTTP/1.1"
    );
    // The regex is anchored at the start: `/x/something` is not this rule.
    assert_eq!(get(&s, "/x/something", "captures.foo.com").status, 404);
}

// rewrite.go / the docs' "Ingress Path Matching": use-regex on one Ingress of a host makes
// every path of the host a case-insensitive regex, whatever Ingress it is on.
#[test]
fn use_regex_applies_to_every_path_of_the_host() {
    let s = sluice(
        "use-regex",
        &[
            ing(
                "regex",
                "regex.foo.com",
                &[("/foo/bar/[a-z]+$", "ImplementationSpecific")],
                &[ann("use-regex", "true")],
            ),
            ing("plain", "regex.foo.com", &[("/exact.txt", "Exact")], &[]),
            ing("other", "other.foo.com", &[("/Exact.txt", "Exact")], &[]),
            // Hostile: a catastrophic pattern against a long path is linear in the regex
            // crate; the request is simply answered.
            ing(
                "evil",
                "evil.foo.com",
                &[("/(a+)+$", "ImplementationSpecific")],
                &[ann("use-regex", "true")],
            ),
            // A path that is not a regex is matched literally (and reported).
            ing(
                "broken",
                "broken.foo.com",
                &[("/v1(", "ImplementationSpecific")],
                &[ann("use-regex", "true")],
            ),
        ],
    );
    assert_eq!(
        upstream_line(&get(&s, "/foo/bar/BAZ", "regex.foo.com")),
        "GET /foo/bar/BAZ HTTP/1.1"
    );
    assert_eq!(get(&s, "/foo/bar/1", "regex.foo.com").status, 404);
    // The Exact rule of the other Ingress became `~* ^/exact.txt` too.
    assert_eq!(get(&s, "/EXACT.TXT/more", "regex.foo.com").status, 200);
    // On a host without use-regex, Exact stays exact and case-sensitive.
    assert_eq!(get(&s, "/exact.txt", "other.foo.com").status, 404);
    let long = format!("/{}b", "a".repeat(3000));
    assert_eq!(get(&s, &long, "evil.foo.com").status, 404);
    assert_eq!(get(&s, "/aaaa", "evil.foo.com").status, 200);
    assert_eq!(get(&s, "/V1(/x", "broken.foo.com").status, 200);
}

// ipallowlist.go / ipdenylist.go: a client outside the allowlist (inside the denylist) is
// answered 403.
#[test]
fn source_ranges_allow_and_deny() {
    let mut big: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    big.push("2001:db8::/32".into());
    let big_without_us = big.join(",");
    big.push("127.0.0.1/32".into());
    let big_with_us = big.join(", ");
    let s = sluice(
        "ranges",
        &[
            ing(
                "allow-other",
                "allow-other.test",
                ROOT,
                &[ann("whitelist-source-range", "10.0.0.0/8, 2001:db8::/32")],
            ),
            ing(
                "allow-us",
                "allow-us.test",
                ROOT,
                &[ann("allowlist-source-range", "18.0.0.0/8,127.0.0.1")],
            ),
            ing(
                "deny-us",
                "deny-us.test",
                ROOT,
                &[ann("denylist-source-range", "127.0.0.0/8")],
            ),
            ing(
                "deny-other",
                "deny-other.test",
                ROOT,
                &[ann("denylist-source-range", "10.0.0.0/8")],
            ),
            ing(
                "big-with",
                "big-with.test",
                ROOT,
                &[ann("allowlist-source-range", &big_with_us)],
            ),
            ing(
                "big-without",
                "big-without.test",
                ROOT,
                &[ann("allowlist-source-range", &big_without_us)],
            ),
            ing(
                "bad",
                "bad.test",
                ROOT,
                &[ann("allowlist-source-range", "10.0.0.0/8, nonsense")],
            ),
        ],
    );
    assert_eq!(get(&s, "/", "allow-other.test").status, 403);
    assert_eq!(get(&s, "/", "allow-us.test").status, 200);
    assert_eq!(get(&s, "/", "deny-us.test").status, 403);
    assert_eq!(get(&s, "/", "deny-other.test").status, 200);
    assert_eq!(get(&s, "/", "big-with.test").status, 200);
    assert_eq!(get(&s, "/", "big-without.test").status, 403);
    // A list that does not parse is rejected as a whole field: no allowlist.
    assert_eq!(get(&s, "/", "bad.test").status, 200);
}

// cors.go: "should enable cors" (defaults, OPTIONS → 204), "should set cors methods",
// "should set cors max-age", "should disable cors allow credentials", "should allow origin
// for cors", "should allow headers for cors", and the origin list / wildcard cases.
#[test]
fn cors_preflight_and_response_fields() {
    let s = sluice(
        "cors",
        &[
            ing("cors", "cors.foo.com", ROOT, &[ann("enable-cors", "true")]),
            ing(
                "cors-custom",
                "custom.cors.foo.com",
                ROOT,
                &[
                    ann("enable-cors", "true"),
                    ann("cors-allow-methods", "POST, GET"),
                    ann("cors-max-age", "200"),
                    ann("cors-allow-credentials", "false"),
                    ann("cors-allow-headers", "DNT, User-Agent"),
                    ann("cors-expose-headers", "X-Expose, X-Other"),
                    ann(
                        "cors-allow-origin",
                        "https://origin.cors.com:8080, https://*.foo.com",
                    ),
                ],
            ),
            ing("no-cors", "no.cors.foo.com", ROOT, &[]),
        ],
    );
    let a = send(&s, "OPTIONS", "/", "cors.foo.com", "");
    assert_eq!(a.status, 204);
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        a.header("access-control-allow-methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some(
            "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"
        )
    );
    assert_eq!(a.header("access-control-max-age"), Some("1728000"));
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.header("content-type"), Some("text/plain charset=UTF-8"));
    assert_eq!(a.header("content-length"), Some("0"));
    assert_eq!(a.header("access-control-expose-headers"), None);

    // A proxied answer gets the fields, replacing the upstream's own.
    let a = send(
        &s,
        "GET",
        "/acao",
        "cors.foo.com",
        "Origin: https://x.example\r\n",
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(a.count("access-control-allow-origin"), 1);
    assert_eq!(a.header("access-control-max-age"), Some("1728000"));

    let pre = "Origin: https://origin.cors.com:8080\r\nAccess-Control-Request-Method: POST\r\n";
    let a = send(&s, "OPTIONS", "/", "custom.cors.foo.com", pre);
    assert_eq!(a.status, 204);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://origin.cors.com:8080")
    );
    assert_eq!(a.header("access-control-allow-methods"), Some("POST, GET"));
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some("DNT, User-Agent")
    );
    assert_eq!(a.header("access-control-max-age"), Some("200"));
    assert_eq!(
        a.header("access-control-expose-headers"),
        Some("X-Expose, X-Other")
    );
    assert_eq!(a.header("access-control-allow-credentials"), None);

    let a = send(
        &s,
        "GET",
        "/",
        "custom.cors.foo.com",
        "Origin: https://app.foo.com\r\n",
    );
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.foo.com")
    );
    // An origin not in the list: no CORS fields, and OPTIONS goes to the upstream.
    let a = send(
        &s,
        "GET",
        "/acao",
        "custom.cors.foo.com",
        "Origin: https://evil.com\r\n",
    );
    assert_eq!(a.header("access-control-allow-origin"), Some("upstream"));
    assert_eq!(a.header("access-control-allow-methods"), None);
    let a = send(
        &s,
        "OPTIONS",
        "/",
        "custom.cors.foo.com",
        "Origin: https://foo.com.evil\r\n",
    );
    assert_eq!(upstream_line(&a), "OPTIONS / HTTP/1.1");
    // No annotation: nothing added.
    let a = send(
        &s,
        "GET",
        "/",
        "no.cors.foo.com",
        "Origin: https://x.example\r\n",
    );
    assert_eq!(a.header("access-control-allow-origin"), None);
}

/// Local answers keep the connection: a redirect, a 403 and a preflight, then a proxied
/// request, pipelined on one keep-alive connection, answered in order.
#[test]
fn local_answers_keep_the_connection_alive() {
    let s = sluice(
        "keepalive",
        &[
            ing(
                "root",
                "ka.test",
                ROOT,
                &[ann("app-root", "/app"), ann("enable-cors", "true")],
            ),
            ing(
                "deny",
                "deny.ka.test",
                ROOT,
                &[ann("denylist-source-range", "127.0.0.1")],
            ),
        ],
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"GET / HTTP/1.1\r\nHost: ka.test\r\n\r\n\
          GET / HTTP/1.1\r\nHost: deny.ka.test\r\n\r\n\
          OPTIONS /x HTTP/1.1\r\nHost: ka.test\r\n\r\n\
          GET /app HTTP/1.1\r\nHost: ka.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let statuses: Vec<&str> = out
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(statuses, ["302", "403", "204", "200"], "{out}");
    assert!(out.contains("GET /app HTTP/1.1\r\n"), "{out}");
}

fn secret(name: &str, data: &[(&str, &str)]) -> String {
    use base64::Engine as _;
    let data: Vec<String> = data
        .iter()
        .map(|(k, v)| {
            format!(
                "  {k}: {}\n",
                base64::engine::general_purpose::STANDARD.encode(v)
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: Opaque\ndata:\n{}---\n",
        data.concat()
    )
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

// auth.go: "should return status code 200 when no authentication is configured", "… 503
// when authentication is configured with an invalid secret", "… 401 … but Authorization
// header is not configured", "… 401 … sent with invalid credentials", "… 200 … and
// Authorization header is sent", "… 200 … configured with a map …", "… 401 … with invalid
// content …".
#[test]
fn basic_auth_from_secrets() {
    let bcrypt_hash = bcrypt::hash("bar", 5).unwrap().replacen("$2b$", "$2y$", 1);
    let file = format!(
        "foo:$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/\nsha:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\nbc:{bcrypt_hash}\n"
    );
    let auth = |secret: &str, kind: &str| {
        vec![
            ann("auth-type", "basic"),
            ann("auth-secret", secret),
            ann("auth-secret-type", kind),
            ann("auth-realm", "test auth"),
        ]
    };
    let s = sluice(
        "basic-auth",
        &[
            secret("file", &[("auth", &file)]),
            secret("map", &[("foo", &bcrypt_hash)]),
            secret("invalid", &[("auth", "foo:bar")]),
            ing("file", "auth", ROOT, &auth("file", "auth-file")),
            ing("map", "map.auth", ROOT, &auth("map", "auth-map")),
            ing(
                "missing",
                "missing.auth",
                ROOT,
                &auth("something", "auth-file"),
            ),
            ing(
                "invalid",
                "invalid.auth",
                ROOT,
                &auth("invalid", "auth-file"),
            ),
            ing("open", "open.auth", ROOT, &[]),
        ],
    );
    assert_eq!(get(&s, "/", "open.auth").status, 200);
    let a = get(&s, "/", "auth");
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Basic realm=\"test auth\"")
    );
    assert_eq!(
        send(&s, "GET", "/", "auth", &basic("foo", "wrong")).status,
        401
    );
    assert_eq!(
        send(&s, "GET", "/", "auth", &basic("nobody", "secret")).status,
        401
    );
    assert_eq!(
        send(&s, "GET", "/", "auth", &basic("foo", "secret")).status,
        200
    );
    assert_eq!(
        send(&s, "GET", "/", "auth", &basic("sha", "secret")).status,
        200
    );
    assert_eq!(
        send(&s, "GET", "/", "auth", &basic("bc", "bar")).status,
        200
    );
    assert_eq!(
        send(&s, "GET", "/", "map.auth", &basic("foo", "bar")).status,
        200
    );
    assert_eq!(
        send(&s, "GET", "/", "map.auth", &basic("foo", "baz")).status,
        401
    );
    assert_eq!(get(&s, "/", "missing.auth").status, 503);
    assert_eq!(
        send(&s, "GET", "/", "invalid.auth", &basic("foo", "bar")).status,
        401
    );
}

// A redirect-only Ingress often names a Service with no endpoints (or none at all):
// ingress-nginx answers its `return` before proxying, so the redirect still works.
#[test]
fn redirects_need_no_endpoints() {
    let yaml = format!(
        "{}{}",
        ing(
            "redirect-only",
            "old.example.com",
            ROOT,
            &[ann("permanent-redirect", "https://new.example.com/")],
        )
        .replace("name: app,", "name: nothing-here,"),
        backend(echo_upstream())
    );
    let s = binary::start("reqpol-no-endpoints", &[("app.yaml", &yaml)], "", 1);
    let a = get(&s, "/x", "old.example.com");
    assert_eq!(a.status, 301, "{}", a.body);
    assert_eq!(a.header("location"), Some("https://new.example.com/"));
}

// ingress-nginx: a location's `return` (permanent-redirect, app-root, the CORS preflight)
// runs in nginx's rewrite phase, before the SSL redirect (rewrite_by_lua) and before the
// access phase (source ranges, auth). A plain-HTTP request to a TLS host gets the route's
// redirect; an address list still sees HTTPS first.
#[test]
fn route_redirects_come_before_the_ssl_redirect() {
    let cert = support::tls::cert_for(&["tls.example.com", "root.example.com", "deny.example.com"]);
    let with_tls = |yaml: String, host: &str| {
        yaml.replace(
            "spec:\n  ingressClassName: sluice\n",
            &format!(
                "spec:\n  ingressClassName: sluice\n  tls:\n    - hosts: [{host}]\n      secretName: tls\n"
            ),
        )
    };
    let s = sluice(
        "ssl-redirect",
        &[
            format!(
                "{}\n---\n",
                support::tls::secret("tls", &cert).trim_start_matches("---\n")
            ),
            with_tls(
                ing(
                    "redirect",
                    "tls.example.com",
                    ROOT,
                    &[ann("permanent-redirect", "https://new.example.com/")],
                ),
                "tls.example.com",
            ),
            with_tls(
                ing("root", "root.example.com", ROOT, &[ann("app-root", "/app")]),
                "root.example.com",
            ),
            with_tls(
                ing(
                    "deny",
                    "deny.example.com",
                    ROOT,
                    &[ann("denylist-source-range", "127.0.0.1")],
                ),
                "deny.example.com",
            ),
        ],
    );
    let a = get(&s, "/x", "tls.example.com");
    assert_eq!(a.status, 301, "{}", a.body);
    assert_eq!(a.header("location"), Some("https://new.example.com/"));
    let a = get(&s, "/", "root.example.com");
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), Some("http://root.example.com/app"));
    // Not the root: the SSL redirect.
    assert_eq!(get(&s, "/other", "root.example.com").status, 308);
    assert_eq!(get(&s, "/", "deny.example.com").status, 308);
}

/// ingress-nginx test/e2e/annotations/serveralias.go: the aliases reach the Ingress's rules
/// (200 for `foo` and its aliases, 404 for a name nobody serves), and an alias never takes a
/// host another Ingress defines explicitly (that host keeps its own rules only).
#[test]
fn server_alias_reaches_the_ingress_but_never_an_explicit_host() {
    let s = sluice(
        "alias",
        &[
            ing(
                "foo",
                "foo",
                &[("/", "Prefix")],
                &[ann("server-alias", "bar, Baz.Example.com")],
            ),
            // Defines "bar" itself, with one exact path.
            ing("bar", "bar", &[("/only-bar", "Exact")], &[]),
            ing(
                "bad",
                "qux",
                &[("/", "Prefix")],
                &[ann("server-alias", "*.wild.example, good.example")],
            ),
        ],
    );
    assert_eq!(upstream_line(&get(&s, "/x", "foo")), "GET /x HTTP/1.1");
    let via_alias = get(&s, "/x", "baz.example.com:80");
    assert_eq!(upstream_line(&via_alias), "GET /x HTTP/1.1");
    assert!(
        via_alias.body.contains("baz.example.com"),
        "{}",
        via_alias.body
    );
    assert_eq!(get(&s, "/x", "bernard").status, 404);
    // "bar" is an Ingress host: its own rules, not foo's.
    assert_eq!(get(&s, "/only-bar", "bar").status, 200);
    assert_eq!(get(&s, "/x", "bar").status, 404);
    // A bad alias list is rejected as a whole (reported); the Ingress is still served.
    assert_eq!(get(&s, "/", "qux").status, 200);
    assert_eq!(get(&s, "/", "good.example").status, 404);
}

// connection.go: "set connection header to keep-alive": the upstream gets the annotation's
// `Connection` value; `close` too (Sluice then keeps that upstream connection out of its
// pool). A value that is
// not a token list (an injection attempt) is refused, reported, and nothing is added.
#[test]
fn connection_proxy_header_is_sent_upstream() {
    let s = sluice(
        "connection",
        &[
            ing(
                "keep",
                "connection.foo.com",
                ROOT,
                &[ann("connection-proxy-header", "keep-alive")],
            ),
            ing(
                "close",
                "close.foo.com",
                ROOT,
                &[ann("connection-proxy-header", "close")],
            ),
            ing(
                "evil",
                "evil.foo.com",
                ROOT,
                &[ann("connection-proxy-header", "close\r\nX-Evil: 1")],
            ),
            ing("plain", "plain.foo.com", ROOT, &[]),
        ],
    );
    let a = get(&s, "/", "connection.foo.com");
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("\r\nConnection: keep-alive\r\n"),
        "{}",
        a.body
    );
    for _ in 0..2 {
        let a = get(&s, "/", "close.foo.com");
        assert!(a.body.contains("\r\nConnection: close\r\n"), "{}", a.body);
    }
    for host in ["evil.foo.com", "plain.foo.com"] {
        let a = get(&s, "/", host);
        assert_eq!(a.status, 200);
        assert!(!a.body.contains("Connection:"), "{}", a.body);
        assert!(!a.body.contains("X-Evil"), "{}", a.body);
    }
}

// The typed form of ingress-nginx's `custom-headers` (a ConfigMap of response fields) and
// `proxy-set-headers`: `sluice.dev/response-headers` and `sluice.dev/request-headers`, one
// `Name: value` a line, each replacing any field of that name; `[http] proxy_set_headers`
// for every route (the route's win). CR in a value, a bad name, or a framing field refuse the
// whole list (reported): nothing is set.
#[test]
fn request_and_response_header_lists() {
    let yaml = [
        ing(
            "headers",
            "headers.foo.com",
            ROOT,
            &[
                (
                    "sluice.dev/response-headers".to_string(),
                    "X-Frame-Options: DENY\nAccess-Control-Allow-Origin: set\nX-Multi: a\nX-Multi: b"
                        .to_string(),
                ),
                (
                    "sluice.dev/request-headers".to_string(),
                    "X-Tenant: blue\nX-Global: route".to_string(),
                ),
            ],
        ),
        ing(
            "evil",
            "evil.foo.com",
            ROOT,
            &[
                (
                    "sluice.dev/response-headers".to_string(),
                    "X-Ok: 1\nX-Bad: a\r\nSet-Cookie: stolen=1".to_string(),
                ),
                (
                    "sluice.dev/request-headers".to_string(),
                    "Content-Length: 0".to_string(),
                ),
            ],
        ),
        ing("plain", "plain.foo.com", ROOT, &[]),
        backend(echo_upstream()),
    ]
    .concat();
    let s = binary::start(
        "reqpol-headers",
        &[("app.yaml", &yaml)],
        "[http]\nproxy_set_headers = { \"X-Global\" = \"config\", \"X-Config-Only\" = \"yes\" }\n",
        1,
    );
    let a = send(
        &s,
        "GET",
        "/acao",
        "headers.foo.com",
        "X-Tenant: client\r\n",
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert_eq!(a.count("access-control-allow-origin"), 1);
    assert_eq!(a.header("access-control-allow-origin"), Some("set"));
    assert_eq!(a.count("x-multi"), 2);
    assert!(a.body.contains("\r\nX-Tenant: blue\r\n"), "{}", a.body);
    assert!(!a.body.contains("client"), "{}", a.body);
    assert!(a.body.contains("\r\nX-Global: route\r\n"), "{}", a.body);
    assert!(a.body.contains("\r\nX-Config-Only: yes\r\n"), "{}", a.body);
    assert!(!a.body.contains("X-Global: config"), "{}", a.body);
    let a = get(&s, "/", "plain.foo.com");
    assert!(a.header("x-frame-options").is_none());
    assert!(a.body.contains("\r\nX-Global: config\r\n"), "{}", a.body);
    let a = get(&s, "/", "evil.foo.com");
    assert_eq!(a.status, 200);
    assert!(a.header("x-ok").is_none() && a.header("set-cookie").is_none());
    assert!(!a.body.contains("Content-Length: 0"), "{}", a.body);
}

// satisfy.go: "should configure satisfy directive correctly" (any and all both serve a
// plain request) and "should allow multiple auth with satisfy any" (with basic auth: valid
// credentials pass from an address the allowlist refuses; without them, 401). With
// `satisfy: all` both must pass (403 from an address not listed); with `any`, a listed
// address needs no credentials.
#[test]
fn satisfy_any_lets_either_check_through() {
    let file = "sha:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n";
    let guarded = |satisfy: &str, range: &str| {
        vec![
            ann("auth-type", "basic"),
            ann("auth-secret", "users"),
            ann("auth-realm", "test basic auth"),
            ann("whitelist-source-range", range),
            ann("satisfy", satisfy),
        ]
    };
    let s = sluice(
        "satisfy",
        &[
            secret("users", &[("auth", file)]),
            ing("satisfy", "satisfy", ROOT, &[ann("satisfy", "all")]),
            ing("satisfy-any", "satisfy-any", ROOT, &[ann("satisfy", "any")]),
            ing("any", "auth", ROOT, &guarded("any", "10.0.0.0/8")),
            ing("all", "all.auth", ROOT, &guarded("all", "10.0.0.0/8")),
            ing("listed", "listed.auth", ROOT, &guarded("any", "127.0.0.1")),
            ing("bad", "bad.auth", ROOT, &guarded("some", "127.0.0.1")),
        ],
    );
    assert_eq!(get(&s, "/", "satisfy").status, 200);
    assert_eq!(get(&s, "/", "satisfy-any").status, 200);
    assert_eq!(
        send(&s, "GET", "/", "auth", &basic("sha", "secret")).status,
        200
    );
    let a = get(&s, "/", "auth");
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Basic realm=\"test basic auth\"")
    );
    assert_eq!(
        send(&s, "GET", "/", "all.auth", &basic("sha", "secret")).status,
        403
    );
    assert_eq!(get(&s, "/", "listed.auth").status, 200);
    // A bad value is reported and `all` applies: listed, but no credentials.
    assert_eq!(get(&s, "/", "bad.auth").status, 401);
}

/// An upstream answering every request with 200 and `size` bytes of body.
fn big_upstream(size: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
                        if stream.write_all(head.as_bytes()).is_err()
                            || stream.write_all(&vec![b'z'; size]).is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

// ratelimit.go has no limit-rate case; the annotations docs: "limit-rate: kilobytes per
// second allowed to send to a given connection", "limit-rate-after: initial number of
// kilobytes after which the further transmission of a response … will be rate limited".
// 300 KiB with the first 100 KiB free and 100 KiB/s after: never sooner than ~2 s (this is
// a lower bound the limit guarantees, not a speed measurement); the body arrives whole.
#[test]
#[allow(clippy::disallowed_methods)] // a test client measuring a real transfer reads the clock
fn limit_rate_slows_the_response_after_the_free_part() {
    let size = 300 * 1024;
    let yaml = format!(
        "{}{}{}",
        ing(
            "slow",
            "slow.foo.com",
            ROOT,
            &[ann("limit-rate", "100"), ann("limit-rate-after", "100")],
        ),
        ing("fast", "fast.foo.com", ROOT, &[ann("limit-rate", "0")]),
        backend(big_upstream(size))
    );
    let s = binary::start("reqpol-limit-rate", &[("app.yaml", &yaml)], "", 1);
    let fetch = |host: &str| {
        let started = std::time::Instant::now();
        let a = get(&s, "/", host);
        (a, started.elapsed())
    };
    let (a, took) = fetch("slow.foo.com");
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), size);
    assert!(took >= Duration::from_millis(1_900), "{took:?}");
    let (a, _) = fetch("fast.foo.com");
    assert_eq!((a.status, a.body.len()), (200, size));
}
