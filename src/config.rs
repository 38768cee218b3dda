//! The appliance's own static configuration (TOML): workers, listeners, limits, timeouts,
//! upstream pooling and route sources. Every key is optional and defaults to what
//! `configs/sluice.toml` shows. Unknown keys are errors, and every error names the file, the
//! line and column, and the field.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::control::compile::{CompileOptions, PortRef, ServiceRef};
use crate::control::watch::{BadNamespacedName, KubeOptions, parse_namespaced_name};
use crate::core::client_addr::ForwardedTrust;
use crate::core::conn::{ConnConfig, Scheme, Timeouts};
use crate::core::http1::{Limits, MAX_HEADERS_CAP, Upgrades};
use crate::core::tls::TlsSettings;
use crate::core::upstream::health::OutlierConfig;
use crate::engine::uring::batch::Batching;
use crate::engine::uring::tuning::{Tuning, TuningError};
use crate::engine::userspace::{DeviceKind, PollMode, UserspaceConfig, parse_cidr, parse_mac};
use crate::engine::{EngineConfig, HttpsConfig};

/// A configuration error: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.field, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A flag or config value that does not parse (the config file adds where it is, as a
/// [`ConfigError`]; clap adds which flag).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(transparent)]
    NamespacedName(#[from] BadNamespacedName),
    #[error("expected \"namespace/service\" or \"namespace/service:port\" (got {0:?})")]
    ServiceRef(String),
    #[error("expected a duration like \"10s\" or \"500ms\" (got {0:?})")]
    Duration(String),
    #[error("unknown duration unit in {0:?} (use us, ms, s, m or h)")]
    DurationUnit(String),
    #[error("expected a size like 1048576, \"512k\" or \"1m\" (got {0:?})")]
    Size(String),
    #[error("unknown size unit in {0:?} (use k, m or g)")]
    SizeUnit(String),
    #[error("size {0:?} is too large")]
    SizeTooLarge(String),
    #[error("unknown engine {0:?} (use \"uring\" or \"userspace\")")]
    Engine(String),
}

/// Why the HTTPS listener's TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("cannot make session-ticket keys: {0}")]
    Tickets(rustls::Error),
    #[error("TLS settings: {0}")]
    Settings(rustls::Error),
}

/// `workers = 4` or `workers = [0, 2]` (CPU ids).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Workers {
    Count(usize),
    Cpus(Vec<usize>),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    workers: Option<Spanned<Workers>>,
    engine: Option<Spanned<String>>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    buffers: RawBuffers,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    outlier: RawOutlier,
    #[serde(default)]
    sources: RawSources,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    userspace: RawUserspace,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    uring: RawUring,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<Spanned<bool>>,
    format: Option<Spanned<String>>,
    access_path: Option<Spanned<String>>,
    access_sample: Option<Spanned<f64>>,
    backend_metrics_cap: Option<Spanned<usize>>,
}

/// The `[log]` section: the access log (the process log is set by `--log-level/-format`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// One line per request on stdout (on by default, as in ingress-nginx).
    pub access: bool,
    pub format: crate::engine::access_log::Format,
    /// A file to append to (reopened on SIGUSR1); `None`: stdout.
    pub access_path: Option<PathBuf>,
    /// `access_sample`: the share of requests logged, in millionths (1.0 = every request).
    pub access_sample_ppm: u32,
    /// `backend_metrics_cap`: how many routes (Ingress and Service port) get their own
    /// `sluice_ingress_requests_total` series; the rest share `ingress="other"`.
    pub backend_metrics_cap: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: true,
            format: crate::engine::access_log::Format::Text,
            access_path: None,
            access_sample_ppm: 1_000_000,
            backend_metrics_cap: 200,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    server_header: Option<Spanned<String>>,
    upgrade_protocols: Option<Spanned<Vec<String>>>,
    use_forwarded_headers: Option<Spanned<bool>>,
    trusted_proxies: Option<Spanned<Vec<String>>>,
    limit_req_status_code: Option<Spanned<u16>>,
    proxy_set_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    default_certificate: Option<Spanned<String>>,
    default_certificate_file: Option<Spanned<RawCertFile>>,
    #[serde(default)]
    certificates: Vec<Spanned<RawCertFile>>,
    handshake_timeout: Option<Spanned<String>>,
    session_cache_size: Option<Spanned<usize>>,
    ssl_redirect: Option<Spanned<bool>>,
    force_ssl_redirect: Option<Spanned<bool>>,
    hsts: Option<Spanned<bool>>,
    hsts_max_age: Option<Spanned<u64>>,
    hsts_include_subdomains: Option<Spanned<bool>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertFile {
    #[serde(default)]
    hosts: Vec<String>,
    cert: String,
    key: String,
}

