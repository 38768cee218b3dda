//! A route's TLS towards its upstream (`backend-protocol: HTTPS`, `proxy-ssl-*`), as the
//! compiler builds it: one rustls client config per route policy, built on the control thread
//! once per compile and shared by every worker through an `Arc`, never per request. The
//! connections themselves are [`crate::core::tls_client`]'s.
//!
//! The name a connection is made for (SNI and the verified name) is `proxy-ssl-name`, else the
//! `Host` sent upstream. Pooled connections are keyed by endpoint *and* TLS identity
//! ([`UpstreamTls::id`] and that name), so a connection made for one name or one client
//! certificate is never reused for another.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLS protocol versions offered to the upstream (`proxy-ssl-protocols`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Protocols {
    pub tls12: bool,
    pub tls13: bool,
}

impl Protocols {
    /// ingress-nginx's default (`proxy-ssl-protocols: TLSv1.2`).
    pub const DEFAULT: Protocols = Protocols {
        tls12: true,
        tls13: false,
    };

    /// nginx's syntax: names separated by spaces (`TLSv1.2 TLSv1.3`). Names of versions
    /// rustls does not speak (`SSLv3`, `TLSv1`, `TLSv1.1`) are refused with the reason.
    pub fn parse(value: &str) -> Result<Protocols, String> {
        let mut p = Protocols {
            tls12: false,
            tls13: false,
        };
        for name in value.split_ascii_whitespace() {
            match name {
                "TLSv1.2" => p.tls12 = true,
                "TLSv1.3" => p.tls13 = true,
                "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => {
                    return Err(format!(
                        "{name} is not offered (only TLSv1.2 and TLSv1.3 are)"
                    ));
                }
                other => {
                    return Err(format!("expected TLSv1.2 and/or TLSv1.3, got {other:?}"));
                }
            }
        }
        if !p.tls12 && !p.tls13 {
            return Err("no protocol named (expected TLSv1.2 and/or TLSv1.3)".into());
        }
        Ok(p)
    }
}

impl fmt::Display for Protocols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.tls12, self.tls13) {
            (true, true) => f.write_str("TLSv1.2 TLSv1.3"),
            (false, true) => f.write_str("TLSv1.3"),
            _ => f.write_str("TLSv1.2"),
        }
    }
}

/// What a route says about TLS towards its upstream, before it becomes a rustls config.
#[derive(Debug, Default)]
pub struct UpstreamTlsSpec {
    /// `proxy-ssl-verify: on`: the upstream's certificate must chain to `roots` and name the
    /// connection's name. Off (the default, as ingress-nginx): any certificate is accepted
    /// (its handshake signature is still checked).
    pub verify: bool,
    /// `proxy-ssl-verify-depth`: the most certificates in the chain the upstream presents,
    /// its own included (nginx's depth counts the same way: 1 = a certificate signed by a
    /// trusted CA directly). `None`: no limit beyond webpki's.
    pub verify_depth: Option<u32>,
    /// `proxy-ssl-server-name: on`: the name is sent as SNI.
    pub send_sni: bool,
    /// `proxy-ssl-name`: the name used for SNI and verification instead of the `Host`.
    pub name: Option<String>,
    pub protocols: Option<Protocols>,
    /// Trusted CAs (`ca.crt` of `proxy-ssl-secret`), DER.
    pub roots: Vec<CertificateDer<'static>>,
    /// The client certificate chain and key (`tls.crt`, `tls.key` of `proxy-ssl-secret`).
    pub client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Identifies the material (e.g. a hash of the Secret's data): part of [`UpstreamTls::id`].
    pub material_id: u64,
}

/// A route's upstream TLS: the shared rustls config and the naming rules. Compared by
/// [`UpstreamTls::id`], which is the same for the same settings and material.
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// Settings and material in one number: part of the keep-alive pool's key.
    pub id: u64,
    /// `proxy-ssl-name`; `None`: the `Host` sent upstream.
    pub name: Option<Arc<str>>,
    pub send_sni: bool,
    pub verify: bool,
    protocols: Protocols,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamTls({self})")
    }
}

impl fmt::Display for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "https verify={} sni={} protocols={}",
            if self.verify { "on" } else { "off" },
            if self.send_sni { "on" } else { "off" },
            self.protocols.to_string().replace(' ', ",")
        )?;
        if let Some(n) = &self.name {
            write!(f, " name={n}")?;
        }
        if self.config.client_auth_cert_resolver.has_certs() {
            f.write_str(" client-cert")?;
        }
        Ok(())
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.name == other.name
    }
}

impl Eq for UpstreamTls {}

/// FNV-1a over a few words: the identity of a spec (stable, no per-process seed).
fn spec_id(spec: &UpstreamTlsSpec, p: Protocols) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&[
        u8::from(spec.verify),
        u8::from(spec.send_sni),
        u8::from(p.tls12),
        u8::from(p.tls13),
    ]);
    eat(&spec.verify_depth.unwrap_or(0).to_le_bytes());
    eat(&spec.material_id.to_le_bytes());
    eat(spec.name.as_deref().unwrap_or("").as_bytes());
    h
}

