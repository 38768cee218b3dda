//! The PROXY protocol (HAProxy's, versions 1 and 2) in front of a client connection: a load
//! balancer that terminates nothing states the client's address in a header before the first
//! byte of the client's own stream. Sans-IO: the caller feeds what it read into a [`Reader`]
//! until it says the header is complete (and hands back the bytes that follow it).
//!
//! Strict on purpose: a listener set to expect the header accepts nothing else. Version 1 is
//! one line of at most 107 bytes with single spaces, addresses of the named family and
//! decimal ports; version 2 is the 16-byte binary preamble plus at most
//! [`MAX_V2_PAYLOAD`] bytes. Anything else is an error and the caller closes the connection.
//! A `LOCAL` (v2) or `UNKNOWN` (v1) header carries no address: the peer's is kept.
//! How long the header may take is the caller's timer (the driver uses the listener's
//! request-head timeout).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 line, CRLF included (the specification's bound).
pub const MAX_V1_LINE: usize = 107;

/// The most address and TLV bytes a version 2 header may carry here (the specification
/// allows 65535; load balancers send a few dozen).
pub const MAX_V2_PAYLOAD: usize = 1024;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What a complete header said.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client (`None`: `LOCAL` / `UNKNOWN`, the connection's peer stands).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, as the load balancer saw it.
    pub destination: Option<SocketAddr>,
}

/// Why a header was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The connection does not start with a PROXY header.
    Missing,
    /// It starts like one but breaks the format (the reason says where).
    Malformed(&'static str),
    /// Longer than the caps above.
    TooLong,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Missing => f.write_str("no PROXY protocol header"),
            ProxyError::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            ProxyError::TooLong => f.write_str("PROXY protocol header too long"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// The result of looking at the bytes so far.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header may still complete: read more.
    Partial,
    /// A complete header of `len` bytes.
    Complete { header: ProxyHeader, len: usize },
}

/// Parses a header at the start of `buf` (either version).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ProxyError::Missing);
    }
    let Some(lf) = buf.iter().take(MAX_V1_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_V1_LINE {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Partial)
        };
    };
    let len = lf + 1;
    let line = buf[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::Malformed("line does not end with CRLF"))?;
    let line = std::str::from_utf8(&line[prefix.len()..])
        .map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or("");
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        let header = ProxyHeader {
            source: None,
            destination: None,
        };
        return Ok(Parsed::Complete { header, len });
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyError::Malformed(
            "expected four fields after the protocol",
        ));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| ProxyError::Malformed("address does not match the protocol"))
    };
    let header = ProxyHeader {
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
    };
    Ok(Parsed::Complete { header, len })
}

/// A decimal port without sign or leading zeros.
fn port(s: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::Malformed("bad port");
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::Missing);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Partial);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > MAX_V2_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    let len = 16 + payload;
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    match command {
        0 | 1 => {}
        _ => return Err(ProxyError::Malformed("command is not LOCAL or PROXY")),
    }
    if transport > 2 || family > 3 {
        return Err(ProxyError::Malformed("unknown address family or transport"));
    }
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    let body = &buf[16..len];
    let none = ProxyHeader {
        source: None,
        destination: None,
    };
    if command == 0 {
        // LOCAL: the balancer's own connection (health checks); the addresses are ignored.
        return Ok(Parsed::Complete { header: none, len });
    }
    let header = match (family, transport) {
        // TCP over IPv4.
        (1, 1) => {
            let a: &[u8; 12] = body
                .get(..12)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyError::Malformed("IPv4 addresses are cut short"))?;
            let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
            ProxyHeader {
                source: Some(SocketAddr::new(
                    src.into(),
                    u16::from_be_bytes([a[8], a[9]]),
                )),
                destination: Some(SocketAddr::new(
                    dst.into(),
                    u16::from_be_bytes([a[10], a[11]]),
                )),
            }
        }
        // TCP over IPv6.
        (2, 1) => {
            let a: &[u8; 36] = body
                .get(..36)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyError::Malformed("IPv6 addresses are cut short"))?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            dst.copy_from_slice(&a[16..32]);
            ProxyHeader {
                source: Some(SocketAddr::new(
                    Ipv6Addr::from(src).into(),
                    u16::from_be_bytes([a[32], a[33]]),
                )),
                destination: Some(SocketAddr::new(
                    Ipv6Addr::from(dst).into(),
                    u16::from_be_bytes([a[34], a[35]]),
                )),
            }
        }
        // UNSPEC, UDP or a unix socket: nothing an HTTP client's address can come from.
        (0, _) | (_, 0) => none,
        _ => return Err(ProxyError::Malformed("not a TCP connection")),
    };
    Ok(Parsed::Complete { header, len })
}

