//! TLS towards the upstream, sans-IO: the client-side counterpart of [`crate::core::tls`].
//! One upstream connection's rustls client driven over caller-owned buffers: the driver hands
//! it the ciphertext it receives and the plaintext the connection machine wants written, and
//! writes what it gives back. Its config comes from the route
//! ([`crate::core::route::upstream_tls::UpstreamTls`]), built once per compile.

use std::io::{BufRead, Write};

use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use crate::core::route::upstream_tls::UpstreamTls;
use crate::core::tls::{Received, TlsError};

/// One upstream TLS connection over caller-owned buffers (the same contract as
/// [`crate::core::tls::TlsSession`], client side).
pub struct ClientTlsSession {
    conn: ClientConnection,
    /// The plaintext buffer being encrypted and written; handed back by
    /// [`ClientTlsSession::sent`] once all of its ciphertext is written.
    plain: Option<(Vec<u8>, usize)>,
    /// Ciphertext waiting to be handed to the socket.
    out: Vec<u8>,
    close_notify: bool,
}

impl ClientTlsSession {
    /// A new session of `tls` for `name` (SNI and verification, as configured). A name that
    /// is neither a DNS name nor an IP address is an error (the connection fails: 502).
    pub fn new(tls: &UpstreamTls, name: &str) -> Result<ClientTlsSession, TlsError> {
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| TlsError(format!("{name:?} is not a usable TLS server name")))?;
        let conn = ClientConnection::new(tls.config().clone(), server_name)
            .map_err(|e| TlsError(e.to_string()))?;
        Ok(ClientTlsSession {
            conn,
            plain: None,
            out: Vec::new(),
            close_notify: false,
        })
    }

    /// Ciphertext from the upstream; every plaintext chunk is passed to `deliver`. On error,
    /// an alert may be waiting in the output.
    pub fn receive(
        &mut self,
        mut data: &[u8],
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Result<Received, TlsError> {
        while !data.is_empty() {
            match self.conn.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(TlsError(e.to_string())),
            }
            if let Err(e) = self.conn.process_new_packets() {
                return Err(TlsError(e.to_string()));
            }
            loop {
                let mut reader = self.conn.reader();
                match reader.fill_buf() {
                    Ok([]) => return Ok(Received::Closed),
                    Ok(chunk) => {
                        let n = chunk.len();
                        deliver(chunk);
                        reader.consume(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(TlsError(e.to_string())),
                }
            }
        }
        Ok(Received::Open)
    }

    /// Whether a plaintext buffer can be taken from the machine now.
    pub fn wants_plain(&self) -> bool {
        self.plain.is_none() && !self.conn.is_handshaking() && !self.close_notify
    }

    /// Encrypts `buf` (the machine's upstream output); keeps it until it is written. At most
    /// rustls's buffer limit is taken at once: the buffer then comes back from
    /// [`ClientTlsSession::sent`] with the shorter count, as after a short socket write.
    pub fn push_plain(&mut self, buf: Vec<u8>) {
        let len = buf.len();
        let written = self.conn.writer().write(&buf).unwrap_or(0);
        self.plain = Some((buf, written.min(len)));
    }

    /// Ciphertext to write, if any.
    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if self.out.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.out))
    }

    /// A buffer from [`ClientTlsSession::take_output`] comes back with `written` bytes
    /// written; returns the plaintext buffer and its length once all of its ciphertext is out.
    pub fn sent(&mut self, mut buf: Vec<u8>, written: usize) -> Option<(Vec<u8>, usize)> {
        let written = written.min(buf.len());
        if written < buf.len() {
            buf.drain(..written);
            buf.extend_from_slice(&self.out);
            self.out = buf;
            return None;
        }
        if self.out.is_empty() {
            buf.clear();
            self.out = buf;
        }
        if self.out.is_empty() && !self.conn.wants_write() {
            return self.plain.take();
        }
        None
    }

    /// Queues close_notify (once).
    pub fn close_notify(&mut self) {
        if !self.close_notify {
            self.close_notify = true;
            self.conn.send_close_notify();
        }
    }

    /// Nothing queued, nothing held: the connection can go back to the pool.
    pub fn idle(&self) -> bool {
        self.out.is_empty() && !self.conn.wants_write() && self.plain.is_none()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}
