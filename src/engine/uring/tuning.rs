//! The io_uring engine's sizes and optional features (`[uring]` in the static config):
//! submission-queue entries, the provided receive buffers, the byte budget of a multishot
//! receive, and which optional kernel features a ring may use. The defaults are the engine's
//! own; the checks are the kernel's bounds (and a memory cap), so a bad value is refused when
//! the config is read, not when a worker makes its ring.

use super::ring::{Features, RECV_LIMIT, RecvBuffers};

/// Submission-queue entries of a worker's ring (the completion queue is twice as large).
pub const SQ_ENTRIES: u32 = 4096;
/// The most entries a ring may have (the kernel's IORING_MAX_ENTRIES).
pub const MAX_SQ_ENTRIES: u32 = 32_768;
/// The fewest entries accepted: a turn submits at least a few operations per connection.
pub const MIN_SQ_ENTRIES: u32 = 16;
/// The most buffers a provided-buffer ring may have (the kernel refuses 65,536 and more, and
/// the count must be a power of two).
pub const MAX_RECV_BUFFERS: u16 = 32_768;
/// The fewest receive buffers accepted (fewer keep every receive short of a buffer).
pub const MIN_RECV_BUFFERS: u16 = 16;
/// The smallest and largest receive buffer accepted.
pub const MIN_RECV_BUFFER_SIZE: usize = 1024;
pub const MAX_RECV_BUFFER_SIZE: usize = 1 << 20;
/// The most memory one worker's receive buffers may take (count times size).
pub const MAX_RECV_BUFFER_BYTES: usize = 256 << 20;
/// A `splice_min` to start from when turning passes on (they are off by default): one
/// receive's budget, so a body that a receive or two carry keeps the plain path. Passes are
/// off by default because on this machine's loopback benchmark they win some cells and lose
/// others (bench/RESULTS.md): a pass makes the proxy cheaper, and a proxy with idle time wakes
/// its peers more often.
pub const SPLICE_MIN: u64 = 128 * 1024;
/// Pipes a worker keeps for those bodies at most (one per body on its way; each holds up to
/// 1 MiB of the upstream's pages while the client is slower than the upstream).
pub const SPLICE_PIPES: usize = 256;
/// The most pipes accepted per worker (two descriptors each).
pub const MAX_SPLICE_PIPES: u64 = 16_384;
/// The smallest `splice_min` accepted (a smaller body costs more in system calls than its
/// copy).
pub const MIN_SPLICE_MIN: u64 = 16 * 1024;

/// How a worker's ring is sized and what it may use. `Default` is what the engine uses
/// without a config.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Submission-queue entries (a power of two).
    pub sq_entries: u32,
    /// Provided receive buffers, with and without receive bundles.
    pub recv_buffers: RecvBuffers,
    /// Bytes a multishot receive takes before it ends (0: no budget). The ring lowers it to
    /// a sixteenth of its buffers when that is smaller, and raises it to one buffer.
    pub recv_budget: u32,
    /// The optional kernel features the ring may use (each still probed). Its `recv_limit`
    /// is not read: `recv_budget` 0 turns the budget off.
    pub features: Features,
    /// The smallest rest of a response body passed from socket to socket, spliced or relayed
    /// (0: none is).
    pub splice_min: u64,
    /// Pipes per worker for spliced bodies, at most (bodies past that take the plain path).
    pub splice_pipes: usize,
    /// Splice bodies from an upstream on this host's loopback too. Off by default: a spliced
    /// body's pages stay referenced until the client has read them, so a sender in the same
    /// kernel cannot reuse its (cache-warm) pages and copies into new ones. On loopback the
    /// proxy's CPU per 1 MiB answer fell from 584 to 223 µs, but its peers' rose from 517
    /// to 1,057 µs (bench/RESULTS.md): the cost moved, it did not go away.
    pub splice_local: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            sq_entries: SQ_ENTRIES,
            recv_buffers: super::worker::RECV_BUFFERS,
            recv_budget: RECV_LIMIT,
            features: Features::default(),
            splice_min: 0,
            splice_pipes: SPLICE_PIPES,
            splice_local: false,
        }
    }
}

