//! `service-upstream: "true"`: the Service's ClusterIP and port are the backend's one
//! endpoint (kube-proxy spreads from there), instead of the EndpointSlice endpoints; retries
//! and ejection then see that one address. Compile level and through real sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sluice::control::compile::{CompileOptions, Compiled, Objects, compile};
use sluice::control::incremental::Incremental;
use sluice::control::manifests::parse_documents;

mod support;

/// Service `web` (ClusterIP `cluster_ip`, port 80 named http → pod port 8080) with two pods,
/// and an Ingress `name` for `host` naming the port by `port` with `annotations`.
fn manifests(cluster_ip: &str, ingresses: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns}}\n\
         spec: {{clusterIP: {cluster_ip:?}, ports: [{{name: http, port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: ns, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [10.0.0.1, 10.0.0.2]}}]\n{ingresses}"
    )
}

fn ingress(name: &str, day: u8, host: &str, port: &str, annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: {v:?}"))
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: ns, creationTimestamp: \"2026-01-{day:02}T00:00:00Z\", annotations: {{{}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {port}}}}}}}]}}\n",
        annotations.join(", ")
    )
}

fn objects(yaml: &str) -> Objects {
    let (objects, errors) = parse_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    Objects::from_objects(objects)
}

fn compiled(yaml: &str) -> Compiled {
    compile(&objects(yaml), &CompileOptions::default(), 1)
}

