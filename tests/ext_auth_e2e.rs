//! External authentication (`auth-url` and its family) through real sockets: a `sluice run`
//! process over a manifests directory, an in-process upstream that echoes the request head
//! it received, and an in-process auth service that records the subrequests it gets. The
//! expectations follow ingress-nginx's test/e2e/annotations/auth.go (cited per test) and
//! the auth location of its nginx.tmpl (the subrequest's fields).

// Wall-clock instants only bound waits and check a timeout is not early; nothing here
// asserts on speed.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{self, Answer, Sluice};

mod support;

/// Reads one request head (up to the blank line) from `stream`.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).to_string())
}

/// An upstream answering 200 with the request head it got as the body.
fn echo_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                while let Some(head) = read_head(&mut stream) {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An auth service in the image of httpbin's: `/basic-auth/user/password` answers 200 (with
/// `X-User: alice`) to `Authorization: Basic user:password`, else 401 with a challenge;
/// `/forbid` answers 403, `/weird` 302, `/hang` never answers. While `down`, every
/// connection is closed without an answer. Every subrequest head (and whether bytes
/// followed it) is recorded.
struct AuthService {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
}

const USER_PASSWORD: &str = "Basic dXNlcjpwYXNzd29yZA==";

fn auth_service() -> AuthService {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let down = Arc::new(AtomicBool::new(false));
    let (seen2, down2) = (seen.clone(), down.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (seen, down) = (seen2.clone(), down2.clone());
            std::thread::spawn(move || {
                let mut stream = stream;
                if down.load(Ordering::SeqCst) {
                    return;
                }
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                seen.lock().unwrap().push(head.clone());
                let path = head.split(' ').nth(1).unwrap_or("");
                let answer = if path.starts_with("/hang") {
                    std::thread::sleep(Duration::from_secs(30));
                    return;
                } else if path.starts_with("/forbid") {
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_string()
                } else if path.starts_with("/weird") {
                    "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n".to_string()
                } else if head.contains(&format!("Authorization: {USER_PASSWORD}\r\n")) {
                    "HTTP/1.1 200 OK\r\nX-User: alice\r\nX-Other: 1\r\nSet-Cookie: session=abc; Path=/\r\nContent-Length: 2\r\n\r\nok"
                        .to_string()
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"Fake Realm\"\r\nSet-Cookie: pending=1\r\nContent-Length: 0\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(answer.as_bytes());
            });
        }
    });
    AuthService { port, seen, down }
}

fn ingress(name: &str, host: &str, path: &str, annotations: &[(&str, String)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| {
            format!(
                "    nginx.ingress.kubernetes.io/{k}: {}\n",
                serde_json::to_string(v).unwrap()
            )
        })
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n{}\
         spec:\n  ingressClassName: sluice\n  rules:\n    - host: {host}\n      http:\n        paths:\n          - path: {path}\n            pathType: Prefix\n            backend: {{service: {{name: app, port: {{number: 80}}}}}}\n---\n",
        annotations.concat()
    )
}

fn sluice(name: &str, ingresses: &[String], extra: &str) -> Sluice {
    let port = echo_upstream();
    let yaml = format!(
        "{}apiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n{extra}",
        ingresses.concat()
    );
    // One worker: the hang test needs the other requests on the same worker.
    binary::start(&format!("extauth-{name}"), &[("app.yaml", &yaml)], "", 1)
}

/// A GET of `target` on `host` with `extra` fields, on a fresh connection.
fn send(s: &Sluice, target: &str, host: &str, extra: &str) -> Answer {
    s.send("GET", target, host, extra)
}

fn signed_in() -> String {
    format!("Authorization: {USER_PASSWORD}\r\n")
}