/// A certificate and key in PEM files, with the SNI hosts it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFile {
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The `[tls]` section (redirect defaults and the default Secret live in `compile.tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub default_certificate_file: Option<CertFile>,
    pub certificates: Vec<CertFile>,
    pub handshake_timeout: Duration,
    pub session_cache_size: usize,
    pub hsts: bool,
    pub hsts_max_age: u64,
    pub hsts_include_subdomains: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            default_certificate_file: None,
            certificates: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            session_cache_size: 20_000,
            hsts: true,
            hsts_max_age: 31_536_000,
            hsts_include_subdomains: true,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserspace {
    device: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    addresses: Option<Spanned<Vec<String>>>,
    mac: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    gateway6: Option<Spanned<String>>,
    mtu: Option<Spanned<usize>>,
    poll: Option<Spanned<String>>,
    tcp_buffer: Option<Spanned<Size>>,
    backlog: Option<Spanned<usize>>,
    fanout_group: Option<Spanned<u16>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    http: Option<Spanned<String>>,
    https: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_head_bytes: Option<Spanned<Size>>,
    max_request_line: Option<Spanned<Size>>,
    max_headers: Option<Spanned<usize>>,
    max_chunk_ext: Option<Spanned<Size>>,
    max_trailer_bytes: Option<Spanned<Size>>,
    max_body_bytes: Option<Spanned<Size>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    request_head: Option<Spanned<String>>,
    keep_alive: Option<Spanned<String>>,
    upstream_connect: Option<Spanned<String>>,
    upstream_response: Option<Spanned<String>>,
    body_idle: Option<Spanned<String>>,
    linger: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    shutdown_delay: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffers {
    size: Option<Spanned<Size>>,
    postpone_output: Option<Spanned<Size>>,
    postpone_timeout: Option<Spanned<String>>,
}

/// The `[uring]` section: the io_uring engine's loop and ring.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUring {
    batch_window: Option<Spanned<String>>,
    batch_max: Option<Spanned<u32>>,
    sq_entries: Option<Spanned<u64>>,
    recv_buffers: Option<Spanned<u64>>,
    recv_buffer_size: Option<Spanned<Size>>,
    recv_buffer_size_unbundled: Option<Spanned<Size>>,
    recv_budget: Option<Spanned<Size>>,
    fixed_files: Option<Spanned<bool>>,
    recv_bundles: Option<Spanned<bool>>,
    send_zc: Option<Spanned<bool>>,
    ring_shutdown: Option<Spanned<bool>>,
    accept_direct: Option<Spanned<bool>>,
    close_cancel: Option<Spanned<bool>>,
    splice_min: Option<Spanned<Size>>,
    splice_pipes: Option<Spanned<u64>>,
    splice_local: Option<Spanned<bool>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    max_idle_per_endpoint: Option<Spanned<usize>>,
    /// Any TOML value: a wrong type is reported with the key's name (serde's own message
    /// names only the type).
    max_connections_per_endpoint: Option<Spanned<toml::Value>>,
    idle_timeout: Option<Spanned<String>>,
}

/// The `[outlier]` section: passive health (outlier ejection) of pod endpoints, per worker.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    enabled: Option<Spanned<bool>>,
    consecutive_failures: Option<Spanned<u32>>,
    base_ejection: Option<Spanned<String>>,
    max_ejection: Option<Spanned<String>>,
    max_ejected_percent: Option<Spanned<u8>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    manifests: Option<Spanned<String>>,
    ingress_class: Option<Spanned<String>>,
    controller_class: Option<Spanned<String>>,
    watch_ingress_without_class: Option<Spanned<bool>>,
    default_backend: Option<Spanned<String>>,
    kubernetes: Option<Spanned<bool>>,
    kubeconfig: Option<Spanned<String>>,
    watch_namespace: Option<Spanned<String>>,
    election_id: Option<Spanned<String>>,
    election_namespace: Option<Spanned<String>>,
    publish_service: Option<Spanned<String>>,
    publish_status_address: Option<Spanned<Vec<String>>>,
}

/// A byte size: an integer, or a string with an nginx-style suffix (`"1m"`, `"512k"`, `"1g"`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// Which data plane runs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// Kernel TCP through io_uring.
    #[default]
    Uring,
    /// smoltcp in userspace over a TAP queue or AF_PACKET socket per worker.
    Userspace,
}

impl EngineKind {
    pub fn parse(text: &str) -> Result<EngineKind, ValueError> {
        match text {
            "uring" => Ok(EngineKind::Uring),
            "userspace" => Ok(EngineKind::Userspace),
            other => Err(ValueError::Engine(other.to_string())),
        }
    }
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// CPU ids to pin one worker each to; `None` = one per core of the machine.
    pub workers: Option<Vec<usize>>,
    /// Or just a count (not pinned to specific CPUs).
    pub worker_count: Option<usize>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// `listen.admin_token_file`: a file (a mounted Secret) holding the bearer token that
    /// opens `/routes` to peers that are not on loopback; without it only loopback sees it.
    pub admin_token_file: Option<PathBuf>,
    /// `[log]`: the access log.
    pub log: LogConfig,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub shutdown_grace: Duration,
    /// SIGTERM: how long `/readyz` fails while Sluice still accepts, before the drain starts
    /// (so a load balancer health-checking `/readyz` stops sending first).
    pub shutdown_delay: Duration,
    pub buffer_size: usize,
    /// `[buffers] postpone_output`: response output for a client smaller than this is held
    /// (at most `postpone_timeout`) to go out with the rest of the response; 0 = off.
    pub postpone_output: usize,
    /// `[buffers] postpone_timeout`: how long held output waits at most (1 ms).
    pub postpone_timeout: Duration,
    /// The io_uring loop's adaptive batching (`[uring]`).
    pub batching: Batching,
    /// The io_uring ring's sizes and receive budget (`[uring]`).
    pub uring: Tuning,
    pub upstream_max_idle: usize,
    /// `[upstream] max_connections_per_endpoint`: connections to one pod endpoint each
    /// worker has in use at once at most (connecting included); further requests wait in a
    /// queue, within their connect timeout. Per worker: with N workers a pod may see N times
    /// this many. 0 (the default): no cap, as ingress-nginx.
    pub upstream_max_conns: usize,
    pub upstream_idle_timeout: Duration,
    /// `[outlier]`: passive health of pod endpoints.
    pub outlier: OutlierConfig,
    pub manifests: Option<PathBuf>,
    pub compile: CompileOptions,
    pub tls: TlsConfig,
    /// The Kubernetes route source (`[sources]` kubernetes keys).
    pub kubernetes: KubeOptions,
    pub engine: EngineKind,
    /// The userspace engine's device and stack (used when `engine` is `Userspace`).
    pub userspace: UserspaceConfig,
    /// `Server` value on every response (`[http] server_header`); `None` when set to "".
    pub server_header: Option<Arc<str>>,
    /// Upgrade protocols relayed as tunnels (`[http] upgrade_protocols`).
    pub upgrades: Upgrades,
    /// Whose `X-Forwarded-For` names the real client (`[http] use_forwarded_headers`,
    /// `trusted_proxies`).
    pub forwarded: ForwardedTrust,
    /// Both listeners expect a PROXY protocol header first (`[listen] proxy_protocol`).
    pub proxy_protocol: bool,
    /// Status for a request refused by a route's rate or connection limit
    /// (`[http] limit_req_status_code`, ingress-nginx's `limit-req-status-code`; 503).
    pub limit_status: u16,
    /// Fields set on every request sent upstream (`[http] proxy_set_headers`, a table of
    /// field name → value: ingress-nginx's `proxy-set-headers`).
    pub proxy_set_headers: Option<crate::core::route::headers::HeaderSet>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: None,
            worker_count: None,
            http: crate::engine::DEFAULT_HTTP,
            https: "0.0.0.0:443".parse().expect("valid default"),
            admin: "0.0.0.0:10254".parse().expect("valid default"),
            admin_token_file: None,
            log: LogConfig::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            shutdown_grace: crate::engine::DEFAULT_SHUTDOWN_GRACE,
            shutdown_delay: Duration::ZERO,
            buffer_size: 32 * 1024,
            postpone_output: 1460,
            postpone_timeout: crate::core::conn::POSTPONE_BOUND,
            batching: Batching::default(),
            uring: Tuning::default(),
            upstream_max_idle: crate::engine::DEFAULT_UPSTREAM_MAX_IDLE,
            upstream_max_conns: 0,
            upstream_idle_timeout: crate::engine::DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            outlier: OutlierConfig::default(),
            manifests: None,
            compile: CompileOptions::default(),
            tls: TlsConfig::default(),
            kubernetes: KubeOptions::default(),
            engine: EngineKind::Uring,
            userspace: UserspaceConfig::default(),
            server_header: Some("sluice".into()),
            upgrades: Upgrades::default(),
            forwarded: ForwardedTrust::none(),
            proxy_protocol: false,
            limit_status: 503,
            proxy_set_headers: None,
        }
    }
}

/// Parses `"500ms"`, `"10s"`, `"5m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ValueError::Duration(text.to_string()))?;
    let d = match unit {
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(ValueError::DurationUnit(text.to_string()));
        }
    };
    Ok(d)
}

