//! Canary Ingresses through real sockets: `sluice run` over manifests, a main pod and a canary
//! pod in process (127.0.0.1 and 127.0.0.2, one port), requests from a raw client. The cases
//! are those ingress-nginx's test/e2e/annotations/canary.go asserts (written as our own):
//! header always / never / other, header value, header pattern, cookie, weight 0 and 100, a
//! canary without a main Ingress, and changes to the main and the canary Ingress while serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::binary::{self, Sluice};

mod support;

/// Two pods: `main` on 127.0.0.1 and `canary` on 127.0.0.2, both answering their name.
fn pods() -> u16 {
    let (port, listeners) = support::pods::bind(2);
    for (listener, name) in listeners.into_iter().zip(["main", "canary"]) {
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(name, stream));
            }
        });
    }
    port
}

fn serve(name: &str, mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// Services `main-svc` and `canary-svc` (port 80) with their pods on `port`.
fn services(port: u16) -> String {
    let mut out = String::new();
    for (name, ip) in [("main-svc", "127.0.0.1"), ("canary-svc", "127.0.0.2")] {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"]}}]\n"
        ));
    }
    out
}

fn ingress(name: &str, host: &str, service: &str, annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: {v:?}"))
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: default, annotations: {{{}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]}}\n",
        annotations.join(", ")
    )
}

/// A main Ingress for `host` and a canary one with `canary` annotations.
fn pair(host: &str, canary: &[(&str, &str)]) -> String {
    let mut all = vec![("canary", "true")];
    all.extend_from_slice(canary);
    format!(
        "{}{}",
        ingress(host, host, "main-svc", &[]),
        ingress(&format!("{host}-canary"), host, "canary-svc", &all)
    )
}

/// One request on a fresh connection: the status and the body.
fn get(s: &Sluice, host: &str, fields: &str) -> (u16, String) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n{fields}Connection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

/// The pod that answered (asserting a 200).
fn pod(s: &Sluice, host: &str, fields: &str) -> String {
    let (status, body) = get(s, host, fields);
    assert_eq!(status, 200, "{host} {fields:?}: {body}");
    body
}

#[test]
fn header_cookie_and_weight_rules_pick_the_canary_pod() {
    let port = pods();
    let yaml = [
        pair("hdr.test", &[("canary-by-header", "CanaryByHeader")]),
        pair(
            "value.test",
            &[
                ("canary-by-header", "CanaryByHeader"),
                ("canary-by-header-value", "DoCanary"),
                ("canary-by-cookie", "CanaryByCookie"),
            ],
        ),
        pair(
            "pattern.test",
            &[
                ("canary-by-header", "CanaryByHeader"),
                ("canary-by-header-pattern", "^(Do|Try)Canary$"),
            ],
        ),
        pair("cookie.test", &[("canary-by-cookie", "Canary-By-Cookie")]),
        pair("w0.test", &[("canary-weight", "0")]),
        pair("w100.test", &[("canary-weight", "100")]),
        pair("w50.test", &[("canary-weight", "50")]),
        ingress(
            "orphan-canary",
            "orphan.test",
            "canary-svc",
            &[("canary", "true"), ("canary-by-header", "CanaryByHeader")],
        ),
        services(port),
    ]
    .concat();
    let s = binary::start("canary-rules", &[("app.yaml", &yaml)], "", 2);

    // Header: always / never / anything else.
    assert_eq!(pod(&s, "hdr.test", ""), "main");
    assert_eq!(pod(&s, "hdr.test", "CanaryByHeader: always\r\n"), "canary");
    assert_eq!(pod(&s, "hdr.test", "CanaryByHeader: never\r\n"), "main");
    assert_eq!(
        pod(&s, "hdr.test", "CanaryByHeader: badheadervalue\r\n"),
        "main"
    );

    // Header value: only that value; a non-matching value leaves it to the cookie.
    assert_eq!(
        pod(&s, "value.test", "CanaryByHeader: DoCanary\r\n"),
        "canary"
    );
    assert_eq!(pod(&s, "value.test", "CanaryByHeader: always\r\n"), "main");
    assert_eq!(pod(&s, "value.test", "CanaryByHeader: never\r\n"), "main");
    assert_eq!(
        pod(
            &s,
            "value.test",
            "CanaryByHeader: otherheadervalue\r\nCookie: CanaryByCookie=always\r\n"
        ),
        "canary"
    );

    // Header pattern.
    assert_eq!(
        pod(&s, "pattern.test", "CanaryByHeader: TryCanary\r\n"),
        "canary"
    );
    assert_eq!(
        pod(&s, "pattern.test", "CanaryByHeader: DoCanary2\r\n"),
        "main"
    );

    // Cookie: always / never / anything else.
    assert_eq!(
        pod(&s, "cookie.test", "Cookie: Canary-By-Cookie=always\r\n"),
        "canary"
    );
    assert_eq!(
        pod(&s, "cookie.test", "Cookie: Canary-By-Cookie=never\r\n"),
        "main"
    );
    assert_eq!(
        pod(
            &s,
            "cookie.test",
            "Cookie: a=b; Canary-By-Cookie=badcookievalue\r\n"
        ),
        "main"
    );

    // Weights 0 and 100 are absolute; 50 splits (two workers, each with its own draws).
    for _ in 0..10 {
        assert_eq!(pod(&s, "w0.test", ""), "main");
        assert_eq!(pod(&s, "w100.test", ""), "canary");
    }
    let canary = (0..200)
        .filter(|_| pod(&s, "w50.test", "") == "canary")
        .count();
    assert!(
        (50..=150).contains(&canary),
        "{canary} of 200 to the canary"
    );

    // A canary Ingress without a main one serves nothing.
    assert_eq!(get(&s, "orphan.test", "CanaryByHeader: always\r\n").0, 404);
}

