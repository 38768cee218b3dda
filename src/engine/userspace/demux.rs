//! The per-worker demultiplexer in front of smoltcp: a received Ethernet frame is classified
//! by its TCP 4-tuple before smoltcp sees it, so each frame is handed to the one small socket
//! set it belongs to. smoltcp itself scans every socket of the set it is given per packet;
//! with one socket per set that scan is a single comparison, whatever the connection count.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpEndpoint, IpProtocol, Ipv4Packet, Ipv6Packet,
    TcpPacket,
};

/// A TCP flow as this appliance sees it: our endpoint and the peer's.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local: IpEndpoint,
    pub remote: IpEndpoint,
}

/// What a received frame is, as far as dispatch needs to know.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// A TCP segment; `syn` when it opens a connection (SYN without ACK).
    Tcp { key: FlowKey, syn: bool },
    /// ARP, or an IPv6 neighbour solicitation/advertisement: what every worker's neighbour
    /// cache must learn from, whichever queue it arrived on.
    Neighbor,
    /// Anything else (ICMP, UDP, malformed, fragments): smoltcp handles it with no
    /// TCP socket in view (it answers ARP/NDP and pings, resets unknown TCP, drops the rest).
    Other,
}

/// Classifies `frame` without trusting it: every length is checked by smoltcp's
/// `new_checked` views, and anything that does not parse is `Other`.
pub fn classify(frame: &[u8]) -> Class {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Class::Other;
    };
    let (src, dst, payload): (IpAddress, IpAddress, &[u8]) = match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Class::Other;
            };
            // A fragment carries no (or only part of a) TCP header.
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return Class::Other;
            }
            (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
        }
        EthernetProtocol::Arp => return Class::Neighbor,
        EthernetProtocol::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return Class::Other;
            };
            // ICMPv6 type 135/136: neighbour solicitation/advertisement.
            if ip.next_header() == IpProtocol::Icmpv6
                && matches!(ip.payload().first(), Some(135) | Some(136))
            {
                return Class::Neighbor;
            }
            // Extension headers are not walked: such segments are not demultiplexed.
            if ip.next_header() != IpProtocol::Tcp {
                return Class::Other;
            }
            (ip.src_addr().into(), ip.dst_addr().into(), ip.payload())
        }
        _ => return Class::Other,
    };
    let Ok(tcp) = TcpPacket::new_checked(payload) else {
        return Class::Other;
    };
    Class::Tcp {
        key: FlowKey {
            local: IpEndpoint::new(dst, tcp.dst_port()),
            remote: IpEndpoint::new(src, tcp.src_port()),
        },
        syn: tcp.syn() && !tcp.ack(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(syn: bool, ack: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08; // IPv4
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6; // TCP
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = u8::from(syn) << 1 | u8::from(ack) << 4;
        f
    }

    #[test]
    fn tcp_segments_are_keyed_by_their_four_tuple() {
        let Class::Tcp { key, syn } = classify(&frame(true, false)) else {
            panic!("not classified as TCP");
        };
        assert!(syn);
        assert_eq!(key.local.to_string(), "10.0.0.2:80");
        assert_eq!(key.remote.to_string(), "10.0.0.1:40000");
        assert_eq!(
            classify(&frame(true, true)),
            Class::Tcp { key, syn: false },
            "a SYN-ACK does not open a connection"
        );
    }

    #[test]
    fn garbage_and_truncated_frames_are_other() {
        let full = frame(false, true);
        for len in 0..full.len() {
            assert_eq!(classify(&full[..len]), Class::Other, "length {len}");
        }
        let mut arp = full.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp), Class::Neighbor);
        let mut frag = full;
        frag[14 + 6] = 0x20; // more fragments
        assert_eq!(classify(&frag), Class::Other);
    }
}
