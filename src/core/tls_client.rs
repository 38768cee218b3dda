//! TLS towards the upstream, sans-IO: the client-side counterpart of [`crate::core::tls`].
//! One upstream connection's rustls client driven over caller-owned buffers: the driver hands
//! it the ciphertext it receives and the plaintext the connection machine wants written, and
//! writes what it gives back. Its config comes from the route
//! ([`crate::core::route::upstream_tls::UpstreamTls`]), built once per compile.

use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use crate::core::route::upstream_tls::UpstreamTls;
use crate::core::tls::{Session, TlsError};

/// One upstream TLS connection over caller-owned buffers (the same contract as the
/// listener's [`crate::core::tls::TlsSession`], client side; the connect timeout bounds its
/// handshake).
pub type ClientTlsSession = Session<ClientConnection>;

impl ClientTlsSession {
    /// A new session of `tls` for `name` (SNI and verification, as configured). A name that
    /// is neither a DNS name nor an IP address is an error (the connection fails: 502).
    pub fn new(tls: &UpstreamTls, name: &str) -> Result<ClientTlsSession, TlsError> {
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| TlsError(format!("{name:?} is not a usable TLS server name")))?;
        let conn = ClientConnection::new(tls.config().clone(), server_name)
            .map_err(|e| TlsError(e.to_string()))?;
        Ok(Session::with(conn, None))
    }
}
