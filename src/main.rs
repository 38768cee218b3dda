//! The `sluice` binary: parse arguments, load config and routes, start the engine, wait for
//! SIGTERM/SIGINT, drain, exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice::config::{Config, EngineKind};
use std::sync::atomic::{AtomicBool, Ordering};

use sluice::admin::{self, AdminHandle};
use sluice::control::certs;
use sluice::control::compile::{Compiled, Objects};
use sluice::control::files::{FileSource, FileWatcher};
use sluice::control::incremental::Incremental;
use sluice::control::manifests::{Object, parse_documents};
use sluice::control::watch::{KubeSettings, KubeSource, parse_namespaced_name};
use sluice::demo;
use sluice::engine::{Engine, sys};

const USAGE: &str = "\
usage:
  sluice run   [--config FILE] [--manifests DIR] [--http ADDR] [--https ADDR] [--admin ADDR]
               [--workers N] [--engine uring|userspace] [--default-ssl-certificate NS/NAME]
               [KUBERNETES FLAGS]
  sluice check [--config FILE] [--manifests DIR] [KUBERNETES FLAGS]
                                                   validate; print the compiled routes or errors
  sluice demo  [--http ADDR]                       embedded default: no cluster, no files
  sluice --version | --help

kubernetes flags (route source: the cluster instead of --manifests):
  --kubernetes                      watch the cluster (in-cluster in a pod, else kubeconfig)
  --kubeconfig FILE                 watch the cluster FILE points at
  --watch-namespace NS              only this namespace
  --ingress-class NAME              default sluice
  --controller-class NAME           default sluice.dev/ingress-controller
  --watch-ingress-without-class     also serve Ingresses that name no class
  --election-id NAME                status Lease name, default sluice-leader
  --publish-service NS/NAME         status from this Service's LoadBalancer ingress
  --publish-status-address A[,B]    status from these addresses";

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    command: String,
    config: Option<PathBuf>,
    manifests: Option<PathBuf>,
    http: Option<String>,
    https: Option<String>,
    default_ssl_certificate: Option<String>,
    admin: Option<String>,
    workers: Option<String>,
    kubernetes: bool,
    kubeconfig: Option<PathBuf>,
    watch_namespace: Option<String>,
    ingress_class: Option<String>,
    controller_class: Option<String>,
    watch_without_class: bool,
    election_id: Option<String>,
    publish_service: Option<String>,
    publish_status_address: Option<String>,
    engine: Option<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        command: it.next().ok_or("no command given")?,
        ..Args::default()
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => args.config = Some(value()?.into()),
            "--manifests" => args.manifests = Some(value()?.into()),
            "--http" => args.http = Some(value()?),
            "--https" => args.https = Some(value()?),
            "--default-ssl-certificate" => args.default_ssl_certificate = Some(value()?),
            "--admin" => args.admin = Some(value()?),
            "--workers" => args.workers = Some(value()?),
            "--kubernetes" => args.kubernetes = true,
            "--kubeconfig" => args.kubeconfig = Some(value()?.into()),
            "--watch-namespace" => args.watch_namespace = Some(value()?),
            "--ingress-class" => args.ingress_class = Some(value()?),
            "--controller-class" => args.controller_class = Some(value()?),
            "--watch-ingress-without-class" => args.watch_without_class = true,
            "--election-id" => args.election_id = Some(value()?),
            "--publish-service" => args.publish_service = Some(value()?),
            "--publish-status-address" => args.publish_status_address = Some(value()?),
            "--engine" => args.engine = Some(value()?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn load_config(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(dir) = &args.manifests {
        config.manifests = Some(dir.clone());
    }
    if let Some(http) = &args.http {
        config.http = http
            .parse()
            .map_err(|_| format!("--http: not an address: {http}"))?;
    }
    if let Some(https) = &args.https {
        config.https = https
            .parse()
            .map_err(|_| format!("--https: not an address: {https}"))?;
    }
    if let Some(secret) = &args.default_ssl_certificate {
        config.compile.tls.default_secret = Some(
            sluice::config::parse_secret_ref(secret)
                .map_err(|e| format!("--default-ssl-certificate: {e}"))?,
        );
    }
    if let Some(admin) = &args.admin {
        config.admin = admin
            .parse()
            .map_err(|_| format!("--admin: not an address: {admin}"))?;
    }
    if let Some(engine) = &args.engine {
        config.engine = EngineKind::parse(engine).map_err(|e| format!("--engine: {e}"))?;
    }
    if let Some(w) = &args.workers {
        let n: usize = w
            .parse()
            .map_err(|_| format!("--workers: not a number: {w}"))?;
        if n == 0 {
            return Err("--workers: must be at least 1".into());
        }
        config.workers = None;
        config.worker_count = Some(n);
    }
    let k = &mut config.kubernetes;
    k.enabled |= args.kubernetes || args.kubeconfig.is_some();
    if let Some(path) = &args.kubeconfig {
        k.kubeconfig = Some(path.clone());
    }
    let non_empty = |flag: &str, v: &Option<String>| match v {
        Some(v) if v.is_empty() => Err(format!("{flag}: must not be empty")),
        v => Ok(v.clone()),
    };
    if let Some(ns) = non_empty("--watch-namespace", &args.watch_namespace)? {
        k.watch_namespace = Some(ns);
    }
    if let Some(id) = non_empty("--election-id", &args.election_id)? {
        k.election_id = id;
    }
    if let Some(v) = &args.publish_service {
        k.publish_service =
            Some(parse_namespaced_name(v).map_err(|e| format!("--publish-service: {e}"))?);
    }
    if let Some(v) = &args.publish_status_address {
        k.publish_status_address = v
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
    }
    if let Some(c) = non_empty("--ingress-class", &args.ingress_class)? {
        config.compile.ingress_class = c;
    }
    if let Some(c) = non_empty("--controller-class", &args.controller_class)? {
        config.compile.controller = c;
    }
    config.compile.watch_without_class |= args.watch_without_class;
    if config.kubernetes.enabled && config.manifests.is_some() {
        return Err(
            "the kubernetes and manifests sources cannot be combined (yet): choose one".into(),
        );
    }
    Ok(config)
}

/// Starts the Kubernetes source and waits for its first complete list of the cluster,
/// returning early (`None`) on SIGTERM/SIGINT.
fn sync_cluster(
    config: &Config,
    signals: &std::sync::mpsc::Receiver<i32>,
    within: Option<Duration>,
) -> Result<Option<(KubeSource, Compiled)>, String> {
    let settings = KubeSettings::new(&config.kubernetes, &config.compile);
    eprintln!(
        "sluice: kubernetes: listing the cluster (identity {}, lease {}/{})",
        settings.identity, settings.election_namespace, settings.options.election_id
    );
    let source = KubeSource::start(settings).map_err(|e| e.to_string())?;
    let mut waited = Duration::ZERO;
    loop {
        if within.is_some_and(|limit| waited >= limit) {
            source.stop();
            return Err(format!(
                "could not list the cluster within {waited:?} (is the API server reachable?)"
            ));
        }
        waited += Duration::from_millis(200);
        if let Ok(sig) = signals.try_recv() {
            eprintln!("sluice: signal {sig} before the first sync: exiting");
            source.stop();
            return Ok(None);
        }
        if let Some(compiled) = source.wait_synced(Duration::from_millis(200))? {
            return Ok(Some((source, compiled)));
        }
    }
}

/// Signals, delivered on a channel by a thread of their own (all threads block them).
fn signal_channel() -> std::sync::mpsc::Receiver<i32> {
    sys::block_termination_signals();
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            loop {
                if tx.send(sys::wait_for_termination()).is_err() {
                    break;
                }
            }
        });
    rx
}