/// Parses `123`, `"64k"`, `"1m"`, `"2g"` (powers of 1024, as nginx does).
fn parse_size(size: &Size) -> Result<u64, ValueError> {
    let text = match size {
        Size::Bytes(n) => return Ok(*n),
        Size::Text(t) => t.trim().to_ascii_lowercase(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| ValueError::Size(text.clone()))?;
    let mult = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(ValueError::SizeUnit(text)),
    };
    n.checked_mul(mult).ok_or(ValueError::SizeTooLarge(text))
}

/// The largest `[upstream] max_connections_per_endpoint` (a connection count per worker;
/// more is a typo, not a cap).
const MAX_CONNECTIONS_PER_ENDPOINT: usize = 1 << 20;

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn at(&self, offset: usize, field: &str, message: impl fmt::Display) -> ConfigError {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(offset + 1, |nl| offset - nl);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).map_err(|m| self.at(s.span().start, field, m)),
        }
    }

    fn size(
        &self,
        v: &Option<Spanned<Size>>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigError> {
        let Some(s) = v else {
            return Ok(None);
        };
        let n = parse_size(s.get_ref()).map_err(|m| self.at(s.span().start, field, m))?;
        if n < min || n > max {
            return Err(self.at(
                s.span().start,
                field,
                format!("must be between {min} and {max} bytes (got {n})"),
            ));
        }
        Ok(Some(n))
    }

    fn addr(
        &self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => s.get_ref().parse().map_err(|_| {
                self.at(
                    s.span().start,
                    field,
                    format!(
                        "expected an address like \"0.0.0.0:80\" (got {:?})",
                        s.get_ref()
                    ),
                )
            }),
        }
    }
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &name)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let ctx = Ctx { file, text };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ctx.at(offset, "", e.message().to_string())
        })?;
        let d = Config::default();
        let mut c = d.clone();
        if let Some(w) = &raw.workers {
            match w.get_ref() {
                Workers::Count(0) => {
                    return Err(ctx.at(w.span().start, "workers", "must be at least 1"));
                }
                Workers::Count(n) => c.worker_count = Some(*n),
                Workers::Cpus(list) if list.is_empty() => {
                    return Err(ctx.at(w.span().start, "workers", "CPU list is empty"));
                }
                Workers::Cpus(list) => c.workers = Some(list.clone()),
            }
        }
        if let Some(engine) = &raw.engine {
            c.engine = EngineKind::parse(engine.get_ref())
                .map_err(|m| ctx.at(engine.span().start, "engine", m))?;
        }
        parse_userspace(&ctx, &raw.userspace, &mut c.userspace)?;
        c.http = ctx.addr(&raw.listen.http, "listen.http", d.http)?;
        c.https = ctx.addr(&raw.listen.https, "listen.https", d.https)?;
        let t = &raw.tls;
        if let Some(v) = &t.default_certificate {
            c.compile.tls.default_secret = Some(
                parse_secret_ref(v.get_ref())
                    .map_err(|m| ctx.at(v.span().start, "tls.default_certificate", m))?,
            );
        }
        let file = |f: &RawCertFile| CertFile {
            hosts: f.hosts.clone(),
            cert: PathBuf::from(&f.cert),
            key: PathBuf::from(&f.key),
        };
        c.tls.default_certificate_file = t
            .default_certificate_file
            .as_ref()
            .map(|f| file(f.get_ref()));
        for (i, f) in t.certificates.iter().enumerate() {
            let field = format!("tls.certificates[{i}].hosts");
            if f.get_ref().hosts.is_empty() {
                return Err(ctx.at(f.span().start, &field, "names no host"));
            }
            for host in &f.get_ref().hosts {
                crate::control::compile::check_host(host)
                    .map_err(|why| ctx.at(f.span().start, &field, format!("{host:?}: {why}")))?;
            }
            c.tls.certificates.push(file(f.get_ref()));
        }
        c.tls.handshake_timeout = ctx.duration(
            &t.handshake_timeout,
            "tls.handshake_timeout",
            d.tls.handshake_timeout,
        )?;
        if let Some(v) = &t.session_cache_size {
            c.tls.session_cache_size = *v.get_ref();
        }
        if let Some(v) = &t.ssl_redirect {
            c.compile.tls.ssl_redirect = *v.get_ref();
        }
        if let Some(v) = &t.force_ssl_redirect {
            c.compile.tls.force_ssl_redirect = *v.get_ref();
        }
        if let Some(v) = &t.hsts {
            c.tls.hsts = *v.get_ref();
        }
        if let Some(v) = &t.hsts_max_age {
            c.tls.hsts_max_age = *v.get_ref();
        }
        if let Some(v) = &t.hsts_include_subdomains {
            c.tls.hsts_include_subdomains = *v.get_ref();
        }
        c.admin = ctx.addr(&raw.listen.admin, "listen.admin", d.admin)?;
        if let Some(v) = &raw.log.access {
            c.log.access = *v.get_ref();
        }
        if let Some(v) = &raw.log.access_path {
            if v.get_ref().is_empty() {
                return Err(ctx.at(
                    v.span().start,
                    "log.access_path",
                    "must not be empty".to_string(),
                ));
            }
            c.log.access_path = Some(PathBuf::from(v.get_ref()));
        }
        if let Some(v) = &raw.log.format {
            c.log.format = match v.get_ref().as_str() {
                "text" => crate::engine::access_log::Format::Text,
                "json" => crate::engine::access_log::Format::Json,
                other => {
                    return Err(ctx.at(
                        v.span().start,
                        "log.format",
                        format!("expected \"text\" or \"json\" (got {other:?})"),
                    ));
                }
            };
        }
        if let Some(v) = &raw.listen.admin_token_file {
            if v.get_ref().is_empty() {
                return Err(ctx.at(
                    v.span().start,
                    "listen.admin_token_file",
                    "must not be empty".to_string(),
                ));
            }
            c.admin_token_file = Some(PathBuf::from(v.get_ref()));
        }
        if let Some(v) = &raw.http.server_header {
            let value = v.get_ref();
            // A field value we write verbatim: visible ASCII and inner spaces only.
            let valid = value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
                && !value.starts_with(' ')
                && !value.ends_with(' ');
            if !valid {
                return Err(ctx.at(
                    v.span().start,
                    "http.server_header",
                    "must be visible ASCII without leading or trailing spaces",
                ));
            }
            c.server_header = (!value.is_empty()).then(|| value.as_str().into());
        }
        if let Some(v) = &raw.http.upgrade_protocols {
            c.upgrades = Upgrades::new(v.get_ref())
                .map_err(|m| ctx.at(v.span().start, "http.upgrade_protocols", m))?;
        }
        let use_forwarded = raw
            .http
            .use_forwarded_headers
            .as_ref()
            .is_some_and(|v| *v.get_ref());
        let mut nets = Vec::new();
        if let Some(v) = &raw.http.trusted_proxies {
            for text in v.get_ref() {
                let net = text
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ctx.at(
                            v.span().start,
                            "http.trusted_proxies",
                            format!("not a CIDR or an IP address: {text:?}"),
                        )
                    })?;
                nets.push(net.trunc());
            }
        }
        // A list alone turns the header on; `use_forwarded_headers` alone trusts every peer
        // (ingress-nginx's default `proxy-real-ip-cidr` of 0.0.0.0/0).
        if use_forwarded || !nets.is_empty() {
            c.forwarded = ForwardedTrust::from_nets(nets);
        }
        if let Some(v) = &raw.listen.proxy_protocol {
            c.proxy_protocol = *v.get_ref();
        }
        if let Some(v) = &raw.log.access_sample {
            let share = *v.get_ref();
            if !(share > 0.0 && share <= 1.0) {
                return Err(ctx.at(
                    v.span().start,
                    "log.access_sample",
                    format!("must be above 0 and at most 1 (got {share}); use log.access = false to turn the log off"),
                ));
            }
            c.log.access_sample_ppm = ((share * 1e6).round() as u32).max(1);
        }
        if let Some(v) = &raw.log.backend_metrics_cap {
            let n = *v.get_ref();
            if !(1..=100_000).contains(&n) {
                return Err(ctx.at(
                    v.span().start,
                    "log.backend_metrics_cap",
                    format!("must be between 1 and 100000 (got {n})"),
                ));
            }
            c.log.backend_metrics_cap = n;
        }
        if let Some(v) = &raw.http.limit_req_status_code {
            let code = *v.get_ref();
            if !(400..=599).contains(&code) {
                return Err(ctx.at(
                    v.span().start,
                    "http.limit_req_status_code",
                    "must be an error status from 400 to 599",
                ));
            }
            c.limit_status = code;
        }
        if let Some(v) = &raw.http.proxy_set_headers {
            use crate::core::route::headers::{HeaderSet, REQUEST_FORBIDDEN};
            let fields = v.get_ref();
            if fields
                .iter()
                .any(|(n, v)| n.contains('\n') || v.contains('\n'))
            {
                return Err(ctx.at(
                    v.span().start,
                    "http.proxy_set_headers",
                    "a field name or value with a line break",
                ));
            }
            let text: Vec<String> = fields
                .iter()
                .map(|(name, value)| format!("{name}: {value}"))
                .collect();
            let set = HeaderSet::parse(&text.join("\n"), &REQUEST_FORBIDDEN)
                .map_err(|why| ctx.at(v.span().start, "http.proxy_set_headers", why))?;
            c.proxy_set_headers = Some(set);
        }
        let l = &raw.limits;
        let dl = &d.limits;
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        c.limits.max_head_bytes = ctx
            .size(&l.max_head_bytes, "limits.max_head_bytes", 1024, 1 << 20)?
            .map_or(dl.max_head_bytes, as_usize);
        c.limits.max_request_line = ctx
            .size(&l.max_request_line, "limits.max_request_line", 256, 1 << 20)?
            .map_or(dl.max_request_line, as_usize);
        c.limits.max_chunk_ext = ctx
            .size(&l.max_chunk_ext, "limits.max_chunk_ext", 0, 1 << 20)?
            .map_or(dl.max_chunk_ext, as_usize);
        c.limits.max_trailer_bytes = ctx
            .size(&l.max_trailer_bytes, "limits.max_trailer_bytes", 0, 1 << 20)?
            .map_or(dl.max_trailer_bytes, as_usize);
        c.limits.max_body_bytes =
            ctx.size(&l.max_body_bytes, "limits.max_body_bytes", 0, u64::MAX)?;
        if let Some(h) = &l.max_headers {
            let n = *h.get_ref();
            if n == 0 || n > MAX_HEADERS_CAP {
                return Err(ctx.at(
                    h.span().start,
                    "limits.max_headers",
                    format!("must be between 1 and {MAX_HEADERS_CAP} (got {n})"),
                ));
            }
            c.limits.max_headers = n;
        }
        if c.limits.max_request_line > c.limits.max_head_bytes {
            return Err(ctx.at(
                0,
                "limits.max_request_line",
                "must not exceed limits.max_head_bytes",
            ));
        }
        let t = &raw.timeouts;
        let dt = &d.timeouts;
        c.timeouts = Timeouts {
            request_head: ctx.duration(
                &t.request_head,
                "timeouts.request_head",
                dt.request_head,
            )?,
            keep_alive: ctx.duration(&t.keep_alive, "timeouts.keep_alive", dt.keep_alive)?,
            upstream_connect: ctx.duration(
                &t.upstream_connect,
                "timeouts.upstream_connect",
                dt.upstream_connect,
            )?,
            upstream_response: ctx.duration(
                &t.upstream_response,
                "timeouts.upstream_response",
                dt.upstream_response,
            )?,
            body_idle: ctx.duration(&t.body_idle, "timeouts.body_idle", dt.body_idle)?,
            linger: ctx.duration(&t.linger, "timeouts.linger", dt.linger)?,
        };
        c.shutdown_grace = ctx.duration(
            &t.shutdown_grace,
            "timeouts.shutdown_grace",
            d.shutdown_grace,
        )?;
        c.shutdown_delay = ctx.duration(
            &t.shutdown_delay,
            "timeouts.shutdown_delay",
            d.shutdown_delay,
        )?;
        let window = ctx.duration(
            &raw.uring.batch_window,
            "uring.batch_window",
            Duration::from_micros(u64::from(c.batching.window_us())),
        )?;
        if window > Duration::from_millis(1) {
            let at = raw
                .uring
                .batch_window
                .as_ref()
                .map_or(0, |v| v.span().start);
            return Err(ctx.at(
                at,
                "uring.batch_window",
                "at most 1ms (0 turns batching off)",
            ));
        }
        let batch_max = match &raw.uring.batch_max {
            Some(v) if !(1..=1024).contains(v.get_ref()) => {
                return Err(ctx.at(v.span().start, "uring.batch_max", "between 1 and 1024"));
            }
            Some(v) => *v.get_ref(),
            None => c.batching.max(),
        };
        c.batching = Batching::new(window.as_micros() as u32, batch_max);
        parse_uring(&ctx, &raw.uring, &mut c.uring)?;
        if let Some(size) = ctx.size(&raw.buffers.size, "buffers.size", 1024, 16 << 20)? {
            c.buffer_size = as_usize(size);
        }
        let postpone = &raw.buffers.postpone_output;
        if let Some(size) = ctx.size(postpone, "buffers.postpone_output", 0, 64 << 10)? {
            c.postpone_output = as_usize(size);
        }
        let wait = &raw.buffers.postpone_timeout;
        c.postpone_timeout = ctx.duration(wait, "buffers.postpone_timeout", d.postpone_timeout)?;
        if c.postpone_timeout > Duration::from_secs(1) {
            let at = wait.as_ref().map_or(0, |v| v.span().start);
            return Err(ctx.at(at, "buffers.postpone_timeout", "at most 1s"));
        }
        if let Some(n) = &raw.upstream.max_idle_per_endpoint {
            c.upstream_max_idle = *n.get_ref();
        }
        if let Some(v) = &raw.upstream.max_connections_per_endpoint {
            let n = match v.get_ref() {
                toml::Value::Integer(n) => usize::try_from(*n)
                    .ok()
                    .filter(|n| *n <= MAX_CONNECTIONS_PER_ENDPOINT),
                _ => None,
            };
            let Some(n) = n else {
                return Err(ctx.at(
                    v.span().start,
                    "upstream.max_connections_per_endpoint",
                    format!(
                        "expected a whole number from 0 (no cap) to {MAX_CONNECTIONS_PER_ENDPOINT}, got {}",
                        v.get_ref()
                    ),
                ));
            };
            c.upstream_max_conns = n;
        }
        c.upstream_idle_timeout = ctx.duration(
            &raw.upstream.idle_timeout,
            "upstream.idle_timeout",
            d.upstream_idle_timeout,
        )?;
        let o = &raw.outlier;
        let od = &d.outlier;
        c.outlier = OutlierConfig {
            enabled: o.enabled.as_ref().map_or(od.enabled, |v| *v.get_ref()),
            consecutive_failures: match &o.consecutive_failures {
                None => od.consecutive_failures,
                Some(v) if *v.get_ref() == 0 => {
                    return Err(ctx.at(
                        v.span().start,
                        "outlier.consecutive_failures",
                        "must be at least 1 (use enabled = false to turn ejection off)",
                    ));
                }
                Some(v) => *v.get_ref(),
            },
            base_ejection: ctx.duration(
                &o.base_ejection,
                "outlier.base_ejection",
                od.base_ejection,
            )?,
            max_ejection: ctx.duration(&o.max_ejection, "outlier.max_ejection", od.max_ejection)?,
            max_ejected_percent: match &o.max_ejected_percent {
                None => od.max_ejected_percent,
                Some(v) if *v.get_ref() > 100 => {
                    return Err(ctx.at(
                        v.span().start,
                        "outlier.max_ejected_percent",
                        format!("must be between 0 and 100 (got {})", v.get_ref()),
                    ));
                }
                Some(v) => *v.get_ref(),
            },
        };
        if c.outlier.max_ejection < c.outlier.base_ejection {
            return Err(ctx.at(
                0,
                "outlier.max_ejection",
                "must not be shorter than outlier.base_ejection",
            ));
        }
        let s = &raw.sources;
        c.manifests = s.manifests.as_ref().map(|m| PathBuf::from(m.get_ref()));
        if let Some(v) = &s.ingress_class {
            c.compile.ingress_class = v.get_ref().clone();
        }
        if let Some(v) = &s.controller_class {
            c.compile.controller = v.get_ref().clone();
        }
        if let Some(v) = &s.watch_ingress_without_class {
            c.compile.watch_without_class = *v.get_ref();
        }
        if let Some(v) = &s.default_backend {
            c.compile.default_backend = Some(
                parse_service_ref(v.get_ref())
                    .map_err(|m| ctx.at(v.span().start, "sources.default_backend", m))?,
            );
        }
        let k = &mut c.kubernetes;
        if let Some(v) = &s.kubernetes {
            k.enabled = *v.get_ref();
        }
        if let Some(v) = &s.kubeconfig {
            k.kubeconfig = Some(PathBuf::from(v.get_ref()));
            k.enabled = true;
        }
        let non_empty = |v: &Spanned<String>, field: &str| {
            if v.get_ref().is_empty() {
                Err(ctx.at(v.span().start, field, "must not be empty"))
            } else {
                Ok(v.get_ref().clone())
            }
        };
        if let Some(v) = &s.watch_namespace {
            k.watch_namespace = Some(non_empty(v, "sources.watch_namespace")?);
        }
        if let Some(v) = &s.election_id {
            k.election_id = non_empty(v, "sources.election_id")?;
        }
        if let Some(v) = &s.election_namespace {
            k.election_namespace = Some(non_empty(v, "sources.election_namespace")?);
        }
        if let Some(v) = &s.publish_service {
            k.publish_service = Some(
                parse_namespaced_name(v.get_ref())
                    .map_err(|m| ctx.at(v.span().start, "sources.publish_service", m))?,
            );
        }
        if let Some(v) = &s.publish_status_address {
            k.publish_status_address = v.get_ref().clone();
        }
        Ok(c)
    }

    /// The connection settings every worker shares.
    pub fn conn_config(&self) -> ConnConfig {
        ConnConfig {
            limits: self.limits.clone(),
            timeouts: self.timeouts.clone(),
            buffer_size: self.buffer_size,
            scheme: Scheme::Http,
            hsts: None,
            https_port: self.https.port(),
            server: self.server_header.clone(),
            upgrades: self.upgrades.clone(),
            request_id_seed: Some(random_seed()),
            record_requests: self.log.access,
            outlier: self.outlier,
            forwarded: self.forwarded.clone(),
            proxy_protocol: self.proxy_protocol,
            limit_status: self.limit_status,
            request_headers: self.proxy_set_headers.clone(),
            postpone_output: self.postpone_output,
            postpone_timeout: self.postpone_timeout,
        }
    }

    /// The `Strict-Transport-Security` value, if HSTS is on.
    pub fn hsts_value(&self) -> Option<Arc<str>> {
        let t = &self.tls;
        t.hsts.then(|| {
            let sub = if t.hsts_include_subdomains {
                "; includeSubDomains"
            } else {
                ""
            };
            format!("max-age={}{sub}", t.hsts_max_age).into()
        })
    }

    /// The HTTPS listener: connection settings (`X-Forwarded-Proto: https`, HSTS) and TLS
    /// settings with fresh session-ticket keys (rotated every 6 hours) and a session cache.
    pub fn https_config(&self) -> Result<HttpsConfig, HttpsError> {
        let provider = crate::control::certs::provider();
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(HttpsError::Tickets)?;
        let sessions = rustls::server::ServerSessionMemoryCache::new(self.tls.session_cache_size);
        let settings = TlsSettings::new(provider, ticketer, sessions, self.tls.handshake_timeout)
            .map_err(HttpsError::Settings)?;
        let mut conn = self.conn_config();
        conn.scheme = Scheme::Https;
        conn.hsts = self.hsts_value();
        Ok(HttpsConfig {
            addr: self.https,
            conn: Arc::new(conn),
            settings: Arc::new(settings),
        })
    }

    pub fn engine_config(&self) -> EngineConfig {
        let workers = match (&self.workers, self.worker_count) {
            (Some(cpus), _) => cpus.iter().map(|c| Some(*c)).collect(),
            (None, Some(n)) => {
                let cores = EngineConfig::all_cores();
                (0..n).map(|i| cores.get(i).copied().flatten()).collect()
            }
            (None, None) => EngineConfig::all_cores(),
        };
        EngineConfig {
            workers,
            http: self.http,
            conn: Arc::new(self.conn_config()),
            upstream_max_idle: self.upstream_max_idle,
            upstream_max_conns: self.upstream_max_conns,
            upstream_idle_timeout: self.upstream_idle_timeout,
            shutdown_grace: self.shutdown_grace,
            batching: self.batching,
            uring: self.uring,
        }
    }
}

