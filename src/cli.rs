//! The command line (clap derive): `run`, `check`, `demo`, their flags with typed values, and
//! the environment fallbacks ingress-nginx users expect (`POD_NAME`, `POD_NAMESPACE`). A bad
//! value is refused by clap with the flag's name; what a flag overrides in the config file is
//! decided in `main::load_config`, not here.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{Parser, Subcommand, ValueEnum};

use sluice::config::{EngineKind, ValueError};
use sluice::control::watch::BadNamespacedName;

/// Sluice: a thread-per-core Kubernetes ingress proxy.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic: routes from --manifests DIR, the cluster, or neither (404 for all).
    Run(Flags),
    /// Validate; print the compiled routes, or every rejected object and field.
    Check(Flags),
    /// Embedded example: two upstreams and their routes, no cluster, no files.
    Demo(Flags),
    /// Report what Sluice would do with ingress-nginx's Ingresses (exit 0: nothing changes,
    /// 1: some Ingress would change behaviour, 2: input unreadable).
    Migrate(MigrateArgs),
}

/// `sluice migrate`: the Ingresses of one class, from --manifests DIR or --kubeconfig FILE.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Read the Ingresses (and their Services, EndpointSlices, Secrets, IngressClasses) here.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "kubeconfig",
        required_unless_present = "kubeconfig"
    )]
    pub manifests: Option<PathBuf>,
    /// Read them from the cluster FILE points at.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Only this namespace (with --kubeconfig).
    #[arg(long, value_name = "NS", value_parser = NonEmptyStringValueParser::new())]
    pub watch_namespace: Option<String>,
    /// IngressClass name (spec.ingressClassName or kubernetes.io/ingress.class) to read.
    #[arg(long, value_name = "NAME", default_value = "nginx", value_parser = NonEmptyStringValueParser::new())]
    pub ingress_class: String,
    /// IngressClasses with this controller are read too.
    #[arg(long, value_name = "NAME", default_value = sluice::control::migrate::NGINX_CONTROLLER, value_parser = NonEmptyStringValueParser::new())]
    pub controller_class: String,
    /// `text` for people, `json` for tools (shape in the README).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = MigrateFormat::Text)]
    pub format: MigrateFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateFormat {
    Text,
    Json,
}

impl MigrateArgs {
    pub fn options(&self) -> sluice::control::migrate::Options {
        use sluice::control::migrate::{Format, Options};
        Options {
            manifests: self.manifests.clone(),
            kubeconfig: self.kubeconfig.clone(),
            namespace: self.watch_namespace.clone(),
            ingress_class: self.ingress_class.clone(),
            controller_class: self.controller_class.clone(),
            format: match self.format {
                MigrateFormat::Text => Format::Text,
                MigrateFormat::Json => Format::Json,
            },
        }
    }
}

impl Command {
    /// The flags of `run`, `check` and `demo` (`migrate` has its own: all defaults here).
    pub fn flags(&self) -> &Flags {
        static NONE: std::sync::LazyLock<Flags> = std::sync::LazyLock::new(Flags::default);
        match self {
            Command::Run(f) | Command::Check(f) | Command::Demo(f) => f,
            Command::Migrate(_) => &NONE,
        }
    }
}

/// How the process logs (not the access log).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Least severe level logged; or a tracing filter such as `info,sluice::control=debug`.
    #[arg(long, global = true, help_heading = "Logging", value_name = "LEVEL", env = "SLUICE_LOG_LEVEL", default_value = "info", value_parser = parse_filter)]
    pub log_level: String,
    /// `text` for people, `json` (one object a line) for log collectors.
    #[arg(long, global = true, help_heading = "Logging", value_name = "FORMAT", value_enum, env = "SLUICE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_filter(text: &str) -> Result<String, tracing_subscriber::filter::ParseError> {
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_string())
}

fn parse_engine(text: &str) -> Result<EngineKind, ValueError> {
    EngineKind::parse(text)
}

fn parse_secret(text: &str) -> Result<(String, String), ValueError> {
    sluice::config::parse_secret_ref(text)
}