/// Waits until `host` with `fields` is answered by `want`.
#[allow(clippy::disallowed_methods)] // a test's own stopwatch
fn eventually(s: &Sluice, host: &str, fields: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(s, host, fields);
        if status == 200 && body == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} {fields:?}: still {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_canary_follows_changes_to_either_ingress_while_serving() {
    let port = pods();
    let canary = |header: &str| {
        ingress(
            "foo-canary",
            "foo.test",
            "canary-svc",
            &[("canary", "true"), ("canary-by-header", header)],
        )
    };
    // The canary first, without a main Ingress: 404.
    let s = binary::start(
        "canary-changes",
        &[
            ("svc.yaml", &services(port)),
            ("canary.yaml", &canary("CanaryByHeader")),
        ],
        "",
        2,
    );
    assert_eq!(get(&s, "foo.test", "CanaryByHeader: always\r\n").0, 404);
    let dir = std::env::temp_dir()
        .join(format!("sluice-e2e-{}-canary-changes", std::process::id()))
        .join("manifests");

    // The main Ingress arrives after the canary.
    std::fs::write(
        dir.join("main.yaml"),
        ingress("foo", "foo.test", "main-svc", &[]),
    )
    .unwrap();
    eventually(&s, "foo.test", "CanaryByHeader: never\r\n", "main");
    assert_eq!(pod(&s, "foo.test", "CanaryByHeader: always\r\n"), "canary");

    // The main Ingress is modified (an unrelated annotation): the canary stays.
    std::fs::write(
        dir.join("main.yaml"),
        ingress(
            "foo",
            "foo.test",
            "main-svc",
            &[("proxy-read-timeout", "30")],
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pod(&s, "foo.test", "CanaryByHeader: always\r\n"), "canary");

    // The canary is modified: the new header decides, the old one no longer does.
    std::fs::write(dir.join("canary.yaml"), canary("CanaryByHeader2")).unwrap();
    eventually(&s, "foo.test", "CanaryByHeader2: always\r\n", "canary");
    assert_eq!(pod(&s, "foo.test", "CanaryByHeader: always\r\n"), "main");
    assert_eq!(pod(&s, "foo.test", "CanaryByHeader2: never\r\n"), "main");

    // The canary is deleted: everything goes to the main pod.
    std::fs::remove_file(dir.join("canary.yaml")).unwrap();
    eventually(&s, "foo.test", "CanaryByHeader2: always\r\n", "main");
}

/// One request on a fresh connection: the body and the `Set-Cookie` value, if any.
fn get_cookie(s: &Sluice, host: &str, fields: &str) -> (String, Option<String>) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n{fields}Connection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .map(|v| v.split(';').next().unwrap().to_string());
    (body.to_string(), cookie)
}

#[test]
fn a_session_pinned_by_affinity_keeps_its_side_of_the_canary() {
    let port = pods();
    let sticky = [("affinity", "cookie"), ("session-cookie-name", "route")];
    // The canary has no affinity annotations: it takes the main route's (ingress-nginx's
    // default canary behaviour).
    let canary = [("canary", "true"), ("canary-weight", "50")];
    let yaml = format!(
        "{}{}{}",
        ingress("foo", "foo.test", "main-svc", &sticky),
        ingress("foo-canary", "foo.test", "canary-svc", &canary),
        services(port)
    );
    let s = binary::start("canary-sticky", &[("app.yaml", &yaml)], "", 2);
    let mut sides = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let (first, cookie) = get_cookie(&s, "foo.test", "");
        let cookie = cookie.expect("an affinity cookie");
        // The weight would send half of these elsewhere; the cookie keeps them.
        for _ in 0..8 {
            let (pod, _) = get_cookie(&s, "foo.test", &format!("Cookie: {cookie}\r\n"));
            assert_eq!(pod, first, "{cookie}");
        }
        sides.insert(first);
    }
    assert_eq!(sides.len(), 2, "{sides:?}");
}
