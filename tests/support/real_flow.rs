//! The end-to-end flow of `tests/k8s_real.rs`, against whatever API server a kubeconfig points
//! at: applies an IngressClass, Service, EndpointSlice and Ingress in a throw-away namespace,
//! runs Sluice's Kubernetes source and engine, sends traffic through it to pods (in-process
//! upstreams in a network namespace the test makes, behind a veth pair: a real API server
//! refuses loopback addresses in an EndpointSlice), changes the endpoints, and checks the
//! status Sluice writes. `tests/k8s_mock.rs` runs it against the mock API server too.
//!
//! Also here, for the real-server tests: whether they run ([`real_kubeconfig`]), the pods
//! ([`Pods`]), a kube client, and a private API server instance ([`PrivateApi`]) for the tests
//! that stop it or change its flags.
#![allow(dead_code, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use sluice::control::compile::CompileOptions;
use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource};
use sluice::core::conn::ConnConfig;
use sluice::demo::{DemoUpstream, spawn_upstream};
use sluice::engine::{Engine, EngineConfig};

/// The kubeconfig of the real API server the tests run against (`SLUICE_TEST_KUBECONFIG`, which
/// CI exports after `../shared/k8s/up.sh`). Without it: in CI (`CI=true` or
/// `SLUICE_REQUIRE_K8S=1`) the test fails; elsewhere it says it was skipped and returns `None`.
pub fn real_kubeconfig(test: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_TEST_KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let truthy = |v: &str| std::env::var(v).is_ok_and(|v| v == "true" || v == "1");
    if truthy("CI") || truthy("SLUICE_REQUIRE_K8S") {
        panic!(
            "{test}: SLUICE_TEST_KUBECONFIG is not set, and CI needs the real API server \
             (.ci/k8s.sh starts it and exports the variable)"
        );
    }
    // Straight to stderr: the test harness captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no real API server. Run: \
         export SLUICE_TEST_KUBECONFIG=$(../shared/k8s/up.sh)"
    );
    None
}

/// `../shared/k8s` beside the checkout (or `SLUICE_K8S_SCRIPTS`): up.sh, down.sh.
pub fn k8s_scripts() -> PathBuf {
    std::env::var_os("SLUICE_K8S_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/k8s"))
}

/// A kube client for `kubeconfig` (the test's own, not Sluice's).
pub async fn client(kubeconfig: &Path) -> Client {
    let _ = sluice::control::certs::provider()
        .as_ref()
        .clone()
        .install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    Client::try_from(config).unwrap()
}

fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    sh("ip", &args).unwrap();
}

/// Pods in a network namespace of their own (`s13-<pid>-<n>`), reached from here through a
/// veth pair: host side `10.231.X.1/24`, pods at `10.231.X.2`, `.3`, ... port 8080, each an
/// in-process upstream whose listening socket was made inside the namespace (`setns` on the
/// thread that binds it). Dropping it removes the veth pair and the namespace.
pub struct Pods {
    netns: String,
    host_if: String,
    subnet: u8,
    next: u8,
    pods: Vec<DemoUpstream>,
}

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

impl Pods {
    pub fn new() -> Pods {
        let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns = format!("s13-{pid}-{n}");
        let host_if = format!("s13h{:x}", (pid << 4 | (n & 15)) & 0xff_ffff);
        let pod_if = format!("s13p{:x}", (pid << 4 | (n & 15)) & 0xff_ffff);
        // A /24 no interface here uses yet.
        let used = sh("ip", &["-4", "-o", "addr"]).unwrap_or_default();
        let start = (pid as u8).wrapping_add((n as u8).wrapping_mul(7));
        let subnet = (0..=255u8)
            .map(|i| start.wrapping_add(i))
            .find(|x| !used.contains(&format!("10.231.{x}.")))
            .expect("a free 10.231.X.0/24");
        let _ = sh("ip", &["netns", "del", &netns]);
        ip(&format!("netns add {netns}"));
        ip(&format!(
            "link add {host_if} type veth peer name {pod_if} netns {netns}"
        ));
        ip(&format!("addr add 10.231.{subnet}.1/24 dev {host_if}"));
        ip(&format!("link set {host_if} up"));
        ip(&format!("-n {netns} link set {pod_if} up"));
        ip(&format!("-n {netns} link set lo up"));
        Pods {
            netns,
            host_if,
            subnet,
            next: 2,
            pods: Vec::new(),
        }
    }

