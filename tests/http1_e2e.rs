//! Issue 11 end to end: the `sluice` binary over real sockets, between a real client and a
//! recording upstream that shows every byte it received (and whether its connection was
//! closed). Each test starts its own Sluice, so no pooled upstream connection is shared.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::binary::{self, Sluice};

mod support;

/// What one upstream connection received, and whether the proxy closed it.
#[derive(Clone, Debug, Default)]
struct Received {
    bytes: Vec<u8>,
    closed: bool,
}

type Log = Arc<Mutex<Vec<Arc<Mutex<Received>>>>>;

/// An upstream pod that records everything. It answers each complete request (a head, plus a
/// Content-Length or chunked body): an `Upgrade: h2c` or `Upgrade: foo` with a 101 (as an
/// h2c-capable server would), `Upgrade: websocket` with a 101 and then an echo, `/server` with
/// its own `Server` field, `/hang` with nothing at all, `/badchunk` with a chunk extension outside the grammar, anything
/// else with `200 plain` and no `Server`.
struct Upstream {
    addr: SocketAddr,
    log: Log,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Log = Arc::default();
        let accepted = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let rec = Arc::new(Mutex::new(Received::default()));
                accepted.lock().unwrap().push(rec.clone());
                std::thread::spawn(move || serve(stream, rec));
            }
        });
        Upstream { addr, log }
    }

    fn connections(&self) -> Vec<Received> {
        let log = self.log.lock().unwrap();
        log.iter().map(|r| r.lock().unwrap().clone()).collect()
    }

    fn total_bytes(&self) -> usize {
        self.connections().iter().map(|c| c.bytes.len()).sum()
    }

    /// Waits until `done` holds for what was received.
    fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        for _ in 0..500 {
            let conns = self.connections();
            if done(&conns) {
                return conns;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("upstream: {what} never happened: {:?}", self.connections());
    }
}

fn serve(mut stream: TcpStream, rec: Arc<Mutex<Received>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut echo = false;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                rec.lock().unwrap().closed = true;
                return;
            }
            Ok(n) => n,
        };
        rec.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
        if echo {
            let _ = stream.write_all(&chunk[..n]);
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = complete_request(&buf) {
            let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
            buf.drain(..len);
            if head.starts_with("get /hang") {
                continue;
            }
            let answer: &[u8] = if head.contains("\r\nupgrade: h2c") {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
            } else if head.contains("\r\nupgrade: foo") {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
            } else if head.contains("\r\nupgrade: websocket") {
                echo = true;
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            } else if head.starts_with("get /server") {
                b"HTTP/1.1 200 OK\r\nServer: pod/1.0\r\nContent-Length: 5\r\n\r\nplain"
            } else if head.starts_with("get /badchunk") {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b c\r\nhi\r\n0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"
            };
            if stream.write_all(answer).is_err() {
                return;
            }
        }
    }
}

/// Length of the first complete request in `buf` (head and body), if it is all there.
fn complete_request(buf: &[u8]) -> Option<usize> {
    let head_len = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    if head.contains("\r\ntransfer-encoding: chunked") {
        let end = find(&buf[head_len - 2..], b"\r\n0\r\n\r\n")?;
        return Some(head_len - 2 + end + 7);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= head_len + length).then_some(head_len + length)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Starts Sluice with `config` (TOML) routing `app.test` to `upstream`. The request-head and
/// body timeouts are long (30 s), so an answer within the client's 5 s read timeout is not one
/// of them.
fn sluice(name: &str, upstream: SocketAddr, config: &str) -> Sluice {
    sluice_with(name, upstream, config, "")
}

/// [`sluice`] with more manifests (`extra`, YAML) next to the `app.test` ones.
fn sluice_with(name: &str, upstream: SocketAddr, config: &str, extra: &str) -> Sluice {
    let app = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        upstream.port(),
        upstream.ip()
    );
    let mut files = vec![("app.yaml", app.as_str())];
    if !extra.is_empty() {
        files.push(("extra.yaml", extra));
    }
    binary::start(&format!("e2e11-{name}"), &files, config, 1)
}

fn client(s: &Sluice) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Reads one response: its head and a Content-Length body.
fn response(c: &mut TcpStream) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).expect("a response within 5 s");
        assert!(
            n > 0,
            "closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    (head, body)
}

/// After an error answer the connection must be closed by Sluice (EOF, not a timeout).
fn assert_closed(c: &mut TcpStream) {
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "more after the answer: {rest:?}"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed: {e}"),
    }
}

fn servers(head: &str) -> Vec<&str> {
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("server:"))
        .collect()
}