/// A `[uring]` value out of the kernel's (or our) bounds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TuningError {
    #[error("must be a power of two between {min} and {max} (got {got})")]
    PowerOfTwo { min: u64, max: u64, got: u64 },
    #[error("must be between {min} and {max} bytes (got {got})")]
    Bytes { min: u64, max: u64, got: u64 },
    #[error(
        "{count} buffers of {size} bytes are {total} bytes per worker; at most {max} \
         (fewer or smaller buffers)"
    )]
    TooMuchMemory {
        count: u16,
        size: usize,
        total: usize,
        max: usize,
    },
    #[error("needs ring_shutdown = true (a socket without a descriptor is shut down on the ring)")]
    DirectNeedsRingShutdown,
    #[error("must be 0 (no splicing) or at least {min} bytes (got {got})")]
    SpliceMin { min: u64, got: u64 },
    #[error("must be between 1 and {max} (got {got})")]
    Count { max: u64, got: u64 },
    #[error(
        "must be 0 (no budget) or between one buffer ({min} bytes) and a sixteenth of the \
         {count} x {size}-byte buffer ring ({max} bytes) (got {got})"
    )]
    Budget {
        min: u64,
        max: u64,
        count: u16,
        size: usize,
        got: u64,
    },
}

fn power_of_two(got: u64, min: u64, max: u64) -> Result<u64, TuningError> {
    if got.is_power_of_two() && (min..=max).contains(&got) {
        Ok(got)
    } else {
        Err(TuningError::PowerOfTwo { min, max, got })
    }
}

impl Tuning {
    /// Sets the submission-queue entries: a power of two the kernel takes.
    pub fn set_sq_entries(&mut self, n: u64) -> Result<(), TuningError> {
        let n = power_of_two(n, MIN_SQ_ENTRIES.into(), MAX_SQ_ENTRIES.into())?;
        self.sq_entries = n as u32;
        Ok(())
    }

    /// Sets how many receive buffers both rings (with and without bundles) have: a power of
    /// two the kernel takes.
    pub fn set_recv_buffers(&mut self, n: u64) -> Result<(), TuningError> {
        let n = power_of_two(n, MIN_RECV_BUFFERS.into(), MAX_RECV_BUFFERS.into())? as u16;
        self.recv_buffers.plain.0 = n;
        self.recv_buffers.bundled.0 = n;
        Ok(())
    }

    /// Sets the size of a receive buffer: of the ring used with receive bundles (`bundled`,
    /// kernels from 6.10) or of the one used without.
    pub fn set_recv_buffer_size(&mut self, bytes: u64, bundled: bool) -> Result<(), TuningError> {
        let (min, max) = (MIN_RECV_BUFFER_SIZE as u64, MAX_RECV_BUFFER_SIZE as u64);
        if !(min..=max).contains(&bytes) {
            return Err(TuningError::Bytes {
                min,
                max,
                got: bytes,
            });
        }
        let size = bytes as usize;
        match bundled {
            true => self.recv_buffers.bundled.1 = size,
            false => self.recv_buffers.plain.1 = size,
        }
        Ok(())
    }

    /// Checks that neither ring takes more than [`MAX_RECV_BUFFER_BYTES`] (after the count
    /// and sizes are set).
    pub fn check_memory(&self) -> Result<(), TuningError> {
        for (count, size) in [self.recv_buffers.bundled, self.recv_buffers.plain] {
            let total = usize::from(count) * size;
            if total > MAX_RECV_BUFFER_BYTES {
                return Err(TuningError::TooMuchMemory {
                    count,
                    size,
                    total,
                    max: MAX_RECV_BUFFER_BYTES,
                });
            }
        }
        Ok(())
    }

    /// Sets the receive budget (after the buffers): 0 for none, else what the ring would use
    /// unchanged: at least one buffer and at most a sixteenth of the ring. The ring checked
    /// is the one with bundles, which every kernel that keeps a budget (6.17+) has; without
    /// bundles (turned off for measurement) the ring moves the budget into its own bounds.
    pub fn set_recv_budget(&mut self, bytes: u64) -> Result<(), TuningError> {
        let (count, size) = self.recv_buffers.bundled;
        let min = size as u64;
        let max = (usize::from(count) * size / 16) as u64;
        if bytes != 0 && !(min..=max).contains(&bytes) {
            return Err(TuningError::Budget {
                min,
                max,
                count,
                size,
                got: bytes,
            });
        }
        self.recv_budget = u32::try_from(bytes).unwrap_or(u32::MAX);
        Ok(())
    }

    /// Sets the smallest body spliced: 0 (off) or at least [`MIN_SPLICE_MIN`].
    pub fn set_splice_min(&mut self, bytes: u64) -> Result<(), TuningError> {
        if bytes != 0 && bytes < MIN_SPLICE_MIN {
            return Err(TuningError::SpliceMin {
                min: MIN_SPLICE_MIN,
                got: bytes,
            });
        }
        self.splice_min = bytes;
        Ok(())
    }

