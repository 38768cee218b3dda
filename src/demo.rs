//! `sluice demo`: Sluice on its embedded default, no cluster and no files. Two small
//! in-process upstream servers stand in for pods, and a few Ingress routes send traffic to
//! them by host and path. The upstream servers are also what the integration tests proxy to.
//! A third one, the guide, answers `/` for any host no rule names: a page (HTML for browsers,
//! text for curl) that lists the routes and the commands to try them.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A small HTTP/1.1 server standing in for a pod: answers every request with its name, the
/// method, the path and the size of the body it read. `/slow/<ms>` waits before answering;
/// `/close` answers with `Connection: close`; `/big/<bytes>` sends a body of that size.
pub struct DemoUpstream {
    pub addr: SocketAddr,
    /// TCP connections accepted (to observe keep-alive reuse).
    pub connections: Arc<AtomicUsize>,
    /// Requests answered.
    pub requests: Arc<AtomicUsize>,
}

pub fn spawn_upstream(name: &str, bind: SocketAddr) -> io::Result<DemoUpstream> {
    let listener = TcpListener::bind(bind)?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r, name) = (connections.clone(), requests.clone(), name.to_string());
    std::thread::Builder::new()
        .name(format!("upstream-{name}"))
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::Relaxed);
                let (r, name) = (r.clone(), name.clone());
                let _ = std::thread::Builder::new().spawn(move || {
                    let _ = serve(stream, &name, &r);
                });
            }
        })?;
    Ok(DemoUpstream {
        addr,
        connections,
        requests,
    })
}

fn serve(stream: TcpStream, name: &str, requests: &AtomicUsize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut headers = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            headers.push_str(&h);
        }
        let body_len = if chunked {
            read_chunked(&mut reader)?
        } else {
            io::copy(
                &mut (&mut reader).take(content_length as u64),
                &mut io::sink(),
            )? as usize
        };
        requests.fetch_add(1, Ordering::Relaxed);
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let close = path == "/close";
        let big: Option<usize> = path.strip_prefix("/big/").and_then(|v| v.parse().ok());
        let body = match big {
            Some(n) => vec![b'x'; n],
            None => format!("{name} {method} {path} body={body_len}\n").into_bytes(),
        };
        let echo_xff = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for:"))
            .unwrap_or("")
            .to_string();
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Upstream: {name}\r\n",
            body.len()
        );
        if !echo_xff.is_empty() {
            head.push_str(&format!("X-Seen-{echo_xff}\r\n"));
        }
        if let Some(proto) = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-forwarded-proto:"))
        {
            head.push_str(&format!("X-Seen-{proto}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(&body)?;
        }
        if close {
            return Ok(());
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l)? == 0 || l == "\r\n" {
                    return Ok(total);
                }
            }
        }
        io::copy(&mut reader.take(size as u64), &mut io::sink())?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        total += size;
    }
}

