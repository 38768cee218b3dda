//! The `sluice` binary: parse arguments, load config and routes, start the engine, wait for
//! SIGTERM/SIGINT, drain, exit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice::config::{Config, ConfigError, EngineKind, HttpsError};
use std::sync::atomic::{AtomicBool, Ordering};

use sluice::admin::{self, AdminHandle};
use sluice::control::certs;
use sluice::control::compile::{Compiled, Objects};
use sluice::control::files::{FileSource, FileWatcher};
use sluice::control::incremental::Incremental;
use sluice::control::manifests::{ManifestError, Object, parse_documents};
use sluice::control::watch::{KubeError, KubeSettings, KubeSource};
use sluice::demo;
use sluice::engine::access_log::{self, AccessLog};
use sluice::engine::{Engine, sys};

mod cli;
use clap::Parser;
use cli::{Cli, Command, Flags, LogArgs, LogFormat};

/// Why `sluice` stops with an error; `main` prints it once.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the kubernetes and manifests sources cannot be combined (yet): choose one")]
    SourcesCombined,
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("could not list the cluster within {0:?} (is the API server reachable?)")]
    SyncTimeout(Duration),
    #[error(transparent)]
    Certificate(#[from] sluice::control::certs::CertFileError),
    #[error("{0} manifest document(s) could not be read")]
    Manifests(usize),
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error("cannot start the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("{0}")]
    Engine(std::io::Error),
    #[error("{0}")]
    Admin(std::io::Error),
    #[error("cannot watch the manifests directory: {0}")]
    Watch(std::io::Error),
    #[error(
        "demo runs on the io_uring engine: its upstreams are on loopback, which the userspace stack cannot reach"
    )]
    DemoNeedsUring,
    #[error("{0}")]
    Demo(std::io::Error),
    #[error("embedded demo routes: {0}")]
    DemoRoutes(ManifestError),
    #[error("{0} object(s) or field(s) rejected")]
    Rejected(usize),
}

/// The config file, then the flags over it (a flag always wins over its key in the file).
fn load_config(args: &Flags) -> Result<Config, Error> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.manifests {
        config.manifests = Some(dir.clone());
    }
    if let Some(http) = args.http {
        config.http = http;
    }
    if let Some(https) = args.https {
        config.https = https;
    }
    if let Some(service) = &args.default_backend_service {
        config.compile.default_backend = Some(service.clone());
    }
    if let Some(secret) = &args.default_ssl_certificate {
        config.compile.tls.default_secret = Some(secret.clone());
    }
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    if let Some(engine) = args.engine {
        config.engine = engine;
    }
    if let Some(n) = args.workers {
        config.workers = None;
        config.worker_count = Some(n.get());
    }
    let k = &mut config.kubernetes;
    k.enabled |= args.kubernetes || args.kubeconfig.is_some();
    if let Some(path) = &args.kubeconfig {
        k.kubeconfig = Some(path.clone());
    }
    if let Some(ns) = &args.watch_namespace {
        k.watch_namespace = Some(ns.clone());
    }
    if let Some(id) = &args.election_id {
        k.election_id = id.clone();
    }
    if let Some(v) = &args.publish_service {
        k.publish_service = Some(v.clone());
    }
    if let Some(v) = &args.publish_status_address {
        k.publish_status_address = v.0.clone();
    }
    // `$POD_NAMESPACE` (or --pod-namespace) is the fallback: the file's key wins over it.
    if k.election_namespace.is_none() {
        k.election_namespace = args.pod_namespace.clone();
    }
    if let Some(c) = &args.ingress_class {
        config.compile.ingress_class = c.clone();
    }
    if let Some(c) = &args.controller_class {
        config.compile.controller = c.clone();
    }
    config.compile.watch_without_class |= args.watch_without_class;
    if config.kubernetes.enabled && config.manifests.is_some() {
        return Err(Error::SourcesCombined);
    }
    Ok(config)
}

