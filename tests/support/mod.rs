//! Helpers shared by the integration tests (the one helper folder): `binary` (a `sluice run`
//! process), `netns` (a network
//! namespace with a TAP or veth link for the userspace engine), `pods` (in-process upstream
//! pods on 127.0.0.1..=n), `mock_api` (a mock Kubernetes
//! API server) and `real_flow` (the end-to-end flow against any API server), `tls`
//! (certificates, Secrets and a rustls client). Each test binary
//! uses part of it.
#![allow(dead_code)]

pub mod binary;
pub mod mock_api;
pub mod netns;
pub mod pods;
pub mod real_flow;
pub mod tls;

/// An address on `ip` where nothing listens and nothing will: a TCP socket is bound to the
/// port (without SO_REUSEADDR) and never listens, so connects are refused, and no other
/// socket of this process can bind the port while it runs (a port found free and released
/// could be picked again by a test binding port 0 in parallel). The socket stays open until
/// the test process ends.
#[allow(unsafe_code)]
pub fn closed_port(ip: std::net::IpAddr) -> std::net::SocketAddr {
    let (family, addr, len) = match ip {
        std::net::IpAddr::V4(v4) => {
            // SAFETY: sockaddr_in is plain data; all-zero is valid.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            // SAFETY: sockaddr_storage is plain data; all-zero is valid.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sa) };
            (libc::AF_INET, ss, std::mem::size_of::<libc::sockaddr_in>())
        }
        std::net::IpAddr::V6(v6) => {
            // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = v6.octets();
            // SAFETY: sockaddr_storage is plain data; all-zero is valid.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sa) };
            (
                libc::AF_INET6,
                ss,
                std::mem::size_of::<libc::sockaddr_in6>(),
            )
        }
    };
    // SAFETY: plain socket creation; checked below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `addr` holds a valid address of `len` bytes.
    let rc = unsafe { libc::bind(fd, (&raw const addr).cast(), len as libc::socklen_t) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let mut bound: libc::sockaddr_storage = addr;
    let mut bound_len = len as libc::socklen_t;
    // SAFETY: `bound` has room for any address; `bound_len` says how much.
    let rc = unsafe { libc::getsockname(fd, (&raw mut bound).cast(), &mut bound_len) };
    assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
    let port = match ip {
        // SAFETY: the kernel wrote a sockaddr_in for an AF_INET socket.
        std::net::IpAddr::V4(_) => {
            u16::from_be(unsafe { (*(&raw const bound).cast::<libc::sockaddr_in>()).sin_port })
        }
        // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 socket.
        std::net::IpAddr::V6(_) => {
            u16::from_be(unsafe { (*(&raw const bound).cast::<libc::sockaddr_in6>()).sin6_port })
        }
    };
    // Deliberately never closed (see above).
    std::net::SocketAddr::new(ip, port)
}