#[test]
fn server_on_proxied_and_own_answers() {
    let up = Upstream::start();
    let s = sluice("server", up.addr, "");
    let mut c = client(&s);
    c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let (head, body) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(servers(&head), ["Server: sluice"], "{head}");
    assert_eq!(body, b"plain");
    // The upstream's own Server is kept, and ours is not added.
    c.write_all(b"GET /server HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut c);
    assert_eq!(servers(&head), ["Server: pod/1.0"], "{head}");
    // Our own answers carry it too.
    c.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(servers(&head), ["Server: sluice"], "{head}");
    // What the upstream got has no Server of ours in it.
    let got = String::from_utf8(up.connections()[0].bytes.clone()).unwrap();
    assert!(!got.to_ascii_lowercase().contains("server:"), "{got}");

    let up = Upstream::start();
    let s = sluice("server-edge", up.addr, "[http]\nserver_header = \"edge\"\n");
    let mut c = client(&s);
    c.write_all(
        b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\nGET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
    )
    .unwrap();
    let (head, _) = response(&mut c);
    assert_eq!(servers(&head), ["Server: edge"], "{head}");
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert_eq!(servers(&head), ["Server: edge"], "{head}");
}

#[test]
fn h2c_and_unlisted_upgrades_reach_the_upstream_as_plain_http11() {
    let up = Upstream::start();
    let s = sluice("h2c", up.addr, "");
    let mut c = client(&s);
    // The upstream switches to h2c (or foo) whenever it sees the Upgrade: it must not see it.
    c.write_all(
        b"GET /h2c HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .unwrap();
    let (head, body) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"plain");
    c.write_all(
        b"GET /foo HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    )
    .unwrap();
    let (head, body) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"plain");
    c.write_all(b"GET /list HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // HTTP2-Settings alone (no Upgrade, no Connection token) is stripped all the same.
    c.write_all(b"GET /settings HTTP/1.1\r\nHost: app.test\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let conns = up.wait_for("four requests", |c| {
        c.first()
            .is_some_and(|r| String::from_utf8_lossy(&r.bytes).matches("GET ").count() == 4)
    });
    assert_eq!(conns.len(), 1, "one kept-alive upstream connection");
    let got = String::from_utf8(conns[0].bytes.clone())
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        got.starts_with("get /h2c http/1.1\r\nhost: app.test\r\n"),
        "{got}"
    );
    for banned in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !got.contains(banned),
            "{banned} reached the upstream: {got}"
        );
    }

    // WebSocket is still relayed, as a tunnel.
    let mut c = client(&s);
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    c.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
}

/// An Ingress for `tunnel.test` (same backend as `app.test`) whose routes relay `foo`.
const TUNNEL_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
metadata: {name: tunnel, namespace: default, annotations: {sluice.dev/upgrade-protocols: foo}}\n\
spec:\n  ingressClassName: sluice\n  rules:\n  - host: tunnel.test\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}]}\n";

#[test]
fn a_route_relays_the_upgrades_its_ingress_allows_and_no_other_route_does() {
    let up = Upstream::start();
    let s = sluice_with("route-upgrade", up.addr, "", TUNNEL_INGRESS);
    // The annotated route: `foo` becomes a tunnel.
    let mut c = client(&s);
    c.write_all(
        b"GET /t HTTP/1.1\r\nHost: tunnel.test\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    )
    .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"raw bytes").unwrap();
    let conns = up.wait_for("the tunnelled bytes", |c| {
        c.iter()
            .any(|r| String::from_utf8_lossy(&r.bytes).ends_with("\r\n\r\nraw bytes"))
    });
    let got = String::from_utf8_lossy(&conns[0].bytes).to_ascii_lowercase();
    assert!(got.contains("\r\nupgrade: foo\r\n"), "{got}");

    // Another route of the same listener and backend: plain HTTP/1.1, Upgrade stripped.
    let mut c = client(&s);
    c.write_all(
        b"GET /p HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    )
    .unwrap();
    let (head, body) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"plain");
    // The route's list replaces the default one: WebSocket is not relayed on it.
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: tunnel.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let (head, body) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"plain");
    let conns = up.wait_for("two plain requests", |c| {
        c.iter()
            .any(|r| String::from_utf8_lossy(&r.bytes).matches("GET ").count() == 2)
    });
    let plain = conns
        .iter()
        .map(|r| String::from_utf8_lossy(&r.bytes).to_ascii_lowercase())
        .find(|b| b.starts_with("get /p "))
        .unwrap();
    assert!(!plain.contains("upgrade"), "{plain}");
}

