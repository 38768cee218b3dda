//! Certificates: Ingress `spec.tls` + `kubernetes.io/tls` Secrets (and certificates from files,
//! and the default one) → the snapshot's [`CertTable`], with ingress-nginx's redirect rules.
//!
//! Bad material is rejected on its own: a Secret with a broken PEM, a key that does not match
//! its certificate, or an expired certificate gets a [`Diagnostic`] with the reason, and its
//! hosts answer with the default certificate; every other host is untouched. Annotations are
//! parsed as typed values (booleans), never as configuration text.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::annotations::Annotations;
use super::compile::Diagnostic;
use crate::core::tls::{CertTable, CertTableBuilder};

/// Redirect plain HTTP to HTTPS for the hosts of this Ingress that have TLS (default on).
pub const SSL_REDIRECT: &[&str] = &[
    "sluice.dev/ssl-redirect",
    "nginx.ingress.kubernetes.io/ssl-redirect",
];
/// Redirect plain HTTP to HTTPS for every host of this Ingress, TLS or not (default off).
pub const FORCE_SSL_REDIRECT: &[&str] = &[
    "sluice.dev/force-ssl-redirect",
    "nginx.ingress.kubernetes.io/force-ssl-redirect",
];

/// The crypto provider every certificate and handshake uses: aws-lc-rs. Measured with
/// `bench/tls.py` against *ring* in the same setup: full handshakes per CPU-second 1.9x
/// better with RSA 2048 and about 1.2x with ECDSA P-256, keep-alive HTTPS about the same.
/// Its suites are put in [`SUITE_ORDER`].
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider.cipher_suites = ordered_suites(&provider.cipher_suites);
            Arc::new(provider)
        })
        .clone()
}

/// The server's suite preference (it ignores the client's, see `TlsSettings`): Mozilla's
/// "intermediate" order, AES-128-GCM first. The provider's own order puts AES-256-GCM with
/// SHA-384 first, and aws-lc only has a portable SHA-512 (SHA-384's core) on AMD CPUs, where
/// it was 16 % of a full handshake's CPU (perf, bench/tls.py); SHA-256 uses the SHA
/// extensions on both vendors. Every suite stays offered.
pub const SUITE_ORDER: &[rustls::CipherSuite] = &[
    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// `suites` sorted by [`SUITE_ORDER`]; suites it does not name keep their order, last.
fn ordered_suites(suites: &[rustls::SupportedCipherSuite]) -> Vec<rustls::SupportedCipherSuite> {
    let mut sorted = suites.to_vec();
    sorted.sort_by_key(|s| {
        SUITE_ORDER
            .iter()
            .position(|&c| c == s.suite())
            .unwrap_or(SUITE_ORDER.len())
    });
    sorted
}

/// The wall clock, read only to decide whether a certificate has expired.
#[allow(clippy::disallowed_methods)]
pub fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// A certificate loaded outside the cluster objects (a file, or generated at start).
#[derive(Clone)]
pub struct StaticCert {
    /// Where it came from, for logs.
    pub name: String,
    pub key: Arc<CertifiedKey>,
}

impl PartialEq for StaticCert {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.key, &other.key)
    }
}

impl Eq for StaticCert {}

impl fmt::Debug for StaticCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticCert({})", self.name)
    }
}

/// How certificates and redirects are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// `--default-ssl-certificate NS/NAME`: a Secret answering when SNI matches nothing.
    pub default_secret: Option<(String, String)>,
    /// The default when `default_secret` is unset or rejected: a file, or self-signed.
    pub default_cert: Option<StaticCert>,
    /// Certificates from files, with the hosts they serve (before any Secret's).
    pub files: Vec<(Vec<String>, StaticCert)>,
    /// Global default of `ssl-redirect`.
    pub ssl_redirect: bool,
    /// Global default of `force-ssl-redirect`.
    pub force_ssl_redirect: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            default_secret: None,
            default_cert: None,
            files: Vec::new(),
            ssl_redirect: true,
            force_ssl_redirect: false,
        }
    }
}

/// Parses a PEM certificate chain and private key, checks that the key matches the
/// certificate and that the certificate has not expired at `now`.
pub fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    now: SystemTime,
) -> Result<CertifiedKey, CertError> {
    let (certified, not_after) = parse_pem(cert_pem, key_pem)?;
    check_expiry(not_after, now)?;
    Ok(certified)
}

fn check_expiry(not_after: SystemTime, now: SystemTime) -> Result<(), CertError> {
    if not_after >= now {
        return Ok(());
    }
    let ago = now.duration_since(not_after).unwrap_or_default().as_secs();
    Err(CertError::Cert(format!(
        "certificate expired {} day(s) ago (notAfter is unix time {})",
        ago / 86_400,
        not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )))
}

