//! `sluice demo`: Sluice on its embedded default, no cluster and no files. Two small
//! in-process upstream servers stand in for pods, and a few Ingress routes send traffic to
//! them by host and path. The upstream servers are also what the integration tests proxy to.

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
/// Services, a wildcard host, and a Service with two endpoints to show load balancing.
pub fn manifests(a: SocketAddr, b: SocketAddr) -> String {
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
    )
}
