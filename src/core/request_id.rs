//! `X-Request-ID` with ingress-nginx's `$req_id` semantics: a client's value passes through
//! (when it is 1 to 200 visible ASCII bytes), otherwise a fresh 32-hex-digit id is made.
//! Sans-IO: ids come from a seed the engine supplies (random per process), the connection
//! (addresses, start time) and a per-connection counter; no clock or RNG is read here.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;

use crate::core::time::Instant;

/// The longest client-supplied id passed through.
pub const MAX_LEN: usize = 200;

/// The client's `X-Request-ID` if it has exactly one usable value.
pub fn incoming<'b>(headers: &[httparse::Header<'b>]) -> Option<&'b str> {
    let mut found = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("x-request-id") {
            if found.is_some() {
                return None; // two of them: neither is trusted
            }
            found = Some(h.value);
        }
    }
    let v = found?;
    if v.is_empty() || v.len() > MAX_LEN || !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return None;
    }
    std::str::from_utf8(v).ok()
}

/// Per-connection base of generated ids: distinct for distinct connections of a process.
pub fn connection_base(seed: u64, peer: SocketAddr, local: SocketAddr, now: Instant) -> u64 {
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one((peer, local));
    mix(seed ^ mix(h ^ mix(now.as_nanos())))
}

/// The `n`th id of the connection whose base is `base`, as 32 lowercase hex digits.
pub fn generate(base: u64, n: u64, out: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let a = mix(base.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let b = mix(a ^ base.rotate_left(32));
    for (i, byte) in a.to_be_bytes().iter().chain(&b.to_be_bytes()).enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    // Only hex digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// splitmix64's finaliser: a bijection that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(name: &'a str, value: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name, value }
    }

    #[test]
    fn a_usable_client_id_passes_and_others_do_not() {
        assert_eq!(
            incoming(&[header("X-Request-Id", b"abc-123")]),
            Some("abc-123")
        );
        assert_eq!(incoming(&[header("x-request-id", b"")]), None);
        assert_eq!(incoming(&[header("x-request-id", b"a b")]), None);
        assert_eq!(incoming(&[header("x-request-id", &[b'a'; 201])]), None);
        assert_eq!(
            incoming(&[header("x-request-id", b"a"), header("X-Request-ID", b"b")]),
            None
        );
        assert_eq!(incoming(&[header("x-other", b"a")]), None);
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_distinct() {
        let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let local = "10.0.0.1:80".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for port in 40000..40010u16 {
            let peer = SocketAddr::new(peer.ip(), port);
            let base = connection_base(7, peer, local, Instant::from_nanos(1));
            for n in 0..100 {
                let mut buf = [0u8; 32];
                let id = generate(base, n, &mut buf).to_string();
                assert_eq!(id.len(), 32);
                assert!(
                    id.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
                assert!(seen.insert(id), "duplicate");
            }
        }
        let base = connection_base(8, peer, local, Instant::from_nanos(1));
        let mut buf = [0u8; 32];
        assert!(
            seen.insert(generate(base, 0, &mut buf).to_string()),
            "another seed"
        );
    }
}
