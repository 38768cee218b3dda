//! The `sluice` binary: parse arguments, load config and routes, start the engine, wait for
//! SIGTERM/SIGINT, drain, exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use sluice::config::Config;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice::control::certs;
use sluice::control::compile::{Compiled, Objects, compile};
use sluice::control::files::{FileSource, FileWatcher};
use sluice::control::manifests::{Object, parse_documents};
use sluice::demo;
use sluice::engine::{Engine, uring};

const USAGE: &str = "\
usage:
  sluice run   [--config FILE] [--manifests DIR] [--http ADDR] [--https ADDR] [--admin ADDR]
               [--workers N] [--default-ssl-certificate NS/NAME]
  sluice check [--config FILE] [--manifests DIR]   validate; print the compiled routes or errors
  sluice demo  [--http ADDR]                       embedded default: no cluster, no files
  sluice --version | --help";

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
    Ok(config)
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
) -> Result<(Compiled, Option<FileSource>), String> {
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
    let compiled = compile(&objects, &config.compile, 1);
    for d in &compiled.diagnostics {
        eprintln!("sluice: rejected: {d}");
    }
    if !errors.is_empty() {
        return Err(format!(
            "{} manifest document(s) could not be read",
            errors.len()
        ));
    }
    Ok((compiled, source))
}

fn serve(
    config: &Config,
    compiled: Compiled,
    source: Option<FileSource>,
    banner: Option<String>,
) -> Result<(), String> {
    uring::block_termination_signals();
    let https = config.https_config()?;
    let engine = Engine::start_with_https(
        config.engine_config(),
        Some(https),
        Arc::new(compiled.snapshot),
    )
    .map_err(|e| e.to_string())?;
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = match source {
        Some(source) => Some(
            FileWatcher::spawn(
                source,
                config.compile.clone(),
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
        engine
            .admin_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    if let Some(https) = engine.https_addr() {
        eprintln!("sluice: serving https on {https}");
    }
    if let Some(banner) = banner {
        println!("{banner}");
    }
    let sig = uring::wait_for_termination();
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
    eprintln!("sluice: stopped");
    Ok(())
}

fn demo_main(args: &Args) -> Result<(), String> {
    let mut config = load_config(args)?;
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
    let (objects, errors) = parse_documents(&demo::manifests(a.addr, b.addr), "demo");
    if let Some(e) = errors.first() {
        return Err(format!("embedded demo routes: {e}"));
    }
    let (compiled, source) = compile_routes(&config, objects)?;
    let h = config.http;
    let banner = format!(
        "Sluice demo: two in-process upstreams (pod-a {}, pod-b {}) behind {h}. Try:\n\
         \n  curl -H 'Host: demo.local' http://{h}/            # host routing -> pod-a\n\
         \x20 curl -H 'Host: demo.local' http://{h}/api/users   # longest path -> pod-b\n\
         \x20 curl -H 'Host: x.apps.local' http://{h}/ -s; curl -H 'Host: y.apps.local' http://{h}/ -s\n\
         \x20                                                   # wildcard host, round-robin pod-a/pod-b\n\
         \x20 curl -i -H 'Host: nowhere' http://{h}/            # 404 from Sluice\n\
         \x20 curl -k --resolve demo.local:{p}:127.0.0.1 https://demo.local:{p}/\n\
         \x20                                                   # HTTPS, self-signed default certificate\n\
         \x20 curl http://{}/metrics                     # Prometheus metrics\n\
         \x20 curl http://{}/routes                      # the compiled routes\n\
         \nCtrl-C stops it.",
        a.addr,
        b.addr,
        config.admin,
        config.admin,
        p = config.https.port()
    );
    serve(&config, compiled, source, Some(banner))
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
            let (compiled, source) = compile_routes(&config, Vec::new())?;
            serve(&config, compiled, source, None)
        }),
        "check" => load_config(&args).and_then(|mut config| {
            load_certificates(&mut config)?;
            let (compiled, _) = compile_routes(&config, Vec::new())?;
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
    fn bad_flags_are_errors() {
        assert!(args(&["run", "--bogus"]).is_err());
        assert!(args(&["run", "--http"]).is_err());
        assert!(load_config(&args(&["run", "--http", "nope"]).unwrap()).is_err());
        assert!(load_config(&args(&["run", "--workers", "0"]).unwrap()).is_err());
    }
}