/// Starts the Kubernetes source and waits for its first complete list of the cluster,
/// returning early (`None`) on SIGTERM/SIGINT.
fn sync_cluster(
    config: &Config,
    pod_name: Option<&str>,
    signals: &std::sync::mpsc::Receiver<i32>,
    within: Option<Duration>,
) -> Result<Option<(KubeSource, Compiled)>, Error> {
    let mut settings = KubeSettings::new(&config.kubernetes, &config.compile);
    if let Some(name) = pod_name {
        settings.identity = name.to_string();
    }
    tracing::info!(
        identity = %settings.identity,
        namespace = %settings.election_namespace,
        lease = %settings.options.election_id,
        "kubernetes: listing the cluster"
    );
    let source = KubeSource::start(settings).map_err(|e| Error::Kube(KubeError::Runtime(e)))?;
    let mut waited = Duration::ZERO;
    loop {
        if within.is_some_and(|limit| waited >= limit) {
            source.stop();
            return Err(Error::SyncTimeout(waited));
        }
        waited += Duration::from_millis(200);
        if let Ok(sig) = signals.try_recv() {
            tracing::info!(signal = sig, "signal before the first sync: exiting");
            source.stop();
            return Ok(None);
        }
        if let Some(compiled) = source.wait_synced(Duration::from_millis(200))? {
            return Ok(Some((source, compiled)));
        }
    }
}

/// Waits for SIGTERM/SIGINT; SIGUSR1 in between reopens the access log file (logrotate).
fn wait_for_stop() -> i32 {
    sys::wait_for_termination_or_usr1(&|| {
        if let Some(log) = access_log::installed() {
            log.reopen();
        }
    })
}

/// Signals, delivered on a channel by a thread of their own (all threads block them).
fn signal_channel() -> std::sync::mpsc::Receiver<i32> {
    sys::block_termination_signals();
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("sluice-signals".into())
        .spawn(move || {
            loop {
                if tx.send(wait_for_stop()).is_err() {
                    break;
                }
            }
        });
    rx
}