// auth.go "when external authentication is configured": "should return status code 200 when
// signed in", "should overwrite Foo header with auth response"; the subrequest's fields are
// those of the auth location in ingress-nginx's nginx.tmpl.
#[test]
fn signed_in_requests_pass_with_the_auth_answers_fields() {
    let auth = auth_service();
    let url = format!("http://127.0.0.1:{}/basic-auth/user/password", auth.port);
    let s = sluice(
        "pass",
        &[ingress(
            "auth",
            "auth",
            "/",
            &[
                ("auth-url", url),
                ("auth-response-headers", "X-User, Foo".into()),
            ],
        )],
        "",
    );
    let extra = format!("{}Foo: bar\r\nX-Other: client\r\n", signed_in());
    let a = send(&s, "/p?q=1", "auth", &extra);
    assert_eq!(a.status, 200, "{}", a.body);
    // ingress-nginx: `add_header Set-Cookie $auth_cookie` on the answer.
    assert_eq!(a.header("set-cookie"), Some("session=abc; Path=/"));
    assert!(a.body.contains("\r\nX-User: alice\r\n"), "{}", a.body);
    // The client's Foo is replaced by the auth answer's (which has none).
    assert!(
        !a.body.to_ascii_lowercase().contains("foo: bar"),
        "{}",
        a.body
    );
    // Unlisted fields of the auth answer do not go upstream.
    assert!(a.body.contains("X-Other: client") && !a.body.contains("X-Other: 1"));
    let seen = auth.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let sub = &seen[0];
    assert!(
        sub.starts_with("GET /basic-auth/user/password HTTP/1.1\r\n"),
        "{sub}"
    );
    for field in [
        format!("Host: 127.0.0.1:{}\r\n", auth.port),
        format!("Authorization: {USER_PASSWORD}\r\n"),
        "X-Original-URL: http://auth/p?q=1\r\n".to_string(),
        "X-Original-Method: GET\r\n".to_string(),
        "X-Sent-From: nginx-ingress-controller\r\n".to_string(),
        "X-Real-IP: 127.0.0.1\r\n".to_string(),
        "X-Forwarded-For: 127.0.0.1\r\n".to_string(),
        "X-Auth-Request-Redirect: /p?q=1\r\n".to_string(),
        "Foo: bar\r\n".to_string(),
    ] {
        assert!(sub.contains(&field), "{field:?} missing in {sub}");
    }
    assert!(!sub.contains("Content-Length"), "no body: {sub}");
}

// auth.go: a request with a body: the body is not sent to the auth service, and reaches the
// upstream once allowed; `auth-method` and `auth-request-redirect` shape the subrequest.
#[test]
fn the_body_waits_and_the_method_is_the_annotations() {
    let auth = auth_service();
    let url = format!("http://127.0.0.1:{}/basic-auth/user/password", auth.port);
    let s = sluice(
        "body",
        &[ingress(
            "auth",
            "auth",
            "/",
            &[
                ("auth-url", url),
                ("auth-method", "POST".into()),
                ("auth-request-redirect", "https://login.example/back".into()),
            ],
        )],
        "",
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!(
            "PUT /up HTTP/1.1\r\nHost: auth\r\n{}Content-Length: 5\r\nConnection: close\r\n\r\nhello",
            signed_in()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("PUT /up HTTP/1.1"), "{out}");
    let sub = auth.seen.lock().unwrap()[0].clone();
    assert!(
        sub.starts_with("POST /basic-auth/user/password HTTP/1.1\r\n"),
        "{sub}"
    );
    assert!(sub.contains("X-Original-Method: PUT\r\n"), "{sub}");
    assert!(sub.contains("X-Original-URI: /up\r\n") && sub.contains("X-Scheme: http\r\n"));
    assert!(sub.contains("X-Auth-Request-Redirect: https://login.example/back\r\n"));
    assert!(
        !sub.contains("Content-Length") && !sub.contains("hello"),
        "{sub}"
    );
}

// auth.go: "should redirect to signin url when not signed in" (rd=, and a custom
// auth-signin-redirect-param); a 401 without auth-signin is returned with the service's
// challenge; 403 is returned; any other answer, or none, is a 500.
#[test]
fn denials_signin_redirects_and_errors() {
    let auth = auth_service();
    let base = format!("http://127.0.0.1:{}", auth.port);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = sluice(
        "deny",
        &[
            ingress(
                "signin",
                "auth",
                "/",
                &[
                    ("auth-url", format!("{base}/basic-auth/user/password")),
                    ("auth-signin", "http://$host/auth/start".into()),
                ],
            ),
            ingress(
                "orig",
                "orig",
                "/",
                &[
                    ("auth-url", format!("{base}/basic-auth/user/password")),
                    ("auth-signin", "http://$host/auth/start".into()),
                    ("auth-signin-redirect-param", "orig".into()),
                ],
            ),
            ingress(
                "plain",
                "plain",
                "/",
                &[("auth-url", format!("{base}/basic-auth/user/password"))],
            ),
            ingress(
                "forbid",
                "forbid",
                "/",
                &[("auth-url", format!("{base}/forbid"))],
            ),
            ingress(
                "weird",
                "weird",
                "/",
                &[("auth-url", format!("{base}/weird"))],
            ),
            ingress(
                "refused",
                "refused",
                "/",
                &[("auth-url", format!("http://127.0.0.1:{closed}/"))],
            ),
        ],
        "",
    );
    let a = send(&s, "/?a=b&c=d", "auth", "");
    assert_eq!(a.status, 302);
    assert_eq!(
        a.header("location"),
        Some("http://auth/auth/start?rd=http://auth%2F%3Fa%3Db%26c%3Dd")
    );
    assert_eq!(a.header("set-cookie"), Some("pending=1"));
    let a = send(&s, "/?a=b&c=d", "orig", "");
    assert_eq!(a.status, 302);
    assert_eq!(
        a.header("location"),
        Some("http://orig/auth/start?orig=http://orig%2F%3Fa%3Db%26c%3Dd")
    );
    assert_eq!(send(&s, "/", "auth", &signed_in()).status, 200);
    let a = send(&s, "/", "plain", "");
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Basic realm=\"Fake Realm\"")
    );
    assert_eq!(a.header("set-cookie"), None, "add_header skips a 401");
    assert_eq!(send(&s, "/", "forbid", &signed_in()).status, 403);
    assert_eq!(send(&s, "/", "weird", &signed_in()).status, 500);
    assert_eq!(send(&s, "/", "refused", &signed_in()).status, 500);
}