impl UpstreamTls {
    /// Builds the rustls client config for `spec` with `provider`'s suites. Errors name what
    /// is wrong (a client key that does not match its certificate, no usable protocol).
    pub fn new(
        spec: &UpstreamTlsSpec,
        provider: Arc<CryptoProvider>,
    ) -> Result<UpstreamTls, String> {
        let protocols = spec.protocols.unwrap_or(Protocols::DEFAULT);
        let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
        if protocols.tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if protocols.tls12 {
            versions.push(&rustls::version::TLS12);
        }
        let id = spec_id(spec, protocols);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| e.to_string())?;
        let verifier: Arc<dyn ServerCertVerifier> = if spec.verify {
            let mut roots = RootCertStore::empty();
            for ca in &spec.roots {
                roots
                    .add(ca.clone())
                    .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
            }
            // No CA at all: every handshake fails (verification was asked for), see
            // `Unverified` refusing; webpki refuses to build a verifier over an empty store.
            match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
            {
                Ok(webpki) => Arc::new(Depth {
                    inner: webpki,
                    max: spec.verify_depth,
                }),
                Err(_) => Arc::new(Unverified {
                    provider: provider.clone(),
                    accept: false,
                }),
            }
        } else {
            Arc::new(Unverified {
                provider: provider.clone(),
                accept: true,
            })
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &spec.client_cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("client certificate: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.enable_sni = spec.send_sni;
        // The session cache is shared by every worker behind a lock: no resumption (pooled
        // keep-alive connections are what saves handshakes here).
        config.resumption = Resumption::disabled();
        Ok(UpstreamTls {
            config: Arc::new(config),
            id,
            name: spec.name.as_deref().map(Arc::from),
            send_sni: spec.send_sni,
            verify: spec.verify,
            protocols,
        })
    }

    /// The name a connection for a request whose upstream `Host` is `host` is made for.
    pub fn name_for<'a>(&'a self, host: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(host)
    }

    /// The part of the name that identifies a pooled connection: none when the name is
    /// neither sent nor verified (any connection of this config will do).
    pub fn pool_name<'a>(&'a self, host: &'a str) -> Option<&'a str> {
        (self.send_sni || self.verify).then(|| self.name_for(host))
    }

    /// The shared rustls config.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }
}

/// A verifier that does not look at the certificate chain: `proxy-ssl-verify: off` accepts
/// any certificate (the handshake's signatures are still checked: the peer holds the key of
/// the certificate it sent); `proxy-ssl-verify: on` without any usable CA refuses every one.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
    accept: bool,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// webpki's verification plus `proxy-ssl-verify-depth`: at most `max` certificates in the
/// presented chain (the upstream's own included).
#[derive(Debug)]
struct Depth {
    inner: Arc<WebPkiServerVerifier>,
    max: Option<u32>,
}

impl ServerCertVerifier for Depth {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(max) = self.max
            && intermediates.len() as u64 + 1 > u64::from(max)
        {
            return Err(rustls::Error::General(format!(
                "the upstream's chain is longer than proxy-ssl-verify-depth {max}"
            )));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_as_nginx_writes_them() {
        assert_eq!(
            Protocols::parse("TLSv1.2 TLSv1.3"),
            Ok(Protocols {
                tls12: true,
                tls13: true
            })
        );
        assert_eq!(Protocols::parse("TLSv1.3").map(|p| p.tls12), Ok(false));
        assert!(Protocols::parse("TLSv1.1").is_err());
        assert!(Protocols::parse("").is_err());
        assert!(Protocols::parse("TLSv1.2;").is_err());
    }

    /// A CA, an intermediate signed by it and a leaf for `backend.test` signed by the
    /// intermediate: (CA DER, leaf DER, intermediate DER).
    fn chain() -> (
        CertificateDer<'static>,
        CertificateDer<'static>,
        CertificateDer<'static>,
    ) {
        let ca_params = {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name.push(rcgen::DnType::CommonName, "root");
            p
        };
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let mut mid_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        mid_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        mid_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        let mid =
            rcgen::CertifiedIssuer::signed_by(mid_params, rcgen::KeyPair::generate().unwrap(), &ca)
                .unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["backend.test".to_string()])
            .unwrap()
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &mid)
            .unwrap();
        (ca.der().clone(), leaf.der().clone(), mid.der().clone())
    }

    #[test]
    fn verify_depth_counts_the_presented_chain() {
        let (ca, leaf, mid) = chain();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let name = ServerName::try_from("backend.test").unwrap();
        let now = UnixTime::now();
        let verify = |max: Option<u32>, name: &ServerName<'_>| {
            Depth {
                inner: webpki.clone(),
                max,
            }
            .verify_server_cert(&leaf, std::slice::from_ref(&mid), name, &[], now)
            .is_ok()
        };
        assert!(verify(None, &name));
        assert!(verify(Some(2), &name));
        assert!(!verify(Some(1), &name));
        // The name counts too.
        assert!(!verify(None, &ServerName::try_from("other.test").unwrap()));
    }
}