    /// Starts pod `name` (answers with its name) at the next address; returns that address.
    pub fn spawn(&mut self, name: &str) -> SocketAddr {
        let address = format!("10.231.{}.{}", self.subnet, self.next);
        self.next += 1;
        let pod_if = self.host_if.replacen("s13h", "s13p", 1);
        ip(&format!(
            "-n {} addr add {address}/24 dev {pod_if}",
            self.netns
        ));
        let addr: SocketAddr = format!("{address}:8080").parse().unwrap();
        let path = format!("/run/netns/{}", self.netns);
        let name = name.to_string();
        let pod = std::thread::spawn(move || {
            enter_netns(&path);
            spawn_upstream(&name, addr).unwrap()
        })
        .join()
        .unwrap();
        self.pods.push(pod);
        addr
    }

    /// Requests pod `i` (in spawn order) has answered.
    pub fn requests(&self, i: usize) -> usize {
        self.pods[i].requests.load(Ordering::Relaxed)
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.host_if]);
        let _ = sh("ip", &["netns", "del", &self.netns]);
    }
}

/// Moves the calling thread into the network namespace at `path`.
#[allow(unsafe_code)]
fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: setns on a descriptor we own, for this thread only; no memory is involved.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// An API server of the test's own (its own state directory and ports), for tests that stop
/// it or need other flags: `../shared/k8s/up.sh` with `SLUICE_K8S_DIR`, `K8S_API_PORT`,
/// `ETCD_PORT`, `ETCD_PEER_PORT` and `KUBE_APISERVER_EXTRA_ARGS` set. `down` and `up` again
/// keep its data (an outage); dropping it stops it and removes its state.
pub struct PrivateApi {
    dir: PathBuf,
    env: Vec<(String, String)>,
    pub port: u16,
    pub kubeconfig: PathBuf,
}

