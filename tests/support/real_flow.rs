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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice::control::compile::CompileOptions;
use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource, KubeStats};
use sluice::core::snapshot::Snapshot;
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
        if let Some(bin) = etcd
            .as_ref()
            .ok()
            .and_then(|e| Path::new(e.trim()).parent())
        {
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
        let start = Instant::now();
        let out = Command::new(k8s_scripts().join(name))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out.status.success(), "{name} failed");
        let _ = writeln!(
            std::io::stderr(),
            "{name} ({}): {:.1?}",
            self.dir.display(),
            start.elapsed()
        );
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
    let engine = loopback_engine(compiled.snapshot);
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
        // A real server never finalizes the namespace here; the Service holds a ClusterIP.
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        let _ = svcs.delete("web", &DeleteParams::default()).await;
        let nss: Api<Namespace> = Api::all(client.clone());
        let _ = nss.delete(&ns, &DeleteParams::default()).await;
    });
}

// ---- Helpers for the real-server tests ----

/// One Sluice replica: the Kubernetes source and the io_uring engine (2 workers, loopback).
pub struct Replica {
    pub source: KubeSource,
    pub engine: Engine,
    pub stats: Arc<KubeStats>,
}

impl Replica {
    /// Starts the source, waits for its first sync (up to `sync`), then the engine.
    pub fn start(settings: KubeSettings, sync: Duration) -> Replica {
        let mut source = KubeSource::start(settings).unwrap();
        let compiled = source
            .wait_synced(sync)
            .expect("source works")
            .expect("initial sync in time");
        let engine = loopback_engine(compiled.snapshot);
        source.attach(engine.publisher());
        let stats = source.stats();
        Replica {
            source,
            engine,
            stats,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    pub fn stop(self) {
        self.source.stop();
        self.engine.stop();
        self.engine.join().unwrap();
    }

    /// CPU time (user + system) the control thread has used so far.
    pub fn control_cpu(&self) -> Duration {
        let tid = self.stats.control_thread.load(Ordering::Relaxed);
        thread_cpu(tid)
    }
}

/// CPU time of thread `tid` of this process, from /proc (clock ticks of 10 ms).
pub fn thread_cpu(tid: u64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Settings for a replica of the test's world: watches `ns` only, our class and controller,
/// writes `192.0.2.10` as status, Lease `lease` in `ns`.
pub fn settings(kubeconfig: &Path, world: &World, identity: &str) -> KubeSettings {
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(kubeconfig.to_path_buf()),
        watch_namespace: Some(world.ns.clone()),
        election_id: "sluice-leader".into(),
        election_namespace: Some(world.ns.clone()),
        publish_status_address: vec!["192.0.2.10".into()],
        ..KubeOptions::default()
    };
    let compile = CompileOptions {
        controller: world.controller.clone(),
        ingress_class: world.class.clone(),
        ..CompileOptions::default()
    };
    let mut s = KubeSettings::new(&options, &compile);
    s.identity = identity.to_string();
    s
}

/// The test's objects on the API server: a namespace, an IngressClass with a controller name
/// of its own (so tests running together and leftovers never see each other's Ingresses).
pub struct World {
    pub client: Client,
    pub rt: tokio::runtime::Runtime,
    pub ns: String,
    pub class: String,
    pub controller: String,
}

impl World {
    pub fn new(kubeconfig: &Path, name: &str) -> World {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(client(kubeconfig));
        let id = format!("{name}-{}", std::process::id());
        let w = World {
            client,
            rt,
            ns: format!("s13-{id}"),
            class: format!("s13-{id}"),
            controller: format!("sluice.dev/s13-{id}"),
        };
        w.create_all(&[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": w.ns}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                   "metadata": {"name": w.class}, "spec": {"controller": w.controller}}),
        ]);
        w
    }

    /// Creates (or replaces) `object` (kind from its `kind`; namespace: ours when it has one).
    pub fn apply(&self, object: Value) {
        self.rt.block_on(self.apply_async(object)).unwrap();
    }

    pub async fn apply_async(&self, mut object: Value) -> Result<(), kube::Error> {
        let kind = object["kind"].as_str().unwrap().to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let cluster = matches!(kind.as_str(), "Namespace" | "IngressClass");
        if !cluster {
            object["metadata"]["namespace"] = json!(self.ns);
        }
        let pp = PatchParams::apply("s13-test").force();
        let patch = Patch::Apply(&object);
        let ns = &self.ns;
        let c = self.client.clone();
        match kind.as_str() {
            "Namespace" => Api::<Namespace>::all(c)
                .patch(&name, &pp, &patch)
                .await
                .map(drop),
            "IngressClass" => Api::<IngressClass>::all(c)
                .patch(&name, &pp, &patch)
                .await
                .map(drop),
            "Service" => Api::<Service>::namespaced(c, ns)
                .patch(&name, &pp, &patch)
                .await
                .map(drop),
            "EndpointSlice" => Api::<EndpointSlice>::namespaced(c, ns)
                .patch(&name, &pp, &patch)
                .await
                .map(drop),
            "Ingress" => Api::<Ingress>::namespaced(c, ns)
                .patch(&name, &pp, &patch)
                .await
                .map(drop),
            "Secret" => Api::<Secret>::namespaced(c, ns)
                .patch(&name, &pp, &patch)
                .await
                .map(drop),
            other => panic!("World::apply: kind {other}"),
        }
    }

    pub fn create_all(&self, objects: &[Value]) {
        for o in objects {
            self.apply(o.clone());
        }
    }

    pub fn delete(&self, kind: &str, name: &str) {
        let dp = DeleteParams::default();
        let (c, ns) = (self.client.clone(), &self.ns);
        let r = self.rt.block_on(async {
            match kind {
                "Service" => Api::<Service>::namespaced(c, ns)
                    .delete(name, &dp)
                    .await
                    .map(drop),
                "EndpointSlice" => Api::<EndpointSlice>::namespaced(c, ns)
                    .delete(name, &dp)
                    .await
                    .map(drop),
                "Ingress" => Api::<Ingress>::namespaced(c, ns)
                    .delete(name, &dp)
                    .await
                    .map(drop),
                "IngressClass" => Api::<IngressClass>::all(c)
                    .delete(name, &dp)
                    .await
                    .map(drop),
                other => panic!("World::delete: kind {other}"),
            }
        });
        r.unwrap();
    }

    /// `.status.loadBalancer.ingress` IPs of Ingress `name`.
    pub fn lb_ips(&self, name: &str) -> Vec<String> {
        let ings: Api<Ingress> = Api::namespaced(self.client.clone(), &self.ns);
        self.rt
            .block_on(ings.get(name))
            .ok()
            .and_then(|i| i.status?.load_balancer?.ingress)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| l.ip)
            .collect()
    }

    /// An Ingress of our class: `host` → Service `svc` port 80.
    pub fn ingress(&self, name: &str, host: &str, svc: &str) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name},
            "spec": {"ingressClassName": self.class, "rules": [{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]}})
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let c = self.client.clone();
        let (class, ns) = (self.class.clone(), self.ns.clone());
        self.rt.block_on(async move {
            let _ = Api::<IngressClass>::all(c.clone())
                .delete(&class, &DeleteParams::default())
                .await;
            // Namespaces are never finalized here (no controllers): delete what is in it.
            let dp = DeleteParams::default();
            let lp = kube::api::ListParams::default();
            let _ = Api::<Ingress>::namespaced(c.clone(), &ns)
                .delete_collection(&dp, &lp)
                .await;
            let _ = Api::<EndpointSlice>::namespaced(c.clone(), &ns)
                .delete_collection(&dp, &lp)
                .await;
            // One by one (no deletecollection for Services in v1.28): each holds a ClusterIP
            // of the test server's /24.
            let svcs = Api::<Service>::namespaced(c.clone(), &ns);
            if let Ok(list) = svcs.list_metadata(&lp).await {
                for name in list.items.into_iter().filter_map(|s| s.metadata.name) {
                    let _ = svcs.delete(&name, &dp).await;
                }
            }
            let _ = Api::<Namespace>::all(c).delete(&ns, &dp).await;
        });
    }
}

