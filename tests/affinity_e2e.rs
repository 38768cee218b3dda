//! Cookie session affinity through real sockets: in-process pods behind `sluice run`. The
//! cookie is set on the first response with ingress-nginx's attributes, names the same pod
//! on another connection, another worker and a second Sluice process, and re-pins (with a new
//! cookie) when its pod leaves the EndpointSlice.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::binary::{self, Sluice};

mod support;

/// Pods on 127.0.0.1..=n, one port, each answering `pod-<i>`.
struct Pods {
    port: u16,
}

impl Pods {
    fn start(n: usize) -> Pods {
        let (port, listeners) = support::pods::bind(n);
        for (i, listener) in listeners.into_iter().enumerate() {
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    std::thread::spawn(move || serve(i + 1, stream));
                }
            });
        }
        Pods { port }
    }

    /// The Service and its EndpointSlice with the pods `pods` (1-based), after `ingresses`.
    fn manifests(&self, ingresses: &str, pods: &[usize]) -> String {
        support::pods::manifests(ingresses, self.port, pods.iter().copied())
    }
}

fn serve(pod: usize, mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        let body = format!("pod-{pod}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// An Ingress routing `host` `path` to `app:80`.
fn ingress(name: &str, host: &str, path: &str, annotations: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: {path}, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n---\n"
    )
}

/// The document of Ingress `name` among `docs` (as [`ingress`] writes them).
fn ingress_doc(docs: &str, name: &str) -> String {
    docs.split("---\n")
        .find(|d| d.contains(&format!("name: {name},")))
        .map(|d| format!("{d}---\n"))
        .unwrap_or_default()
}

/// One answer: its body and its `Set-Cookie` value, if any.
struct Answer {
    body: String,
    set_cookie: Option<String>,
}

fn get(s: &Sluice, host: &str, path: &str, extra: &str) -> Answer {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let cookies: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("Set-Cookie: "))
        .collect();
    assert!(cookies.len() <= 1, "{head}");
    Answer {
        body: body.to_string(),
        set_cookie: cookies.first().map(|c| c.to_string()),
    }
}

/// `NAME=value` of a `Set-Cookie` value.
fn pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

#[test]
fn the_cookie_pins_across_connections_workers_and_replicas() {
    let pods = Pods::start(3);
    let yaml = pods.manifests(
        &ingress(
            "sticky",
            "sticky.test",
            "/",
            "nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/session-cookie-name: SERVERID",
        ),
        &[1, 2, 3],
    );
    let a = binary::start("aff-pin-a", &[("app.yaml", &yaml)], "", 2);
    let b = binary::start("aff-pin-b", &[("app.yaml", &yaml)], "", 2);
    let mut pinned = std::collections::BTreeSet::new();
    for client in 0..6 {
        let first = get(&a, "sticky.test", "/", "");
        let set = first.set_cookie.expect("a cookie on the first response");
        assert!(set.starts_with("SERVERID="), "{set}");
        assert!(
            set.contains("; Path=/") && set.contains("; HttpOnly"),
            "{set}"
        );
        let cookie = format!("Cookie: other=1; {}\r\n", pair(&set));
        for s in [&a, &b, &a, &b, &a, &b] {
            let next = get(s, "sticky.test", "/x", &cookie);
            assert_eq!(next.body, first.body, "client {client}");
            // The cookie already names the pod: no new one.
            assert_eq!(next.set_cookie, None);
        }
        pinned.insert(first.body);
    }
    // New sessions are balanced over the pods.
    assert!(pinned.len() >= 2, "{pinned:?}");
}

/// A backend large enough for the pickers' bucket table (20 pods; the table starts at 16):
/// `upstream-hash-by` sends a key to the same pod on every connection, worker and replica,
/// and the `balanced` cookie it is given names that pod on all of them too.
#[test]
fn hash_and_balanced_cookie_agree_across_replicas_on_a_large_backend() {
    let pods = Pods::start(20);
    let all: Vec<usize> = (1..=20).collect();
    let yaml = pods.manifests(
        &ingress(
            "hashed",
            "hashed.test",
            "/",
            "nginx.ingress.kubernetes.io/upstream-hash-by: $http_x_user, \
             nginx.ingress.kubernetes.io/affinity: cookie, \
             nginx.ingress.kubernetes.io/affinity-mode: balanced",
        ),
        &all,
    );
    let a = binary::start("aff-large-a", &[("app.yaml", &yaml)], "", 2);
    let b = binary::start("aff-large-b", &[("app.yaml", &yaml)], "", 2);
    let mut pods_used = std::collections::BTreeSet::new();
    for user in 0..16 {
        let user = format!("X-User: user-{user}\r\n");
        let first = get(&a, "hashed.test", "/", &user);
        let cookie = format!("Cookie: {}\r\n", pair(&first.set_cookie.unwrap()));
        for s in [&b, &a, &b, &a, &b, &a] {
            // The key alone: the same pod (a new cookie each time, naming it).
            let by_key = get(s, "hashed.test", "/", &user);
            assert_eq!(by_key.body, first.body, "{user}");
            // The cookie alone: the same pod, no new cookie.
            let by_cookie = get(s, "hashed.test", "/", &cookie);
            assert_eq!(by_cookie.body, first.body, "{user}");
            assert_eq!(by_cookie.set_cookie, None);
        }
        pods_used.insert(first.body);
    }
    // Sixteen keys over twenty pods: spread, not all on a few.
    assert!(pods_used.len() >= 6, "{pods_used:?}");
}