// auth.go "with invalid auth-url should deny whole location": 503; a CR/LF smuggled into
// the URL is refused the same way (never written into a subrequest).
#[test]
fn an_invalid_auth_url_denies_the_location() {
    let s = sluice(
        "invalid",
        &[
            ingress(
                "bad",
                "auth",
                "/denied-auth",
                &[("auth-url", "https://invalid..auth.url".into())],
            ),
            ingress(
                "crlf",
                "crlf",
                "/",
                &[("auth-url", "http://127.0.0.1:1/\r\nX-Evil: 1".into())],
            ),
            ingress(
                "dns",
                "dns",
                "/",
                &[("auth-url", "http://auth.example.com/check".into())],
            ),
        ],
        "",
    );
    assert_eq!(send(&s, "/denied-auth", "auth", "").status, 503);
    assert_eq!(send(&s, "/", "crlf", "").status, 503);
    assert_eq!(send(&s, "/", "dns", "").status, 503);
}

// The hostile input: an auth service that never answers → 500 once the route's
// proxy-read-timeout is over, while other requests on the same (only) worker keep flowing.
#[test]
fn a_hanging_auth_service_times_out_without_stalling_the_worker() {
    let auth = auth_service();
    let base = format!("http://127.0.0.1:{}", auth.port);
    let s = sluice(
        "hang",
        &[
            ingress(
                "hang",
                "hang",
                "/",
                &[
                    ("auth-url", format!("{base}/hang")),
                    ("proxy-read-timeout", "5".into()),
                ],
            ),
            ingress(
                "ok",
                "ok",
                "/",
                &[("auth-url", format!("{base}/basic-auth/user/password"))],
            ),
        ],
        "",
    );
    let addr = s.addr;
    let started = Instant::now();
    let hung = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: hang\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        (out, started.elapsed())
    });
    // Wait until the auth service holds the hanging subrequest.
    while auth.seen.lock().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..5 {
        assert_eq!(send(&s, "/", "ok", &signed_in()).status, 200);
    }
    // Those were answered while the hanging one still waited (its timeout is 5 s).
    assert!(
        !hung.is_finished(),
        "the hanging request was answered too early"
    );
    let (out, took) = hung.join().unwrap();
    assert!(out.starts_with("HTTP/1.1 500"), "{out}");
    assert!(took >= Duration::from_millis(4900), "{took:?}");
}