fn endpoints(c: &Compiled, host: &str) -> Vec<SocketAddr> {
    let id = c.snapshot.lookup(host, "/").expect("routed");
    c.snapshot.backend(id).unwrap().endpoints.clone()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

const UP: &[(&str, &str)] = &[("service-upstream", "true")];

#[test]
fn the_cluster_ip_and_service_port_replace_the_endpoints() {
    let c = compiled(&manifests(
        "10.96.0.7",
        &ingress("a", 1, "a.test", "{number: 80}", UP),
    ));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    assert_eq!(endpoints(&c, "a.test"), addrs(&["10.96.0.7:80"]));
    // By port name too.
    let c = compiled(&manifests(
        "10.96.0.7",
        &ingress("a", 1, "a.test", "{name: http}", UP),
    ));
    assert_eq!(endpoints(&c, "a.test"), addrs(&["10.96.0.7:80"]));
    // Without the annotation (or with "false"): the pods.
    let pods = addrs(&["10.0.0.1:8080", "10.0.0.2:8080"]);
    let c = compiled(&manifests(
        "10.96.0.7",
        &ingress("a", 1, "a.test", "{number: 80}", &[]),
    ));
    assert_eq!(endpoints(&c, "a.test"), pods);
    let off = [("service-upstream", "false")];
    let c = compiled(&manifests(
        "10.96.0.7",
        &ingress("a", 1, "a.test", "{number: 80}", &off),
    ));
    assert_eq!(endpoints(&c, "a.test"), pods);
}

#[test]
fn a_headless_service_keeps_its_endpoints_and_says_so() {
    for ip in ["None", ""] {
        let c = compiled(&manifests(
            ip,
            &ingress("a", 1, "a.test", "{number: 80}", UP),
        ));
        assert_eq!(
            endpoints(&c, "a.test"),
            addrs(&["10.0.0.1:8080", "10.0.0.2:8080"])
        );
        assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
        assert!(
            c.diagnostics[0].message.contains("has no ClusterIP"),
            "{}",
            c.diagnostics[0]
        );
    }
}

#[test]
fn a_bad_value_is_reported_and_the_endpoints_are_used() {
    let bad = [("service-upstream", "yes")];
    let c = compiled(&manifests(
        "10.96.0.7",
        &ingress("a", 1, "a.test", "{number: 80}", &bad),
    ));
    assert_eq!(
        endpoints(&c, "a.test"),
        addrs(&["10.0.0.1:8080", "10.0.0.2:8080"])
    );
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(c.diagnostics[0].field.ends_with("/service-upstream]"));
}

#[test]
fn it_belongs_to_the_backend_the_oldest_ingress_decides() {
    let c = compiled(&manifests(
        "10.96.0.7",
        &format!(
            "{}{}",
            ingress("older", 1, "a.test", "{number: 80}", UP),
            ingress(
                "newer",
                2,
                "b.test",
                "{number: 80}",
                &[("service-upstream", "false")]
            )
        ),
    ));
    assert_eq!(endpoints(&c, "a.test"), addrs(&["10.96.0.7:80"]));
    assert_eq!(endpoints(&c, "b.test"), addrs(&["10.96.0.7:80"]));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert_eq!(c.diagnostics[0].object, "Ingress ns/newer");
    assert!(
        c.diagnostics[0]
            .message
            .contains("service-upstream false (the backend's: true)")
    );
}

#[test]
fn incremental_compiles_follow_the_annotation() {
    let with =
        |a: &[(&str, &str)]| manifests("10.96.0.7", &ingress("a", 1, "a.test", "{number: 80}", a));
    let (mut inc, first) = Incremental::new(&objects(&with(&[])), CompileOptions::default(), 1);
    assert_eq!(endpoints(&first, "a.test").len(), 2);
    let steps: [(&[(&str, &str)], usize); 3] = [(UP, 1), (&[], 2), (UP, 1)];
    for (i, (annotations, n)) in steps.iter().enumerate() {
        let o = objects(&with(annotations));
        let step = inc.update(&o, i as u64 + 2);
        let full = compile(&o, &CompileOptions::default(), i as u64 + 2);
        assert_eq!(
            endpoints(&step, "a.test"),
            endpoints(&full, "a.test"),
            "step {i}"
        );
        assert_eq!(endpoints(&step, "a.test").len(), *n, "step {i}");
        assert_eq!(
            step.snapshot.to_string(),
            full.snapshot.to_string(),
            "step {i}"
        );
    }
}

fn answer(name: String, mut stream: TcpStream) {
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
        let out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
            name.len()
        );
        if stream.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

fn get(addr: SocketAddr, host: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

#[test]
fn requests_go_to_the_cluster_ip_through_real_sockets() {
    // Pods on 127.0.0.1 and .2; "ClusterIP" 127.0.0.3 (another listener on the same port,
    // standing in for kube-proxy's address); a second Service whose ClusterIP 127.0.0.4 has
    // nothing listening.
    let (port, listeners) = support::pods::bind(3);
    for (i, listener) in listeners.into_iter().enumerate() {
        let name = if i == 2 {
            "cluster-ip".to_string()
        } else {
            format!("pod-{}", i + 1)
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || answer(name, stream));
            }
        });
    }
    let service = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{clusterIP: \"{ip}\", ports: [{{port: {port}}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\", \"127.0.0.2\"]}}]\n"
        )
    };
    let ing = |name: &str, service: &str, annotations: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
             metadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\n\
             spec:\n  ingressClassName: sluice\n  rules:\n  - host: {name}.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: {port}}}}}}}}}]}}\n"
        )
    };
    let up = "nginx.ingress.kubernetes.io/service-upstream: \"true\"";
    let yaml = [
        service("web", "127.0.0.3"),
        service("plain", "127.0.0.3"),
        service("dead", "127.0.0.4"),
        ing("web", "web", up),
        ing("plain", "plain", ""),
        ing("dead", "dead", up),
    ]
    .concat();
    let s = support::binary::start("service-upstream", &[("app.yaml", &yaml)], "", 2);
    for _ in 0..6 {
        assert_eq!(get(s.addr, "web.test"), (200, "cluster-ip".to_string()));
    }
    let pods: std::collections::BTreeSet<String> =
        (0..6).map(|_| get(s.addr, "plain.test").1).collect();
    assert_eq!(
        pods,
        ["pod-1", "pod-2"].map(String::from).into(),
        "{pods:?}"
    );
    // The ClusterIP is the only address: when it refuses, there is no other endpoint to
    // retry on, though the pods behind it are up.
    let (status, _) = get(s.addr, "dead.test");
    assert_eq!(status, 502);
}
