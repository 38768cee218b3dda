//! Per-packet dispatch cost in the userspace engine against the number of open connections:
//! smoltcp's own design (every socket in one `SocketSet`, scanned per packet) against the
//! engine's 4-tuple demultiplexer in front of one-socket sets. The packet is the same in
//! both: a TCP segment for one connection in the middle of the set, which smoltcp processes
//! (and answers with a reset) without changing the connection's state.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, IpAddress,
    IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber,
};

use sluice::engine::userspace::{Class, FlowKey, classify};

const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// One frame in, everything out dropped.
struct Bench<'a> {
    frame: Option<&'a [u8]>,
    sink: Vec<u8>,
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a>(&'a mut Vec<u8>);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.resize(len, 0);
        f(self.0)
    }
}

impl Device for Bench<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let f = self.frame.take()?;
        Some((Rx(f), Tx(&mut self.sink)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.sink))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

fn peer(i: usize) -> Ipv4Address {
    Ipv4Address::new(10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// An Ethernet/IPv4/TCP frame from peer `i` to us, port 80.
fn frame(i: usize, control: TcpControl, ack: Option<u32>) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 80,
        control,
        seq_number: TcpSeqNumber(1000),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: peer(i),
        dst_addr: Ipv4Address::new(10, 0, 0, 2),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: EthernetAddress(OUR_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let caps = ChecksumCapabilities::default();
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(
        &mut t,
        &IpAddress::Ipv4(ip.src_addr),
        &IpAddress::Ipv4(ip.dst_addr),
        &caps,
    );
    buf
}

fn interface() -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(OUR_MAC)));
    config.random_seed = 7;
    let mut dev = Bench {
        frame: None,
        sink: Vec::new(),
    };
    let mut iface = Interface::new(config, &mut dev, Instant::ZERO);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 2), 8));
    });
    iface
}

/// `n` connections in SYN-RECEIVED, each in its own set (SYN fed through the interface).
fn connections(iface: &mut Interface, n: usize) -> Vec<(SocketSet<'static>, SocketHandle)> {
    (0..n)
        .map(|i| {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 64]),
                tcp::SocketBuffer::new(vec![0; 64]),
            );
            s.listen(80).expect("listen");
            let mut set = SocketSet::new(Vec::with_capacity(1));
            let h = set.add(s);
            let syn = frame(i, TcpControl::Syn, None);
            let mut dev = Bench {
                frame: Some(&syn),
                sink: Vec::new(),
            };
            iface.poll_ingress_single(Instant::ZERO, &mut dev, &mut set);
            assert_eq!(set.get::<tcp::Socket>(h).state(), tcp::State::SynReceived);
            (set, h)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("per-packet");
    for n in [100usize, 1_000, 10_000, 50_000] {
        let mut iface = interface();
        let conns = connections(&mut iface, n);
        // The segment: an ACK with a wrong number for the connection in the middle; smoltcp
        // answers it with a reset and leaves the connection as it is.
        let target = n / 2;
        let seg = frame(target, TcpControl::None, Some(1));

        // The engine's design: classify, look the 4-tuple up, hand the frame to that set.
        let mut sets = Vec::with_capacity(n);
        let mut flows = HashMap::with_capacity(n);
        for (set, h) in conns {
            let t = set.get::<tcp::Socket>(h);
            let key = FlowKey {
                local: t.local_endpoint().expect("local"),
                remote: t.remote_endpoint().expect("remote"),
            };
            flows.insert(key, sets.len());
            sets.push((set, h));
        }
        group.bench_with_input(BenchmarkId::new("demux", n), &n, |b, _| {
            b.iter(|| {
                let Class::Tcp { key, .. } = classify(black_box(&seg)) else {
                    panic!("not TCP")
                };
                let i = flows[&key];
                let mut dev = Bench {
                    frame: Some(&seg),
                    sink: Vec::new(),
                };
                iface.poll_ingress_single(Instant::ZERO, &mut dev, &mut sets[i].0);
                black_box(dev.sink.len())
            })
        });

        // smoltcp's own design: every connection in one set, scanned per packet.
        let mut big = SocketSet::new(Vec::with_capacity(n));
        let mut handles = Vec::with_capacity(n);
        for (mut set, h) in sets {
            let smoltcp::socket::Socket::Tcp(s) = set.remove(h);
            handles.push(big.add(s));
        }
        group.bench_with_input(BenchmarkId::new("smoltcp-one-set", n), &n, |b, _| {
            b.iter(|| {
                let mut dev = Bench {
                    frame: Some(&seg),
                    sink: Vec::new(),
                };
                iface.poll_ingress_single(Instant::ZERO, &mut dev, &mut big);
                black_box(dev.sink.len())
            })
        });
        assert_eq!(
            big.get::<tcp::Socket>(handles[target]).state(),
            tcp::State::SynReceived,
            "the measured segment must not change the connection"
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