    /// Sets how many pipes a worker may have for spliced bodies.
    pub fn set_splice_pipes(&mut self, n: u64) -> Result<(), TuningError> {
        if !(1..=MAX_SPLICE_PIPES).contains(&n) {
            return Err(TuningError::Count {
                max: MAX_SPLICE_PIPES,
                got: n,
            });
        }
        self.splice_pipes = n as usize;
        Ok(())
    }

    /// Checks that the features go together: accepting into the file table needs ring
    /// shutdowns (a ring without them would silently accept with descriptors).
    pub fn check_features(&self) -> Result<(), TuningError> {
        let f = &self.features;
        if f.accept_direct && !f.ring_shutdown {
            return Err(TuningError::DirectNeedsRingShutdown);
        }
        Ok(())
    }

    /// The optional kernel features a worker's ring may use: the configured ones, without the
    /// receive budget when it is 0, then what `SLUICE_URING_ENABLE` and `SLUICE_URING_DISABLE`
    /// name (for measurement, they override the config).
    pub fn features(&self) -> Features {
        Features {
            recv_limit: self.recv_budget > 0,
            ..self.features
        }
        .with_env()
    }

    /// The budget asked of the ring: the configured one, or [`RECV_LIMIT`] when the config
    /// has none but `SLUICE_URING_ENABLE=limit` turned it on. (`SLUICE_URING_RECV_BUDGET`
    /// replaces either in the ring.)
    pub fn budget(&self) -> u32 {
        match self.recv_budget {
            0 => RECV_LIMIT,
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_engines_and_pass_their_own_checks() {
        let d = Tuning::default();
        assert_eq!(d.sq_entries, 4096);
        assert_eq!(d.recv_buffers.bundled, (1024, 4096));
        assert_eq!(d.recv_buffers.plain, (1024, 16 * 1024));
        assert_eq!(d.recv_budget, RECV_LIMIT);
        assert_eq!((d.splice_min, d.splice_pipes), (0, 256));
        let mut t = d;
        t.set_splice_min(SPLICE_MIN).unwrap();
        t.set_splice_min(0).unwrap();
        t.set_splice_pipes(SPLICE_PIPES as u64).unwrap();
        t.set_sq_entries(4096).unwrap();
        t.set_recv_buffers(1024).unwrap();
        t.set_recv_buffer_size(4096, true).unwrap();
        t.set_recv_buffer_size(16 * 1024, false).unwrap();
        t.check_memory().unwrap();
        t.set_recv_budget(u64::from(RECV_LIMIT)).unwrap();
        assert_eq!(t, d);
    }

    #[test]
    fn kernel_bounds_are_checked() {
        let mut t = Tuning::default();
        assert!(t.set_sq_entries(1000).is_err(), "not a power of two");
        assert!(t.set_sq_entries(65_536).is_err());
        assert!(t.set_sq_entries(8).is_err());
        assert!(t.set_recv_buffers(65_536).is_err());
        assert!(t.set_recv_buffers(3000).is_err());
        assert!(t.set_recv_buffer_size(100, true).is_err());
        assert!(t.set_recv_buffer_size(2 << 20, false).is_err());
        t.set_recv_buffers(32_768).unwrap();
        t.set_recv_buffer_size(16 * 1024, true).unwrap();
        assert!(matches!(
            t.check_memory(),
            Err(TuningError::TooMuchMemory { .. })
        ));
        // The budget: one buffer up to a sixteenth of the ring (1,024 x 4 KiB: 256 KiB).
        let mut t = Tuning::default();
        assert!(t.set_recv_budget(2048).is_err(), "under one buffer");
        assert!(t.set_recv_budget(512 * 1024).is_err(), "over a sixteenth");
        t.set_recv_budget(256 * 1024).unwrap();
        t.set_recv_budget(4096).unwrap();
        t.set_recv_budget(0).unwrap();
        assert_eq!(t.budget(), RECV_LIMIT);
        if std::env::var_os("SLUICE_URING_ENABLE").is_none() {
            assert!(!t.features().recv_limit, "0 turns the budget off");
        }
        assert!(
            t.set_splice_min(4096).is_err(),
            "smaller than a copy is worth"
        );
        t.set_splice_min(0).unwrap();
        assert!(t.set_splice_pipes(0).is_err());
        assert!(t.set_splice_pipes(MAX_SPLICE_PIPES + 1).is_err());
        t.features.accept_direct = true;
        assert_eq!(
            t.check_features(),
            Err(TuningError::DirectNeedsRingShutdown)
        );
        t.features.ring_shutdown = true;
        t.check_features().unwrap();
    }
}
