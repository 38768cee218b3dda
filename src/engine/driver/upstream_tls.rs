//! The driver's side of TLS towards upstreams (`backend-protocol: HTTPS`): the keep-alive
//! pool's key (endpoint and TLS identity), and moving bytes through an upstream connection's
//! [`crate::core::tls_client::ClientTlsSession`]: the handshake after the TCP connect (the machine is told it is
//! connected only once it is done), decrypting what the upstream sends, handing back the
//! machine's buffers once their ciphertext is written. The TLS state itself stays in `core`.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{Driver, Slab, UpState, Upstream};
use crate::core::time::Instant;
use crate::core::tls::Received;
use crate::core::upstream::SnapshotRouter;
use crate::engine::metrics::WorkerMetrics;

/// Where an idle upstream connection waits in the pool: its endpoint and a hash of its TLS
/// identity (0: plain). The full identity is compared when one is taken out.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    pub endpoint: SocketAddr,
    pub tls: u64,
}

/// The pool key of a connection to `endpoint` with `tls` for `name`.
pub(super) fn pool_key(endpoint: SocketAddr, tls: Option<(u64, Option<&str>)>) -> PoolKey {
    let Some((id, name)) = tls else {
        return PoolKey { endpoint, tls: 0 };
    };
    let mut h = id ^ 0x9e37_79b9_7f4a_7c15;
    for b in name.unwrap_or("").bytes() {
        h = (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01b3);
    }
    PoolKey {
        endpoint,
        tls: h | 1,
    }
}

/// The newest idle connection under `key` made for exactly `identity`, taken out of the pool.
pub(super) fn take_pooled(
    pool: &mut HashMap<PoolKey, Vec<usize>>,
    upstreams: &Slab<Upstream>,
    key: PoolKey,
    identity: Option<(u64, Option<&str>)>,
) -> Option<usize> {
    let list = pool.get_mut(&key)?;
    let at = list.iter().rposition(|&ui| {
        upstreams.peek(ui).is_some_and(|up| {
            let theirs = up
                .tls_identity
                .as_ref()
                .map(|(id, name)| (*id, name.as_deref()));
            match (theirs, identity) {
                (None, None) => true,
                (Some((a, n)), Some((b, m))) => {
                    a == b && n.map(str::to_ascii_lowercase) == m.map(str::to_ascii_lowercase)
                }
                _ => false,
            }
        })
    })?;
    Some(list.remove(at))
}

impl Driver {
    /// Bytes from a TLS upstream: handled here (true) unless the connection is plain.
    pub(super) fn upstream_tls_received(
        &mut self,
        slot: u32,
        generation: u32,
        data: &[u8],
        now: Instant,
    ) -> bool {
        let ui = slot as usize;
        let Some(up) = self.upstreams.get(ui, generation) else {
            return true;
        };
        let Some(tls) = &mut up.tls else {
            return false;
        };
        match up.state {
            UpState::Connecting => true,
            UpState::Handshaking => {
                // No plaintext can come before the request: any is a protocol error.
                let mut spoke = false;
                let result = tls.receive(data, &mut |_| spoke = true);
                let failed = match result {
                    Err(e) => {
                        tracing::debug!(endpoint = %up.endpoint, error = %e, "upstream TLS handshake failed");
                        true
                    }
                    Ok(Received::Closed) => true,
                    Ok(Received::Open) => spoke,
                };
                let done = !tls.is_handshaking();
                let client = up.client;
                if failed {
                    self.handshake_failed(ui, client, now);
                } else if done {
                    up.state = UpState::Attached;
                    if let Some(ci) = client
                        && let Some(cl) = self.clients.get_any(ci)
                    {
                        let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
                        cl.conn.upstream_connected(now, false, &mut router);
                    }
                }
                // Either way the client is driven: handshake messages or the request go out.
                self.touched.extend(client);
                true
            }
            UpState::Idle { .. } => {
                // Post-handshake messages (session tickets, key updates) are fine; plaintext,
                // close_notify or an error mean the connection is no longer usable.
                let mut spoke = false;
                let result = tls.receive(data, &mut |_| spoke = true);
                let output = tls.take_output().is_some();
                if spoke || output || !matches!(result, Ok(Received::Open)) {
                    let key = up.key;
                    if let Some(list) = self.pool.get_mut(&key) {
                        list.retain(|&i| i != ui);
                    }
                    self.doomed.push(ui);
                }
                true
            }
            UpState::Attached => {
                let Some(ci) = up.client else {
                    return true;
                };
                let Some(client) = self.clients.get_any(ci) else {
                    return true;
                };
                let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
                let conn = &mut client.conn;
                let mut deliver = |plain: &[u8]| conn.upstream_data(plain, now, &mut router);
                match tls.receive(data, &mut deliver) {
                    Ok(Received::Open) => {}
                    Ok(Received::Closed) => conn.upstream_eof(now, &mut router),
                    Err(e) => {
                        tracing::debug!(endpoint = %up.endpoint, error = %e, "upstream TLS");
                        conn.upstream_error(now, &mut router);
                    }
                }
                self.touched.push(ci);
                true
            }
        }
    }

    /// EOF or an error on an upstream whose TLS handshake runs: the connect failed (true);
    /// false for any other upstream.
    pub(super) fn handshake_ended(&mut self, slot: u32, generation: u32, now: Instant) -> bool {
        let ui = slot as usize;
        let Some(up) = self.upstreams.get(ui, generation) else {
            return false;
        };
        if up.state != UpState::Handshaking {
            return false;
        }
        let client = up.client;
        self.handshake_failed(ui, client, now);
        true
    }

    /// The TLS handshake with upstream `ui` failed: it is closed, and its client is told the
    /// connect failed (a retry elsewhere, or 502).
    fn handshake_failed(&mut self, ui: usize, client: Option<usize>, now: Instant) {
        WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
        self.doomed.push(ui);
        if let Some(up) = self.upstreams.get_any(ui)
            && up.client.take().is_some()
        {
            self.demand.detach(up.key);
        }
        if let Some(ci) = client
            && let Some(cl) = self.clients.get_any(ci)
        {
            cl.upstream = None;
            let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
            cl.conn.upstream_connect_failed(now, &mut router);
            self.touched.push(ci);
        }
    }

    /// A write to the client `ci`'s upstream came back. Plain: the buffer and count go on to
    /// the machine. TLS: the machine's buffer goes back once all of its ciphertext is out
    /// (`None` meanwhile); a failed write during the handshake is a failed connect.
    pub(super) fn upstream_tls_written(
        &mut self,
        ci: usize,
        buf: Vec<u8>,
        written: Option<usize>,
        now: Instant,
    ) -> Option<(Vec<u8>, Option<usize>)> {
        let ui = self.clients.get_any(ci)?.upstream;
        let Some(up) = ui.and_then(|ui| self.upstreams.get_any(ui)) else {
            return Some((buf, written));
        };
        let Some(tls) = &mut up.tls else {
            return Some((buf, written));
        };
        let handshaking = up.state == UpState::Handshaking;
        self.touched.push(ci);
        match written {
            None if handshaking => {
                let ui = ui?;
                self.handshake_failed(ui, Some(ci), now);
                None
            }
            None => Some((buf, None)),
            Some(n) => {
                let (plain, len) = tls.sent(buf, n)?;
                (!handshaking).then_some((plain, Some(len)))
            }
        }
    }
}
