//! The worker's packet device as smoltcp sees it: one frame descriptor (a TAP queue or an
//! AF_PACKET socket) that frames are written to, and at most one received frame handed in
//! per ingress call. The worker reads frames itself so that it can demultiplex them first.

use std::os::fd::RawFd;

use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The transmit side of a worker's device, with its counters.
pub struct Link {
    pub fd: RawFd,
    /// IP MTU; frames are this plus the 14-byte Ethernet header.
    pub mtu: usize,
    tx: Vec<u8>,
    pub frames_out: u64,
    pub write_errors: u64,
    /// Frames built while set are dropped (a copy of a neighbour frame another worker
    /// received, learnt from here but answered there).
    pub mute: bool,
    /// Verify IPv4/TCP checksums of received frames. Off for AF_PACKET: the kernel hands
    /// over frames whose checksum was left to offload (veth, or a NIC that verified it).
    pub verify_rx_checksums: bool,
}

impl Link {
    pub fn new(fd: RawFd, mtu: usize) -> Link {
        Link {
            fd,
            mtu,
            tx: vec![0; mtu + 14],
            frames_out: 0,
            write_errors: 0,
            mute: false,
            verify_rx_checksums: true,
        }
    }
}

/// One call's view of the device: the link to transmit on and the frame to receive, if any.
pub struct Port<'a> {
    pub link: &'a mut Link,
    pub frame: Option<&'a [u8]>,
}

impl<'a> Port<'a> {
    pub fn tx(link: &'a mut Link) -> Port<'a> {
        Port { link, frame: None }
    }
}

pub struct Rx<'a>(&'a [u8]);

pub struct Tx<'a>(&'a mut Link);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let link = self.0;
        if link.tx.len() < len {
            link.tx.resize(len, 0);
        }
        let r = f(&mut link.tx[..len]);
        if link.mute {
            return r;
        }
        match super::packet::write_frame(link.fd, &link.tx[..len]) {
            Ok(()) => link.frames_out += 1,
            Err(_) => link.write_errors += 1,
        }
        r
    }
}

impl Device for Port<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let frame = self.frame.take()?;
        Some((Rx(frame), Tx(self.link)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Tx<'_>> {
        Some(Tx(self.link))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.link.mtu + 14;
        caps.max_burst_size = None;
        if !self.link.verify_rx_checksums {
            caps.checksum.ipv4 = Checksum::Tx;
            caps.checksum.tcp = Checksum::Tx;
        }
        caps
    }
}