/// The demo's routes, as Kubernetes objects: `demo.local/` and `demo.local/api` on two
/// Services, a wildcard host, a Service with two endpoints to show load balancing, and a
/// host-less rule sending exactly `/` to the guide (`guide`) for every other host.
pub fn manifests(a: SocketAddr, b: SocketAddr, guide: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: sluice}}
spec: {{controller: sluice.dev/ingress-controller}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: demo, namespace: default}}
spec:
  ingressClassName: sluice
  rules:
    - host: demo.local
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
          - {{path: /api, pathType: Prefix, backend: {{service: {{name: api, port: {{number: 80}}}}}}}}
    - host: "*.apps.local"
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: both, port: {{number: 80}}}}}}}}
    - http:
        paths:
          - {{path: /, pathType: Exact, backend: {{service: {{name: guide, port: {{number: 80}}}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: guide, namespace: default}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: guide-1, namespace: default, labels: {{kubernetes.io/service-name: guide}}}}
addressType: IPv4
ports: [{{port: {pg}}}]
endpoints: [{{addresses: ["{ig}"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: {pa}}}]
endpoints: [{{addresses: ["{ia}"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: default}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: api-1, namespace: default, labels: {{kubernetes.io/service-name: api}}}}
addressType: IPv4
ports: [{{port: {pb}}}]
endpoints: [{{addresses: ["{ib}"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: both, namespace: default}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: both-1, namespace: default, labels: {{kubernetes.io/service-name: both}}}}
addressType: IPv4
ports: [{{port: {pa}}}]
endpoints: [{{addresses: ["{ia}"]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: both-2, namespace: default, labels: {{kubernetes.io/service-name: both}}}}
addressType: IPv4
ports: [{{port: {pb}}}]
endpoints: [{{addresses: ["{ib}"]}}]
"#,
        ia = a.ip(),
        pa = a.port(),
        ib = b.ip(),
        pb = b.port(),
        ig = guide.ip(),
        pg = guide.port(),
    )
}

/// What the demo serves and how to try it: the text printed at start and the page behind `/`.
pub struct Guide {
    /// Sluice's plain-HTTP listener.
    pub http: SocketAddr,
    /// Sluice's HTTPS listener.
    pub https: SocketAddr,
    /// The admin server (`/metrics`, `/routes`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    pub pod_a: SocketAddr,
    pub pod_b: SocketAddr,
}

impl Guide {
    /// (command, what it shows), in the order a newcomer should try them.
    fn commands(&self) -> Vec<(String, &'static str)> {
        let (h, a, p) = (self.http, self.admin, self.https.port());
        vec![
            (
                format!("curl -H 'Host: demo.local' http://{h}/"),
                "host routing: demo.local/ goes to pod-a",
            ),
            (
                format!("curl -H 'Host: demo.local' http://{h}/api/users"),
                "longest path wins: demo.local/api goes to pod-b",
            ),
            (
                format!(
                    "curl -H 'Host: x.apps.local' http://{h}/; curl -H 'Host: y.apps.local' http://{h}/"
                ),
                "wildcard host *.apps.local, round-robin over pod-a and pod-b",
            ),
            (
                format!("curl -i -H 'Host: nowhere' http://{h}/nothing-here"),
                "no route: a 404 from Sluice itself",
            ),
            (
                format!("curl -k --resolve demo.local:{p}:127.0.0.1 https://demo.local:{p}/"),
                "HTTPS with the self-signed default certificate",
            ),
            (format!("curl http://{a}/metrics"), "Prometheus metrics"),
            (
                format!("curl http://{a}/routes"),
                "the compiled route table",
            ),
        ]
    }

    /// The routes, as (host, path, where it goes).
    fn routes(&self) -> Vec<(&'static str, &'static str, String)> {
        let (a, b) = (self.pod_a, self.pod_b);
        vec![
            ("demo.local", "/ (Prefix)", format!("web -> pod-a {a}")),
            ("demo.local", "/api (Prefix)", format!("api -> pod-b {b}")),
            (
                "*.apps.local",
                "/ (Prefix)",
                format!("both -> pod-a {a}, pod-b {b}"),
            ),
            (
                "any other host",
                "/ (Exact)",
                "guide -> this page".to_string(),
            ),
        ]
    }

    /// Plain text, for curl and the start-up banner.
    pub fn text(&self) -> String {
        let mut out = format!(
            "Sluice demo: two in-process upstreams (pod-a {}, pod-b {}) behind {}.\n\nRoutes:\n",
            self.pod_a, self.pod_b, self.http
        );
        for (host, path, to) in self.routes() {
            out.push_str(&format!("  {host:<16} {path:<15} {to}\n"));
        }
        out.push_str("\nTry:\n");
        for (cmd, what) in self.commands() {
            out.push_str(&format!("  {cmd}\n      # {what}\n"));
        }
        out
    }

    /// The same, as a small HTML page for browsers.
    pub fn html(&self) -> String {
        let mut out = String::from(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Sluice demo</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}\
             code,pre{background:#f3f3f3;padding:.1em .3em}td,th{padding:.2em .8em;text-align:left}</style></head><body>\n\
             <h1>Sluice demo</h1>\n<p>Sluice, a thread-per-core Kubernetes ingress proxy, is running on ",
        );
        out.push_str(&format!(
            "<code>{}</code> in front of two in-process upstreams standing in for pods. \
             This page is served through Sluice by a host-less route.</p>\n<h2>Routes</h2>\n\
             <table><tr><th>host</th><th>path</th><th>backend</th></tr>\n",
            self.http
        ));
        for (host, path, to) in self.routes() {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(host),
                escape(path),
                escape(&to)
            ));
        }
        out.push_str("</table>\n<h2>Try</h2>\n<dl>\n");
        for (cmd, what) in self.commands() {
            out.push_str(&format!(
                "<dt><pre>{}</pre></dt><dd>{}</dd>\n",
                escape(&cmd),
                escape(what)
            ));
        }
        out.push_str("</dl>\n</body></html>\n");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Starts the guide: an upstream that answers every request with `guide`'s page, HTML when
/// the request's `Accept` names `text/html` (a browser), plain text otherwise (curl).
pub fn spawn_guide(bind: SocketAddr, guide: Guide) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(bind)?;
    let addr = listener.local_addr()?;
    let pages = Arc::new((guide.text(), guide.html()));
    std::thread::Builder::new()
        .name("upstream-guide".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let pages = pages.clone();
                let _ = std::thread::Builder::new().spawn(move || {
                    let _ = serve_guide(stream, &pages.0, &pages.1);
                });
            }
        })?;
    Ok(addr)
}

fn serve_guide(stream: TcpStream, text: &str, html: &str) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let head_only = line.starts_with("HEAD ");
        let mut wants_html = false;
        let mut content_length = 0u64;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("accept:") {
                wants_html = v.contains("text/html");
            }
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        io::copy(&mut (&mut reader).take(content_length), &mut io::sink())?;
        let (body, kind) = if wants_html {
            (html, "text/html; charset=utf-8")
        } else {
            (text, "text/plain; charset=utf-8")
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nVary: Accept\r\nX-Upstream: guide\r\n\r\n",
            body.len()
        );
        out.write_all(head.as_bytes())?;
        if !head_only {
            out.write_all(body.as_bytes())?;
        }
    }
}
