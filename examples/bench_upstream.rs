//! A benchmark upstream with the response shapes real pods have, for `bench/matrix.py`.
//!
//! nginx serves the "answers from memory" and "static file with sendfile" upstreams; this one
//! serves the shapes nginx cannot: a response whose head and body leave in two writes with a
//! pause between (what Go's net/http and Node do when a handler writes the body after the
//! head), and a chunked response written chunk by chunk. It is single-threaded (one tokio
//! current-thread runtime, pinned by the caller with `taskset`), HTTP/1.1 keep-alive, and
//! honours `Connection: close`. It answers every request with the same body; a request body
//! announced with Content-Length is read and dropped.
//!
//! ```text
//! cargo run --profile dist --example bench_upstream -- \
//!     --listen 127.0.0.1:18000 --shape split --body 1024 --pause-us 0
//! ```
//! `--shape memory|split|chunked`; with `--pause-us 0` the pause is one turn of the event loop
//! (the two writes are still two system calls and, with TCP_NODELAY, two segments).
//! `--delay-ms N` waits N ms after each request head before answering: a slow pod (for
//! `bench/slow_endpoint.py`; other requests on other connections are served meanwhile).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Head and body in one write.
    Memory,
    /// Head, a pause, then the body.
    Split,
    /// Chunked: head, then the body as two chunks (the last with the terminator), three writes.
    Chunked,
}

/// The bytes of every answer, built once at start.
struct Answer {
    shape: Shape,
    pause: Duration,
    /// Before each answer (`--delay-ms`).
    delay: Duration,
    /// Writes for a keep-alive answer, and for one that closes the connection.
    keep: Vec<Vec<u8>>,
    close: Vec<Vec<u8>>,
}

fn main() {
    let (listen, answer) = match parse_args(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bench_upstream: {e}");
            std::process::exit(2);
        }
    };
    let answer: &'static Answer = Box::leak(Box::new(answer));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(listen, answer)) {
        eprintln!("bench_upstream: {e}");
        std::process::exit(1);
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(SocketAddr, Answer), String> {
    let mut listen: SocketAddr = "127.0.0.1:18000".parse().unwrap();
    let mut shape = Shape::Memory;
    let mut body = 1024usize;
    let mut pause_us = 0u64;
    let mut delay_ms = 0u64;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--body" => body = value()?.parse().map_err(|e| format!("--body: {e}"))?,
            "--pause-us" => pause_us = value()?.parse().map_err(|e| format!("--pause-us: {e}"))?,
            "--delay-ms" => delay_ms = value()?.parse().map_err(|e| format!("--delay-ms: {e}"))?,
            "--shape" => {
                shape = match value()?.as_str() {
                    "memory" => Shape::Memory,
                    "split" => Shape::Split,
                    "chunked" => Shape::Chunked,
                    other => return Err(format!("--shape: unknown shape {other:?}")),
                }
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    let answer = Answer {
        shape,
        pause: Duration::from_micros(pause_us),
        delay: Duration::from_millis(delay_ms),
        keep: writes(shape, body, false),
        close: writes(shape, body, true),
    };
    Ok((listen, answer))
}

/// The writes one answer is made of.
fn writes(shape: Shape, body: usize, close: bool) -> Vec<Vec<u8>> {
    let payload = vec![b'x'; body];
    let connection = if close { "Connection: close\r\n" } else { "" };
    let framing = match shape {
        Shape::Chunked => "Transfer-Encoding: chunked\r\n".to_string(),
        _ => format!("Content-Length: {body}\r\n"),
    };
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{framing}{connection}\r\n");
    let mut head = head.into_bytes();
    match shape {
        Shape::Memory => {
            head.extend_from_slice(&payload);
            vec![head]
        }
        Shape::Split => vec![head, payload],
        Shape::Chunked => {
            let (a, b) = payload.split_at(body / 2);
            let mut writes = vec![head];
            let mut first = Vec::new();
            if !a.is_empty() {
                first.extend_from_slice(format!("{:x}\r\n", a.len()).as_bytes());
                first.extend_from_slice(a);
                first.extend_from_slice(b"\r\n");
                writes.push(first);
            }
            let mut last = Vec::new();
            if !b.is_empty() {
                last.extend_from_slice(format!("{:x}\r\n", b.len()).as_bytes());
                last.extend_from_slice(b);
                last.extend_from_slice(b"\r\n");
            }
            last.extend_from_slice(b"0\r\n\r\n");
            writes.push(last);
            writes
        }
    }
}

async fn serve(listen: SocketAddr, answer: &'static Answer) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    // std's backlog is 128; proxies opening many connections at once need more. listen(2)
    // again on a listening socket only updates its backlog.
    if set_backlog(listener.as_raw_fd(), 4096) != 0 {
        return Err(io::Error::last_os_error());
    }
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = connection(stream, answer).await;
        });
    }
}

/// `listen(2)` with a new backlog on an already listening socket.
#[allow(unsafe_code)]
fn set_backlog(fd: i32, backlog: i32) -> i32 {
    // SAFETY: listen takes two integers and touches no memory of ours.
    unsafe { libc::listen(fd, backlog) }
}

async fn connection(stream: TcpStream, answer: &Answer) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    loop {
        // Read until a whole head is buffered.
        let end = loop {
            if let Some(i) = memchr::memmem::find(&buf[..have], b"\r\n\r\n") {
                break i + 4;
            }
            if have == buf.len() {
                return Ok(()); // a head this large is not a benchmark request
            }
            let n = read(&stream, &mut buf[have..]).await?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        };
        let head = &buf[..end];
        let close = header_has(head, b"connection:", b"close");
        let mut skip = content_length(head);
        buf.copy_within(end..have, 0);
        have -= end;
        // Drop a request body.
        while skip > 0 {
            if have == 0 {
                have = read(&stream, &mut buf).await?;
                if have == 0 {
                    return Ok(());
                }
            }
            let take = skip.min(have);
            buf.copy_within(take..have, 0);
            have -= take;
            skip -= take;
        }
        if !answer.delay.is_zero() {
            tokio::time::sleep(answer.delay).await;
        }
        let writes = if close { &answer.close } else { &answer.keep };
        for (i, w) in writes.iter().enumerate() {
            if i > 0 && answer.shape != Shape::Memory {
                if answer.pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(answer.pause).await;
                }
            }
            write_all(&stream, w).await?;
        }
        if close {
            return Ok(());
        }
    }
}

async fn read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// True when a field named `name` (lowercase, with the colon) holds the token `value`.
fn header_has(head: &[u8], name: &[u8], value: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..]
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(value))
    })
}

/// The request's Content-Length, 0 when absent or unreadable (benchmark clients send none).
fn content_length(head: &[u8]) -> usize {
    let name = b"content-length:";
    head.split(|&b| b == b'\n')
        .find(|line| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name))
        .and_then(|line| std::str::from_utf8(&line[name.len()..]).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