/// `sluice run` with the Kubernetes source: the engine starts on the first complete view of
/// the cluster (so readiness means "synced and every worker serves it"), then every change is
/// published until a signal.
fn serve_kube(config: &Config, pod_name: Option<&str>) -> Result<(), Error> {
    let signals = signal_channel();
    // `run` waits for the API server as long as it takes (the pod's startup probe decides).
    let Some((mut source, compiled)) = sync_cluster(config, pod_name, &signals, None)? else {
        return Ok(());
    };
    let (engine, admin) = start_engine(config, Arc::new(compiled.snapshot))?;
    let stats = source.stats();
    if let Ok(mut extra) = engine.state().extra_metrics.lock() {
        extra.push(Box::new(move |out: &mut String| stats.render(out)));
    }
    source.attach(engine.publisher());
    tracing::info!(
        workers = config.engine_config().workers.len(),
        admin = %admin.local_addr(),
        routes = "kubernetes",
        "serving http on {}",
        engine.local_addr(),
    );
    if let Some(https) = engine.https_addr() {
        tracing::info!("serving https on {https}");
    }
    let sig = signals.recv().unwrap_or(15);
    shutdown_delay(&engine.state().metrics, config.shutdown_delay);
    tracing::info!(signal = sig, grace = ?config.shutdown_grace, "draining");
    source.stop();
    engine.stop();
    engine.join().map_err(Error::Engine)?;
    admin.join();
    if let Some(log) = access_log::installed() {
        // The workers' last lines are with the logger thread: let it write them.
        log.drain(Duration::from_secs(2));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the manifests directory (if any) and compiles it with `extra`; prints every problem.
/// Loads the certificates the config names (files) and makes the fallback default: the
/// default file, else a self-signed certificate generated now.
fn load_certificates(config: &mut Config) -> Result<(), Error> {
    let now = certs::wall_clock();
    for f in &config.tls.certificates {
        let cert = certs::load_files(&f.cert, &f.key, now).map_err(Error::Certificate)?;
        config.compile.tls.files.push((f.hosts.clone(), cert));
    }
    config.compile.tls.default_cert = Some(match &config.tls.default_certificate_file {
        Some(f) => certs::load_files(&f.cert, &f.key, now).map_err(Error::Certificate)?,
        None => certs::self_signed().map_err(Error::Certificate)?,
    });
    Ok(())
}

fn compile_routes(
    config: &Config,
    extra: Vec<Object>,
) -> Result<(Incremental, Compiled, Option<FileSource>), Error> {
    let mut source = config.manifests.as_deref().map(FileSource::new);
    let errors = source.as_mut().map(FileSource::refresh).unwrap_or_default();
    for e in &errors {
        tracing::error!(error = %e, "{e}");
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
        sluice::control::report::rejected(d);
    }
    if !errors.is_empty() {
        return Err(Error::Manifests(errors.len()));
    }
    Ok((compiler, compiled, source))
}

/// Starts the configured data plane (io_uring workers, or userspace-stack workers, each with
/// the HTTP and HTTPS listeners), then the admin server over the engine's state.
fn start_engine(
    config: &Config,
    snapshot: Arc<sluice::core::snapshot::Snapshot>,
) -> Result<(Engine, AdminHandle), Error> {
    let https = Some(config.https_config()?);
    if config.log.access && access_log::installed().is_none() {
        let log = match &config.log.access_path {
            Some(path) => AccessLog::start_file(path.clone(), config.log.format, 64),
            None => AccessLog::start(Box::new(std::io::stdout()), config.log.format, 64),
        }
        .map_err(Error::AccessLog)?
        .with_sample(config.log.access_sample_ppm);
        access_log::install(log);
    }
    sluice::engine::metrics::set_backend_cap(config.log.backend_metrics_cap);
    let engine = match config.engine {
        EngineKind::Uring => Engine::start_with_https(config.engine_config(), https, snapshot),
        EngineKind::Userspace => Engine::start_userspace_with_https(
            config.engine_config(),
            https,
            config.userspace.clone(),
            snapshot,
        ),
    }
    .map_err(Error::Engine)?;
    if let Ok(mut extra) = engine.state().extra_metrics.lock() {
        extra.push(Box::new(sluice::control::catalog::render_metrics));
        extra.push(Box::new(sluice::control::health_check::render_metrics));
    }
    if let Some(log) = access_log::installed()
        && let Ok(mut extra) = engine.state().extra_metrics.lock()
    {
        let stats = log.stats.clone();
        extra.push(Box::new(move |out: &mut String| {
            use std::fmt::Write as _;
            for (name, help, value) in [
                (
                    "sluice_access_log_written_lines_total",
                    "Access log lines written.",
                    &stats.written_lines,
                ),
                (
                    "sluice_access_log_dropped_lines_total",
                    "Access log lines dropped because the logger was behind (workers never wait).",
                    &stats.dropped_lines,
                ),
            ] {
                let v = value.load(Ordering::Relaxed);
                let _ = write!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
                );
            }
        }));
    }
    let access = admin::AdminAccess {
        token_file: config.admin_token_file.clone(),
    };
    match admin::start_with(config.admin, engine.state().clone(), access) {
        Ok(admin) => Ok((engine, admin)),
        Err(e) => {
            engine.stop();
            let _ = engine.join();
            Err(Error::Admin(e))
        }
    }
}

fn serve(
    config: &Config,
    (compiler, compiled, source): (Incremental, Compiled, Option<FileSource>),
    banner: Option<String>,
) -> Result<(), Error> {
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
            .map_err(Error::Watch)?,
        ),
        None => None,
    };
    tracing::info!(
        workers = config.engine_config().workers.len(),
        admin = %admin.local_addr(),
        routes = match (&config.manifests, &banner) {
            (Some(_), _) => "files",
            (None, Some(_)) => "demo",
            (None, None) => "none",
        },
        "serving http on {}",
        engine.local_addr(),
    );
    if let Some(https) = engine.https_addr() {
        tracing::info!("serving https on {https}");
    }
    if let Some(banner) = banner {
        println!("{banner}");
    }
    let sig = wait_for_stop();
    shutdown_delay(&engine.state().metrics, config.shutdown_delay);
    tracing::info!(signal = sig, grace = ?config.shutdown_grace, "draining");
    stop_watching.store(true, Ordering::Release);
    if let Some(w) = watcher {
        w.join();
    }
    engine.stop();
    engine.join().map_err(Error::Engine)?;
    admin.join();
    if let Some(log) = access_log::installed() {
        // The workers' last lines are with the logger thread: let it write them.
        log.drain(Duration::from_secs(2));
    }
    tracing::info!("stopped");
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
    tracing::info!(delay = ?delay, "/readyz fails; still accepting (timeouts.shutdown_delay)");
    std::thread::sleep(delay);
}