/// `namespace/name` of a Secret.
pub fn parse_secret_ref(text: &str) -> Result<(String, String), ValueError> {
    Ok(parse_namespaced_name(text)?)
}

fn parse_userspace(
    ctx: &Ctx<'_>,
    raw: &RawUserspace,
    u: &mut UserspaceConfig,
) -> Result<(), ConfigError> {
    if let Some(v) = &raw.device {
        u.device = match v.get_ref().as_str() {
            "tap" => DeviceKind::Tap,
            "af_packet" => DeviceKind::AfPacket,
            other => {
                return Err(ctx.at(
                    v.span().start,
                    "userspace.device",
                    format!("unknown device {other:?} (use \"tap\" or \"af_packet\")"),
                ));
            }
        };
    }
    if let Some(v) = &raw.interface {
        let name = v.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(ctx.at(
                v.span().start,
                "userspace.interface",
                format!("not an interface name: {name:?} (1 to 15 characters)"),
            ));
        }
        u.interface = name.clone();
    }
    if let Some(v) = &raw.addresses {
        let list = v.get_ref();
        if list.is_empty() || list.len() > 2 {
            return Err(ctx.at(
                v.span().start,
                "userspace.addresses",
                "one or two addresses (one IPv4 and/or one IPv6)",
            ));
        }
        let mut parsed = Vec::new();
        for a in list {
            parsed
                .push(parse_cidr(a).map_err(|m| ctx.at(v.span().start, "userspace.addresses", m))?);
        }
        if parsed.len() == 2 && parsed[0].0.is_ipv4() == parsed[1].0.is_ipv4() {
            return Err(ctx.at(
                v.span().start,
                "userspace.addresses",
                "two addresses must be one IPv4 and one IPv6",
            ));
        }
        u.addresses = parsed;
    }
    if let Some(v) = &raw.mac {
        u.mac = parse_mac(v.get_ref()).map_err(|m| ctx.at(v.span().start, "userspace.mac", m))?;
    }
    for (field, raw_gw, slot, v4) in [
        ("userspace.gateway", &raw.gateway, &mut u.gateway, true),
        ("userspace.gateway6", &raw.gateway6, &mut u.gateway6, false),
    ] {
        if let Some(v) = raw_gw {
            let ip: std::net::IpAddr = v.get_ref().parse().map_err(|_| {
                ctx.at(
                    v.span().start,
                    field,
                    format!("not an IP address: {:?}", v.get_ref()),
                )
            })?;
            if ip.is_ipv4() != v4 {
                let want = if v4 { "an IPv4" } else { "an IPv6" };
                return Err(ctx.at(v.span().start, field, format!("must be {want} address")));
            }
            *slot = Some(ip);
        }
    }
    if let Some(v) = &raw.mtu {
        let mtu = *v.get_ref();
        if !(576..=9000).contains(&mtu) {
            return Err(ctx.at(
                v.span().start,
                "userspace.mtu",
                format!("must be between 576 and 9000 (got {mtu})"),
            ));
        }
        u.mtu = mtu;
    }
    if let Some(v) = &raw.poll {
        u.poll = match v.get_ref().as_str() {
            "sleep" => PollMode::Sleep,
            "busy" => PollMode::Busy,
            other => {
                return Err(ctx.at(
                    v.span().start,
                    "userspace.poll",
                    format!("unknown poll mode {other:?} (use \"sleep\" or \"busy\")"),
                ));
            }
        };
    }
    if let Some(n) = ctx.size(&raw.tcp_buffer, "userspace.tcp_buffer", 1024, 16 << 20)? {
        u.tcp_buffer = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(v) = &raw.backlog {
        let n = *v.get_ref();
        if n == 0 || n > 4096 {
            return Err(ctx.at(
                v.span().start,
                "userspace.backlog",
                format!("must be between 1 and 4096 (got {n})"),
            ));
        }
        u.backlog = n;
    }
    if let Some(v) = &raw.fanout_group {
        u.fanout_group = *v.get_ref();
    }
    Ok(())
}