fn parse_service(text: &str) -> Result<sluice::control::compile::ServiceRef, ValueError> {
    sluice::config::parse_service_ref(text)
}

fn parse_namespaced(text: &str) -> Result<(String, String), BadNamespacedName> {
    sluice::control::watch::parse_namespaced_name(text)
}

/// `--publish-status-address A[,B]`: a list in one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(pub Vec<String>);

fn parse_addresses(text: &str) -> Result<Addresses, std::convert::Infallible> {
    Ok(Addresses(
        text.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
    ))
}

/// The flags every subcommand takes; each overrides the config file's key of the same meaning.
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args)]
pub struct Flags {
    /// The appliance's own config (TOML); defaults apply without it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Route source: a directory of Kubernetes YAML (Ingress, Service, EndpointSlice, Secret).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// HTTP listener.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// HTTPS listener.
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// Admin listener: /healthz /readyz /metrics (/routes: loopback or listen.admin_token_file).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Number of workers (one per core when absent).
    #[arg(long, value_name = "N")]
    pub workers: Option<NonZeroUsize>,
    /// Data plane: `uring` (kernel sockets) or `userspace` (smoltcp).
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine)]
    pub engine: Option<EngineKind>,
    /// Service for requests no rule matches, and for custom errors of Ingresses that name no
    /// `default-backend` (its first port unless `:port` is given).
    #[arg(long, value_name = "NS/NAME[:PORT]", value_parser = parse_service)]
    pub default_backend_service: Option<sluice::control::compile::ServiceRef>,
    /// Secret served when no certificate matches the SNI name.
    #[arg(long, value_name = "NS/NAME", value_parser = parse_secret)]
    pub default_ssl_certificate: Option<(String, String)>,

    /// Route source: watch the cluster (in-cluster in a pod, else kubeconfig).
    #[arg(long, help_heading = "Kubernetes")]
    pub kubernetes: bool,
    /// Watch the cluster FILE points at (implies --kubernetes).
    #[arg(long, value_name = "FILE", help_heading = "Kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// Only this namespace.
    #[arg(long, value_name = "NS", help_heading = "Kubernetes", value_parser = NonEmptyStringValueParser::new())]
    pub watch_namespace: Option<String>,
    /// IngressClass name served [default: sluice].
    #[arg(long, value_name = "NAME", help_heading = "Kubernetes", value_parser = NonEmptyStringValueParser::new())]
    pub ingress_class: Option<String>,
    /// IngressClass controller served [default: sluice.dev/ingress-controller].
    #[arg(long, value_name = "NAME", help_heading = "Kubernetes", value_parser = NonEmptyStringValueParser::new())]
    pub controller_class: Option<String>,
    /// Also serve Ingresses that name no class.
    #[arg(long = "watch-ingress-without-class", help_heading = "Kubernetes")]
    pub watch_without_class: bool,
    /// Status Lease name [default: sluice-leader].
    #[arg(long, value_name = "NAME", help_heading = "Kubernetes", value_parser = NonEmptyStringValueParser::new())]
    pub election_id: Option<String>,
    /// Status from this Service's LoadBalancer ingress.
    #[arg(long, value_name = "NS/NAME", help_heading = "Kubernetes", value_parser = parse_namespaced)]
    pub publish_service: Option<(String, String)>,
    /// Status from these addresses (comma separated).
    #[arg(long, value_name = "A[,B]", help_heading = "Kubernetes", value_parser = parse_addresses)]
    pub publish_status_address: Option<Addresses>,
    /// This replica's name in the status Lease (else the host name).
    #[arg(long, value_name = "NAME", env = "POD_NAME", help_heading = "Kubernetes", value_parser = NonEmptyStringValueParser::new())]
    pub pod_name: Option<String>,
    /// Namespace of the status Lease when the config names none [default: default].
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE", help_heading = "Kubernetes", value_parser = NonEmptyStringValueParser::new())]
    pub pod_namespace: Option<String>,
}
