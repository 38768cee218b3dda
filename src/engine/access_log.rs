//! The access log: one line per completed request, formatted by its worker into a buffer of
//! its own and handed, a buffer at a time, to one logger thread that writes it out. A worker
//! never waits: when the logger is behind (its queue of buffers is full) the buffer's lines
//! are dropped and counted (`sluice_access_log_dropped_lines_total`).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::time::Instant;

/// The process's access log, installed by `main` before the engine starts (each worker
/// takes its [`WorkerLog`] from it at launch); engines started without it log nothing.
static INSTALLED: std::sync::OnceLock<AccessLog> = std::sync::OnceLock::new();

/// Installs the process's access log (once; a second call is ignored).
pub fn install(log: AccessLog) -> &'static AccessLog {
    let _ = INSTALLED.set(log);
    INSTALLED.get().expect("just set")
}

pub fn installed() -> Option<&'static AccessLog> {
    INSTALLED.get()
}

/// `sample_ppm` of a log that keeps every line.
pub const SAMPLE_ALL: u32 = 1_000_000;

/// A worker hands its buffer over once it holds this much, or once its oldest line has
/// waited [`FLUSH_AFTER`]: not every loop turn, so that the logger thread is woken (a futex
/// wake and a context switch, often on the worker's own core) a few times per 32 KiB or per
/// 50 ms rather than once per turn.
pub const FLUSH_AT: usize = 32 * 1024;

/// The longest a line waits in its worker's buffer (the driver's loop wakes up for it).
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// Line format (`log.format`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// ingress-nginx `upstreaminfo`-like text.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// What one line says.
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    /// When the response completed (wall clock).
    pub time: SystemTime,
    /// The connection's peer: the socket's, or the source its PROXY protocol header named.
    pub peer: SocketAddr,
    /// The real client (the peer, or what a trusted proxy's `X-Forwarded-For` said).
    pub client: IpAddr,
    /// The request came over TLS.
    pub tls: bool,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// Without `?`; empty: none.
    pub query: &'a str,
    /// `HTTP/1.1`, `HTTP/1.0`; empty when no head was parsed.
    pub protocol: &'a str,
    pub status: u16,
    /// Request bytes read from the client (head and body).
    pub bytes_in: u64,
    /// Response bytes sent to the client (head and body).
    pub bytes_out: u64,
    pub referer: &'a str,
    pub user_agent: &'a str,
    /// First request byte to completion.
    pub request_time: Duration,
    /// The matched route, `namespace/ingress/service:port` (`namespace/service:port` for a
    /// default backend without an Ingress); empty: none.
    pub route: &'a str,
    /// The endpoint tried (also for a 502 or 504 of ours); `None`: no upstream was asked.
    pub upstream: Option<SocketAddr>,
    /// The upstream's status; `None` when Sluice answered itself (404, 502, 504, 413...).
    pub upstream_status: Option<u16>,
    /// Response bytes read from the upstream (logged with `upstream_status`).
    pub upstream_bytes: u64,
    pub upstream_time: Option<Duration>,
    pub request_id: &'a str,
}

/// Opens the access log file again.
type Reopener = Box<dyn Fn() -> std::io::Result<Box<dyn Write + Send>> + Send>;

/// Counters shared by the workers and the logger (read at scrape time).
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines handed to the logger (written or failed later).
    pub queued_lines: AtomicU64,
    pub written_lines: AtomicU64,
    pub dropped_lines: AtomicU64,
    /// Of the queued lines, those the destination refused (also counted as dropped).
    pub failed_lines: AtomicU64,
}

/// The logger thread and what the workers need to reach it.
pub struct AccessLog {
    tx: SyncSender<(Vec<u8>, u64)>,
    reopen: Arc<std::sync::atomic::AtomicBool>,
    pub stats: Arc<Stats>,
    pub format: Format,
    /// The share of requests logged, in millionths (`log.access_sample`).
    sample_ppm: u32,
    thread: JoinHandle<()>,
}

