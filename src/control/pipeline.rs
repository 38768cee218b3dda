//! The one update pipeline both route sources feed (the manifest directory and the cluster):
//! a source hands over the objects as they are after each change it saw, and the pipeline
//! coalesces a burst (applied once it has been quiet for [`QUIET`], never held longer than
//! [`MAX_HOLD`]), compiles it incrementally, publishes the snapshot, waits until every worker
//! serves it, and then folds the changes into a new base when compaction is due (or when the
//! source asked for the whole set of rejections). The work is one [`Updater`]: the Kubernetes
//! source feeds it on the pipeline's own thread ([`Pipeline`]), so none of its async tasks
//! ever blocks on the workers; the file source, whose thread may block, drives it inline.
//!
//! Active health checks (`health_check`) feed the same pipeline: once a compile asks for
//! any, the updater starts the checker thread, hands it what to check after each compile, and
//! publishes a new snapshot (the same routes, served by the new health view) whenever the
//! checker reports an endpoint going out of or back into rotation ([`HEALTH_POLL`]).

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::certs::wall_clock;
use super::compile::{Diagnostic, Objects};
use super::health_check::{CheckTarget, Checker};
use super::incremental::Incremental;
use crate::engine::Publisher;

/// Quiet time that ends a burst of changes.
pub const QUIET: Duration = Duration::from_millis(1);
/// The longest a change waits for its burst to end.
pub const MAX_HOLD: Duration = Duration::from_millis(50);
/// How often a running health checker's reports are looked at (the file source's loop looks
/// at least this often too).
pub const HEALTH_POLL: Duration = Duration::from_millis(50);
/// How long the pipeline waits for every worker to take a snapshot.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// The control side's clock (the ban on reading clocks is for the core).
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// When a burst of changes is due: once it has been quiet for `quiet`, and at the latest
/// `max_hold` after its first change. Pure: the caller passes the time in.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    quiet: Duration,
    max_hold: Duration,
    /// (first, last) change of the pending burst.
    burst: Option<(Instant, Instant)>,
}

impl Debounce {
    pub fn new(quiet: Duration, max_hold: Duration) -> Debounce {
        Debounce {
            quiet,
            max_hold,
            burst: None,
        }
    }

    /// A change arrived at `now`.
    pub fn note(&mut self, now: Instant) {
        let first = self.burst.map_or(now, |(first, _)| first);
        self.burst = Some((first, now));
    }

    /// When the pending burst is due (`None`: nothing pending).
    pub fn deadline(&self) -> Option<Instant> {
        self.burst
            .map(|(first, last)| (last + self.quiet).min(first + self.max_hold))
    }

    /// Ends the pending burst if it is due at `now`.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.deadline().is_some_and(|d| now >= d) {
            self.burst = None;
            true
        } else {
            false
        }
    }
}

/// The objects of a source after a change.
pub struct Change {
    /// Every object of the source as it is now (unchanged objects keep their `Arc`, so the
    /// incremental compiler sees them as unchanged).
    pub objects: Objects,
    /// When the source first saw the change (propagation is measured from here).
    pub seen: Instant,
    /// The change may change which objects are rejected: after it is served, a full compile
    /// reports the whole set ([`Report::Full`]).
    pub recheck: bool,
}

/// What the pipeline tells its source after each publication.
pub enum Report {
    /// A change published incrementally, with the diagnostics of what it touched.
    Update {
        version: u64,
        diagnostics: Vec<Diagnostic>,
        /// Time from the change to every worker serving it (`None`: not acknowledged in time).
        propagation: Option<Duration>,
    },
    /// A full compile (compaction, or a recheck), with every diagnostic.
    Full {
        version: u64,
        diagnostics: Vec<Diagnostic>,
    },
}

/// Where a source sends its changes. Cloneable; the pipeline ends when every feed is gone.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<Change>,
}

impl Feed {
    /// Hands a change over; false when the pipeline has stopped.
    pub fn send(&self, change: Change) -> bool {
        self.tx.send(change).is_ok()
    }
}

/// The pipeline thread.
pub struct Pipeline {
    feed: Option<Feed>,
    thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the pipeline. `compiler` has compiled the source's current objects as snapshot
    /// `version` (already published); every later change is published as the next version.
    /// `report` is called on the pipeline thread after each publication.
    pub fn spawn(
        compiler: Incremental,
        publisher: Publisher,
        version: u64,
        report: impl FnMut(Report) + Send + 'static,
    ) -> io::Result<Pipeline> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sluice-pipeline".into())
            .spawn(move || run(rx, Updater::new(compiler, publisher, version, report)))?;
        Ok(Pipeline {
            feed: Some(Feed { tx }),
            thread: Some(thread),
        })
    }

    /// A feed for a source.
    pub fn feed(&self) -> Feed {
        self.feed.clone().expect("feed is only taken by finish")
    }

    /// Drops this handle's feed and waits until the pipeline thread ends (once every other
    /// feed is dropped too). A burst still pending is dropped with it.
    pub fn finish(mut self) {
        self.feed = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.feed = None;
    }
}

/// The pipeline's work, driven by a loop that owns it: the pipeline thread (fed through a
/// channel), or a source's own thread when that thread may block (the file source, so that a
/// change needs no hand-over to another thread on a busy core).
pub struct Updater<R: FnMut(Report)> {
    compiler: Incremental,
    publisher: Publisher,
    version: u64,
    report: R,
    debounce: Debounce,
    /// The latest objects of the pending burst, when its first change was seen, and whether
    /// any change of it asked for a recheck.
    pending: Option<(Objects, Instant, bool)>,
    /// The active health checker, started when a compile first asks for checks, and what it
    /// was last told to check.
    checker: Option<Checker>,
    plan: Vec<CheckTarget>,
}