/// [`load_pem`] without the expiry check; returns the certificate's `notAfter` with it.
fn parse_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<(CertifiedKey, SystemTime), CertError> {
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(cert_pem) {
        chain.push(item.map_err(|e| CertError::Cert(format!("broken PEM: {e}")))?);
    }
    if chain.is_empty() {
        return Err(CertError::Cert("no CERTIFICATE block in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CertError::Key(format!("broken PEM private key: {e}")))?;
    let not_after = not_after(&chain[0]).ok_or_else(|| {
        CertError::Cert("not an X.509 certificate (cannot read its validity)".into())
    })?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key(format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok((certified, not_after)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(
            CertError::Key("the private key does not match the certificate".into()),
        ),
        Err(e) => Err(CertError::Cert(format!(
            "cannot check the key against the certificate: {e}"
        ))),
    }
}

/// Why certificate material was rejected, and which half of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertError {
    Cert(String),
    Key(String),
    Missing(String),
}

impl CertError {
    fn field(&self) -> &'static str {
        match self {
            CertError::Cert(_) => "data[tls.crt]",
            CertError::Key(_) => "data[tls.key]",
            CertError::Missing(_) => "data",
        }
    }
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Cert(m) | CertError::Key(m) | CertError::Missing(m) => f.write_str(m),
        }
    }
}

/// Why a certificate from files, or the self-signed one, could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CertFileError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{cert} / {key}: {reason}")]
    Invalid {
        cert: String,
        key: String,
        reason: CertError,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("generated key: {0}")]
    GeneratedKey(String),
}

/// Loads a certificate and key from PEM files (for the TOML's certificates and the default).
pub fn load_files(cert: &Path, key: &Path, now: SystemTime) -> Result<StaticCert, CertFileError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CertFileError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let certified =
        load_pem(&read(cert)?, &read(key)?, now).map_err(|reason| CertFileError::Invalid {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason,
        })?;
    Ok(StaticCert {
        name: cert.display().to_string(),
        key: Arc::new(certified),
    })
}

/// A self-signed ECDSA P-256 certificate for when no default is configured (what
/// ingress-nginx calls its "fake certificate").
pub fn self_signed() -> Result<StaticCert, CertFileError> {
    let mut params = rcgen::CertificateParams::new(vec!["sluice.invalid".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice self-signed certificate");
    // Valid from a day ago for a year (rcgen's default is 1975 to 4096, which scanners flag).
    let since_epoch = wall_clock().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - Duration::from_secs(86_400);
    params.not_after = now + Duration::from_secs(365 * 86_400);
    let signing_key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&signing_key)?;
    let key = PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|e| CertFileError::GeneratedKey(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertFileError::GeneratedKey(e.to_string()))?;
    Ok(StaticCert {
        name: "self-signed".to_string(),
        key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
    })
}

/// The certificate material of a Secret: `stringData` wins over `data` (as the API server
/// merges them).
fn secret_pem<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.as_bytes());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

fn parse_secret(secret: &Secret) -> Result<(CertifiedKey, SystemTime), CertError> {
    let (Some(cert), Some(key)) = (secret_pem(secret, "tls.crt"), secret_pem(secret, "tls.key"))
    else {
        return Err(CertError::Missing(
            "needs tls.crt and tls.key (a kubernetes.io/tls Secret)".into(),
        ));
    };
    parse_pem(cert, key)
}

type Parsed = Result<(Arc<CertifiedKey>, SystemTime), CertError>;

/// Secrets parsed by earlier compiles, by the address of the shared object. Sources hand the
/// same `Arc` to every compile while a Secret is unchanged, so an unchanged Secret is parsed
/// once; the `Weak` keeps the address from being reused while the entry exists, and entries
/// of Secrets no source holds any more are dropped at the end of each build.
struct ParsedSecret {
    secret: Weak<Secret>,
    parsed: Parsed,
}

fn parsed_secrets() -> &'static Mutex<HashMap<usize, ParsedSecret>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, ParsedSecret>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// A Secret's certificate, parsed at most once per version of the object; expiry is checked
/// against `now` every time.
fn load_secret(secret: &Arc<Secret>, now: SystemTime) -> Result<Arc<CertifiedKey>, CertError> {
    let id = Arc::as_ptr(secret) as usize;
    let cached = {
        let cache = parsed_secrets().lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&id)
            .filter(|e| e.secret.strong_count() > 0)
            .map(|e| e.parsed.clone())
    };
    let parsed = match cached {
        Some(parsed) => parsed,
        None => {
            let parsed = parse_secret(secret).map(|(k, t)| (Arc::new(k), t));
            parsed_secrets()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    id,
                    ParsedSecret {
                        secret: Arc::downgrade(secret),
                        parsed: parsed.clone(),
                    },
                );
            parsed
        }
    };
    let (key, not_after) = parsed?;
    check_expiry(not_after, now)?;
    Ok(key)
}