/// `date -u -d @secs +FORMAT`.
fn date(secs: u64, format: &str) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), &format!("+{format}")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn cookie_attributes_are_ingress_nginx_s() {
    let pods = Pods::start(2);
    let sticky = "nginx.ingress.kubernetes.io/affinity: cookie";
    let ingresses = [
        ingress(
            "path",
            "a.test",
            "/something",
            &format!("{sticky}, nginx.ingress.kubernetes.io/session-cookie-name: SERVERID"),
        ),
        ingress(
            "expires",
            "b.test",
            "/",
            &format!(
                "{sticky}, nginx.ingress.kubernetes.io/session-cookie-name: ExpiresCookie, \
                 nginx.ingress.kubernetes.io/session-cookie-expires: \"172800\", \
                 nginx.ingress.kubernetes.io/session-cookie-max-age: \"259200\""
            ),
        ),
        ingress(
            "secure",
            "c.test",
            "/bar",
            &format!(
                "{sticky}, nginx.ingress.kubernetes.io/session-cookie-secure: \"true\", \
                 sluice.dev/session-cookie-path: /foo/bar, \
                 nginx.ingress.kubernetes.io/session-cookie-domain: c.test, \
                 nginx.ingress.kubernetes.io/session-cookie-samesite: None, \
                 nginx.ingress.kubernetes.io/session-cookie-conditional-samesite-none: \"true\""
            ),
        ),
        ingress("plain", "d.test", "/", ""),
    ]
    .concat();
    // Affinity belongs to the backend (the oldest Ingress routing to a Service port decides
    // it): each Ingress gets a Service of its own, over the same pods.
    let mut yaml = String::new();
    for name in ["path", "expires", "secure", "plain"] {
        let own = format!("name: app-{name},");
        let doc = ingress_doc(&ingresses, name).replace("name: app,", &own);
        let service = pods
            .manifests("", &[1, 2])
            .replace("app", &format!("app-{name}"));
        yaml.push_str(&format!("{doc}{service}---\n"));
    }
    let s = binary::start("aff-attrs", &[("app.yaml", &yaml)], "", 1);
    let set = get(&s, "a.test", "/something/deeper", "")
        .set_cookie
        .unwrap();
    assert!(set.starts_with("SERVERID="), "{set}");
    assert!(set.contains("; Path=/something;"), "{set}");
    assert!(!set.contains("; Secure"), "{set}");

    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let set = get(&s, "b.test", "/", "").set_cookie.unwrap();
    assert!(set.starts_with("ExpiresCookie="), "{set}");
    assert!(set.contains("; Max-Age=259200"), "{set}");
    let expected = |at: u64| format!("; Expires={}", date(at + 172_800, "%a, %d-%b-%y %H:%M"));
    assert!(
        set.contains(&expected(now)) || set.contains(&expected(now + 60)),
        "{set} vs {}",
        expected(now)
    );
    assert!(set.contains(" GMT;"), "{set}");

    let set = get(&s, "c.test", "/bar", "").set_cookie.unwrap();
    assert!(set.starts_with("INGRESSCOOKIE="), "{set}");
    assert!(
        set.ends_with("; Domain=c.test; Path=/foo/bar; Secure; HttpOnly; SameSite=None"),
        "{set}"
    );
    // A client that mishandles SameSite=None does not get it.
    let old = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/60.0.3112.113 Safari/537.36\r\n";
    let set = get(&s, "c.test", "/bar", old).set_cookie.unwrap();
    assert!(set.ends_with("; Secure; HttpOnly"), "{set}");

    // No affinity, no cookie.
    assert_eq!(get(&s, "d.test", "/", "").set_cookie, None);
}