// auth.go "when external authentication with caching is configured": a cached answer lets
// the request through once the auth service is gone; another Ingress (another location) and
// another host have their own entries.
#[test]
fn cached_answers_outlive_the_auth_service_per_location() {
    let auth = auth_service();
    let url = format!("http://127.0.0.1:{}/basic-auth/user/password", auth.port);
    let annotations = [
        ("auth-url", url),
        ("auth-cache-key", "fixed".to_string()),
        ("auth-cache-duration", "200 201 401 30m".to_string()),
    ];
    let s = sluice(
        "cache",
        &[
            ingress("foo-this", "this", "/foo", &annotations),
            ingress("bar-this", "this", "/bar", &annotations),
            ingress("foo-that", "that", "/foo", &annotations),
        ],
        "",
    );
    assert_eq!(send(&s, "/foo", "this", &signed_in()).status, 200);
    assert_eq!(auth.seen.lock().unwrap().len(), 1);
    auth.down.store(true, Ordering::SeqCst);
    let a = send(&s, "/foo", "this", &signed_in());
    assert_eq!(a.status, 200, "cached");
    assert_eq!(auth.seen.lock().unwrap().len(), 1, "no subrequest");
    assert_eq!(send(&s, "/bar", "this", &signed_in()).status, 500);
    assert_eq!(send(&s, "/foo", "that", &signed_in()).status, 500);
}

// The auth service named as a Service of the cluster: resolved to its cluster IP when the
// snapshot is built (here 127.0.0.1, so the subrequest reaches the in-process service).
#[test]
fn a_service_name_is_resolved_to_its_cluster_ip() {
    let auth = auth_service();
    let service = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: oauth, namespace: auth-ns}}\n\
         spec: {{clusterIP: 127.0.0.1, ports: [{{port: {}}}]}}\n",
        auth.port
    );
    let url = format!(
        "http://oauth.auth-ns.svc.cluster.local:{}/basic-auth/user/password",
        auth.port
    );
    let s = sluice(
        "svc",
        &[ingress("auth", "auth", "/", &[("auth-url", url)])],
        &service,
    );
    assert_eq!(send(&s, "/", "auth", &signed_in()).status, 200);
    assert_eq!(send(&s, "/", "auth", "").status, 401);
    let sub = auth.seen.lock().unwrap()[0].clone();
    assert!(
        sub.contains(&format!(
            "Host: oauth.auth-ns.svc.cluster.local:{}\r\n",
            auth.port
        )),
        "{sub}"
    );
}

// satisfy.go sets `satisfy: any` with basic auth and an address list; nginx's `satisfy any`
// covers `auth_request` too: a client the address list allows goes through without the auth
// service being asked, any other client is decided by the auth service.
#[test]
fn satisfy_any_lets_an_allowed_address_skip_the_auth_service() {
    let auth = auth_service();
    let url = format!("http://127.0.0.1:{}/any/check", auth.port);
    let s = sluice(
        "satisfy",
        &[
            ingress(
                "listed",
                "listed",
                "/",
                &[
                    ("auth-url", url.clone()),
                    ("whitelist-source-range", "127.0.0.1/32".into()),
                    ("satisfy", "any".into()),
                ],
            ),
            ingress(
                "unlisted",
                "unlisted",
                "/",
                &[
                    ("auth-url", url.clone()),
                    ("whitelist-source-range", "10.0.0.0/8".into()),
                    ("satisfy", "any".into()),
                ],
            ),
            ingress(
                "all",
                "all",
                "/",
                &[
                    ("auth-url", url),
                    ("whitelist-source-range", "127.0.0.1/32".into()),
                ],
            ),
        ],
        "",
    );
    let asked = || {
        auth.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.contains("/any/check"))
            .count()
    };
    // Listed: through without credentials, the auth service never asked.
    assert_eq!(send(&s, "/", "listed", "").status, 200);
    assert_eq!(asked(), 0);
    // Not listed: the auth service decides, both ways.
    assert_eq!(send(&s, "/", "unlisted", "").status, 401);
    assert_eq!(send(&s, "/", "unlisted", &signed_in()).status, 200);
    assert_eq!(asked(), 2);
    // `satisfy: all` (the default): listed, and still asked.
    assert_eq!(send(&s, "/", "all", "").status, 401);
    assert_eq!(asked(), 3);
}