/// An Ingress for `limits.test` (same backend as `app.test`) with short timeouts and a 1k
/// body limit.
const LIMITS_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
metadata: {name: limits, namespace: default, annotations: {\
nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\", \
nginx.ingress.kubernetes.io/client-body-timeout: \"1\", \
nginx.ingress.kubernetes.io/proxy-body-size: 1k}}\n\
spec:\n  ingressClassName: sluice\n  rules:\n  - host: limits.test\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}]}\n";

#[test]
fn a_routes_timeouts_and_body_limit_apply_to_it_alone() {
    let up = Upstream::start();
    let s = sluice_with("route-limits", up.addr, "", LIMITS_INGRESS);
    // proxy-read-timeout 1 s: 504 long before the listener's 60 s.
    let mut c = client(&s);
    c.write_all(b"GET /hang HTTP/1.1\r\nHost: limits.test\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    // The same upstream path on another route is still waited for.
    let mut c = client(&s);
    c.write_all(b"GET /hang HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = c.read(&mut byte).expect_err("no answer yet");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );

    // proxy-body-size 1k: 413 without reaching the upstream; another route takes it.
    let body = vec![b'x'; 2000];
    let post = |host: &str| {
        let mut req = format!(
            "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        req
    };
    let mut c = client(&s);
    c.write_all(&post("limits.test")).unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_closed(&mut c);
    let mut c = client(&s);
    c.write_all(&post("app.test")).unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let conns = up.wait_for("the allowed upload", |c| {
        c.iter()
            .any(|r| String::from_utf8_lossy(&r.bytes).contains("POST /upload"))
    });
    let uploads: usize = conns
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.bytes)
                .matches("POST /upload")
                .count()
        })
        .sum();
    assert_eq!(uploads, 1, "the refused upload reached the upstream");

    // client-body-timeout 1 s: a client that stops sending its body gets 408.
    let mut c = client(&s);
    c.write_all(b"POST /slow HTTP/1.1\r\nHost: limits.test\r\nContent-Length: 10\r\n\r\nab")
        .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

#[test]
fn request_line_without_a_version_is_400_at_once() {
    let up = Upstream::start();
    let s = sluice("h09", up.addr, "");
    for line in [
        &b"GET /\r\n"[..],
        b"GET /a b HTTP/1.1\r\nHost: app.test\r\n\r\n",
    ] {
        let mut c = client(&s);
        c.write_all(line).unwrap();
        // The head timeout is 30 s; the answer comes within the 5 s read timeout.
        let (head, _) = response(&mut c);
        assert!(
            head.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{line:?}: {head}"
        );
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert_closed(&mut c);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(up.connections().is_empty(), "{:?}", up.connections());
}

/// A chunked POST whose body goes wrong with `bad` after `good` reached the upstream. The
/// client gets 400 and a close; the upstream got the head and `good` re-framed, never a last
/// chunk, and its connection is closed.
fn chunked_failure_after_streaming(name: &str, good: &[u8], forwarded: &[u8], bad: &[u8]) {
    let up = Upstream::start();
    let s = sluice(name, up.addr, "");
    let mut c = client(&s);
    c.write_all(b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    c.write_all(good).unwrap();
    up.wait_for("the head and the first chunk", |conns| {
        conns.first().is_some_and(|r| r.bytes.ends_with(forwarded))
    });
    c.write_all(bad).unwrap();
    let (head, _) = response(&mut c);
    assert!(
        head.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{name}: {head}"
    );
    assert_closed(&mut c);
    let conns = up.wait_for("the upstream connection closed", |conns| {
        conns.iter().all(|r| r.closed)
    });
    assert_eq!(conns.len(), 1);
    let got = &conns[0].bytes;
    let body = &got[find(got, b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        body,
        forwarded,
        "{name}: {:?}",
        String::from_utf8_lossy(got)
    );
}

#[test]
fn malformed_chunk_extension_is_400_and_nothing_completes_upstream() {
    // In one write with the head: nothing at all reaches the upstream.
    let up = Upstream::start();
    let s = sluice("ext-one", up.addr, "");
    let mut c = client(&s);
    c.write_all(b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b c\r\nhi\r\n0\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert_closed(&mut c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(up.total_bytes(), 0, "{:?}", up.connections());
    // After a chunk already went up: the upstream never sees the body end. Extensions are
    // never forwarded.
    chunked_failure_after_streaming(
        "ext-late",
        b"2;a=b\r\nhi\r\n",
        b"2\r\nhi\r\n",
        b"0;a=\"x\r\n\r\n",
    );
}

#[test]
fn bare_lf_in_chunked_framing_is_400_and_nothing_completes_upstream() {
    // After the last chunk.
    chunked_failure_after_streaming("lf-last", b"2\r\nhi\r\n0\r\n", b"2\r\nhi\r\n", b"\n");
    // Ending the trailer section.
    chunked_failure_after_streaming(
        "lf-trailer",
        b"2\r\nhi\r\n0\r\nX-T: 1\r\n",
        b"2\r\nhi\r\n",
        b"\n",
    );
    // In one write with the head.
    let up = Upstream::start();
    let s = sluice("lf-one", up.addr, "");
    let mut c = client(&s);
    c.write_all(b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\n")
        .unwrap();
    let (head, _) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert_closed(&mut c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(up.total_bytes(), 0, "{:?}", up.connections());
}

#[test]
fn malformed_chunk_extension_from_the_upstream_is_502() {
    let up = Upstream::start();
    let s = sluice("up-ext", up.addr, "");
    let mut c = client(&s);
    c.write_all(b"GET /badchunk HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let (head, body) = response(&mut c);
    assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
    assert_eq!(servers(&head), ["Server: sluice"], "{head}");
    assert_eq!(body, b"502 Bad Gateway\n");
    up.wait_for("the upstream connection closed", |conns| {
        conns.len() == 1 && conns[0].closed
    });
}
