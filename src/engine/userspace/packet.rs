//! The packet device's system calls: opening one queue of a multi-queue TAP device, an
//! AF_PACKET socket in a PACKET_FANOUT group, reading and writing whole Ethernet frames.
//! (Waiting, eventfds and namespaces are in `engine::sys`.) All of the userspace engine's
//! `unsafe` lives here, each block with the invariant that makes it sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::engine::sys::check;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a short) in the union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifname(name: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?} (1 to 15 bytes)"),
        ));
    }
    let mut out = [0u8; libc::IFNAMSIZ];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// Attaches one more queue to the TAP device `name` (created if it does not exist, as a
/// multi-queue TAP without packet information). Each call gives a new queue; the kernel
/// spreads the frames it sends across the attached queues by a flow hash of its own, so a
/// flow's frames come on one queue, but not necessarily the queue of the worker that opened
/// it (the worker hands such frames over, see the worker's `Shared`).
pub fn open_tap_queue(name: &str) -> io::Result<OwnedFd> {
    let mut req = IfReqFlags {
        name: ifname(name)?,
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short,
        _pad: [0; 22],
    };
    // SAFETY: opening a device node with a NUL-terminated constant path; the result is checked.
    let fd = check(unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes, name then flags); `req` has that
    // layout and lives across the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) })
        .map_err(|e| io::Error::new(e.kind(), format!("TAP {name}: TUNSETIFF: {e}")))?;
    Ok(fd)
}

const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_int = 1;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A raw AF_PACKET socket on interface `name`, in fanout group `group` with hash mode: every
/// socket of the group gets the frames of its share of flows (both directions of a flow hash
/// alike). The socket ignores the frames it sends and puts the interface into promiscuous
/// mode (the appliance's MAC need not be the NIC's).
pub fn open_packet_socket(name: &str, group: u16) -> io::Result<OwnedFd> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `cname` is NUL-terminated and lives across the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?}"),
        ));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the result is checked.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    })?;
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size passed, alive across the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("AF_PACKET bind to {name}: {e}")))?;
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_PACKET,
        PACKET_IGNORE_OUTGOING,
        &1i32,
    )?;
    // SAFETY: packet_mreq is plain data; all-zero is a valid value.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = index as i32;
    mreq.mr_type = PACKET_MR_PROMISC as u16;
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_PACKET,
        PACKET_ADD_MEMBERSHIP,
        &mreq,
    )?;
    let fanout: u32 = u32::from(group) | (PACKET_FANOUT_HASH << 16);
    setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_FANOUT, &fanout)
        .map_err(|e| io::Error::new(e.kind(), format!("PACKET_FANOUT on {name}: {e}")))?;
    Ok(fd)
}

/// Reads one frame into `buf`. `Ok(None)`: nothing waiting.
pub fn read_frame(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: writes at most `buf.len()` bytes into `buf`, which is live and exclusively ours.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            // A frame that does not fit is truncated by the kernel for AF_PACKET; a TAP says
            // EINVAL. Either way it is dropped, and the next read goes on.
            Some(libc::EINVAL) => Ok(Some(0)),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Writes one frame. A full device queue drops the frame (TCP retransmits), like a NIC would;
/// that is an error for the caller to count.
pub fn write_frame(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: reads `frame.len()` bytes from a live slice.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
