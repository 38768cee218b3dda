//! Custom error pages and default backends through real sockets: a `sluice run` process over
//! a manifests directory, an in-process application upstream that answers the status its
//! path names, and in-process error backends that answer with the `X-Code` they are given
//! and echo the request head they received. Expectations follow ingress-nginx's e2e tests
//! `test/e2e/annotations/customhttperrors.go` and `default_backend.go` (kubernetes/
//! ingress-nginx) and its "Custom errors" user guide (the fields the error backend gets).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::binary::{self, Sluice};

mod support;

/// Serves each connection of `listener` with `answer(head, body)` per request (keep-alive).
fn serve(listener: TcpListener, answer: fn(&str, &[u8]) -> String) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || connection(stream, answer));
        }
    });
}

fn connection(mut stream: TcpStream, answer: fn(&str, &[u8]) -> String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                break;
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            if stream.write_all(answer(&head, &body).as_bytes()).is_err() {
                return;
            }
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// The application: `/status/NNN` answers NNN with body `app NNN`; anything else 200 with
/// body `app ok`.
fn app() -> u16 {
    let (listener, port) = listen();
    serve(listener, |head, _| {
        let target = head.split(' ').nth(1).unwrap_or("/");
        let status: u16 = target
            .strip_prefix("/status/")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let body = if status == 200 {
            "app ok".to_string()
        } else {
            format!("app {status}")
        };
        format!(
            "HTTP/1.1 {status} App\r\nX-From: app\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    });
    port
}

/// An error backend (as ingress-nginx's custom-error-pages): answers with the status its
/// `X-Code` names (200 without one), `X-Backend: <which>`, and the request head it got
/// (plus `body=<n>` bytes of request body) as the body.
fn error_backend(which: &'static str) -> u16 {
    let (listener, port) = listen();
    let answer: fn(&str, &[u8]) -> String = match which {
        "errors" => |head, body| errors_answer("errors", head, body),
        _ => |head, body| errors_answer("fallback", head, body),
    };
    serve(listener, answer);
    port
}

fn errors_answer(which: &str, head: &str, body: &[u8]) -> String {
    let code: u16 = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Code: "))
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(200);
    let text = format!("{head}body={}", body.len());
    format!(
        "HTTP/1.1 {code} Error Page\r\nX-Backend: {which}\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

/// A Service `name` (port 80, or `port_name`) with one endpoint on 127.0.0.1:`port`
/// (`None`: a Service without any endpoint).
fn service(name: &str, port: Option<u16>) -> String {
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n---\n"
    );
    match port {
        None => svc,
        Some(port) => format!(
            "{svc}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\n"
        ),
    }
}

/// An Ingress `name` for `host`, `/` to `backend:80`, with ingress-nginx `annotations`.
fn ingress(name: &str, host: &str, backend: &str, annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("    nginx.ingress.kubernetes.io/{k}: {v:?}\n"))
        .collect();
    let annotations = if annotations.is_empty() {
        " {}\n".to_string()
    } else {
        format!("\n{}", annotations.concat())
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:{annotations}\
         spec:\n  ingressClassName: sluice\n  rules:\n    - host: {host}\n      http:\n        paths:\n\
         \x20         - path: /\n            pathType: Prefix\n            backend: {{service: {{name: {backend}, port: {{number: 80}}}}}}\n---\n"
    )
}

/// A parsed answer.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn read_answer(c: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "connection closed in a head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    c.read_exact(&mut body).unwrap();
    Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

fn connect(s: &Sluice) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// `method target` for `host` with `extra` fields (and `body`), on a fresh connection.
fn request(s: &Sluice, method: &str, target: &str, host: &str, extra: &str, body: &str) -> Answer {
    let mut c = connect(s);
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    c.write_all(
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}{length}Connection: close\r\n\r\n{body}")
            .as_bytes(),
    )
    .unwrap();
    read_answer(&mut c)
}

fn get(s: &Sluice, target: &str, host: &str) -> Answer {
    request(s, "GET", target, host, "", "")
}

// customhttperrors.go ("configures Nginx correctly when enabled": the listed codes are
// intercepted, the annotation's default-backend serves them) and the custom errors guide:
// the error backend gets X-Code, X-Format (the client's Accept), X-Original-URI,
// X-Namespace, X-Ingress-Name, X-Service-Name, X-Service-Port and X-Request-ID, and its
// answer goes to the client unchanged.
#[test]
fn listed_statuses_are_answered_by_the_default_backend_annotation() {
    let yaml = [
        ingress(
            "web",
            "customerrors.foo.com",
            "app",
            &[
                ("custom-http-errors", "404, 500"),
                ("default-backend", "errors"),
            ],
        ),
        service("app", Some(app())),
        service("errors", Some(error_backend("errors"))),
    ]
    .concat();
    let s = binary::start("errors-annotation", &[("app.yaml", &yaml)], "", 1);
    let a = request(
        &s,
        "GET",
        "/status/404?x=1",
        "customerrors.foo.com",
        "Accept: application/json\r\nX-Request-ID: req-404\r\nX-Code: 999\r\n",
        "",
    );
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.header("x-backend"), Some("errors"));
    assert!(a.header("x-from").is_none(), "{}", a.head);
    assert!(a.body.starts_with("GET / HTTP/1.1\r\n"), "{}", a.body);
    for field in [
        "Host: customerrors.foo.com",
        "X-Code: 404",
        "X-Format: application/json",
        "X-Original-URI: /status/404?x=1",
        "X-Namespace: default",
        "X-Ingress-Name: web",
        "X-Service-Name: app",
        "X-Service-Port: 80",
        "X-Request-ID: req-404",
    ] {
        assert!(
            a.body.contains(&format!("{field}\r\n")),
            "{field}: {}",
            a.body
        );
    }
    // The client's own X-Code is not passed on.
    assert!(!a.body.contains("999"), "{}", a.body);
    assert_eq!(get(&s, "/status/500", "customerrors.foo.com").status, 500);
    assert!(
        get(&s, "/status/500", "customerrors.foo.com")
            .body
            .contains("X-Code: 500\r\n")
    );
    // Not listed: the application's answer.
    let a = get(&s, "/status/503", "customerrors.foo.com");
    assert_eq!((a.status, a.body.as_str()), (503, "app 503"));
    let a = get(&s, "/fine", "customerrors.foo.com");
    assert_eq!((a.status, a.body.as_str()), (200, "app ok"));
    // HEAD: the error backend's status, no body.
    let mut c = connect(&s);
    c.write_all(
        b"HEAD /status/404 HTTP/1.1\r\nHost: customerrors.foo.com\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
    assert!(out.contains("X-Backend: errors\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "{out}");
}

// A request with a body: the application reads it and answers 500; the error request is
// the same method with target `/` and no body. Several on one keep-alive connection.
#[test]
fn error_requests_carry_no_body_and_keep_the_connection() {
    let yaml = [
        ingress(
            "web",
            "post.foo.com",
            "app",
            &[("custom-http-errors", "500"), ("default-backend", "errors")],
        ),
        service("app", Some(app())),
        service("errors", Some(error_backend("errors"))),
    ]
    .concat();
    let s = binary::start("errors-post", &[("app.yaml", &yaml)], "", 1);
    let mut c = connect(&s);
    for _ in 0..3 {
        c.write_all(
            b"POST /status/500 HTTP/1.1\r\nHost: post.foo.com\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        let a = read_answer(&mut c);
        assert_eq!(a.status, 500, "{}", a.body);
        assert!(a.body.starts_with("POST / HTTP/1.1\r\n"), "{}", a.body);
        assert!(a.body.ends_with("body=0"), "{}", a.body);
        assert!(!a.body.contains("Content-Length: 5"), "{}", a.body);
        assert!(a.header("connection").is_none_or(|v| v != "close"));
    }
    c.write_all(b"GET /fine HTTP/1.1\r\nHost: post.foo.com\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut c).body, "app ok");
}

// default_backend.go ("should use a custom default backend as upstream"): the Ingress's
// Service has no endpoints; the annotation's backend answers, told X-Code 503, the Ingress,
// the Service and the original URI.
#[test]
fn a_route_without_endpoints_goes_to_its_default_backend() {
    let yaml = [
        ingress(
            "default-backend",
            "default-backend",
            "invalid",
            &[("default-backend", "errors")],
        ),
        ingress("plain", "plain", "invalid", &[]),
        service("invalid", None),
        service("errors", Some(error_backend("errors"))),
    ]
    .concat();
    let s = binary::start("errors-no-endpoints", &[("app.yaml", &yaml)], "", 1);
    let a = get(&s, "/alma/armud", "default-backend");
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.header("x-backend"), Some("errors"));
    for field in [
        "X-Code: 503",
        "X-Ingress-Name: default-backend",
        "X-Service-Name: invalid",
        "X-Original-URI: /alma/armud",
    ] {
        assert!(
            a.body.contains(&format!("{field}\r\n")),
            "{field}: {}",
            a.body
        );
    }
    // A body the error request does not carry: answered, then the connection closes.
    let a = request(&s, "POST", "/x", "default-backend", "", "abc");
    assert_eq!(a.header("x-backend"), Some("errors"));
    assert_eq!(a.header("connection"), Some("close"));
    // Without the annotation: Sluice's own 503.
    let a = get(&s, "/alma/armud", "plain");
    assert_eq!(a.status, 503);
    assert!(a.header("x-backend").is_none());
}

// The controller's default backend (ingress-nginx --default-backend-service): requests no
// rule matches go to it as they are, and custom errors of Ingresses without their own
// default-backend annotation go to it. disable-proxy-intercept-errors turns interception off.
#[test]
fn the_controller_default_backend_serves_unmatched_requests_and_errors() {
    let yaml = [
        ingress(
            "web",
            "web.foo.com",
            "app",
            &[("custom-http-errors", "503,502")],
        ),
        ingress(
            "off",
            "off.foo.com",
            "app",
            &[
                ("custom-http-errors", "503"),
                ("disable-proxy-intercept-errors", "true"),
            ],
        ),
        ingress(
            "down",
            "down.foo.com",
            "down",
            &[("custom-http-errors", "502")],
        ),
        service("app", Some(app())),
        service("fallback", Some(error_backend("fallback"))),
        // A Service whose pod refuses connections: Sluice's own 502 is intercepted too.
        service("down", Some(closed_port())),
    ]
    .concat();
    let s = binary::start_with(
        "errors-controller",
        &[("app.yaml", &yaml)],
        "",
        1,
        &["--default-backend-service", "default/fallback"],
    );
    let a = get(&s, "/status/503", "web.foo.com");
    assert_eq!(a.status, 503);
    assert_eq!(a.header("x-backend"), Some("fallback"));
    assert!(a.body.contains("X-Code: 503\r\n"), "{}", a.body);
    assert!(a.body.contains("X-Ingress-Name: web\r\n"), "{}", a.body);
    // Unmatched host: the request as it is, no X-Code.
    let a = get(&s, "/some/where?q=1", "nobody.foo.com");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-backend"), Some("fallback"));
    assert!(
        a.body.starts_with("GET /some/where?q=1 HTTP/1.1\r\n"),
        "{}",
        a.body
    );
    assert!(!a.body.contains("X-Code"), "{}", a.body);
    // Interception off.
    let a = get(&s, "/status/503", "off.foo.com");
    assert_eq!((a.status, a.body.as_str()), (503, "app 503"));
    // Could not connect: 502 from the error backend.
    let a = get(&s, "/", "down.foo.com");
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.header("x-backend"), Some("fallback"));
    assert!(a.body.contains("X-Code: 502\r\n"), "{}", a.body);
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    support::closed_port([127, 0, 0, 1].into()).port()
}

// Without any default backend the upstream's answer passes unchanged (and the Ingress is
// reported); a bad code list is reported and ignored.
#[test]
fn without_an_error_backend_answers_pass() {
    let yaml = [
        ingress(
            "web",
            "web.foo.com",
            "app",
            &[("custom-http-errors", "404")],
        ),
        ingress(
            "bad",
            "bad.foo.com",
            "app",
            &[("custom-http-errors", "404,abc")],
        ),
        service("app", Some(app())),
    ]
    .concat();
    let s = binary::start("errors-none", &[("app.yaml", &yaml)], "", 1);
    let a = get(&s, "/status/404", "web.foo.com");
    assert_eq!((a.status, a.body.as_str()), (404, "app 404"));
    let a = get(&s, "/status/404", "bad.foo.com");
    assert_eq!((a.status, a.body.as_str()), (404, "app 404"));
}
