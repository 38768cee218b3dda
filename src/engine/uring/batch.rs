//! Adaptive batching of the loop's wait: how many completions a worker waits for, and for how
//! long at most, before it runs a turn.
//!
//! A proxy that is faster than its peers is idle between completions: it wakes on the first
//! one, forwards it, and sleeps again. Each of those wakeups is paid by the peer core that
//! caused it (a wakeup IPI, and on an idle proxy core, the scheduler's wake path), and each
//! forward reaches the upstream or the client alone, so they wake once per request too
//! (issue 18: the upstream context-switched twice as often behind Sluice as behind nginx).
//!
//! Linux 6.12's min-wait (`IORING_FEAT_MIN_TIMEOUT`) lets one `io_uring_enter` ask for `n`
//! completions but settle for one once a short window has passed. [`Batching`] asks for as
//! many as the last turn had, at most [`Batching::max`], with the configured window: under
//! load the turn gathers what arrives within the window and answers it together; at low load
//! (a turn of one completion) it asks for one and adds no latency at all. With the kernel's
//! deferred task work, a wait for `n` completions also means the kernel does not wake the
//! worker before `n` of them are ready or the window ends, so peers stop paying a wakeup per
//! completion. Sans-IO: the ring passes the counts in.

/// The loop's wait policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// The longest a turn waits for more completions once one is ready, in microseconds;
    /// 0 turns batching off (every wait returns at the first completion).
    window_us: u32,
    /// The most completions a wait asks for.
    max: u32,
    /// What the next wait asks for.
    want: u32,
}

/// The default window: well under a millisecond, so a lone request never waits long, and
/// several times a loopback round trip, so a loaded turn gathers a batch.
pub const DEFAULT_WINDOW_US: u32 = 50;
/// The default cap on the completions one wait asks for.
pub const DEFAULT_MAX: u32 = 32;

impl Default for Batching {
    fn default() -> Self {
        Batching::new(DEFAULT_WINDOW_US, DEFAULT_MAX)
    }
}

impl Batching {
    pub fn new(window_us: u32, max: u32) -> Batching {
        Batching {
            window_us,
            max: max.max(1),
            want: 1,
        }
    }

    /// Batching that never waits for more than one completion.
    pub fn off() -> Batching {
        Batching::new(0, 1)
    }

    /// Batching is possible on this ring only with the kernel's min-wait: without it, a wait
    /// for `n` completions would sleep until the whole timeout for a lone request.
    pub fn for_kernel(self, has_min_wait: bool) -> Batching {
        if has_min_wait { self } else { Batching::off() }
    }

    pub fn window_us(&self) -> u32 {
        self.window_us
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// The next wait: (completions to wait for, the window in microseconds after which one
    /// will do). `(1, 0)` is a plain wait for the first completion.
    pub fn next_wait(&self) -> (u32, u32) {
        if self.window_us == 0 || self.want <= 1 {
            (1, 0)
        } else {
            (self.want, self.window_us)
        }
    }

    /// After a turn that handled `completions`: the next wait asks for as many (capped), so a
    /// loaded worker keeps gathering and an idle one goes back to waking on the first.
    pub fn turn(&mut self, completions: usize) {
        self.want = u32::try_from(completions)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_completion_is_never_held() {
        let mut b = Batching::default();
        assert_eq!(b.next_wait(), (1, 0));
        b.turn(1);
        assert_eq!(b.next_wait(), (1, 0));
        b.turn(0);
        assert_eq!(b.next_wait(), (1, 0));
    }

    #[test]
    fn a_loaded_turn_asks_for_as_many_within_the_window_and_the_cap() {
        let mut b = Batching::new(40, 16);
        b.turn(5);
        assert_eq!(b.next_wait(), (5, 40));
        b.turn(1000);
        assert_eq!(b.next_wait(), (16, 40));
        // Load gone: back to waking on the first completion.
        b.turn(1);
        assert_eq!(b.next_wait(), (1, 0));
    }

    #[test]
    fn off_or_without_min_wait_it_waits_for_one() {
        let mut off = Batching::off();
        off.turn(50);
        assert_eq!(off.next_wait(), (1, 0));
        let mut old_kernel = Batching::new(50, 32).for_kernel(false);
        old_kernel.turn(50);
        assert_eq!(old_kernel.next_wait(), (1, 0));
        let mut new_kernel = Batching::new(50, 32).for_kernel(true);
        new_kernel.turn(50);
        assert_eq!(new_kernel.next_wait(), (32, 50));
    }
}
