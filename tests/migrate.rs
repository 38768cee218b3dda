//! `sluice migrate` (the real binary) on `tests/fixtures/migrate/`: per-Ingress fates, the
//! summary and the exit status, in text and JSON; the warnings for ignored annotations on an
//! Ingress `sluice run` serves (log line once, `/metrics` counter, the Ingress still served
//! through real sockets); and `sluice migrate --kubeconfig` against the real API server
//! (skipped without `SLUICE_TEST_KUBECONFIG`, a failure in CI, as in `k8s_real`):
//!
//! ```sh
//! export SLUICE_K8S_DIR=/tmp/k8s-17b K8S_API_PORT=6543 ETCD_PORT=2479 ETCD_PEER_PORT=2480
//! export SLUICE_TEST_KUBECONFIG=$(../shared/k8s/up.sh); cargo test --test migrate
//! ```
// Wall-clock instants only bound waits; nothing here asserts on speed.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrate")
}

fn migrate(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("migrate")
        .args(args)
        .output()
        .expect("run sluice migrate")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Per Ingress of class nginx: (namespace/name, changes behaviour, [(annotation, fate)]).
/// `(annotation without prefix, fate)`.
type Fates = &'static [(&'static str, &'static str)];

const EXPECTED: &[(&str, bool, Fates)] = &[
    ("shop/storefront", false, &[]),
    ("legacy/legacy-class", false, &[]),
    ("shop/healthz", false, &[]),
    (
        // Its /reports path has the canary api-canary-header.
        "shop/timeouts",
        false,
        &[
            ("proxy-connect-timeout", "supported"),
            ("proxy-read-timeout", "supported"),
            ("proxy-send-timeout", "supported"),
        ],
    ),
    (
        "shop/uploads",
        false,
        &[
            ("client-body-buffer-size", "differs"),
            ("proxy-body-size", "supported"),
        ],
    ),
    ("shop/secure-shop", false, &[("ssl-redirect", "differs")]),
    (
        "shop/force-https",
        false,
        &[
            ("force-ssl-redirect", "differs"),
            ("preserve-trailing-slash", "differs"),
        ],
    ),
    (
        "shop/hash-by-uri",
        false,
        &[("upstream-hash-by", "differs")],
    ),
    ("shop/ewma", false, &[("load-balance", "supported")]),
    (
        "shop/http-backend",
        false,
        &[
            ("backend-protocol", "supported"),
            ("proxy-buffering", "supported"),
            ("proxy-http-version", "supported"),
        ],
    ),
    (
        "shop/rewrite-regex",
        false,
        &[("rewrite-target", "differs"), ("use-regex", "differs")],
    ),
    ("shop/app-root", false, &[("app-root", "supported")]),
    (
        "shop/moved",
        false,
        &[
            ("permanent-redirect", "differs"),
            ("permanent-redirect-code", "supported"),
        ],
    ),
    (
        "shop/www-redirect",
        false,
        &[("from-to-www-redirect", "supported")],
    ),
    (
        "shop/prefixed",
        false,
        &[("x-forwarded-prefix", "supported")],
    ),
    (
        "shop/basic-auth",
        false,
        &[
            ("auth-realm", "supported"),
            ("auth-secret", "differs"),
            ("auth-type", "differs"),
        ],
    ),
    (
        "shop/external-auth",
        false,
        &[
            ("auth-response-headers", "supported"),
            ("auth-signin", "differs"),
            ("auth-url", "differs"),
        ],
    ),
    (
        "shop/auth-snippet",
        true,
        &[("auth-snippet", "refused"), ("auth-url", "differs")],
    ),
    (
        "shop/office-only",
        false,
        &[("whitelist-source-range", "supported")],
    ),
    (
        "shop/deny-bad",
        false,
        &[("denylist-source-range", "supported")],
    ),
    (
        "shop/cors-api",
        false,
        &[
            ("cors-allow-credentials", "supported"),
            ("cors-allow-methods", "supported"),
            ("cors-allow-origin", "differs"),
            ("cors-max-age", "supported"),
            ("enable-cors", "supported"),
        ],
    ),
    ("shop/cors-off", false, &[("enable-cors", "supported")]),
    (
        "shop/config-snippet",
        true,
        &[("configuration-snippet", "refused")],
    ),
    (
        "shop/server-snippet",
        true,
        &[("server-snippet", "refused")],
    ),
    (
        "shop/waf",
        true,
        &[
            ("enable-modsecurity", "not-yet"),
            ("modsecurity-snippet", "refused"),
        ],
    ),
    (
        "shop/web-canary-weight",
        false,
        &[("canary", "differs"), ("canary-weight", "supported")],
    ),
    (
        "shop/api-canary-header",
        false,
        &[
            ("canary", "differs"),
            ("canary-by-header", "supported"),
            ("canary-by-header-value", "supported"),
        ],
    ),
    (
        "shop/sticky",
        false,
        &[
            ("affinity", "supported"),
            ("session-cookie-max-age", "supported"),
            ("session-cookie-name", "supported"),
            ("session-cookie-samesite", "supported"),
        ],
    ),
    (
        "shop/retries",
        false,
        &[
            ("proxy-next-upstream", "differs"),
            ("proxy-next-upstream-tries", "supported"),
        ],
    ),
    ("shop/vhost", false, &[("upstream-vhost", "differs")]),
    (
        "shop/rate-limited",
        false,
        &[
            ("limit-burst-multiplier", "supported"),
            ("limit-rps", "supported"),
            ("limit-whitelist", "supported"),
        ],
    ),
    (
        "shop/conn-limited",
        false,
        &[
            ("limit-connections", "supported"),
            ("limit-rate", "supported"),
        ],
    ),
    ("shop/grpc", true, &[("backend-protocol", "differs")]),
    (
        "shop/https-backend",
        false,
        &[
            ("backend-protocol", "supported"),
            ("proxy-ssl-verify", "supported"),
        ],
    ),
    (
        "shop/errors",
        false,
        &[
            ("custom-http-errors", "differs"),
            ("default-backend", "supported"),
        ],
    ),
    (
        "shop/shadow",
        false,
        &[
            ("mirror-request-body", "differs"),
            ("mirror-target", "differs"),
        ],
    ),
    (
        "shop/bad-timeout",
        true,
        &[("proxy-read-timeout", "supported")],
    ),
    ("shop/typo", true, &[("proxy-read-timout", "unknown")]),
    (
        "shop/internal-api",
        false,
        &[("proxy-body-size", "supported")],
    ),
    (
        "shop/tracing",
        true,
        &[
            ("enable-access-log", "supported"),
            ("enable-opentelemetry", "not-yet"),
        ],
    ),
];

#[test]
fn json_report_gives_every_ingress_of_the_class_its_fates_and_the_summary() {
    let dir = fixtures();
    let out = migrate(&["--manifests", dir.to_str().unwrap(), "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(report["ingress_class"], "nginx");
    assert_eq!(report["controller_class"], "k8s.io/ingress-nginx");
    let ingresses = report["ingresses"].as_array().unwrap();
    let by_name: BTreeMap<String, &Value> = ingresses
        .iter()
        .map(|i| {
            (
                format!(
                    "{}/{}",
                    i["namespace"].as_str().unwrap(),
                    i["name"].as_str().unwrap()
                ),
                i,
            )
        })
        .collect();
    // Exactly the Ingresses of class nginx (by name, legacy annotation, or an IngressClass of
    // ingress-nginx's controller); not Sluice's own nor the classless one.
    let want: Vec<&str> = EXPECTED.iter().map(|e| e.0).collect();
    let mut have: Vec<&str> = by_name.keys().map(String::as_str).collect();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    have.sort();
    assert_eq!(have, sorted_want);
    assert!(want.len() >= 30);
    let prefix = "nginx.ingress.kubernetes.io/";
    for (name, changes, fates) in EXPECTED {
        let i = by_name[*name];
        assert_eq!(i["changes_behaviour"], *changes, "{name}: {i:#}");
        let got: Vec<(String, String)> = i["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let key = a["key"].as_str().unwrap();
                (
                    key.strip_prefix(prefix).unwrap_or(key).to_string(),
                    a["fate"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = fates
            .iter()
            .map(|(a, f)| (a.to_string(), f.to_string()))
            .collect();
        assert_eq!(got, want, "{name}");
        // A canary Ingress compiled alone serves nothing: it only adds an alternative
        // backend to its main Ingress's routes.
        let canary = fates.iter().any(|(a, _)| *a == "canary");
        assert_eq!(
            i["routes"].as_array().unwrap().is_empty(),
            canary,
            "{name}: {}",
            i["routes"]
        );
    }
    // What Sluice would serve, as the compiler builds it.
    let secure = by_name["shop/secure-shop"];
    let routes: Vec<&str> = secure["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        [
            "secure.example.com / Prefix -> shop/web:80 (1 endpoints)",
            "tls secure.example.com -> own certificate, http redirects to https"
        ]
    );
    assert_eq!(secure["tls"][0]["secret"], "shop-tls");
    assert_eq!(secure["rules"][0]["paths"][0]["backend"], "web:80");
    let timeouts = by_name["shop/timeouts"]["routes"][0].as_str().unwrap();
    assert!(timeouts.contains("read-timeout=120s"), "{timeouts}");
    // A canary Ingress is an alternative backend of its main Ingress's route: no conflict,
    // and the canary compiled alone is not reported as lacking a main Ingress.
    assert_eq!(by_name["shop/timeouts"]["problems"], serde_json::json!([]));
    assert_eq!(
        by_name["shop/api-canary-header"]["problems"],
        serde_json::json!([])
    );
    // A value the reader rejects is a problem and a change of behaviour.
    let bad = &by_name["shop/bad-timeout"]["problems"][0];
    assert_eq!(
        bad["field"],
        "metadata.annotations[nginx.ingress.kubernetes.io/proxy-read-timeout]"
    );
    // Summary: counts per fate over every annotation, and the Ingresses that change.
    let summary = &report["summary"];
    assert_eq!(summary["ingresses"], EXPECTED.len());
    let changing: Vec<&str> = EXPECTED.iter().filter(|e| e.1).map(|e| e.0).collect();
    assert_eq!(summary["changes_behaviour"], changing.len());
    let mut listed: Vec<&str> = summary["changing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    listed.sort();
    let mut changing_sorted = changing.clone();
    changing_sorted.sort();
    assert_eq!(listed, changing_sorted);
    let mut per_fate: BTreeMap<&str, u64> =
        ["supported", "differs", "not-yet", "refused", "unknown"]
            .into_iter()
            .map(|f| (f, 0))
            .collect();
    for (_, _, fates) in EXPECTED {
        for (_, f) in *fates {
            *per_fate.get_mut(f).unwrap() += 1;
        }
    }
    for (fate, n) in per_fate {
        assert_eq!(summary["annotations"][fate], n, "{fate}");
    }
}

#[test]
fn text_report_names_each_ingress_its_routes_fates_and_the_summary() {
    let dir = fixtures();
    let out = migrate(&["--manifests", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "Ingress shop/storefront: same behaviour\n  serves:\n    shop.example.com / Prefix -> shop/web:80 (1 endpoints)\n",
        "Ingress shop/config-snippet: CHANGES BEHAVIOUR\n",
        "    refused   nginx.ingress.kubernetes.io/configuration-snippet = \"more_set_headers \\\"X-Frame-Options: DENY\\\";…\": nginx configuration text",
        "    supported nginx.ingress.kubernetes.io/canary-weight = \"20\": canary routing: a share of canary-weight-total, drawn per request\n",
        "    unknown   nginx.ingress.kubernetes.io/proxy-read-timout = \"60\": no such annotation (misspelt?)\n",
        "    differs   nginx.ingress.kubernetes.io/upstream-hash-by = \"$request_uri\"",
        "  changes behaviour: shop/waf\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let changing = EXPECTED.iter().filter(|e| e.1).count();
    assert!(
        text.contains(&format!(
            "summary: {} Ingress(es), {changing} would change behaviour; annotations: ",
            EXPECTED.len()
        )),
        "{text}"
    );
    assert!(!text.contains("already-sluice") && !text.contains("no-class"));
}

/// Copies the shared objects and `files` of the fixture into a fresh directory.
fn fixture_subset(name: &str, files: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-migrate-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["00-classes.yaml", "01-services.yaml", "02-secrets.yaml"]
        .iter()
        .chain(files)
    {
        std::fs::copy(fixtures().join(f), dir.join(f)).unwrap();
    }
    dir
}

#[test]
fn exit_status_is_0_when_nothing_changes_1_when_something_does_2_on_bad_input() {
    let plain = fixture_subset("plain", &["10-plain.yaml"]);
    let out = migrate(&["--manifests", plain.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("summary: 10 Ingress(es), 0 would change behaviour"),
        "{text}"
    );

    let snippets = fixture_subset("snippets", &["23-snippets.yaml"]);
    let out = migrate(&[
        "--manifests",
        snippets.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["summary"]["annotations"]["refused"], 3);

    // Another class: only Sluice's own Ingress of the fixture.
    let dir = fixtures();
    let out = migrate(&[
        "--manifests",
        dir.to_str().unwrap(),
        "--ingress-class",
        "sluice",
        "--controller-class",
        "sluice.dev/ingress-controller",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    assert_eq!(report["summary"]["ingresses"], 1);
    assert_eq!(report["ingresses"][0]["name"], "already-sluice");

    // Unreadable input, and usage errors (clap's own exit status 2).
    let out = migrate(&["--manifests", "/nonexistent/sluice-migrate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read directory"));
    let broken = std::env::temp_dir().join(format!("sluice-migrate-{}-broken", std::process::id()));
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("a.yaml"), "kind: Ingress\nmetadata: [\n").unwrap();
    assert_eq!(
        migrate(&["--manifests", broken.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(migrate(&[]).status.code(), Some(2));
    assert_eq!(
        migrate(&["--manifests", "x", "--kubeconfig", "y"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        migrate(&["--manifests", "x", "--format", "yaml"])
            .status
            .code(),
        Some(2)
    );
}

/// A one-line HTTP/1.1 upstream on loopback answering `ok` to everything.
fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    }
                }
            });
        }
    });
    port
}

fn get(addr: &str, host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An Ingress Sluice serves with `configuration-snippet` (refused) and `auth-keepalive` (documented
/// by ingress-nginx, not supported yet): both are logged with their fate, once, counted in
/// `/metrics`, and the Ingress is still served; `sluice check` lists them too.
#[test]
fn ignored_annotations_on_a_served_ingress_are_logged_counted_and_the_ingress_is_served() {
    let port = upstream();
    let dir = std::env::temp_dir().join(format!("sluice-migrate-{}-served", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: app, namespace: shop}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  namespace: shop
  labels: {{kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/configuration-snippet: |
      more_set_headers \"X-Served-By: nginx\";
    nginx.ingress.kubernetes.io/auth-keepalive: \"10\"
    nginx.ingress.kubernetes.io/proxy-read-timeout: \"30\"
spec:
  ingressClassName: sluice
  rules:
    - host: app.example.com
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}
"
        ),
    )
    .unwrap();
    let snippet = "metadata.annotations[nginx.ingress.kubernetes.io/configuration-snippet]: refused for safety: nginx configuration text";
    let mirror = "metadata.annotations[nginx.ingress.kubernetes.io/auth-keepalive]: not supported yet: one connection per auth subrequest; the Ingress is served without it";

    // sluice check: the routes, and both annotations reported (so it exits non-zero).
    let check = Command::new(BIN)
        .args(["check", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stdout.contains("app.example.com / Prefix -> shop/app:80 (1 endpoints) [read-timeout=30s]"),
        "{stdout}"
    );
    assert!(stderr.contains(snippet), "{stderr}");
    assert!(stderr.contains(mirror), "{stderr}");
    assert!(!check.status.success());

    // sluice run: served, logged once, counted.
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args(["run", "--manifests"])
        .arg(&dir)
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            &admin,
            "--workers",
            "1",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let http = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        log.push(line.clone());
        if let Some((_, rest)) = line.split_once("serving http on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let answer = get(&http, "app.example.com", "/");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert!(!answer.contains("X-Served-By"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = get(&admin, "localhost", "/metrics");
        if m.contains("sluice_annotations_ignored_total") || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("sluice_annotations_ignored_total{fate=\"refused\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_annotations_ignored_total{fate=\"not-yet\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_annotations_ignored_total{fate=\"unknown\"} 0\n"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
    log.extend(lines.map_while(Result::ok));
    let count = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count(snippet), 1, "{log:#?}");
    assert_eq!(count(mirror), 1, "{log:#?}");
}

/// Against the real API server: a few of the fixture's Ingresses (in a fresh namespace, with
/// their Services and EndpointSlices) applied, then `sluice migrate --kubeconfig`.
#[test]
fn migrate_reads_the_ingresses_of_a_real_api_server() {
    let test = "migrate_reads_the_ingresses_of_a_real_api_server";
    let Some(kubeconfig) = support::real_flow::real_kubeconfig(test) else {
        return;
    };
    let ns = format!("migrate-{}", std::process::id());
    let mut objects = vec![serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
    })];
    for file in [
        "00-classes.yaml",
        "01-services.yaml",
        "02-secrets.yaml",
        "10-plain.yaml",
        "23-snippets.yaml",
        "30-other-classes.yaml",
    ] {
        let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
        for mut doc in support::real_flow::yaml_documents(&text) {
            if doc["kind"] == "IngressClass" {
                // Cluster-scoped and shared by runs: the same objects each time.
            } else if doc["metadata"]["namespace"] == "shop" {
                doc["metadata"]["namespace"] = Value::String(ns.clone());
            } else {
                continue; // the legacy namespace's objects
            }
            objects.push(doc);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = support::real_flow::client(&kubeconfig).await;
        for o in &objects {
            support::real_flow::apply_object(&client, o, false)
                .await
                .unwrap_or_else(|e| panic!("apply {}: {e}", o["metadata"]["name"]));
        }
    });
    let out = migrate(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--watch-namespace",
        &ns,
        "--format",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let names: Vec<&str> = report["ingresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    // 10-plain.yaml without legacy-class (other namespace), and the three snippets.
    assert_eq!(names.len(), 9 + 3, "{names:?}");
    assert!(!names.contains(&"already-sluice") && !names.contains(&"no-class"));
    assert_eq!(report["summary"]["changes_behaviour"], 3);
    assert_eq!(report["summary"]["annotations"]["refused"], 3);
    let secure = report["ingresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "secure-shop")
        .unwrap();
    assert_eq!(
        secure["routes"][1],
        "tls secure.example.com -> own certificate, http redirects to https"
    );
    // Text, and nothing to change in the plain namespace subset: the same through the file.
    let out = migrate(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--watch-namespace",
        &ns,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Ingress {ns}/config-snippet: CHANGES BEHAVIOUR")),
        "{text}"
    );
}

/// Against the real API server: `sluice run` serving an Ingress with `configuration-snippet`
/// and `auth-keepalive` publishes a Warning Event (reason `Rejected`) per ignored annotation and logs
/// each once, and not again while the object keeps them.
///
/// Two things outside this change shape what the API server shows: kube's event `Recorder`
/// keys its series by (type, reason, action, object), not by note, so the two rejections of one
/// Ingress arrive as one Event with `series.count` 2 (the first note kept); and the cluster
/// watcher strips `metadata.generation` (`watch::strip_meta`), so reports cannot name it. When
/// the watcher keeps it, each report ends with `(generation N)` and a new generation is
/// reported again: the second half checks whichever of the two the binary does.
#[test]
fn ignored_annotations_become_warning_events_once_per_object_version() {
    use k8s_openapi::api::events::v1::Event;
    let test = "ignored_annotations_become_warning_events_once_per_object_version";
    let Some(kubeconfig) = support::real_flow::real_kubeconfig(test) else {
        return;
    };
    let ns = format!("migrate-events-{}", std::process::id());
    let ingress = |path: &str| {
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "app", "namespace": ns, "annotations": {
                "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";\n",
                "nginx.ingress.kubernetes.io/auth-keepalive": "10"}},
            "spec": {"ingressClassName": "sluice", "rules": [{"host": "app.example.com", "http": {"paths": [
                {"path": path, "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
        })
    };
    let text = std::fs::read_to_string(fixtures().join("01-services.yaml")).unwrap();
    let mut objects = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"}}),
    ];
    for mut doc in support::real_flow::yaml_documents(&text) {
        if doc["metadata"]["name"] == "web" || doc["metadata"]["name"] == "web-1" {
            doc["metadata"]["namespace"] = Value::String(ns.clone());
            objects.push(doc);
        }
    }
    objects.push(ingress("/"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(support::real_flow::client(&kubeconfig));
    rt.block_on(async {
        for o in &objects {
            support::real_flow::apply_object(&client, o, false)
                .await
                .unwrap_or_else(|e| panic!("apply {}: {e}", o["metadata"]["name"]));
        }
    });
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "--watch-namespace",
            &ns,
            "--pod-namespace",
            &ns,
            "--pod-name",
            "migrate-test",
        ])
        .args(["--election-id", &format!("sluice-{ns}")])
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let events: kube::Api<Event> = kube::Api::namespaced(client.clone(), &ns);
    // (publications counted with their series, the notes) of our Warning Events about `app`.
    let published = || -> (i32, Vec<String>) {
        let list = rt.block_on(events.list(&Default::default())).unwrap();
        let ours: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("Rejected")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("app")
            })
            .collect();
        let count = ours
            .iter()
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum();
        (count, ours.into_iter().filter_map(|e| e.note).collect())
    };
    let wait_for = |want: i32, what: &str| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (n, notes) = published();
            if n >= want || Instant::now() > deadline {
                assert_eq!(n, want, "{what}: {notes:#?}\n{:#?}", log.lock().unwrap());
                return notes;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let snippet = "metadata.annotations[nginx.ingress.kubernetes.io/configuration-snippet]: refused for safety: nginx configuration text";
    let mirror = "metadata.annotations[nginx.ingress.kubernetes.io/auth-keepalive]: not supported yet: one connection per auth subrequest";
    let notes = wait_for(2, "first version");
    assert!(
        notes
            .iter()
            .all(|n| n.starts_with(snippet) || n.starts_with(mirror)),
        "{notes:#?}"
    );
    let tagged = notes.iter().all(|n| n.ends_with("(generation 1)"));
    // Not again for the same object (resyncs, a status write by the leader).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(published().0, 2);
    // A new generation (a spec change).
    rt.block_on(support::real_flow::apply_object(
        &client,
        &ingress("/v2"),
        false,
    ))
    .unwrap();
    if tagged {
        wait_for(4, "second generation");
    } else {
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(published().0, 2);
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.lock().unwrap();
    let rejected = |needle: &str| {
        log.iter()
            .filter(|l| l.contains("WARN rejected: ") && l.contains(needle))
            .count()
    };
    let per_annotation = if tagged { 2 } else { 1 };
    assert_eq!(rejected(snippet), per_annotation, "{log:#?}");
    assert_eq!(rejected(mirror), per_annotation, "{log:#?}");
}
