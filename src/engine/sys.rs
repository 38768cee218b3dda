//! The system calls the engines and `main` need that are not io_uring operations and not a
//! packet device: signals, waiting on descriptors (ppoll), eventfds, the file-descriptor
//! limit and network namespaces. Each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// A system call's return value, or the error it set.
pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Waits until one of `fds` (at most 4) is readable or `timeout` passed (zero: just look), to
/// the microsecond (ppoll): an event wakes the caller at once. Returns a bit per descriptor
/// that is readable (bit i for `fds[i]`).
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<u32> {
    let mut pfds: [libc::pollfd; 4] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let n = fds.len().min(pfds.len());
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = *fd;
        p.events = libc::POLLIN;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `pfds` holds `n` initialised pollfd entries and `ts` a live timespec for the
    // duration of the call; no signal mask is changed.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
        return Ok(0);
    }
    let mut ready = 0;
    for (i, p) in pfds.iter().take(n).enumerate() {
        if p.revents != 0 {
            ready |= 1 << i;
        }
    }
    Ok(ready)
}

/// Raises RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// Blocks SIGTERM and SIGINT in the calling thread (and the threads it spawns afterwards), so
/// that [`wait_for_termination`] can take them synchronously.
pub fn block_termination_signals() {
    // SAFETY: builds a signal set on the stack and applies it to this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        // SIGUSR1 (reopen the access log) is taken by sigwait too, never by a handler; its
        // default action would end the process.
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for SIGTERM or SIGINT (blocked beforehand) and returns its number; on each SIGUSR1
/// in between, calls `on_usr1`.
pub fn wait_for_termination_or_usr1(on_usr1: &dyn Fn()) -> i32 {
    loop {
        // SAFETY: sigwait on a set of signals this thread has blocked.
        let sig = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            let mut sig: libc::c_int = 0;
            libc::sigwait(&set, &mut sig);
            sig
        };
        if sig != libc::SIGUSR1 {
            return sig;
        }
        on_usr1();
    }
}

/// Waits for SIGTERM or SIGINT (blocked beforehand) and returns its number.
pub fn wait_for_termination() -> i32 {
    // SAFETY: sigwait on a set of signals this thread has blocked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let mut sig: libc::c_int = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

/// A nonblocking eventfd, used to wake a worker from its wait. Closed when dropped.
pub fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain eventfd creation; the result is checked.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd (wakes whoever reads it).
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

/// Empties an eventfd (non-blocking).
pub fn drain_eventfd(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    unsafe {
        libc::read(fd, (&mut v as *mut u64).cast(), 8);
    }
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/NAME`).
/// Threads it starts afterwards are born there; sockets it opens belong to it.
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let file = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // SAFETY: `file` is an open namespace descriptor for the duration of the call.
    check(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) })
        .map_err(|e| io::Error::new(e.kind(), format!("setns {}: {e}", path.display())))?;
    Ok(())
}

/// The calling thread's network namespace, to come back to with [`NetnsReturn::restore`].
pub struct NetnsReturn(std::fs::File);

impl NetnsReturn {
    pub fn current() -> io::Result<NetnsReturn> {
        Ok(NetnsReturn(std::fs::File::open(
            "/proc/thread-self/ns/net",
        )?))
    }

    /// Moves the calling thread back into the namespace saved by [`NetnsReturn::current`].
    pub fn restore(&self) -> io::Result<()> {
        // SAFETY: `self.0` is an open namespace descriptor for the duration of the call.
        check(unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) })?;
        Ok(())
    }
}