/// A Service `name` with port `http` 80.
pub fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// An EndpointSlice of Service `svc`: (address, ready, serving, terminating) per endpoint.
pub fn endpoints(name: &str, svc: &str, eps: &[(SocketAddr, bool, bool, bool)]) -> Value {
    let list: Vec<Value> = eps
        .iter()
        .map(|(a, r, s, t)| {
            json!({"addresses": [a.ip().to_string()],
                   "conditions": {"ready": r, "serving": s, "terminating": t}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": list})
}

/// One request with `Connection: close`; (status, body) — (0, error) when it failed.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, "connect failed".into());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Who answers `host`: the pod's name, or the status code Sluice answered with.
pub fn answer(addr: SocketAddr, host: &str) -> String {
    let (status, body) = get(addr, host, "/");
    if status == 200 {
        body.split_whitespace().next().unwrap_or("").to_string()
    } else {
        status.to_string()
    }
}

/// Two unpinned workers on a loopback ephemeral port serving `snapshot` (the engine every
/// real-server test routes through).
pub fn loopback_engine(snapshot: Snapshot) -> Engine {
    Engine::start(
        EngineConfig {
            workers: vec![None; 2],
            http: "127.0.0.1:0".parse().unwrap(),
            upstream_max_idle: 4,
            upstream_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            ..EngineConfig::default()
        },
        Arc::new(snapshot),
    )
    .unwrap()
}

/// Polls `f` every 20 ms for up to `limit`; returns how long it took, panics after.
pub fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("not within {limit:?}: {what}");
}

/// Steady load on `host` from a thread until stopped: counts answers from `want` pods and
/// anything else (a failure), at about `rate` requests per second.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub failures: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, host: &str, want: &[&str], rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, fl) = (stop.clone(), ok.clone(), failed.clone(), failures.clone());
        let host = host.to_string();
        let want: Vec<String> = want.iter().map(|w| w.to_string()).collect();
        let pause = Duration::from_secs(1) / rate;
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let got = answer(addr, &host);
                if want.contains(&got) {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    f.fetch_add(1, Ordering::Relaxed);
                    let mut list = fl.lock().unwrap();
                    if list.len() < 10 {
                        list.push(got);
                    }
                }
                std::thread::sleep(pause);
            }
        });
        Load {
            stop,
            ok,
            failed,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops; returns (ok, failed).
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Stands in for a dead API server on its port: accepts each connection and closes it at
/// once, counting them, so a test can measure how often a client knocks while it is away.
pub struct DeadServer {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeadServer {
    pub fn start(port: u16) -> DeadServer {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        drop(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        DeadServer {
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// Connections seen so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops listening; returns the connections it saw.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.count.load(Ordering::Relaxed)
    }
}

/// A `sluice run` process against a cluster, with its admin server on `admin`.
pub struct SluiceProcess {
    pub child: std::process::Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl SluiceProcess {
    /// `sluice run --kubeconfig ...` for `world`, as pod `name` (the Lease identity), status
    /// address 192.0.2.10, one worker; `port` and `port + 1` for HTTP and admin, `port + 2`
    /// for HTTPS. Extra `env` for the process (e.g. a kubeconfig of other credentials).
    pub fn start(kubeconfig: &Path, world: &World, name: &str, port: u16) -> SluiceProcess {
        Self::start_with(kubeconfig, world, name, port, &world.ns, "sluice-leader")
    }

    /// As [`SluiceProcess::start`], with the Lease `election_id` in `lease_namespace`.
    pub fn start_with(
        kubeconfig: &Path,
        world: &World,
        name: &str,
        port: u16,
        lease_namespace: &str,
        election_id: &str,
    ) -> SluiceProcess {
        let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
        let https = format!("127.0.0.1:{}", port + 2);
        let log = std::env::temp_dir().join(format!("s13-{}-{name}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--workers", "1", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--watch-namespace", &world.ns])
            .args(["--ingress-class", &world.class])
            .args(["--controller-class", &world.controller])
            .args(["--publish-status-address", "192.0.2.10"])
            .args(["--http", &http.to_string(), "--https", &https])
            .args(["--admin", &admin.to_string()])
            .args(["--election-id", election_id])
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", lease_namespace)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        SluiceProcess {
            child,
            http,
            admin,
            log,
        }
    }

    /// The value of metric `name` (0 when not shown yet).
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = get(self.admin, "admin", "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        sh("kill", &[&format!("-{signal}"), &pid.to_string()]).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.child.wait().unwrap().code()
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records every `.status.loadBalancer.ingress` IP list Ingress `name` in `world` goes through,
/// from a watch of its own (a thread with a runtime and client of its own).
pub struct StatusRecorder {
    pub seen: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusRecorder {
    pub fn start(kubeconfig: &Path, ns: &str, name: &str) -> StatusRecorder {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kubeconfig, ns, name) = (kubeconfig.to_path_buf(), ns.to_string(), name.to_string());
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let api: Api<Ingress> = Api::namespaced(client(&kubeconfig).await, &ns);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let mut stream = watcher::watcher(api, config).boxed();
                while !st.load(Ordering::Relaxed) {
                    let next =
                        tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
                    let Ok(Some(Ok(event))) = next else { continue };
                    let objects: Vec<Ingress> = match event {
                        watcher::Event::Apply(i) | watcher::Event::InitApply(i) => vec![i],
                        _ => continue,
                    };
                    for i in objects {
                        let ips: Vec<String> = i
                            .status
                            .and_then(|s| s.load_balancer?.ingress)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|l| l.ip)
                            .collect();
                        let mut list = s.lock().unwrap();
                        if list.last() != Some(&ips) {
                            list.push(ips);
                        }
                    }
                }
            });
        });
        StatusRecorder {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops; every distinct status in order.
    pub fn stop(mut self) -> Vec<Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

/// The documents of a YAML file (multi-document), as JSON values; `kind: List` is flattened.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        let json: Value = serde_json::to_value(value).unwrap();
        if json["kind"] == "List" {
            out.extend(json["items"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(json);
        }
    }
    out
}

/// Server-side apply of one object of any kind (found by discovery), as field manager
/// `s13-test`; `dry_run` asks the server to validate and admit it without storing it
/// (`kubectl apply --server-side --dry-run=server`). Err: the server's reason.
pub async fn apply_object(client: &Client, object: &Value, dry_run: bool) -> Result<(), String> {
    use kube::api::DynamicObject;
    use kube::core::GroupVersionKind;
    use kube::discovery::{Scope, pinned_kind};
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"].as_str().unwrap_or("");
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{api_version} {kind}: {e}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("s13-test").force();
    params.dry_run = dry_run;
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .map(drop)
        .map_err(|e| format!("{kind} {name}: {e}"))
}

/// A kubeconfig at `path` for the API server of `admin` with a bearer `token` instead.
pub fn token_kubeconfig(admin: &Path, token: &str, path: &Path) {
    let text = std::fs::read_to_string(admin).unwrap();
    let mut kc: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap()).unwrap();
    kc["users"] = json!([{"name": "token", "user": {"token": token}}]);
    let cluster = kc["clusters"][0]["name"].clone();
    kc["contexts"] = json!([{"name": "token", "context": {"cluster": cluster, "user": "token"}}]);
    kc["current-context"] = json!("token");
    std::fs::write(path, serde_yaml::to_string(&kc).unwrap()).unwrap();
}