/// The `[uring]` ring keys, each checked against the kernel's bounds; the budget last, against
/// the buffers it is taken from.
fn parse_uring(ctx: &Ctx<'_>, raw: &RawUring, t: &mut Tuning) -> Result<(), ConfigError> {
    let fail = |at: usize, field: &str, e: TuningError| ctx.at(at, field, e);
    let size = |v: &Spanned<Size>, field: &str| {
        parse_size(v.get_ref()).map_err(|m| ctx.at(v.span().start, field, m))
    };
    if let Some(v) = &raw.sq_entries {
        t.set_sq_entries(*v.get_ref())
            .map_err(|e| fail(v.span().start, "uring.sq_entries", e))?;
    }
    if let Some(v) = &raw.recv_buffers {
        t.set_recv_buffers(*v.get_ref())
            .map_err(|e| fail(v.span().start, "uring.recv_buffers", e))?;
    }
    for (v, field, bundled) in [
        (&raw.recv_buffer_size, "uring.recv_buffer_size", true),
        (
            &raw.recv_buffer_size_unbundled,
            "uring.recv_buffer_size_unbundled",
            false,
        ),
    ] {
        if let Some(v) = v {
            t.set_recv_buffer_size(size(v, field)?, bundled)
                .map_err(|e| fail(v.span().start, field, e))?;
        }
    }
    if let Err(e) = t.check_memory() {
        // Reported at the first key that sized the buffers.
        let (at, field) = [
            (
                raw.recv_buffers.as_ref().map(|v| v.span()),
                "uring.recv_buffers",
            ),
            (
                raw.recv_buffer_size.as_ref().map(|v| v.span()),
                "uring.recv_buffer_size",
            ),
            (
                raw.recv_buffer_size_unbundled.as_ref().map(|v| v.span()),
                "uring.recv_buffer_size_unbundled",
            ),
        ]
        .into_iter()
        .find_map(|(span, field)| span.map(|s| (s.start, field)))
        .unwrap_or((0, "uring"));
        return Err(fail(at, field, e));
    }
    if let Some(v) = &raw.recv_budget {
        t.set_recv_budget(size(v, "uring.recv_budget")?)
            .map_err(|e| fail(v.span().start, "uring.recv_budget", e))?;
    }
    if let Some(v) = &raw.splice_min {
        t.set_splice_min(size(v, "uring.splice_min")?)
            .map_err(|e| fail(v.span().start, "uring.splice_min", e))?;
    }
    if let Some(v) = &raw.splice_pipes {
        t.set_splice_pipes(*v.get_ref())
            .map_err(|e| fail(v.span().start, "uring.splice_pipes", e))?;
    }
    if let Some(v) = &raw.splice_local {
        t.splice_local = *v.get_ref();
    }
    let f = &mut t.features;
    for (v, slot) in [
        (&raw.fixed_files, &mut f.fixed_files),
        (&raw.recv_bundles, &mut f.bundles),
        (&raw.send_zc, &mut f.send_zc),
        (&raw.ring_shutdown, &mut f.ring_shutdown),
        (&raw.accept_direct, &mut f.accept_direct),
        (&raw.close_cancel, &mut f.close_cancel),
    ] {
        if let Some(v) = v {
            *slot = *v.get_ref();
        }
    }
    if let Err(e) = t.check_features() {
        let at = raw.accept_direct.as_ref().map_or(0, |v| v.span().start);
        return Err(fail(at, "uring.accept_direct", e));
    }
    Ok(())
}

