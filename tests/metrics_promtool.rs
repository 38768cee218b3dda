//! `/metrics` of a running `sluice run` after traffic (200s, a generated 404, a 502 from a
//! dead endpoint) passes `promtool check metrics` (Debian package `prometheus`), and its
//! histograms count what was sent: request duration per status class (all workers and per
//! worker), upstream connect and response times, and the per-backend counters under their
//! cap (`log.backend_metrics_cap`; the rest under `backend="other"`).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice::demo::spawn_upstream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ingress(host: &str, service: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {service}, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\n"
    )
}

fn get(addr: SocketAddr, host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_live_scrape_after_traffic_passes_promtool_and_counts_the_requests() {
    let Ok(status) = Command::new("promtool").arg("--version").output() else {
        panic!("promtool is missing: apt-get install prometheus (.ci/run installs it)");
    };
    assert!(status.status.success());
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    // A port nothing listens on: connects fail, the client gets a 502.
    let dead_port = support::closed_port([127, 0, 0, 1].into()).port();
    let dir = std::env::temp_dir().join(format!("sluice-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("apps.yaml"),
        ingress("app.test", "app", up.addr.port())
            + &ingress("dead.test", "dead", dead_port)
            + &ingress("third.test", "third", up.addr.port()),
    )
    .unwrap();
    // Two backends get series of their own; the third counts under backend="other".
    let config = dir.with_extension("toml");
    std::fs::write(&config, "[log]\nbackend_metrics_cap = 2\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--workers", "2", "--manifests"])
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let _running = Running(child);
    let (http, admin): (SocketAddr, SocketAddr) = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some((_, rest)) = line.split_once("serving http on ") {
            let http = rest.split_whitespace().next().unwrap().parse().unwrap();
            let admin = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin="))
                .unwrap()
                .parse()
                .unwrap();
            break (http, admin);
        }
    };
    std::thread::spawn(move || for _ in lines {});

    for i in 0..10 {
        let r = get(http, "app.test", &format!("/r{i}"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let r = get(http, "nowhere.test", "/");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = get(http, "dead.test", "/");
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    for _ in 0..2 {
        let r = get(http, "third.test", "/");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }

    let text = get(admin, "admin", "/metrics");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The histograms count the traffic: 10 × 2xx, 1 × 4xx, 1 × 5xx, over all workers.
    let count = |class: &str| {
        sample(
            body,
            &format!("sluice_request_duration_seconds_count{{class=\"{class}\"}} "),
        )
    };
    assert_eq!(count("2xx"), 12.0);
    assert_eq!(count("4xx"), 1.0);
    assert_eq!(count("5xx"), 1.0);
    let inf = sample(
        body,
        "sluice_request_duration_seconds_bucket{class=\"2xx\",le=\"+Inf\"} ",
    );
    assert_eq!(inf, 12.0);
    // Per worker: the two workers' 2xx counts add up to the aggregate.
    let per_worker: f64 = (0..2)
        .map(|w| {
            sample(
                body,
                &format!(
                    "sluice_worker_request_duration_seconds_count{{worker=\"{w}\",class=\"2xx\"}} "
                ),
            )
        })
        .sum();
    assert_eq!(per_worker, 12.0);
    // Per route (Ingress and Service port), capped at two series: the first two met, then
    // "other". Each Ingress here is named after its Service.
    let route = |ingress: &str, service: &str, class: &str| {
        sample(
            body,
            &format!(
                "sluice_ingress_requests_total{{namespace=\"{}\",ingress=\"{ingress}\",service=\"{service}\",class=\"{class}\"}} ",
                if ingress == "other" { "" } else { "default" }
            ),
        )
    };
    assert_eq!(route("app", "app:80", "2xx"), 10.0);
    assert_eq!(route("dead", "dead:80", "5xx"), 1.0);
    assert_eq!(route("other", "", "2xx"), 2.0);
    assert!(!body.contains("ingress=\"third\""), "{body}");
    assert_eq!(
        sample(body, "sluice_ingress_series_overflow_requests_total "),
        2.0
    );
    assert!(body.contains("# TYPE sluice_tls_handshakes_timed_out_total counter"));
    assert!(body.contains("# TYPE sluice_proxy_protocol_errors_total counter"));
    assert!(sample(body, "sluice_upstream_connect_duration_seconds_count ") >= 1.0);
    // 10 answered by the upstream, plus the 502's attempts.
    assert!(sample(body, "sluice_upstream_response_duration_seconds_count ") >= 11.0);
    assert!(body.contains("# TYPE sluice_snapshot_propagation_seconds histogram"));
    assert!(body.contains("sluice_snapshot_propagation_seconds_sum "));
    // The access log (on by default) reports its lines; none dropped at this rate.
    assert!(body.contains("# TYPE sluice_access_log_dropped_lines_total counter"));
    assert_eq!(sample(body, "sluice_access_log_dropped_lines_total "), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}
