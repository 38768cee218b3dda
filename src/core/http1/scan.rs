//! Incremental end-of-head detection for HTTP/1.1 messages.
//!
//! [`HeadScanner`] looks at every byte of a head exactly once, however the bytes arrive, so a
//! head trickling in one byte per read costs linear work. It enforces the line discipline
//! (CRLF only: no bare LF, no bare CR, no NUL) and the size limits before anything is parsed.

use super::Limits;
use super::request::check_request_line;
use crate::core::error::HttpError;

/// Empty lines (CRLF) tolerated before the start line (RFC 9112 §2.2 asks for at least one).
pub const MAX_LEADING_EMPTY_LINES: u8 = 4;

/// Outcome of one scan.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The head is complete; it is this many bytes long, including any tolerated leading empty
    /// lines and the final CRLFCRLF. The body (if any) starts right after.
    Complete(usize),
    /// More bytes are needed.
    Partial,
}

/// Where in the head the scanner is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the start line: only empty lines seen so far.
    Leading,
    /// Inside the start line, which began at this offset.
    StartLine(usize),
    /// Inside the field section; the current line began at this offset.
    Fields(usize),
    /// Found the end; the head is this long.
    Done(usize),
}

/// Which side we are scanning for: decides which status and culprit an error gets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// Finds the end of a message head in a buffer that grows between calls.
///
/// The caller passes the whole buffered message from its first byte each time; the scanner
/// remembers how far it has looked and resumes there. Call [`HeadScanner::reset`] before
/// scanning the next message (whose first byte is then at offset 0 of the new buffer).
#[derive(Clone, Debug)]
pub struct HeadScanner {
    /// Next offset to look at.
    pos: usize,
    phase: Phase,
    /// The byte before `pos` was a CR (so `pos` must be an LF).
    cr: bool,
    leading: u8,
}

impl Default for HeadScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadScanner {
    pub fn new() -> Self {
        HeadScanner {
            pos: 0,
            phase: Phase::Leading,
            cr: false,
            leading: 0,
        }
    }

    /// Forgets everything: the next call scans a new message from offset 0.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Scans a request head. Errors are the client's: 414 (request line too long), 431 (head
    /// too long), 400 (bare CR, bare LF, NUL, too many leading empty lines, a malformed request
    /// line), 505 (a well-formed request line naming a version we do not speak). The request
    /// line is checked as soon as its CRLF arrives.
    pub fn scan_request(&mut self, buf: &[u8], limits: &Limits) -> Result<Scan, HttpError> {
        self.scan(buf, limits, Side::Request)
    }

    /// Scans a response head. Every error is the upstream's and maps to 502.
    pub fn scan_response(&mut self, buf: &[u8], limits: &Limits) -> Result<Scan, HttpError> {
        self.scan(buf, limits, Side::Response)
    }

    fn scan(&mut self, buf: &[u8], limits: &Limits, side: Side) -> Result<Scan, HttpError> {
        if let Phase::Done(len) = self.phase {
            return Ok(Scan::Complete(len));
        }
        if buf.len() < self.pos {
            // The caller handed us a different (shorter) message: start over rather than trust
            // stale state.
            self.reset();
        }
        let fail = |status: u16, detail: &'static str| -> HttpError {
            match side {
                Side::Request => HttpError::client(status, detail),
                Side::Response => HttpError::upstream(502, detail),
            }
        };
        let mut i = self.pos;
        while i < buf.len() {
            if i >= limits.max_head_bytes {
                return Err(fail(431, "message head too large"));
            }
            let b = buf[i];
            if self.cr {
                if b != b'\n' {
                    return Err(fail(400, "bare CR in message head"));
                }
                self.cr = false;
                // A line ends at `i` (its CR is at `i - 1`).
                match self.phase {
                    Phase::Leading => {
                        self.leading += 1;
                        if self.leading > MAX_LEADING_EMPTY_LINES {
                            return Err(fail(400, "too many empty lines before the start line"));
                        }
                    }
                    Phase::StartLine(line_start) => {
                        if side == Side::Request {
                            // A malformed request line is answered now, not after the field
                            // section (which an HTTP/0.9-style `GET /` never sends).
                            check_request_line(&buf[line_start..i - 1])?;
                        }
                        self.phase = Phase::Fields(i + 1);
                    }
                    Phase::Fields(line_start) => {
                        if line_start + 1 == i {
                            // Empty line: end of the head.
                            let len = i + 1;
                            self.pos = len;
                            self.phase = Phase::Done(len);
                            return Ok(Scan::Complete(len));
                        }
                        self.phase = Phase::Fields(i + 1);
                    }
                    Phase::Done(len) => return Ok(Scan::Complete(len)),
                }
                i += 1;
                continue;
            }
            match b {
                b'\r' => {
                    self.cr = true;
                    i += 1;
                }
                b'\n' => return Err(fail(400, "bare LF in message head")),
                0 => return Err(fail(400, "NUL in message head")),
                _ => {
                    if self.phase == Phase::Leading {
                        self.phase = Phase::StartLine(i);
                    }
                    // Skip the whole run of ordinary bytes at once (vectorised search); it
                    // ends at the next CR, LF or NUL, or at the head-size limit.
                    let end = buf.len().min(limits.max_head_bytes);
                    let run_end =
                        memchr::memchr3(b'\r', b'\n', 0, &buf[i..end]).map_or(end, |p| i + p);
                    if let Phase::StartLine(line_start) = self.phase
                        && run_end - line_start > limits.max_request_line
                    {
                        return Err(fail(414, "request line too long"));
                    }
                    i = run_end;
                }
            }
        }
        self.pos = buf.len();
        Ok(Scan::Partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(buf: &[u8]) -> Result<Scan, HttpError> {
        HeadScanner::new().scan_request(buf, &Limits::default())
    }

    fn bytewise(buf: &[u8]) -> Result<Scan, HttpError> {
        let mut s = HeadScanner::new();
        let limits = Limits::default();
        for n in 1..=buf.len() {
            match s.scan_request(&buf[..n], &limits)? {
                Scan::Complete(len) => return Ok(Scan::Complete(len)),
                Scan::Partial => {}
            }
        }
        Ok(Scan::Partial)
    }

    #[test]
    fn finds_end_of_head() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(whole(buf), Ok(Scan::Complete(buf.len() - 4)));
        assert_eq!(bytewise(buf), Ok(Scan::Complete(buf.len() - 4)));
    }