/// `namespace/service:port` (port by number or name), or `namespace/service` (its first port).
pub fn parse_service_ref(text: &str) -> Result<ServiceRef, ValueError> {
    let bad = || ValueError::ServiceRef(text.to_string());
    let (ns, rest) = text.split_once('/').ok_or_else(bad)?;
    // Without `:port`, the Service's first port (ingress-nginx's `--default-backend-service`).
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    if ns.is_empty() || name.is_empty() || rest.ends_with(':') {
        return Err(bad());
    }
    let port = match port.parse::<i32>() {
        _ if port.is_empty() => PortRef::First,
        Ok(n) => PortRef::Number(n),
        Err(_) => PortRef::Name(port.to_string()),
    };
    Ok(ServiceRef {
        namespace: ns.to_string(),
        name: name.to_string(),
        port,
    })
}

/// A seed that differs between processes (std's randomly keyed hasher, itself seeded from
/// the OS), for the ids the workers generate.
fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5115_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "sluice.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn proxy_set_headers_are_checked() {
        let c = parse("[http]\nproxy_set_headers = { \"X-A\" = \"one\", \"X-B\" = \"two\" }\n")
            .unwrap();
        let mut head = b"GET / HTTP/1.1\r\nX-A: client\r\n\r\n".to_vec();
        c.proxy_set_headers.unwrap().apply(&mut head, 0);
        assert_eq!(head, b"GET / HTTP/1.1\r\nX-A: one\r\nX-B: two\r\n\r\n");
        for bad in [
            "{ \"X-A\" = \"b\\r\\nSet-Cookie: x\" }",
            "{ \"X-A\" = \"b\\nX-C: y\" }",
            "{ \"Host\" = \"x\" }",
            "{ \"A B\" = \"x\" }",
        ] {
            let err = parse(&format!("[http]\nproxy_set_headers = {bad}\n")).unwrap_err();
            assert!(err.contains("http.proxy_set_headers"), "{err}");
        }
        assert!(parse("").unwrap().proxy_set_headers.is_none());
    }

    #[test]
    fn real_client_and_access_log_keys() {
        let c = parse("").unwrap();
        assert!(!c.forwarded.enabled());
        assert!(!c.proxy_protocol);
        assert_eq!(c.log.access_sample_ppm, 1_000_000);
        assert_eq!(c.log.backend_metrics_cap, 200);

        let c = parse(
            "[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\"]\n\
             [listen]\nproxy_protocol = true\n\
             [log]\naccess_sample = 0.1\nbackend_metrics_cap = 5\n",
        )
        .unwrap();
        assert!(c.forwarded.trusts("10.9.9.9".parse().unwrap()));
        assert!(c.forwarded.trusts("192.0.2.7".parse().unwrap()));
        assert!(!c.forwarded.trusts("192.0.2.8".parse().unwrap()));
        assert!(c.proxy_protocol);
        assert!(c.conn_config().proxy_protocol);
        assert_eq!(c.log.access_sample_ppm, 100_000);
        assert_eq!(c.log.backend_metrics_cap, 5);
        // use_forwarded_headers alone: every peer (ingress-nginx's default 0.0.0.0/0).
        let c = parse("[http]\nuse_forwarded_headers = true\n").unwrap();
        assert!(c.forwarded.trusts("198.51.100.1".parse().unwrap()));
        let c = parse("[log]\naccess_sample = 1\n").unwrap();
        assert_eq!(c.log.access_sample_ppm, 1_000_000);
    }

    /// The engine's own defaults are the config's: `EngineConfig::default()` is what an empty
    /// config file gives.
    #[test]
    fn engine_defaults_are_the_config_defaults() {
        let from_file = parse("").unwrap().engine_config();
        let d = EngineConfig::default();
        assert_eq!(from_file.workers, d.workers);
        assert_eq!(from_file.http, d.http);
        assert_eq!(from_file.upstream_max_idle, d.upstream_max_idle);
        assert_eq!(from_file.upstream_max_conns, d.upstream_max_conns);
        assert_eq!(from_file.upstream_idle_timeout, d.upstream_idle_timeout);
        assert_eq!(from_file.shutdown_grace, d.shutdown_grace);
        assert_eq!(from_file.batching, d.batching);
    }

    #[test]
    fn uring_batching_keys() {
        let mut d = parse("").unwrap().batching;
        d.turn(100);
        assert_eq!(d.next_wait(), (32, 50));
        let mut c = parse("[uring]\nbatch_window = \"20us\"\nbatch_max = 8\n")
            .unwrap()
            .batching;
        c.turn(100);
        assert_eq!(c.next_wait(), (8, 20));
        let mut off = parse("[uring]\nbatch_window = \"0ms\"\n").unwrap().batching;
        off.turn(100);
        assert_eq!(off.next_wait(), (1, 0));
    }

    #[test]
    fn uring_ring_keys() {
        let d = parse("").unwrap();
        assert_eq!(d.uring, Tuning::default());
        assert_eq!(d.engine_config().uring, Tuning::default());
        let c = parse(
            "[uring]\nsq_entries = 1024\nrecv_buffers = 2048\nrecv_buffer_size = \"8k\"\n\
             recv_buffer_size_unbundled = \"32k\"\nrecv_budget = \"64k\"\n",
        )
        .unwrap();
        let t = c.engine_config().uring;
        assert_eq!(t.sq_entries, 1024);
        assert_eq!(t.recv_buffers.bundled, (2048, 8192));
        assert_eq!(t.recv_buffers.plain, (2048, 32 * 1024));
        assert_eq!(t.recv_budget, 64 * 1024);
        let off = parse("[uring]\nrecv_budget = 0\n").unwrap().uring;
        assert_eq!(off.recv_budget, 0);
        let spliced = parse("[uring]\nsplice_min = \"1m\"\nsplice_pipes = 64\n").unwrap();
        assert_eq!(
            (spliced.uring.splice_min, spliced.uring.splice_pipes),
            (1 << 20, 64)
        );
        let off = parse("[uring]\nsplice_min = 0\n").unwrap().uring;
        assert_eq!(off.splice_min, 0);
        assert!(!d.uring.splice_local);
        let local = parse("[uring]\nsplice_local = true\n").unwrap().uring;
        assert!(local.splice_local);
        let f = parse(
            "[uring]\nfixed_files = false\nrecv_bundles = false\nsend_zc = false\n\
             ring_shutdown = true\naccept_direct = true\nclose_cancel = true\n",
        )
        .unwrap()
        .uring
        .features;
        assert!(!f.fixed_files && !f.bundles && !f.send_zc);
        assert!(f.ring_shutdown && f.accept_direct && f.close_cancel);
        // The budget is checked against the buffers set in the same section (16 x 4 KiB:
        // at most 4 KiB), whatever the order of the keys.
        let small = parse("[uring]\nrecv_budget = 4096\nrecv_buffers = 16\n").unwrap();
        assert_eq!(small.uring.recv_budget, 4096);
    }

    /// Every bad `[uring]` ring value names the file, its line and the key.
    #[test]
    fn bad_uring_ring_values_say_where_and_why() {
        for (text, line, field, why) in [
            (
                "[uring]\nsq_entries = 1000\n",
                2,
                "uring.sq_entries",
                "power of two between 16 and 32768 (got 1000)",
            ),
            (
                "[uring]\nbatch_max = 8\nsq_entries = 65536\n",
                3,
                "uring.sq_entries",
                "power of two",
            ),
            (
                "[uring]\nrecv_buffers = 100000\n",
                2,
                "uring.recv_buffers",
                "power of two between 16 and 32768",
            ),
            (
                "[uring]\nrecv_buffer_size = 512\n",
                2,
                "uring.recv_buffer_size",
                "between 1024 and 1048576 bytes (got 512)",
            ),
            (
                "[uring]\nrecv_buffer_size_unbundled = \"2m\"\n",
                2,
                "uring.recv_buffer_size_unbundled",
                "between 1024 and 1048576 bytes",
            ),
            (
                "[uring]\nrecv_buffer_size = \"4q\"\n",
                2,
                "uring.recv_buffer_size",
                "unknown size unit",
            ),
            (
                "[uring]\nrecv_buffers = 32768\nrecv_buffer_size = \"64k\"\n",
                2,
                "uring.recv_buffers",
                "at most 268435456",
            ),
            (
                "[uring]\nrecv_budget = \"1m\"\n",
                2,
                "uring.recv_budget",
                "a sixteenth of the 1024 x 4096-byte buffer ring (262144 bytes) (got 1048576)",
            ),
            (
                "[uring]\nrecv_budget = 100\n",
                2,
                "uring.recv_budget",
                "must be 0 (no budget) or between one buffer (4096 bytes)",
            ),
            (
                "[uring]\nrecv_buffers = 16\n\nrecv_budget = \"8k\"\n",
                4,
                "uring.recv_budget",
                "(4096 bytes) (got 8192)",
            ),
            (
                "[uring]\naccept_direct = true\n",
                2,
                "uring.accept_direct",
                "needs ring_shutdown = true",
            ),
            (
                "[uring]\nsplice_min = \"4k\"\n",
                2,
                "uring.splice_min",
                "must be 0 (no splicing) or at least 16384 bytes (got 4096)",
            ),
            (
                "[uring]\n\nsplice_pipes = 0\n",
                3,
                "uring.splice_pipes",
                "must be between 1 and 16384 (got 0)",
            ),
        ] {
            let e = Config::parse(text, "sluice.toml").unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.line, e.field.as_str()),
                ("sluice.toml", line, field),
                "{text}: {e}"
            );
            assert!(e.message.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn postpone_output_keys() {
        let d = parse("").unwrap().conn_config();
        assert_eq!(d.postpone_output, 1460, "nginx's default");
        assert_eq!(d.postpone_timeout, Duration::from_millis(1));
        let c = parse("[buffers]\npostpone_output = \"4k\"\npostpone_timeout = \"200us\"\n")
            .unwrap()
            .conn_config();
        assert_eq!(c.postpone_output, 4096);
        assert_eq!(c.postpone_timeout, Duration::from_micros(200));
        let off = parse("[buffers]\npostpone_output = 0\n").unwrap();
        assert_eq!(off.conn_config().postpone_output, 0);
    }

    #[test]
    fn upstream_connection_cap_key() {
        let d = parse("").unwrap();
        assert_eq!(d.upstream_max_conns, 0, "no cap by default");
        assert_eq!(d.engine_config().upstream_max_conns, 0);
        let c = parse("[upstream]\nmax_idle_per_endpoint = 8\nmax_connections_per_endpoint = 32\n")
            .unwrap();
        assert_eq!(c.upstream_max_conns, 32);
        assert_eq!(c.engine_config().upstream_max_conns, 32);
        assert_eq!(c.upstream_max_idle, 8);
        let off = parse("[upstream]\nmax_connections_per_endpoint = 0\n").unwrap();
        assert_eq!(off.engine_config().upstream_max_conns, 0);
    }

    #[test]
    fn bad_upstream_connection_caps_say_where_and_why() {
        let key = "upstream.max_connections_per_endpoint: expected a whole number";
        for (text, line, what) in [
            (
                "[upstream]\nmax_connections_per_endpoint = \"many\"\n",
                2,
                key,
            ),
            (
                "workers = 1\n[upstream]\nidle_timeout = \"60s\"\nmax_connections_per_endpoint = -1\n",
                4,
                key,
            ),
            ("[upstream]\nmax_connections_per_endpoint = 1.5\n", 2, key),
            ("[upstream]\nmax_connections_per_endpoint = true\n", 2, key),
            (
                "[upstream]\nmax_connections_per_endpoint = 99999999\n",
                2,
                key,
            ),
            (
                "[upstream]\nmax_connection_per_endpoint = 4\n",
                2,
                "max_connection_per_endpoint",
            ),
        ] {
            let err = Config::parse(text, "cap.toml").unwrap_err();
            assert_eq!(err.file, "cap.toml", "{text}");
            assert_eq!(err.line, line, "{text}: {err}");
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("cap.toml:{line}:")), "{shown}");
            assert!(shown.contains(what), "{text}: {shown}");
            assert!(
                shown.contains("max_connection"),
                "the key is named: {shown}"
            );
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (
                "[http]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                "http.trusted_proxies",
            ),
            (
                "[http]\ntrusted_proxies = [\"nope\"]\n",
                "http.trusted_proxies",
            ),
            ("[log]\naccess_sample = 0\n", "log.access_sample"),
            ("[log]\naccess_sample = 1.5\n", "log.access_sample"),
            (
                "[log]\nbackend_metrics_cap = 0\n",
                "log.backend_metrics_cap",
            ),
            ("[uring]\nbatch_window = \"2ms\"\n", "uring.batch_window"),
            ("[uring]\nbatch_window = \"50ns\"\n", "uring.batch_window"),
            ("[uring]\nbatch_max = 0\n", "uring.batch_max"),
            ("[uring]\nbatch_mx = 4\n", "batch_mx"),
            (
                "[buffers]\npostpone_output = \"1m\"\n",
                "buffers.postpone_output",
            ),
            (
                "[buffers]\npostpone_timeout = \"2s\"\n",
                "buffers.postpone_timeout",
            ),
            (
                "[buffers]\npostpone_timeout = \"soon\"\n",
                "buffers.postpone_timeout",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
