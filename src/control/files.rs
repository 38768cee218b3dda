//! The live file route source: a directory of Kubernetes YAML, watched with inotify. Edits,
//! new files and deletions are compiled and published without a restart. A file that fails to
//! parse keeps its previous objects (the error is logged with file and line); the other files
//! keep serving. The directory is read once a burst of events holds a complete file (closed
//! after writing, moved, linked or deleted) and has been quiet for [`QUIET`] (never held
//! longer than [`MAX_HOLD`]): never while a file is being written, and once for a temporary
//! file written and renamed into place. The objects then go to the update pipeline's
//! [`Updater`](super::pipeline::Updater), driven on this watcher's thread in the same wakeup
//! (no hand-over to another thread on a busy core), which compiles, publishes and waits for
//! the workers.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use inotify::{EventMask, Inotify, WatchMask};

use super::compile::Objects;
use super::incremental::Incremental;
use super::manifests::{ManifestError, Object, parse_documents};
use super::pipeline::{Change, QUIET, Report, Updater, now};
use crate::engine::Publisher;
use crate::engine::sys;

pub use super::pipeline::MAX_HOLD;
/// How long an idle watcher sleeps before it looks at its stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// The objects of every manifest file, by path, with the last good parse of each.
#[derive(Default)]
pub struct FileSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, Parsed>,
    /// Bumped whenever a refresh changes the objects (a file parsed anew, or gone).
    generation: u64,
}

/// The last good parse of one file, and what the file looked like when it was read: a file
/// whose inode, size and change times are unchanged is not read or parsed again. (An atomic
/// rename always makes a new inode; an in-place rewrite to the same size within the same
/// filesystem timestamp tick would be missed, so tools should write and rename.)
struct Parsed {
    stamp: Option<Stamp>,
    objects: Vec<Object>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "yaml" || x == "yml")
        && !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
}

impl FileSource {
    pub fn new(dir: &Path) -> FileSource {
        FileSource {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            generation: 0,
        }
    }

    /// Re-reads the directory. Files that parse replace their objects; files that fail keep
    /// their previous objects (none, if new); files that are gone drop theirs. Returns the
    /// errors of this read.
    pub fn refresh(&mut self) -> Vec<ManifestError> {
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                // The directory itself vanished or is unreadable: keep serving what we have.
                errors.push(ManifestError {
                    file: self.dir.display().to_string(),
                    line: 0,
                    message: format!("cannot read directory: {e}"),
                });
                return errors;
            }
        };
        let present: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_manifest(p))
            .collect();
        let before = self.files.len();
        self.files.retain(|path, _| present.contains(path));
        if self.files.len() != before {
            self.generation += 1;
        }
        for path in present {
            let now_stamp = stamp(&path);
            if now_stamp.is_some() && self.files.get(&path).is_some_and(|p| p.stamp == now_stamp) {
                continue; // unchanged since the last good parse
            }
            let name = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let (objects, file_errors) = parse_documents(&text, &name);
                    if file_errors.is_empty() {
                        self.generation += 1;
                        self.files.insert(
                            path,
                            Parsed {
                                stamp: now_stamp,
                                objects,
                            },
                        );
                    } else {
                        errors.extend(file_errors);
                    }
                }
                // Deleted between listing and reading: the next event handles it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => errors.push(ManifestError {
                    file: name,
                    line: 0,
                    message: format!("cannot read file: {e}"),
                }),
            }
        }
        errors
    }

    /// Changes whenever a refresh changed the objects.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn objects(&self) -> Objects {
        Objects::from_objects(self.files.values().flat_map(|p| p.objects.iter().cloned()))
    }
}

/// Watches `dir` and hands every change to the update pipeline, until `stop`.
pub struct FileWatcher {
    thread: JoinHandle<()>,
}

/// Events after which a file is complete (written and closed, moved in or out, gone). A
/// `MODIFY` only marks the start of a change, and so does the `CREATE` of a new file (its
/// writer closes it later); see [`linked`] for the `CREATE` that completes a change.
const COMPLETE: EventMask = EventMask::CLOSE_WRITE
    .union(EventMask::MOVED_TO)
    .union(EventMask::MOVED_FROM)
    .union(EventMask::DELETE);

/// Whether `name` in `dir` was created complete: a symbolic link, or a hard link to a file
/// that exists elsewhere (no writer will close it here).
fn linked(dir: &Path, name: &std::ffi::OsStr) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir.join(name))
        .is_ok_and(|m| m.file_type().is_symlink() || (m.is_file() && m.nlink() > 1))
}

/// The directory events since the last read. The directory is read once a burst of events
/// holds a complete file and has been quiet for [`QUIET`] (or has been held for
/// [`MAX_HOLD`]): a writer's temporary file, its close and its rename into place arrive
/// within microseconds of each other, and are read as one change, after the rename, in the
/// same wakeup that compiles and publishes them. A burst of only incomplete events (a file
/// still being written) is kept until its writer completes it; one left incomplete for
/// [`MAX_HOLD`] no longer counts as the start of the next change.
#[derive(Default)]
struct Burst {
    /// (first, last) event of the burst.
    events: Option<(Instant, Instant)>,
    /// Whether some event of the burst completed a file.
    complete: bool,
}