/// Builds the certificate table from our Ingresses (oldest first: the first certificate for
/// a host wins), the Secrets, and the options. Pure given `now` (used for expiry).
pub fn build(
    ingresses: &[&Ingress],
    secrets: &[Arc<Secret>],
    opts: &TlsOptions,
    now: SystemTime,
) -> (CertTable, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut table = CertTableBuilder::default();
    let index: HashMap<(&str, &str), &Arc<Secret>> = secrets
        .iter()
        .filter_map(|s| {
            let name = s.metadata.name.as_deref()?;
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            Some(((ns, name), s))
        })
        .collect();
    // Each Secret is parsed once, however many Ingresses name it.
    let mut loaded: HashMap<(String, String), Option<Arc<CertifiedKey>>> = HashMap::new();
    // `used_by`: the object and field naming the Secret, for a "not found" (reported at each
    // use; a bad Secret is reported once, on the Secret).
    let mut load = |ns: &str, name: &str, diags: &mut Vec<Diagnostic>, used_by: (&str, &str)| {
        let object = format!("Secret {ns}/{name}");
        let Some(secret) = index.get(&(ns, name)) else {
            diags.push(Diagnostic {
                object: used_by.0.to_string(),
                field: used_by.1.to_string(),
                message: format!("{object} not found; the default certificate answers"),
            });
            return None;
        };
        if let Some(k) = loaded.get(&(ns.to_string(), name.to_string())) {
            return k.clone();
        }
        let result = match load_secret(secret, now) {
            Ok(k) => Some(k),
            Err(e) => {
                diags.push(Diagnostic {
                    object,
                    field: e.field().to_string(),
                    message: format!("{e}; its hosts use the default certificate"),
                });
                None
            }
        };
        loaded.insert((ns.to_string(), name.to_string()), result.clone());
        result
    };

    for (hosts, cert) in &opts.files {
        for host in hosts {
            table.add(host, Some(cert.key.clone()), opts.ssl_redirect);
        }
    }

    for ing in ingresses {
        let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
        let name = ing.metadata.name.as_deref().unwrap_or("");
        let object = format!("Ingress {ns}/{name}");
        let annotations = Annotations::of(ing, &object);
        let redirect = annotations.bool("ssl-redirect", opts.ssl_redirect, &mut diags);
        let force = annotations.bool("force-ssl-redirect", opts.force_ssl_redirect, &mut diags);
        let Some(spec) = ing.spec.as_ref() else {
            continue;
        };
        for (i, tls) in spec.tls.iter().flatten().enumerate() {
            let field = format!("spec.tls[{i}]");
            let cert = match tls.secret_name.as_deref() {
                None | Some("") => None,
                Some(secret) => load(
                    ns,
                    secret,
                    &mut diags,
                    (&object, &format!("{field}.secretName")),
                ),
            };
            for (j, host) in tls.hosts.iter().flatten().enumerate() {
                if let Err(why) = super::compile::check_host(host) {
                    diags.push(Diagnostic {
                        object: object.clone(),
                        field: format!("{field}.hosts[{j}]"),
                        message: why.to_string(),
                    });
                    continue;
                }
                table.add(host, cert.clone(), redirect || force);
            }
        }
        if force {
            for rule in spec.rules.iter().flatten() {
                if let Some(host) = rule.host.as_deref()
                    && !host.is_empty()
                    && super::compile::check_host(host).is_ok()
                {
                    table.add(host, None, true);
                }
            }
        }
    }

    let mut default_set = false;
    if let Some((ns, name)) = &opts.default_secret
        && let Some(k) = load(
            ns,
            name,
            &mut diags,
            (&format!("Secret {ns}/{name}"), "--default-ssl-certificate"),
        )
    {
        table.default_cert(k);
        default_set = true;
    }
    if !default_set && let Some(c) = &opts.default_cert {
        table.default_cert(c.key.clone());
    }
    parsed_secrets()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|_, e| e.secret.strong_count() > 0);
    (table.build(), diags)
}

/// `notAfter` of a DER X.509 certificate. Reads only the few fields before it, with every
/// length checked; `None` for anything that is not a certificate.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    // version [0] EXPLICIT (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..3 {
        let (_, _, after) = tlv(rest)?;
        rest = after;
    }
    let (tag, validity, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(after)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match tag {
        0x17 if text.len() == 13 => {
            let yy: u32 = text.get(0..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{text}")
        }
        0x18 if text.len() == 15 => text.to_string(),
        _ => return None,
    };
    if !full.ends_with('Z') || !full[..14].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| full[r].parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(8..10)?, num(10..12)?, num(12..14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    if secs < 0 {
        return Some(UNIX_EPOCH);
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// One DER tag-length-value: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, input.get(header..end)?, input.get(end..)?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 1), 20_788);
    }

    #[test]
    fn not_after_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let t = not_after(cert.der()).unwrap();
        let days = t.duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400;
        assert_eq!(days as i64, days_from_civil(2031, 5, 17));
        assert_eq!(not_after(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(not_after(&[]), None);
    }

    #[test]
    fn the_generated_certificate_is_valid_for_a_year_from_now() {
        let cert = self_signed().unwrap();
        let after = not_after(cert.key.cert[0].as_ref()).unwrap();
        let left = after.duration_since(wall_clock()).unwrap().as_secs() / 86_400;
        assert!((364..=365).contains(&left), "{left} days left");
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let now = wall_clock();
        let e = load_pem(b"nope", b"nope", now).unwrap_err();
        assert!(matches!(e, CertError::Cert(_)), "{e}");
    }
}
