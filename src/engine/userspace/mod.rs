//! The kernel-bypass engine: each worker owns a smoltcp TCP/IP stack over its own queue of a
//! packet device (a multi-queue TAP, or an AF_PACKET socket in a PACKET_FANOUT group) and is a
//! transport under the same engine-neutral driver as the io_uring engine (so HTTP and HTTPS
//! behave the same on both); no kernel TCP on the data path. `demux` classifies frames by
//! 4-tuple, `device` is smoltcp's `phy::Device` over one descriptor, `packet` the device's
//! system calls, `worker` the transport and the loop. Snapshots reach its workers through the
//! same [`Publisher`](super::Publisher).

mod demux;
mod device;
pub mod packet;
mod worker;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::channel;

pub use demux::{Class, FlowKey, classify};

use super::{Engine, EngineConfig, HttpsConfig, launch, sys};
use crate::core::snapshot::Snapshot;
use worker::{UserspaceWorker, UserspaceWorkerSetup};

/// The packet device the workers share, one queue (or fanout member) per worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A TAP device (created if missing) with IFF_MULTI_QUEUE: one queue fd per worker.
    Tap,
    /// An existing interface, one AF_PACKET socket per worker in a PACKET_FANOUT (hash) group.
    /// The appliance's addresses must not also be configured on that interface in the kernel.
    AfPacket,
}

/// How a worker waits for packets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// poll(2) on the device and the wake-up eventfd until the next deadline.
    Sleep,
    /// Never sleep: look at the device again at once (a core at 100 %, as DPDK does).
    Busy,
}

/// The userspace engine's own settings (`[userspace]` in the TOML).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserspaceConfig {
    pub device: DeviceKind,
    /// TAP name or interface name.
    pub interface: String,
    /// The appliance's addresses on that link, with prefix length (IPv4 and/or IPv6).
    pub addresses: Vec<(IpAddr, u8)>,
    pub mac: [u8; 6],
    pub gateway: Option<IpAddr>,
    pub gateway6: Option<IpAddr>,
    /// IP MTU of the link.
    pub mtu: usize,
    pub poll: PollMode,
    /// smoltcp receive and send buffer per TCP socket (each).
    pub tcp_buffer: usize,
    /// Listening sockets per worker. A socket that takes a SYN moves to its own set and is
    /// replaced at once, so this is not a limit on handshakes in progress.
    pub backlog: usize,
    /// PACKET_FANOUT group id (AF_PACKET only).
    pub fanout_group: u16,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        UserspaceConfig {
            device: DeviceKind::Tap,
            interface: "sluice0".into(),
            addresses: vec![(IpAddr::from([10, 0, 0, 2]), 24)],
            mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x02],
            gateway: None,
            gateway6: None,
            mtu: 1500,
            poll: PollMode::Sleep,
            tcp_buffer: 64 * 1024,
            backlog: 64,
            fanout_group: 0x51c,
        }
    }
}

/// A device address in the config that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("expected a MAC address like \"02:00:00:00:00:02\" (got {0:?})")]
    Mac(String),
    #[error("{0:?} is a multicast MAC address")]
    MulticastMac(String),
    #[error("expected an address with prefix like \"10.0.0.2/24\" (got {0:?})")]
    Cidr(String),
}

/// Parses `"02:00:00:00:00:02"`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], AddressError> {
    let bad = || AddressError::Mac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 == 1 {
        return Err(AddressError::MulticastMac(text.to_string()));
    }
    Ok(mac)
}

/// Parses `"10.0.0.2/24"` or `"fd00::2/64"`.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), AddressError> {
    let bad = || AddressError::Cidr(text.to_string());
    let (ip, len) = text.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max || ip.is_unspecified() || ip.is_multicast() {
        return Err(bad());
    }
    Ok((ip, len))
}

impl Engine {
    /// Starts the userspace engine: opens one device queue per worker (failing, with nothing
    /// left running, if the device cannot be opened), then the workers (`main` starts the admin server).
    /// `cfg.http`'s port is the port the workers listen on in their own stacks; its address
    /// must be unspecified or one of `dev.addresses`.
    pub fn start_userspace(
        cfg: EngineConfig,
        dev: UserspaceConfig,
        snapshot: Arc<Snapshot>,
    ) -> io::Result<Engine> {
        Engine::start_userspace_with_https(cfg, None, dev, snapshot)
    }