impl<R: FnMut(Report)> Updater<R> {
    /// `compiler` has compiled the source's current objects as snapshot `version` (already
    /// published); every later change is published as the next version. `report` is called
    /// after each publication.
    pub fn new(compiler: Incremental, publisher: Publisher, version: u64, report: R) -> Self {
        let mut updater = Updater {
            compiler,
            publisher,
            version,
            report,
            debounce: Debounce::new(QUIET, MAX_HOLD),
            pending: None,
            checker: None,
            plan: Vec::new(),
        };
        updater.replan();
        updater
    }

    /// Whether a health checker runs (its reports are looked at every [`HEALTH_POLL`]).
    pub fn checking(&self) -> bool {
        self.checker.is_some()
    }

    /// Tells the health checker what the last compile asks to check (starting it the first
    /// time there is something to check).
    fn replan(&mut self) {
        let plan = self.compiler.health_plan();
        if plan == self.plan {
            return;
        }
        if self.checker.is_none() {
            match Checker::spawn() {
                Ok(c) => self.checker = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the health checker: no active health checks");
                    return;
                }
            }
        }
        if let Some(c) = &self.checker {
            c.plan(plan.clone());
        }
        self.plan = plan;
    }

    /// Publishes the routes with the checker's newest health view, if it reported one.
    fn apply_health(&mut self) {
        let Some(view) = self.checker.as_ref().and_then(Checker::latest) else {
            return;
        };
        let seen = now();
        self.compiler.set_health(view);
        if self.pending.is_some() {
            // The pending burst is compiled with it.
            return;
        }
        self.version += 1;
        let version = self.version;
        self.publisher
            .publish(Arc::new(self.compiler.health_snapshot(version)));
        let propagation = self.publisher.wait_acknowledged(version, seen, ACK_WAIT);
        (self.report)(Report::Update {
            version,
            diagnostics: Vec::new(),
            propagation,
        });
    }

    /// A change arrived at `now`; it joins the pending burst (its objects replace the
    /// burst's).
    pub fn offer(&mut self, change: Change, now: Instant) {
        self.debounce.note(now);
        let (seen, recheck) = match self.pending.take() {
            Some((_, seen, recheck)) => (seen.min(change.seen), recheck),
            None => (change.seen, false),
        };
        self.pending = Some((change.objects, seen, recheck || change.recheck));
    }

    /// When the pending burst is due (`None`: nothing pending).
    pub fn deadline(&self) -> Option<Instant> {
        self.debounce.deadline()
    }

    /// Applies the pending burst if it is due at `now`: compiles it incrementally, publishes
    /// it, waits (blocking the calling thread) until every worker serves it, then compacts or
    /// rechecks with a full compile if due. Before that, publishes the health checker's newest
    /// view if it reported one (folded into the burst instead when one is pending).
    pub fn apply_due(&mut self, now: Instant) {
        self.apply_health();
        if !self.debounce.take_due(now) {
            return;
        }
        let Some((objects, seen, recheck)) = self.pending.take() else {
            return;
        };
        self.version += 1;
        let version = self.version;
        let compiled = self.compiler.update_at(&objects, version, wall_clock());
        self.publisher.publish(Arc::new(compiled.snapshot));
        // Workers take a snapshot at their next loop turn, so this is short.
        let propagation = self.publisher.wait_acknowledged(version, seen, ACK_WAIT);
        (self.report)(Report::Update {
            version,
            diagnostics: compiled.diagnostics,
            propagation,
        });
        self.replan();
        if recheck || self.compiler.compaction_due() {
            // The same routes with the changes folded into a new base, so that lookups and
            // later changes stay cheap; and the whole set of rejections, which only a full
            // compile knows. Published after the change itself is served, never delaying it.
            self.version += 1;
            let version = self.version;
            let full = self.compiler.full_at(&objects, version, wall_clock());
            self.publisher.publish(Arc::new(full.snapshot));
            (self.report)(Report::Full {
                version,
                diagnostics: full.diagnostics,
            });
        }
    }
}

fn run(rx: mpsc::Receiver<Change>, mut updater: Updater<impl FnMut(Report)>) {
    loop {
        // A running health checker is looked at every HEALTH_POLL.
        let poll = updater.checking().then(|| now() + HEALTH_POLL);
        let next = match updater.deadline().into_iter().chain(poll).min() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => rx.recv_timeout(deadline.saturating_duration_since(now())),
        };
        match next {
            Ok(change) => updater.offer(change, now()),
            Err(RecvTimeoutError::Timeout) => updater.apply_due(now()),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_due_once_quiet_and_never_later_than_the_hold() {
        let t0 = now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(1), ms(50));
        assert_eq!(d.deadline(), None);
        assert!(!d.take_due(t0));
        d.note(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(1)));
        // Changes keep coming: the quiet deadline moves, the hold does not.
        for i in 1..100 {
            d.note(t0 + ms(i) / 2);
        }
        assert_eq!(d.deadline(), Some(t0 + ms(50)));
        assert!(!d.take_due(t0 + ms(49)));
        assert!(d.take_due(t0 + ms(50)));
        assert_eq!(d.deadline(), None);
        // A new burst starts its own hold.
        d.note(t0 + ms(60));
        assert_eq!(d.deadline(), Some(t0 + ms(61)));
        assert!(d.take_due(t0 + ms(61)));
    }
}