/// `sluice run` with the Kubernetes source: the engine starts on the first complete view of
/// the cluster (so readiness means "synced and every worker serves it"), then every change is
/// published until a signal.
fn serve_kube(config: &Config) -> Result<(), String> {
    let signals = signal_channel();
    // `run` waits for the API server as long as it takes (the pod's startup probe decides).
    let Some((mut source, compiled)) = sync_cluster(config, &signals, None)? else {
        return Ok(());
    };
    let (engine, admin) = start_engine(config, Arc::new(compiled.snapshot))?;
    let stats = source.stats();
    if let Ok(mut extra) = engine.state().extra_metrics.lock() {
        extra.push(Box::new(move |out: &mut String| stats.render(out)));
    }
    source.attach(engine.publisher());
    eprintln!(
        "sluice: serving http on {} with {} worker(s); admin on {}; routes from the cluster",
        engine.local_addr(),
        config.engine_config().workers.len(),
        admin.local_addr()
    );
    if let Some(https) = engine.https_addr() {
        eprintln!("sluice: serving https on {https}");
    }
    let sig = signals.recv().unwrap_or(15);
    shutdown_delay(&engine.state().metrics, config.shutdown_delay);
    eprintln!(
        "sluice: signal {sig}: draining (grace {:?})",
        config.shutdown_grace
    );
    source.stop();
    engine.stop();
    engine.join().map_err(|e| e.to_string())?;
    admin.join();
    eprintln!("sluice: stopped");
    Ok(())
}

/// Loads the manifests directory (if any) and compiles it with `extra`; prints every problem.
/// Loads the certificates the config names (files) and makes the fallback default: the
/// default file, else a self-signed certificate generated now.
fn load_certificates(config: &mut Config) -> Result<(), String> {
    let now = certs::wall_clock();
    for f in &config.tls.certificates {
        let cert = certs::load_files(&f.cert, &f.key, now)?;
        config.compile.tls.files.push((f.hosts.clone(), cert));
    }
    config.compile.tls.default_cert = Some(match &config.tls.default_certificate_file {
        Some(f) => certs::load_files(&f.cert, &f.key, now)?,
        None => certs::self_signed()?,
    });
    Ok(())
}