fn demo_main(args: &Flags) -> Result<(), Error> {
    let mut config = load_config(args)?;
    if config.engine == EngineKind::Userspace {
        return Err(Error::DemoNeedsUring);
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
    let a = demo::spawn_upstream("pod-a", local).map_err(Error::Demo)?;
    let b = demo::spawn_upstream("pod-b", local).map_err(Error::Demo)?;
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
    let g = demo::spawn_guide(local, guide).map_err(Error::Demo)?;
    let (objects, errors) = parse_documents(&demo::manifests(a.addr, b.addr, g), "demo");
    if let Some(e) = errors.into_iter().next() {
        return Err(Error::DemoRoutes(e));
    }
    let routes = compile_routes(&config, objects)?;
    serve(&config, routes, Some(banner))
}

/// Installs the process log (not the access log): `--log-level` filter, `--log-format`, to
/// stderr.
fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&log.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match log.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

fn run_command(command: &Command) -> Result<(), Error> {
    let flags = command.flags();
    match command {
        Command::Run(_) => load_config(flags).and_then(|mut config| {
            load_certificates(&mut config)?;
            if config.kubernetes.enabled {
                return serve_kube(&config, flags.pod_name.as_deref());
            }
            let routes = compile_routes(&config, Vec::new())?;
            serve(&config, routes, None)
        }),
        Command::Check(_) => load_config(flags).and_then(|mut config| {
            load_certificates(&mut config)?;
            let compiled = if config.kubernetes.enabled {
                let signals = signal_channel();
                let within = Some(Duration::from_secs(30));
                let pod_name = flags.pod_name.as_deref();
                let Some((source, compiled)) = sync_cluster(&config, pod_name, &signals, within)?
                else {
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
                Err(Error::Rejected(compiled.diagnostics.len()))
            }
        }),
        Command::Demo(_) => demo_main(flags),
        Command::Migrate(_) => Ok(()), // handled in main: it has its own exit statuses
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    if let Command::Migrate(m) = &cli.command {
        // Its own exit statuses: 0 nothing changes, 1 something would, 2 unreadable input.
        return match sluice::control::migrate::run(&m.options()) {
            Ok((report, status)) => {
                print!("{report}");
                ExitCode::from(status)
            }
            Err(e) => {
                eprintln!("sluice migrate: {e}");
                ExitCode::from(sluice::control::migrate::EXIT_ERROR)
            }
        };
    }
    match run_command(&cli.command) {
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
    use std::path::PathBuf;

    fn args(list: &[&str]) -> Result<Flags, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("sluice").chain(list.iter().copied()))?;
        Ok(cli.command.flags().clone())
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
        assert!(args(&["run", "--publish-service", "nope"]).is_err());
        assert!(
            load_config(&args(&["run", "--kubernetes", "--manifests", "m"]).unwrap()).is_err(),
            "the two sources are not combined"
        );
    }

    #[test]
    fn bad_flags_are_errors_that_name_the_flag() {
        for (list, flag) in [
            (&["run", "--bogus"][..], "--bogus"),
            (&["run", "--http"][..], "--http"),
            (&["run", "--http", "nope"][..], "--http"),
            (&["run", "--workers", "0"][..], "--workers"),
            (&["run", "--engine", "dpdk"][..], "--engine"),
            (&["run", "--watch-namespace", ""][..], "--watch-namespace"),
        ] {
            let e = args(list).expect_err(&format!("{list:?}")).to_string();
            assert!(e.contains(flag), "{list:?}: {e}");
        }
        let c = load_config(&args(&["run", "--engine", "userspace"]).unwrap()).unwrap();
        assert_eq!(c.engine, EngineKind::Userspace);
    }

    #[test]
    fn pod_namespace_is_a_fallback_below_the_config_file() {
        let a = args(&["run", "--pod-namespace", "ingress"]).unwrap();
        let c = load_config(&a).unwrap();
        assert_eq!(c.kubernetes.election_namespace.as_deref(), Some("ingress"));
        let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(&file, "[sources]\nelection_namespace = \"edge\"\n").unwrap();
        let mut a = a;
        a.config = Some(file);
        let c = load_config(&a).unwrap();
        assert_eq!(c.kubernetes.election_namespace.as_deref(), Some("edge"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