#[test]
fn removing_the_pinned_pod_repins_with_a_new_cookie() {
    let pods = Pods::start(3);
    let ing = ingress(
        "sticky",
        "sticky.test",
        "/",
        "nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/affinity-mode: persistent",
    );
    let s = binary::start(
        "aff-repin",
        &[("app.yaml", &pods.manifests(&ing, &[1, 2, 3]))],
        "",
        2,
    );
    let first = get(&s, "sticky.test", "/", "");
    let cookie = format!("Cookie: {}\r\n", pair(first.set_cookie.as_ref().unwrap()));
    let gone: usize = first.body.strip_prefix("pod-").unwrap().parse().unwrap();
    let left: Vec<usize> = (1..=3).filter(|p| *p != gone).collect();
    // The pinned pod leaves the EndpointSlice (the manifests directory is watched).
    let file = std::env::temp_dir()
        .join(format!("sluice-e2e-{}-aff-repin", std::process::id()))
        .join("manifests/app.yaml");
    std::fs::write(&file, pods.manifests(&ing, &left)).unwrap();
    let mut moved = None;
    for _ in 0..100 {
        let next = get(&s, "sticky.test", "/", &cookie);
        if next.body != first.body {
            moved = Some(next);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = moved.expect("the request left the removed pod");
    let set = moved.set_cookie.expect("a new cookie for the new pod");
    assert_ne!(pair(&set), pair(first.set_cookie.as_ref().unwrap()));
    let cookie = format!("Cookie: {}\r\n", pair(&set));
    for _ in 0..6 {
        let next = get(&s, "sticky.test", "/", &cookie);
        assert_eq!(next.body, moved.body);
        assert_eq!(next.set_cookie, None);
    }
}

/// ingress-nginx's `affinity-mode`: on scale-up, `balanced` hands the new pods a share of
/// the existing sessions (with the same cookie), `persistent` keeps every session where it is.
#[test]
fn scaling_up_rebalances_balanced_sessions_and_keeps_persistent_ones() {
    let pods = Pods::start(4);
    let ings = [
        ingress(
            "balanced",
            "balanced.test",
            "/",
            "nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/affinity-mode: balanced",
        ),
        ingress(
            "persistent",
            "persistent.test",
            "/",
            "nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/affinity-mode: persistent",
        ),
    ]
    .concat();
    // Affinity belongs to the backend: each mode gets a Service of its own, over the same pods.
    let yaml = |pod_set: &[usize]| {
        let mut yaml = String::new();
        for name in ["balanced", "persistent"] {
            let doc = ingress_doc(&ings, name).replace("name: app,", &format!("name: app-{name},"));
            let service = pods
                .manifests("", pod_set)
                .replace("app", &format!("app-{name}"));
            yaml.push_str(&format!("{doc}{service}---\n"));
        }
        yaml
    };
    let s = binary::start("aff-scale", &[("app.yaml", &yaml(&[1, 2]))], "", 2);
    // 40 sessions per host on pods 1 and 2: (cookie field, pod).
    let mut sessions = Vec::new();
    for host in ["balanced.test", "persistent.test"] {
        for _ in 0..40 {
            let a = get(&s, host, "/", "");
            assert!(a.body == "pod-1" || a.body == "pod-2", "{}", a.body);
            let cookie = format!("Cookie: {}\r\n", pair(&a.set_cookie.unwrap()));
            sessions.push((host, cookie, a.body));
        }
    }
    // Scale up to four pods; wait until new sessions reach the new ones.
    let file = std::env::temp_dir()
        .join(format!("sluice-e2e-{}-aff-scale", std::process::id()))
        .join("manifests/app.yaml");
    std::fs::write(&file, yaml(&[1, 2, 3, 4])).unwrap();
    let mut reached = false;
    for _ in 0..200 {
        let b = get(&s, "persistent.test", "/", "").body;
        if b == "pod-3" || b == "pod-4" {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(reached, "the new pods never got a request");
    let mut moved = 0;
    for (host, cookie, before) in &sessions {
        let now = get(&s, host, "/", cookie);
        if *host == "persistent.test" {
            assert_eq!(&now.body, before, "a persistent session moved");
            assert_eq!(now.set_cookie, None);
            continue;
        }
        // Balanced: a session stays, or moves to a new pod, keeping its cookie.
        assert_eq!(now.set_cookie, None, "{host}");
        if &now.body != before {
            assert!(now.body == "pod-3" || now.body == "pod-4", "{}", now.body);
            moved += 1;
            // And stays there.
            assert_eq!(get(&s, host, "/", cookie).body, now.body);
        }
    }
    // About half of the 40 (the new pods' share); far from none and from all.
    assert!(
        (6..=34).contains(&moved),
        "{moved} of 40 balanced sessions moved"
    );
}