fn compile_routes(
    config: &Config,
    extra: Vec<Object>,
) -> Result<(Incremental, Compiled, Option<FileSource>), String> {
    let mut source = config.manifests.as_deref().map(FileSource::new);
    let errors = source.as_mut().map(FileSource::refresh).unwrap_or_default();
    for e in &errors {
        eprintln!("sluice: {e}");
    }
    let mut objects = source.as_ref().map(FileSource::objects).unwrap_or_default();
    let extra = Objects::from_objects(extra);
    objects.ingresses.extend(extra.ingresses);
    objects.classes.extend(extra.classes);
    objects.services.extend(extra.services);
    objects.slices.extend(extra.slices);
    objects.secrets.extend(extra.secrets);
    let (compiler, compiled) = Incremental::new(&objects, config.compile.clone(), 1);
    for d in &compiled.diagnostics {
        eprintln!("sluice: rejected: {d}");
    }
    if !errors.is_empty() {
        return Err(format!(
            "{} manifest document(s) could not be read",
            errors.len()
        ));
    }
    Ok((compiler, compiled, source))
}

/// Starts the configured data plane (io_uring workers, or userspace-stack workers, each with
/// the HTTP and HTTPS listeners), then the admin server over the engine's state.
fn start_engine(
    config: &Config,
    snapshot: Arc<sluice::core::snapshot::Snapshot>,
) -> Result<(Engine, AdminHandle), String> {
    let https = Some(config.https_config()?);
    let engine = match config.engine {
        EngineKind::Uring => Engine::start_with_https(config.engine_config(), https, snapshot),
        EngineKind::Userspace => Engine::start_userspace_with_https(
            config.engine_config(),
            https,
            config.userspace.clone(),
            snapshot,
        ),
    }
    .map_err(|e| e.to_string())?;
    match admin::start(config.admin, engine.state().clone()) {
        Ok(admin) => Ok((engine, admin)),
        Err(e) => {
            engine.stop();
            let _ = engine.join();
            Err(e.to_string())
        }
    }
}

fn serve(
    config: &Config,
    (compiler, compiled, source): (Incremental, Compiled, Option<FileSource>),
    banner: Option<String>,
) -> Result<(), String> {
    sys::block_termination_signals();
    let (engine, admin) = start_engine(config, Arc::new(compiled.snapshot))?;
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = match source {
        Some(source) => Some(
            FileWatcher::spawn(
                source,
                compiler,
                engine.publisher(),
                1,
                stop_watching.clone(),
            )
            .map_err(|e| format!("cannot watch the manifests directory: {e}"))?,
        ),
        None => None,
    };
    eprintln!(
        "sluice: serving http on {} with {} worker(s); admin on {}",
        engine.local_addr(),
        config.engine_config().workers.len(),
        admin.local_addr()
    );
    if let Some(https) = engine.https_addr() {
        eprintln!("sluice: serving https on {https}");
    }
    if let Some(banner) = banner {
        println!("{banner}");
    }
    let sig = sys::wait_for_termination();
    shutdown_delay(&engine.state().metrics, config.shutdown_delay);
    eprintln!(
        "sluice: signal {sig}: draining (grace {:?})",
        config.shutdown_grace
    );
    stop_watching.store(true, Ordering::Release);
    if let Some(w) = watcher {
        w.join();
    }
    engine.stop();
    engine.join().map_err(|e| e.to_string())?;
    admin.join();
    eprintln!("sluice: stopped");
    Ok(())
}

/// `timeouts.shutdown_delay`: `/readyz` fails while the workers still accept, so a balancer
/// health-checking it stops sending new connections before the drain closes the listeners.
fn shutdown_delay(workers: &[Arc<sluice::engine::metrics::WorkerMetrics>], delay: Duration) {
    if delay.is_zero() {
        return;
    }
    for m in workers {
        m.serving.store(false, Ordering::Release);
    }
    eprintln!("sluice: /readyz fails; still accepting for {delay:?} (timeouts.shutdown_delay)");
    std::thread::sleep(delay);
}