    #[test]
    fn head_without_fields() {
        let buf = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(whole(buf), Ok(Scan::Complete(buf.len())));
    }

    #[test]
    fn partial_until_blank_line() {
        assert_eq!(whole(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(Scan::Partial));
        assert_eq!(whole(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), Ok(Scan::Partial));
        assert_eq!(whole(b""), Ok(Scan::Partial));
    }

    #[test]
    fn leading_empty_lines_are_bounded() {
        let ok = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(whole(ok), Ok(Scan::Complete(ok.len())));
        let bad = b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(whole(bad).unwrap_err().status.0, 400);
    }

    #[test]
    fn line_discipline() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
            b"\nGET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(whole(bad).unwrap_err().status.0, 400, "{bad:?}");
            assert_eq!(bytewise(bad).unwrap_err().status.0, 400, "{bad:?}");
        }
    }

    #[test]
    fn limits() {
        let limits = Limits {
            max_head_bytes: 64,
            max_request_line: 20,
            ..Limits::default()
        };
        let mut s = HeadScanner::new();
        // Exactly 20 bytes of request line is fine, 21 is not.
        assert_eq!(
            s.scan_request(b"GET /aaaaaa HTTP/1.1\r\n", &limits),
            Ok(Scan::Partial)
        );
        s.reset();
        let err = s
            .scan_request(b"GET /aaaaaaa HTTP/1.1", &limits)
            .unwrap_err();
        assert_eq!(err.status.0, 414);
        s.reset();
        let long = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'a'; 60][..]].concat();
        assert_eq!(s.scan_request(&long, &limits).unwrap_err().status.0, 431);
    }

    #[test]
    fn response_errors_are_upstream_502() {
        let limits = Limits::default();
        let err = HeadScanner::new()
            .scan_response(b"HTTP/1.1 200 OK\nX: y\r\n\r\n", &limits)
            .unwrap_err();
        assert_eq!(err.status.0, 502);
        assert_eq!(err.culprit, crate::core::error::Culprit::Upstream);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            HeadScanner::new().scan_response(ok, &limits),
            Ok(Scan::Complete(ok.len()))
        );
    }

    #[test]
    fn complete_is_sticky_and_reset_starts_over() {
        let mut s = HeadScanner::new();
        let limits = Limits::default();
        let buf = b"GET / HTTP/1.1\r\n\r\nGET";
        assert_eq!(s.scan_request(buf, &limits), Ok(Scan::Complete(18)));
        assert_eq!(s.scan_request(buf, &limits), Ok(Scan::Complete(18)));
        s.reset();
        assert_eq!(s.scan_request(b"GET", &limits), Ok(Scan::Partial));
    }

    #[test]
    fn every_split_point_agrees() {
        let buf = b"\r\nPOST /x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz";
        let limits = Limits::default();
        for split in 0..buf.len() {
            let mut s = HeadScanner::new();
            let first = s.scan_request(&buf[..split], &limits).unwrap();
            let second = s.scan_request(buf, &limits).unwrap();
            if let Scan::Complete(n) = first {
                assert_eq!(second, Scan::Complete(n));
            }
            assert_eq!(second, Scan::Complete(buf.len() - 1));
        }
    }
}