/// Collects a connection's first bytes until its header is complete.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// Adds `data`; returns the header and the bytes after it once complete, `None` while it
    /// is not. After an error the connection must be closed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(ProxyHeader, Vec<u8>)>, ProxyError> {
        self.buf.extend_from_slice(data);
        match parse(&self.buf)? {
            Parsed::Partial => {
                // Bounded: both versions give up past their caps.
                if self.buf.len() > 16 + MAX_V2_PAYLOAD {
                    return Err(ProxyError::TooLong);
                }
                Ok(None)
            }
            Parsed::Complete { header, len } => {
                let rest = self.buf.split_off(len);
                self.buf = Vec::new();
                Ok(Some((header, rest)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    fn v2(command: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(fam);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_tcp4_and_tcp6_give_source_and_destination() {
        let (h, len) = complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /");
        assert_eq!(len, 45);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.2:443".parse().unwrap()));
        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 80\r\n");
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let (h, len) = complete(b"PROXY UNKNOWN whatever follows\r\n");
        assert_eq!((h.source, len), (None, 32));
    }

    #[test]
    fn v1_in_pieces_is_partial_until_the_line_ends() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut]), Ok(Parsed::Partial), "cut at {cut}");
        }
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"[..], // LF only
            b"PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",   // two spaces
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 443\r\n",      // family mismatch
            b"PROXY TCP6 192.0.2.1 198.51.100.2 1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n", // port range
            b"PROXY TCP4 192.0.2.1 198.51.100.2 080 443\r\n",   // leading zero
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +80 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 80\r\n", // missing field
            b"PROXY TCP4 192.0.2.1 198.51.100.2 80 443 9\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 80 443\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PRX"), Err(ProxyError::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::Missing)); // a TLS ClientHello
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(120));
        assert_eq!(parse(long.as_bytes()), Err(ProxyError::TooLong));
    }

    #[test]
    fn v2_proxy_tcp4_tcp6_and_local() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a TLV (NOOP), ignored
        let mut buf = v2(1, 0x11, &body);
        let total = buf.len();
        buf.extend_from_slice(b"GET /");
        let (h, len) = complete(&buf);
        assert_eq!(len, total);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.2:443".parse().unwrap()));

        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0, 1, 0, 80]);
        let (h, _) = complete(&v2(1, 0x21, &body));
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));

        let (h, len) = complete(&v2(0, 0x00, &[]));
        assert_eq!((h.source, len), (None, 16));
        // Partial until the declared length is there.
        let full = v2(1, 0x11, &[0; 12]);
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(Parsed::Partial), "cut at {cut}");
        }
    }

    #[test]
    fn v2_malformed_headers_are_refused() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(matches!(
            parse(&wrong_version),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        // Declared IPv4 but too short to hold the addresses.
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 8])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x51, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&huge), Err(ProxyError::TooLong));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyError::Missing));
    }

    #[test]
    fn the_reader_hands_back_what_follows_the_header() {
        let mut r = Reader::new();
        assert_eq!(r.feed(b"PROXY TCP4 192.0.2.1 "), Ok(None));
        let (h, rest) = r
            .feed(b"198.51.100.2 1 2\r\nGET / HTTP/1.1\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("192.0.2.1:1".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let mut r = Reader::new();
        assert_eq!(r.feed(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
    }
}