fn demo_main(args: &Args) -> Result<(), String> {
    let mut config = load_config(args)?;
    if config.engine == EngineKind::Userspace {
        return Err(
            "demo runs on the io_uring engine: its upstreams are on loopback, which the \
             userspace stack cannot reach"
                .into(),
        );
    }
    if args.http.is_none() {
        config.http = "127.0.0.1:8080".parse().expect("valid");
    }
    if args.admin.is_none() {
        config.admin = "127.0.0.1:10254".parse().expect("valid");
    }
    if args.https.is_none() {
        config.https = "127.0.0.1:8443".parse().expect("valid");
    }
    load_certificates(&mut config)?;
    let local = "127.0.0.1:0".parse().expect("valid");
    let a = demo::spawn_upstream("pod-a", local).map_err(|e| e.to_string())?;
    let b = demo::spawn_upstream("pod-b", local).map_err(|e| e.to_string())?;
    let guide = demo::Guide {
        http: config.http,
        https: config.https,
        admin: config.admin,
        pod_a: a.addr,
        pod_b: b.addr,
    };
    let banner = format!(
        "{}\nOpen http://{}/ for this list. Ctrl-C stops it.",
        guide.text(),
        config.http
    );
    let g = demo::spawn_guide(local, guide).map_err(|e| e.to_string())?;
    let (objects, errors) = parse_documents(&demo::manifests(a.addr, b.addr, g), "demo");
    if let Some(e) = errors.first() {
        return Err(format!("embedded demo routes: {e}"));
    }
    let routes = compile_routes(&config, objects)?;
    serve(&config, routes, Some(banner))
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    match argv.peek().map(String::as_str) {
        None | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version") => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let result = parse_args(argv).and_then(|args| match args.command.as_str() {
        "run" => load_config(&args).and_then(|mut config| {
            load_certificates(&mut config)?;
            if config.kubernetes.enabled {
                return serve_kube(&config);
            }
            let routes = compile_routes(&config, Vec::new())?;
            serve(&config, routes, None)
        }),
        "check" => load_config(&args).and_then(|mut config| {
            load_certificates(&mut config)?;
            let compiled = if config.kubernetes.enabled {
                let signals = signal_channel();
                let within = Some(Duration::from_secs(30));
                let Some((source, compiled)) = sync_cluster(&config, &signals, within)? else {
                    return Ok(());
                };
                source.stop();
                compiled
            } else {
                compile_routes(&config, Vec::new())?.1
            };
            print!("{}", compiled.snapshot);
            if compiled.diagnostics.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} object(s) or field(s) rejected",
                    compiled.diagnostics.len()
                ))
            }
        }),
        "demo" => demo_main(&args),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_parse_and_override_the_file() {
        let a = args(&[
            "run",
            "--manifests",
            "m",
            "--http",
            "127.0.0.1:81",
            "--workers",
            "3",
        ])
        .unwrap();
        assert_eq!(a.command, "run");
        let c = load_config(&a).unwrap();
        assert_eq!(c.http, "127.0.0.1:81".parse().unwrap());
        assert_eq!(c.worker_count, Some(3));
        assert_eq!(c.manifests, Some(PathBuf::from("m")));
    }

    #[test]
    fn kubernetes_flags_parse() {
        let c = load_config(
            &args(&[
                "run",
                "--kubeconfig",
                "/k",
                "--watch-namespace",
                "shop",
                "--ingress-class",
                "edge",
                "--controller-class",
                "example.com/edge",
                "--watch-ingress-without-class",
                "--election-id",
                "edge-leader",
                "--publish-service",
                "sluice/lb",
                "--publish-status-address",
                "203.0.113.1, lb.example.com",
            ])
            .unwrap(),
        )
        .unwrap();
        let k = &c.kubernetes;
        assert!(k.enabled);
        assert_eq!(k.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(k.watch_namespace.as_deref(), Some("shop"));
        assert_eq!(k.election_id, "edge-leader");
        assert_eq!(k.publish_service, Some(("sluice".into(), "lb".into())));
        assert_eq!(k.publish_status_address, ["203.0.113.1", "lb.example.com"]);
        assert_eq!(c.compile.ingress_class, "edge");
        assert_eq!(c.compile.controller, "example.com/edge");
        assert!(c.compile.watch_without_class);
        assert!(
            load_config(&args(&["run", "--kubernetes"]).unwrap())
                .unwrap()
                .kubernetes
                .enabled
        );
        assert!(load_config(&args(&["run", "--publish-service", "nope"]).unwrap()).is_err());
        assert!(
            load_config(&args(&["run", "--kubernetes", "--manifests", "m"]).unwrap()).is_err(),
            "the two sources are not combined"
        );
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(args(&["run", "--bogus"]).is_err());
        assert!(args(&["run", "--http"]).is_err());
        assert!(load_config(&args(&["run", "--http", "nope"]).unwrap()).is_err());
        assert!(load_config(&args(&["run", "--workers", "0"]).unwrap()).is_err());
        assert!(load_config(&args(&["run", "--engine", "dpdk"]).unwrap()).is_err());
        let c = load_config(&args(&["run", "--engine", "userspace"]).unwrap()).unwrap();
        assert_eq!(c.engine, EngineKind::Userspace);
    }
}
