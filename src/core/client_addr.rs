//! The real client address of a request: the connection's peer (or the source a PROXY
//! protocol header named), unless that peer is a trusted proxy, in which case the address its
//! `X-Forwarded-For` names — read from the right, skipping every trusted proxy, as nginx's
//! realip module does with `real_ip_recursive on` (ingress-nginx's `use-forwarded-headers` and
//! `proxy-real-ip-cidr`).

use std::net::IpAddr;

use ipnet::IpNet;

/// Which peers may state the client's address in `X-Forwarded-For`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardedTrust {
    /// Trusted proxies; empty with `all` unset: `X-Forwarded-For` is never believed.
    nets: Vec<IpNet>,
    /// Every peer is trusted (`use_forwarded_headers` without a CIDR list, as ingress-nginx's
    /// default `proxy-real-ip-cidr` of `0.0.0.0/0`).
    all: bool,
}

impl ForwardedTrust {
    /// `X-Forwarded-For` is ignored (the default).
    pub fn none() -> ForwardedTrust {
        ForwardedTrust::default()
    }

    /// Trusts the peers in `nets`; with `nets` empty, trusts every peer.
    pub fn from_nets(nets: Vec<IpNet>) -> ForwardedTrust {
        ForwardedTrust {
            all: nets.is_empty(),
            nets,
        }
    }

    /// Whether `X-Forwarded-For` is read at all.
    pub fn enabled(&self) -> bool {
        self.all || !self.nets.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.all || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The real client of a request from `peer` carrying these `X-Forwarded-For` values (in
    /// order of appearance). An entry that is not an IP address stops the walk: the last
    /// address read stands (a proxy we trust would not have written it).
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.enabled() || !self.trusts(peer) {
            return peer;
        }
        let values: Vec<&[u8]> = forwarded_for.collect();
        let mut client = peer;
        for value in values.iter().rev() {
            for item in value.rsplit(|&b| b == b',') {
                let Some(ip) = parse_item(item) else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` element: an IP, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_item(item: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(item).ok()?.trim_matches([' ', '\t']);
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> ForwardedTrust {
        ForwardedTrust::from_nets(list.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = nets(&["10.0.0.0/8"]);
        let xff = [&b"203.0.113.9"[..]];
        assert_eq!(t.client(ip("192.0.2.1"), xff.into_iter()), ip("192.0.2.1"));
        let off = ForwardedTrust::none();
        assert_eq!(off.client(ip("10.1.1.1"), xff.into_iter()), ip("10.1.1.1"));
    }

    #[test]
    fn a_trusted_peer_names_the_client_and_trusted_hops_are_skipped() {
        let t = nets(&["10.0.0.0/8", "fd00::/8"]);
        let xff = [&b"198.51.100.1, 203.0.113.9"[..], b"10.2.2.2"];
        // From the right: 10.2.2.2 is trusted, 203.0.113.9 is not: it is the client (the
        // left-most entry is whatever the client wrote and is not believed).
        assert_eq!(t.client(ip("10.1.1.1"), xff.into_iter()), ip("203.0.113.9"));
        // Every hop trusted: the left-most stands.
        let xff = [&b"10.9.9.9,10.8.8.8"[..]];
        assert_eq!(t.client(ip("10.1.1.1"), xff.into_iter()), ip("10.9.9.9"));
        // No field: the peer.
        assert_eq!(t.client(ip("10.1.1.1"), std::iter::empty()), ip("10.1.1.1"));
        // A v4-mapped peer matches a v4 net; ports are allowed in the field.
        let xff = [&b"[2001:db8::7]:443"[..]];
        assert_eq!(
            t.client(ip("::ffff:10.1.1.1"), xff.into_iter()),
            ip("2001:db8::7")
        );
        // Garbage stops the walk at the last address read.
        let xff = [&b"unknown, 10.3.3.3"[..]];
        assert_eq!(t.client(ip("10.1.1.1"), xff.into_iter()), ip("10.3.3.3"));
    }

    #[test]
    fn an_empty_list_trusts_everyone() {
        let t = ForwardedTrust::from_nets(Vec::new());
        assert!(t.enabled());
        let xff = [&b"203.0.113.9"[..]];
        assert_eq!(
            t.client(ip("192.0.2.1"), xff.into_iter()),
            ip("203.0.113.9")
        );
    }
}