impl Burst {
    fn note(&mut self, now: Instant, complete: bool) {
        let first = match self.events {
            // An incomplete burst that went stale: this event starts a new one.
            Some((first, last)) if self.complete || now < last + MAX_HOLD => first,
            _ => now,
        };
        self.events = Some((first, now));
        self.complete |= complete;
    }

    /// When the directory is to be read (`None`: no complete burst).
    fn deadline(&self) -> Option<Instant> {
        match self.events {
            Some((first, last)) if self.complete => Some((last + QUIET).min(first + MAX_HOLD)),
            _ => None,
        }
    }

    /// Ends the burst if it is due at `now`: its first and last event.
    fn take_due(&mut self, now: Instant) -> Option<(Instant, Instant)> {
        if self.deadline().is_some_and(|d| now >= d) {
            self.complete = false;
            self.events.take()
        } else {
            None
        }
    }
}

impl FileWatcher {
    /// Starts watching. `source` is the already-loaded state, compiled by `compiler` into
    /// snapshot `version`.
    pub fn spawn(
        mut source: FileSource,
        compiler: Incremental,
        publisher: Publisher,
        version: u64,
        stop: Arc<AtomicBool>,
    ) -> io::Result<FileWatcher> {
        let mut inotify = Inotify::init()?;
        inotify.watches().add(
            &source.dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::CREATE
                | WatchMask::MODIFY,
        )?;
        let report = |report| {
            if let Report::Update { diagnostics, .. } = report {
                for d in &diagnostics {
                    super::report::rejected(d);
                }
            }
        };
        let mut updater = Updater::new(compiler, publisher, version, report);
        let thread = std::thread::Builder::new()
            .name("sluice-files".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                let mut burst = Burst::default();
                while !stop.load(Ordering::Acquire) {
                    let got = match inotify.read_events(&mut buf) {
                        Ok(events) => {
                            let mut got = false;
                            for event in events {
                                got = true;
                                let complete = event.mask.intersects(COMPLETE)
                                    || (event.mask.contains(EventMask::CREATE)
                                        && event.name.is_some_and(|n| linked(&source.dir, n)));
                                burst.note(now(), complete);
                            }
                            got
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                        Err(e) => {
                            tracing::error!(dir = %source.dir.display(), error = %e, "cannot watch the manifests directory");
                            false
                        }
                    };
                    if let Some((seen, last)) = burst.take_due(now()) {
                        let generation = source.generation();
                        for e in source.refresh() {
                            tracing::warn!(error = %e, "{e} (previous objects of this file kept)");
                        }
                        // Events that changed nothing (a touch, a temporary file that was
                        // never renamed into place) make no new snapshot.
                        if source.generation() != generation {
                            let change = Change {
                                objects: source.objects(),
                                seen,
                                recheck: false,
                            };
                            // The burst has been quiet since `last` already: the pipeline
                            // applies it at once.
                            updater.offer(change, last);
                        }
                    }
                    updater.apply_due(now());
                    if !got {
                        // Until an event, the burst or the pending change is due, or a look
                        // at `stop`.
                        let due = [burst.deadline(), updater.deadline()].into_iter().flatten().min();
                        let wait = due.map_or(IDLE_WAIT, |d| {
                            d.saturating_duration_since(now()).min(IDLE_WAIT)
                        });
                        let _ = sys::wait_readable(&[inotify.as_raw_fd()], wait);
                    }
                }
            })?;
        Ok(FileWatcher { thread })
    }

    /// Waits for the watcher to end (after `stop`).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_read_once_complete_and_quiet() {
        let t0 = now();
        let ms = Duration::from_millis;
        let mut b = Burst::default();
        // A temporary file is created and written: nothing to read yet, however long.
        b.note(t0, false);
        b.note(t0 + ms(1) / 10, false);
        assert_eq!(b.deadline(), None);
        assert_eq!(b.take_due(t0 + ms(40)), None);
        // Closed and renamed into place: read once quiet after the last of them, and the
        // change counts from the first event.
        b.note(t0 + ms(2) / 10, true);
        b.note(t0 + ms(3) / 10, true);
        let last = t0 + ms(3) / 10;
        assert_eq!(b.deadline(), Some(last + QUIET));
        assert_eq!(b.take_due(last + QUIET / 2), None);
        assert_eq!(b.take_due(last + QUIET), Some((t0, last)));
        assert_eq!(b.deadline(), None);
        // A steady stream is read at the latest MAX_HOLD after its first event.
        let t1 = t0 + ms(100);
        for i in 0..200u32 {
            b.note(t1 + ms(1) * i / 2, true);
        }
        assert_eq!(b.deadline(), Some(t1 + MAX_HOLD));
        // An incomplete burst that went stale does not date the next change.
        let t2 = t0 + ms(200);
        let _ = b.take_due(t2);
        b.note(t2, false);
        b.note(t2 + MAX_HOLD + ms(1), true);
        let last = t2 + MAX_HOLD + ms(1);
        assert_eq!(b.take_due(last + QUIET), Some((last, last)));
    }
}