    /// [`Engine::start_userspace`] with HTTPS served too, on `https.addr`'s port of the same
    /// stack (same certificates, SNI, redirects, HSTS and resumption as the io_uring engine).
    pub fn start_userspace_with_https(
        mut cfg: EngineConfig,
        https: Option<HttpsConfig>,
        dev: UserspaceConfig,
        snapshot: Arc<Snapshot>,
    ) -> io::Result<Engine> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        if dev.addresses.is_empty() {
            return Err(invalid("userspace engine: no address configured".into()));
        }
        for (ip, len) in &dev.addresses {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if *len > max || ip.is_unspecified() || ip.is_multicast() {
                return Err(invalid(format!("userspace engine: bad address {ip}/{len}")));
            }
        }
        if !(576..=9000).contains(&dev.mtu) || dev.tcp_buffer < 1024 {
            return Err(invalid(format!(
                "userspace engine: MTU {} (576 to 9000) or TCP buffer {} (at least 1024) out of range",
                dev.mtu, dev.tcp_buffer
            )));
        }
        if !cfg.http.ip().is_unspecified()
            && !dev.addresses.iter().any(|(a, _)| *a == cfg.http.ip())
        {
            return Err(invalid(format!(
                "userspace engine: listen address {} is not one of the appliance's addresses",
                cfg.http.ip()
            )));
        }
        if cfg.http.port() == 0 {
            return Err(invalid(
                "userspace engine: the listen port must be set (no ephemeral port in its own stack)"
                    .into(),
            ));
        }
        if cfg.workers.is_empty() || cfg.workers.len() > 256 {
            return Err(invalid(
                "userspace engine: 1 to 256 workers (each owns a share of 16384 ports)".into(),
            ));
        }
        let https_port = match &https {
            None => None,
            Some(h) if h.addr.port() == 0 || h.addr.port() == cfg.http.port() => {
                return Err(invalid(format!(
                    "userspace engine: the HTTPS port must be set and differ from HTTP's (got {})",
                    h.addr.port()
                )));
            }
            Some(h)
                if !h.addr.ip().is_unspecified()
                    && !dev.addresses.iter().any(|(a, _)| *a == h.addr.ip()) =>
            {
                return Err(invalid(format!(
                    "userspace engine: HTTPS address {} is not one of the appliance's addresses",
                    h.addr.ip()
                )));
            }
            Some(h) => {
                // Redirects from the plain listener name the HTTPS port.
                let mut plain = (*cfg.conn).clone();
                plain.https_port = h.addr.port();
                cfg.conn = Arc::new(plain);
                Some(h.addr.port())
            }
        };
        let mut queues: Vec<OwnedFd> = Vec::new();
        for _ in &cfg.workers {
            let fd = match dev.device {
                DeviceKind::Tap => packet::open_tap_queue(&dev.interface),
                DeviceKind::AfPacket => {
                    packet::open_packet_socket(&dev.interface, dev.fanout_group)
                }
            }
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dev.interface)))?;
            queues.push(fd);
        }
        let count = cfg.workers.len();
        let mut wakes = Vec::new();
        let mut inbox_tx = Vec::new();
        let mut inbox_rx = Vec::new();
        for _ in 0..count {
            wakes.push(sys::eventfd()?);
            let (tx, rx) = channel();
            inbox_tx.push(tx);
            inbox_rx.push(rx);
        }
        let peers: Vec<_> = inbox_tx
            .into_iter()
            .zip(&wakes)
            .map(|(tx, w)| (tx, w.as_raw_fd()))
            .collect();
        let mut setups = Vec::new();
        let parts = cfg.workers.iter().zip(queues).zip(inbox_rx).zip(wakes);
        for (index, (((core, queue), inbox), wake)) in parts.enumerate() {
            let setup = UserspaceWorkerSetup {
                index,
                count,
                core: *core,
                queue,
                wake: wake.as_raw_fd(),
                peers: peers.clone(),
                inbox,
                listen_port: cfg.http.port(),
                https_port,
                dev: dev.clone(),
                linger: cfg.conn.timeouts.linger,
            };
            setups.push((setup, wake));
        }
        let workers =
            launch::<UserspaceWorker>(&cfg, https.as_ref(), &snapshot, setups, "sluice-us-worker")?;
        let local = SocketAddr::new(
            if cfg.http.ip().is_unspecified() {
                dev.addresses[0].0
            } else {
                cfg.http.ip()
            },
            cfg.http.port(),
        );
        let https_addr = https_port.map(|port| SocketAddr::new(local.ip(), port));
        Ok(Engine::assemble(workers, local, https_addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_cidrs_parse_strictly() {
        assert_eq!(parse_mac("02:0a:00:00:00:ff"), Ok([2, 10, 0, 0, 0, 255]));
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:00",
            "01:00:00:00:00:00",
            "2:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_cidr("10.1.2.3/24"),
            Ok(("10.1.2.3".parse().unwrap(), 24))
        );
        assert_eq!(
            parse_cidr("fd00::2/64"),
            Ok(("fd00::2".parse().unwrap(), 64))
        );
        for bad in [
            "10.1.2.3",
            "10.1.2.3/33",
            "0.0.0.0/0",
            "x/24",
            "fd00::1/129",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