impl PrivateApi {
    /// `base` picks the ports: API `base`, etcd `base + 1` and `base + 2`.
    pub fn start(name: &str, base: u16, extra_args: &str) -> PrivateApi {
        let dir = std::env::temp_dir().join(format!("sluice-k8s-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut env = vec![
            ("SLUICE_K8S_DIR".to_string(), dir.display().to_string()),
            ("K8S_API_PORT".to_string(), base.to_string()),
            ("ETCD_PORT".to_string(), (base + 1).to_string()),
            ("ETCD_PEER_PORT".to_string(), (base + 2).to_string()),
            (
                "KUBE_APISERVER_EXTRA_ARGS".to_string(),
                extra_args.to_string(),
            ),
        ];
        // Reuse the etcd the main instance installed (up.sh would pip-install another).
        let main_dir = std::env::var("SLUICE_K8S_DIR").unwrap_or_else(|_| {
            std::env::temp_dir()
                .join("sluice-k8s")
                .display()
                .to_string()
        });
        let etcd = std::fs::read_to_string(Path::new(&main_dir).join("etcd.path"));
        if let Some(bin) = etcd.as_ref().ok().and_then(|e| Path::new(e.trim()).parent()) {
            let path = std::env::var("PATH").unwrap_or_default();
            env.push(("PATH".to_string(), format!("{}:{path}", bin.display())));
        }
        let mut api = PrivateApi {
            dir,
            env,
            port: base,
            kubeconfig: PathBuf::new(),
        };
        api.up();
        api
    }

    fn script(&self, name: &str, args: &[&str]) -> String {
        let out = Command::new(k8s_scripts().join(name))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.status.success(), "{name} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts (or restarts, keeping the data) the API server and etcd; waits until ready.
    pub fn up(&mut self) {
        self.kubeconfig = PathBuf::from(self.script("up.sh", &[]));
    }

    /// Stops both (the data stays).
    pub fn down(&self) {
        self.script("down.sh", &[]);
    }
}

impl Drop for PrivateApi {
    fn drop(&mut self) {
        let _ = Command::new(k8s_scripts().join("down.sh"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn who(addr: SocketAddr, host: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return "connect failed".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
            body.split_whitespace().next().unwrap_or("").to_string()
        }
        _ => out.lines().next().unwrap_or("").to_string(),
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

fn slice(ns: &str, addr: SocketAddr) -> EndpointSlice {
    serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": addr.port()}],
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}]}))
    .unwrap()
}

/// The whole flow against the API server `kubeconfig` points at; panics on any failure.
pub fn run(kubeconfig: &std::path::Path) {
    let kubeconfig = kubeconfig.to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = std::process::id();
    let ns = format!("sluice-test-{id}");
    let class_name = format!("sluice-test-{id}");
    let controller = format!("sluice.dev/test-{id}");
    let mut pods = Pods::new();
    let a = pods.spawn("pod-a");
    let b = pods.spawn("pod-b");
    let client = rt.block_on(client(&kubeconfig));
    let pp = PostParams::default();
    rt.block_on(async {
        let nss: Api<Namespace> = Api::all(client.clone());
        nss.create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
        let classes: Api<IngressClass> = Api::all(client.clone());
        classes
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": class_name},
                    "spec": {"controller": controller}}))
                .unwrap(),
            )
            .await
            .unwrap();
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        svcs.create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        slices.create(&pp, &slice(&ns, a)).await.unwrap();
        let ings: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        ings.create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"ingressClassName": class_name, "rules": [{"host": "real.test",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    });

    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(kubeconfig.clone()),
        watch_namespace: Some(ns.clone()),
        election_id: "sluice-test-leader".into(),
        election_namespace: Some(ns.clone()),
        publish_status_address: vec!["192.0.2.10".into()],
        ..KubeOptions::default()
    };
    let compile = CompileOptions {
        controller: controller.clone(),
        ingress_class: class_name.clone(),
        ..CompileOptions::default()
    };
    let mut source = KubeSource::start(KubeSettings::new(&options, &compile)).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(60))
        .unwrap()
        .expect("synced within 60 s");
    let engine = Engine::start(
        EngineConfig {
            workers: vec![None; 2],
            http: "127.0.0.1:0".parse().unwrap(),
            admin: None,
            conn: Arc::new(ConnConfig::default()),
            upstream_max_idle: 4,
            upstream_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        },
        Arc::new(compiled.snapshot),
    )
    .unwrap();
    source.attach(engine.publisher());
    let addr = engine.local_addr();
    eventually("traffic reaches pod-a", || {
        who(addr, "real.test") == "pod-a"
    });
    let ings: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    eventually("status written", || {
        rt.block_on(ings.get("web"))
            .ok()
            .and_then(|i| i.status?.load_balancer?.ingress)
            .is_some_and(|l| l.iter().any(|x| x.ip.as_deref() == Some("192.0.2.10")))
    });
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    rt.block_on(slices.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::to_value(slice(&ns, b)).unwrap()),
    ))
    .unwrap();
    eventually("traffic follows the EndpointSlice", || {
        who(addr, "real.test") == "pod-b"
    });

    source.stop();
    engine.stop();
    engine.join().unwrap();
    rt.block_on(async {
        let classes: Api<IngressClass> = Api::all(client.clone());
        let _ = classes.delete(&class_name, &DeleteParams::default()).await;
        let nss: Api<Namespace> = Api::all(client.clone());
        let _ = nss.delete(&ns, &DeleteParams::default()).await;
    });
}