impl AccessLog {
    /// Starts the logger thread appending to the file at `path` (created if missing), which
    /// [`AccessLog::reopen`] reopens before the next write (after logrotate moved it).
    pub fn start_file(
        path: std::path::PathBuf,
        format: Format,
        queue: usize,
    ) -> std::io::Result<AccessLog> {
        let open = move || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map(|f| Box::new(f) as Box<dyn Write + Send>)
        };
        let first = open()?;
        Self::start_with(first, Some(Box::new(open)), format, queue)
    }

    /// Starts the logger thread writing to `dest`; at most `queue` buffers wait for it.
    pub fn start(
        dest: Box<dyn Write + Send>,
        format: Format,
        queue: usize,
    ) -> std::io::Result<AccessLog> {
        Self::start_with(dest, None, format, queue)
    }

    /// Logs only `ppm` millionths of the requests (every worker keeps a deterministic
    /// share: with 100 000, one request in ten, evenly spaced).
    pub fn with_sample(mut self, ppm: u32) -> AccessLog {
        self.sample_ppm = ppm.clamp(1, SAMPLE_ALL);
        self
    }

    /// Asks the logger to reopen its file before its next write (SIGUSR1); no-op on stdout.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    fn start_with(
        mut dest: Box<dyn Write + Send>,
        reopener: Option<Reopener>,
        format: Format,
        queue: usize,
    ) -> std::io::Result<AccessLog> {
        let reopen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = reopen.clone();
        let (tx, rx): (_, Receiver<(Vec<u8>, u64)>) = sync_channel(queue);
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || {
                for (buf, lines) in rx {
                    if flag.swap(false, Ordering::AcqRel)
                        && let Some(open) = &reopener
                    {
                        match open() {
                            Ok(d) => dest = d,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot reopen the access log; writing to the old file")
                            }
                        }
                    }
                    if dest.write_all(&buf).and_then(|()| dest.flush()).is_ok() {
                        s.written_lines.fetch_add(lines, Ordering::Release);
                    } else {
                        s.dropped_lines.fetch_add(lines, Ordering::Release);
                        s.failed_lines.fetch_add(lines, Ordering::Release);
                    }
                }
            })?;
        Ok(AccessLog {
            tx,
            reopen,
            stats,
            format,
            sample_ppm: SAMPLE_ALL,
            thread,
        })
    }

    /// A worker's side.
    pub fn worker(&self) -> WorkerLog {
        WorkerLog {
            format: self.format,
            sample_ppm: self.sample_ppm,
            credit: 0,
            oldest: None,
            buf: Vec::with_capacity(FLUSH_AT * 2),
            lines: 0,
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Waits (at most `limit`) until the logger has written, or failed to write, every line
    /// handed to it: at exit, after the workers are gone (their buffers flushed on drop).
    pub fn drain(&self, limit: Duration) {
        let s = &self.stats;
        let mut waited = Duration::ZERO;
        while s.written_lines.load(Ordering::Acquire) + s.failed_lines.load(Ordering::Acquire)
            < s.queued_lines.load(Ordering::Acquire)
            && waited < limit
        {
            std::thread::sleep(Duration::from_millis(5));
            waited += Duration::from_millis(5);
        }
    }

    /// Waits for the logger to write what it was handed (every `WorkerLog` must be gone).
    pub fn join(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// One worker's buffer; formatting and handing over never block.
pub struct WorkerLog {
    format: Format,
    sample_ppm: u32,
    /// Sampling: each request adds `sample_ppm`; a line is written when it reaches a million.
    credit: u32,
    /// When the oldest buffered line was recorded.
    oldest: Option<Instant>,
    buf: Vec<u8>,
    lines: u64,
    tx: SyncSender<(Vec<u8>, u64)>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for WorkerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLog")
            .field("format", &self.format)
            .field("buffered_lines", &self.lines)
            .finish()
    }
}

impl WorkerLog {
    /// Whether the request that just completed is logged (sampling); asked before building
    /// its [`Entry`], so a request left out costs nothing more.
    pub fn sampled(&mut self) -> bool {
        if self.sample_ppm >= SAMPLE_ALL {
            return true;
        }
        self.credit += self.sample_ppm;
        if self.credit >= SAMPLE_ALL {
            self.credit -= SAMPLE_ALL;
            true
        } else {
            false
        }
    }

    /// Buffers `e`'s line (recorded at `now`); hands the buffer over once it is large.
    pub fn record(&mut self, e: &Entry<'_>, now: Instant) {
        self.oldest.get_or_insert(now);
        match self.format {
            Format::Text => write_text(e, &mut self.buf),
            Format::Json => write_json(e, &mut self.buf),
        }
        self.lines += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// When the buffer must be handed over ([`FLUSH_AFTER`] after its oldest line).
    pub fn due(&self) -> Option<Instant> {
        self.oldest.map(|at| at + FLUSH_AFTER)
    }

    /// Hands the buffer over if it is due at `now`.
    pub fn flush_if_due(&mut self, now: Instant) {
        if self.due().is_some_and(|at| at <= now) {
            self.flush();
        }
    }

    /// Hands the buffer to the logger, or drops (and counts) its lines when the logger is
    /// behind.
    pub fn flush(&mut self) {
        self.oldest = None;
        if self.lines == 0 {
            return;
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(FLUSH_AT * 2));
        let lines = std::mem::take(&mut self.lines);
        // Counted before the send, so that `drain` never sees a line written but not queued.
        self.stats.queued_lines.fetch_add(lines, Ordering::Release);
        match self.tx.try_send((full, lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.queued_lines.fetch_sub(lines, Ordering::Release);
                self.stats.dropped_lines.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for WorkerLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Civil date of a Unix day (Howard Hinnant's `civil_from_days`): (year, month, day).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

thread_local! {
    /// The last second formatted by this thread (a worker logs many lines a second): its
    /// Unix time, `2026-12-04T20:10:00` and `04/Dec/2026:20:10:00 +0000`.
    static SECOND: std::cell::RefCell<(u64, String, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new(), String::new())) };
}

/// Appends second `secs`'s ISO 8601 (`iso`) or nginx `$time_local` (UTC) form.
fn push_second(secs: u64, iso: bool, out: &mut Vec<u8>) {
    SECOND.with_borrow_mut(|(cached, iso_text, local_text)| {
        if *cached != secs {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (year, month, day) = civil(days as i64);
            let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
            *iso_text = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
            *local_text = format!(
                "{day:02}/{}/{year:04}:{h:02}:{m:02}:{s:02} +0000",
                MONTHS[(month - 1) as usize]
            );
            *cached = secs;
        }
        out.extend_from_slice(if iso { iso_text } else { local_text }.as_bytes());
    });
}

/// `2026-12-04T20:10:00.123Z` (JSON's `time`).
fn push_time(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    push_second(d.as_secs(), true, out);
    let _ = write!(out, ".{:03}Z", d.subsec_millis());
}

/// `04/Dec/2026:20:10:00 +0000`: nginx's `$time_local` (in UTC) for the text line.
fn push_time_local(t: SystemTime, out: &mut Vec<u8>) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    push_second(secs, false, out);
}

/// Seconds with millisecond resolution, `1.234` (integer arithmetic, no float formatting).
fn push_secs(d: Duration, out: &mut Vec<u8>) {
    let ms = d.as_millis();
    let _ = write!(out, "{}.{:03}", ms / 1000, ms % 1000);
}

/// Text from the request (untrusted): printable ASCII as is, except `"` and `\`, and every
/// other byte as `\xHH` (nginx's escaping), so a line stays one line with its quotes intact.
fn push_escaped(s: &str, out: &mut Vec<u8>) {
    if s.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in s.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// ingress-nginx's `upstreaminfo` fields in its order, then the host and the peer:
///
/// `client - - [time] "METHOD path?query PROTOCOL" status bytes_out "referer" "user_agent"
/// bytes_in request_time [route] [] upstream_addr upstream_bytes upstream_time
/// upstream_status request_id host peer`
///
/// `-` for what is absent: the upstream fields of a response Sluice made itself (the
/// address and time of an attempt that failed are kept, as nginx's are).
fn write_text(e: &Entry<'_>, out: &mut Vec<u8>) {
    let _ = write!(out, "{} - - [", e.client.to_canonical());
    push_time_local(e.time, out);
    out.extend_from_slice(b"] \"");
    if e.protocol.is_empty() {
        // No request line was read (a timeout or a bad head).
        out.push(b'-');
    } else {
        push_escaped(e.method, out);
        out.push(b' ');
        push_escaped(e.path, out);
        if !e.query.is_empty() {
            out.push(b'?');
            push_escaped(e.query, out);
        }
        out.push(b' ');
        out.extend_from_slice(e.protocol.as_bytes());
    }
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes_out);
    push_escaped(e.referer, out);
    out.extend_from_slice(b"\" \"");
    push_escaped(e.user_agent, out);
    let _ = write!(out, "\" {} ", e.bytes_in);
    push_secs(e.request_time, out);
    out.extend_from_slice(b" [");
    push_escaped(e.route, out);
    out.extend_from_slice(b"] [] ");
    match e.upstream {
        Some(a) => {
            let _ = write!(out, "{a} ");
        }
        None => out.extend_from_slice(b"- "),
    }
    match e.upstream_status {
        Some(_) => {
            let _ = write!(out, "{} ", e.upstream_bytes);
        }
        None => out.extend_from_slice(b"- "),
    }
    match e.upstream_time {
        Some(d) => push_secs(d, out),
        None => out.push(b'-'),
    }
    match e.upstream_status {
        Some(s) => {
            let _ = write!(out, " {s} ");
        }
        None => out.extend_from_slice(b" - "),
    }
    push_escaped(e.request_id, out);
    out.push(b' ');
    push_escaped(e.host, out);
    let _ = writeln!(out, " {}", e.peer);
}

fn write_json(e: &Entry<'_>, out: &mut Vec<u8>) {
    let s = |out: &mut Vec<u8>, v: &str| {
        let _ = serde_json::to_writer(&mut *out, v);
    };
    // An empty string is absent: null.
    let opt = |out: &mut Vec<u8>, v: &str| {
        if v.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            let _ = serde_json::to_writer(&mut *out, v);
        }
    };
    out.extend_from_slice(b"{\"time\":\"");
    push_time(e.time, out);
    let _ = write!(
        out,
        "\",\"client\":\"{}\",\"peer\":\"{}\",\"scheme\":\"{}\",\"method\":",
        e.client.to_canonical(),
        e.peer,
        if e.tls { "https" } else { "http" }
    );
    opt(out, e.method);
    out.extend_from_slice(b",\"host\":");
    opt(out, e.host);
    out.extend_from_slice(b",\"path\":");
    opt(out, e.path);
    out.extend_from_slice(b",\"query\":");
    opt(out, e.query);
    out.extend_from_slice(b",\"protocol\":");
    opt(out, e.protocol);
    let _ = write!(
        out,
        ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"referer\":",
        e.status, e.bytes_in, e.bytes_out
    );
    opt(out, e.referer);
    out.extend_from_slice(b",\"user_agent\":");
    opt(out, e.user_agent);
    out.extend_from_slice(b",\"request_time\":");
    push_secs(e.request_time, out);
    out.extend_from_slice(b",\"route\":");
    opt(out, e.route);
    out.extend_from_slice(b",\"upstream_addr\":");
    match e.upstream {
        Some(a) => s(out, &a.to_string()),
        None => out.extend_from_slice(b"null"),
    }
    match e.upstream_status {
        Some(st) => {
            let _ = write!(
                out,
                ",\"upstream_status\":{st},\"upstream_bytes\":{}",
                e.upstream_bytes
            );
        }
        None => out.extend_from_slice(b",\"upstream_status\":null,\"upstream_bytes\":null"),
    }
    out.extend_from_slice(b",\"upstream_response_time\":");
    match e.upstream_time {
        Some(d) => push_secs(d, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"request_id\":");
    opt(out, e.request_id);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn entry() -> Entry<'static> {
        Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_796_415_000_123),
            peer: "10.0.0.2:5555".parse().unwrap(),
            client: "192.0.2.7".parse().unwrap(),
            tls: true,
            method: "GET",
            host: "app.test",
            path: "/a\"b",
            query: "q=1",
            protocol: "HTTP/1.1",
            status: 502,
            bytes_in: 78,
            bytes_out: 154,
            referer: "",
            user_agent: "curl/8.5.0",
            request_time: Duration::from_millis(1234),
            route: "default/app:80",
            upstream: Some("10.0.0.7:8080".parse().unwrap()),
            upstream_status: Some(502),
            upstream_bytes: 120,
            upstream_time: Some(Duration::from_millis(1200)),
            request_id: "0123456789abcdef0123456789abcdef",
        }
    }

    fn text(e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        write_text(e, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_lines_carry_every_field_in_upstreaminfo_order() {
        assert_eq!(
            text(&entry()),
            "192.0.2.7 - - [04/Dec/2026:20:10:00 +0000] \"GET /a\\x22b?q=1 HTTP/1.1\" 502 154 \
             \"-\" \"curl/8.5.0\" 78 1.234 [default/app:80] [] 10.0.0.7:8080 120 1.200 502 \
             0123456789abcdef0123456789abcdef app.test 10.0.0.2:5555\n"
        );
        // Sluice's own answer after a failed attempt: the address and time tried, no
        // upstream status or length.
        let ours = Entry {
            upstream_status: None,
            ..entry()
        };
        assert!(
            text(&ours).contains(" [default/app:80] [] 10.0.0.7:8080 - 1.200 - 0123"),
            "{}",
            text(&ours)
        );
        // A 404: no route, no upstream, no id.
        let local = Entry {
            status: 404,
            route: "",
            upstream: None,
            upstream_status: None,
            upstream_time: None,
            request_id: "",
            ..entry()
        };
        assert!(
            text(&local).ends_with("\" 78 1.234 [-] [] - - - - - app.test 10.0.0.2:5555\n"),
            "{}",
            text(&local)
        );
        // A head that never completed (408): no request line.
        let timeout = Entry {
            status: 408,
            method: "",
            path: "",
            query: "",
            protocol: "",
            host: "",
            ..local
        };
        assert!(
            text(&timeout).contains("] \"-\" 408 "),
            "{}",
            text(&timeout)
        );
    }

    #[test]
    fn text_escapes_what_the_client_sent() {
        let e = Entry {
            user_agent: "evil\" \n[x]\\",
            path: "/\u{e9}",
            ..entry()
        };
        let line = text(&e);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains("\"evil\\x22 \\x0A[x]\\x5C\""), "{line}");
        assert!(line.contains("GET /\\xC3\\xA9?q=1"), "{line}");
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut out = Vec::new();
        write_json(&entry(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-04T20:10:00.123Z");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["peer"], "10.0.0.2:5555");
        assert_eq!(v["scheme"], "https");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "app.test");
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["query"], "q=1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 502);
        assert_eq!(v["bytes_in"], 78);
        assert_eq!(v["bytes_out"], 154);
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "curl/8.5.0");
        assert_eq!(v["request_time"], 1.234);
        assert_eq!(v["route"], "default/app:80");
        assert_eq!(v["upstream_addr"], "10.0.0.7:8080");
        assert_eq!(v["upstream_status"], 502);
        assert_eq!(v["upstream_bytes"], 120);
        assert_eq!(v["upstream_response_time"], 1.2);
        assert_eq!(v["request_id"], "0123456789abcdef0123456789abcdef");
        assert!(out.ends_with(b"}\n"));
        let mut out = Vec::new();
        let local = Entry {
            route: "",
            upstream: None,
            upstream_status: None,
            upstream_time: None,
            request_id: "",
            ..entry()
        };
        write_json(&local, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for key in [
            "route",
            "upstream_addr",
            "upstream_status",
            "upstream_bytes",
            "upstream_response_time",
            "request_id",
        ] {
            assert_eq!(v[key], serde_json::Value::Null, "{key}: {v}");
        }
    }

    #[test]
    fn lines_wait_for_a_full_buffer_or_their_age() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let log = AccessLog::start(Box::new(Slow(out.clone())), Format::Text, 8).unwrap();
        let mut w = log.worker();
        let t0 = Instant::from_nanos(1_000_000_000);
        assert_eq!(w.due(), None);
        w.record(&entry(), t0);
        w.record(&entry(), t0 + Duration::from_millis(10));
        assert_eq!(w.due(), Some(t0 + FLUSH_AFTER), "from the oldest line");
        w.flush_if_due(t0 + (FLUSH_AFTER - Duration::from_millis(1)));
        assert_eq!(log.stats.queued_lines.load(Ordering::Relaxed), 0);
        w.flush_if_due(t0 + FLUSH_AFTER);
        assert_eq!(log.stats.queued_lines.load(Ordering::Relaxed), 2);
        assert_eq!(w.due(), None);
        // A full buffer goes at once.
        let mut n = 0;
        while log.stats.queued_lines.load(Ordering::Relaxed) == 2 {
            w.record(&entry(), t0);
            n += 1;
        }
        assert!(n > 10, "{n} lines before a full buffer");
    }

    #[test]
    fn sampling_keeps_an_even_deterministic_share() {
        let log = AccessLog::start(Box::new(std::io::sink()), Format::Text, 2)
            .unwrap()
            .with_sample(100_000);
        let mut w = log.worker();
        let kept: Vec<bool> = (0..100).map(|_| w.sampled()).collect();
        assert_eq!(kept.iter().filter(|&&k| k).count(), 10);
        // Every tenth request, always the same ones.
        assert!(kept.iter().enumerate().all(|(i, &k)| k == (i % 10 == 9)));
        let all = AccessLog::start(Box::new(std::io::sink()), Format::Text, 2).unwrap();
        let mut w = all.worker();
        assert!((0..100).all(|_| w.sampled()));
    }

    /// A destination that blocks every write until the test lets it go.
    struct Blocked(Arc<Mutex<()>>, Arc<Mutex<Vec<u8>>>);

    impl Write for Blocked {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _gate = self.0.lock().unwrap();
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_destination_drops_and_counts_lines_and_never_blocks_the_worker() {
        let gate = Arc::new(Mutex::new(()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let held = gate.lock().unwrap();
        let log = AccessLog::start(
            Box::new(Blocked(gate.clone(), written.clone())),
            Format::Text,
            2,
        )
        .unwrap();
        let mut w = log.worker();
        // A flood: 100 turns of 50 lines each, every turn flushed; the logger is stuck on
        // its first write, so at most 1 + 2 buffers get through, the rest is dropped.
        // (Were a worker to wait for the logger, this loop would never end: the gate is held.)
        for _ in 0..100 {
            for _ in 0..50 {
                w.record(&entry(), Instant::from_nanos(1));
            }
            w.flush();
        }
        let dropped = log.stats.dropped_lines.load(Ordering::Relaxed);
        assert!(dropped >= 97 * 50, "dropped {dropped}");
        drop(held);
        drop(w);
        let stats = log.stats.clone();
        log.join();
        let lines = written.lock().unwrap().split(|&b| b == b'\n').count() - 1;
        let total = stats.written_lines.load(Ordering::Relaxed)
            + stats.dropped_lines.load(Ordering::Relaxed);
        assert_eq!(
            total,
            100 * 50,
            "every line is written or counted as dropped"
        );
        assert_eq!(lines as u64, stats.written_lines.load(Ordering::Relaxed));
    }

    /// A destination that takes its time with every write.
    struct Slow(Arc<Mutex<Vec<u8>>>);

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(30));
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drain_waits_for_the_lines_already_handed_over() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let log = AccessLog::start(Box::new(Slow(out.clone())), Format::Json, 8).unwrap();
        let mut w = log.worker();
        for _ in 0..3 {
            w.record(&entry(), Instant::from_nanos(1));
            w.flush();
        }
        drop(w);
        log.drain(Duration::from_secs(10));
        assert_eq!(log.stats.written_lines.load(Ordering::Relaxed), 3);
        assert_eq!(out.lock().unwrap().split(|&b| b == b'\n').count() - 1, 3);
    }
}
