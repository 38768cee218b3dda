//! Wire-level request tests: raw bytes in, either the exact status we answer with or the exact
//! head we send upstream. Every case is also fed to the scanner one byte at a time and must give
//! the same result as the whole buffer.

use std::net::{IpAddr, Ipv4Addr};

use sluice::core::error::Culprit;
use sluice::core::http1::{
    ForwardInfo, Framing, HeadScanner, Limits, MAX_HEADERS_CAP, Scan, Upgrades, Version,
    parse_request_head, write_upstream_request,
};

/// The forwarding fields we append for the fixed client of these tests.
macro_rules! xf {
    ($authority:literal) => {
        concat!(
            "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ",
            $authority,
            "\r\nX-Forwarded-Port: 443\r\nX-Real-IP: 192.0.2.7\r\n"
        )
    };
}

/// What a case expects.
enum Want {
    /// The request is refused with this status.
    Status(u16),
    /// The request is accepted and forwarded with exactly this head.
    Upstream(&'static str),
    /// As `Upstream`, with the upgrade tunnelled.
    Tunnel(&'static str),
}
use Want::*;

struct Case {
    name: &'static str,
    input: Vec<u8>,
    want: Want,
}

macro_rules! cases {
    ($($name:literal: $input:expr => $want:expr;)*) => {
        vec![$(Case { name: $name, input: Vec::from(&$input[..]), want: $want }),*]
    };
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: Some(1_000_000),
        ..Limits::default()
    }
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn scan_whole(input: &[u8], limits: &Limits) -> Result<Scan, u16> {
    HeadScanner::new()
        .scan_request(input, limits)
        .map_err(|e| e.status.0)
}

fn scan_bytewise(input: &[u8], limits: &Limits) -> Result<Scan, u16> {
    let mut scanner = HeadScanner::new();
    for n in 1..=input.len() {
        match scanner.scan_request(&input[..n], limits) {
            Ok(Scan::Partial) => {}
            other => return other.map_err(|e| e.status.0),
        }
    }
    Ok(Scan::Partial)
}

/// Scans (both ways), parses and re-emits, tunnelling the upgrades the default policy allows
/// (WebSocket); `Err(status)` on refusal, `Err(0)` when the scanner still waits for more.
fn run(input: &[u8], limits: &Limits) -> Result<(String, bool), u16> {
    let whole = scan_whole(input, limits);
    assert_eq!(whole, scan_bytewise(input, limits), "bytewise scan differs");
    let len = match whole? {
        Scan::Complete(len) => len,
        Scan::Partial => return Err(0),
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let head = parse_request_head(&input[..len], limits, &mut storage[..limits.max_headers])
        .map_err(|e| {
            assert_eq!(e.culprit, Culprit::Client);
            e.status.0
        })?;
    assert_eq!(head.len, len);
    let tunnel = head
        .upgrade
        .is_some_and(|proto| Upgrades::default().allows(proto));
    let info = ForwardInfo {
        client_ip: CLIENT,
        proto: "https",
        port: 443,
        tunnel,
        request_id: "",
    };
    let mut out = Vec::new();
    write_upstream_request(&head, &info, &mut out);
    Ok((String::from_utf8_lossy(&out).into_owned(), tunnel))
}

#[rustfmt::skip]
fn table() -> Vec<Case> {
    cases! {
        // ---- request-line forms ----
        "simple get": b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a.example\r\n", xf!("a.example"), "\r\n"));
        "leading empty lines tolerated": b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"
            => Upstream(concat!("GET /x HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "too many leading empty lines": b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "absolute-form wins over Host": b"GET http://b.example:8080/p?q=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
            => Upstream(concat!("GET /p?q=1 HTTP/1.1\r\nHost: b.example:8080\r\nAccept: */*\r\n", xf!("b.example:8080"), "\r\n"));
        "absolute-form https, empty path": b"GET HTTPS://b.example?x HTTP/1.1\r\nHost: b.example\r\n\r\n"
            => Upstream(concat!("GET /?x HTTP/1.1\r\nHost: b.example\r\n", xf!("b.example"), "\r\n"));
        "absolute-form other scheme": b"GET ftp://b.example/ HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "absolute-form userinfo": b"GET http://u:p@b.example/ HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "absolute-form empty authority": b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "asterisk for OPTIONS": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
            => Upstream(concat!("OPTIONS * HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "asterisk for GET": b"GET * HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "CONNECT": b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n" => Status(501);
        "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n" => Status(505);
        "HTTP/1.2": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n" => Status(505);
        "garbage version": b"GET / HTTP/x.y\r\nHost: a\r\n\r\n" => Status(400);
        "other protocol": b"GET / FOO/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "lowercase version": b"GET / http/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "version with trailing junk": b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n" => Status(400);
        "HTTP/0.9 style": b"GET /\r\n\r\n" => Status(400);
        "double space": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "missing target": b"GET HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "fragment in target": b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "non-ascii target": "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes() => Status(400);
        "DEL in target": b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "tab in target": b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "relative target": b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "invalid method char": b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "unknown method forwarded": b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n"
            => Upstream(concat!("PURGE /x HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "path not normalized": b"GET /a/../b/%2e%2e//c?x=%20&y HTTP/1.1\r\nHost: a\r\n\r\n"
            => Upstream(concat!("GET /a/../b/%2e%2e//c?x=%20&y HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "HTTP/1.0 without Host forwarded as 1.1": b"GET / HTTP/1.0\r\n\r\n"
            => Upstream("GET / HTTP/1.1\r\nHost:\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nX-Real-IP: 192.0.2.7\r\n\r\n");

        // ---- Host ----
        "missing Host on 1.1": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n" => Status(400);
        "missing Host with absolute-form": b"GET http://a/ HTTP/1.1\r\n\r\n" => Status(400);
        "two Host fields": b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n" => Status(400);
        "Host with space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" => Status(400);
        "Host with userinfo": b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n" => Status(400);
        "Host bad port": b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n" => Status(400);
        "Host non-numeric port": b"GET / HTTP/1.1\r\nHost: a:http\r\n\r\n" => Status(400);
        "Host list": b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n" => Status(400);
        "empty Host": b"GET / HTTP/1.1\r\nHost:\r\n\r\n" => Status(400);
        "Host IPv6 literal": b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n", xf!("[2001:db8::1]:8080"), "\r\n"));
        "Host bad IPv6 literal": b"GET / HTTP/1.1\r\nHost: [fe80::1%eth0]\r\n\r\n" => Status(400);
        "HTTP/1.0 with Host": b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));

        // ---- framing: Content-Length ----
        "Content-Length": b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
            => Upstream(concat!("POST /f HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n", xf!("a"), "Content-Length: 5\r\n\r\n"));
        "Content-Length zero": b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
            => Upstream(concat!("POST /f HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Content-Length: 0\r\n\r\n"));
        "CL plus sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n" => Status(400);
        "CL negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n" => Status(400);
        "CL inner space": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n" => Status(400);
        "CL identical list folds": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n"
            => Upstream(concat!("POST / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Content-Length: 5\r\n\r\n"));
        "CL identical fields fold": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n"
            => Upstream(concat!("POST / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Content-Length: 5\r\n\r\n"));
        "CL differing list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,6\r\n\r\n" => Status(400);
        "CL differing fields": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" => Status(400);
        "CL empty": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n" => Status(400);
        "CL trailing comma": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n" => Status(400);
        "CL overflow": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n" => Status(400);
        "CL hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n" => Status(400);
        "CL above body limit": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000001\r\n\r\n" => Status(413);

        // ---- framing: Transfer-Encoding and smuggling ----
        "chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            => Upstream(concat!("POST / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Transfer-Encoding: chunked\r\n\r\n"));
        "chunked uppercase": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n"
            => Upstream(concat!("POST / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Transfer-Encoding: chunked\r\n\r\n"));
        "chunked after tab": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked \t\r\n\r\n"
            => Upstream(concat!("POST / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Transfer-Encoding: chunked\r\n\r\n"));
        "CL.TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX" => Status(400);
        "TE.CL": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" => Status(400);
        "TE.TE xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n" => Status(501);
        "TE.TE vertical tab": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n" => Status(400);
        "TE.TE form feed": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0cchunked\r\n\r\n" => Status(400);
        "TE.TE space before colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n" => Status(400);
        "TE.TE leading space on name": b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n" => Status(400);
        "TE.TE chunked then identity": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" => Status(400);
        "TE.TE chunked twice in list": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" => Status(400);
        "TE.TE chunked twice in fields": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" => Status(400);
        "TE gzip, chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => Status(501);
        "TE identity": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n" => Status(501);
        "TE trailing comma": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n" => Status(400);
        "TE empty": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n" => Status(400);
        "TE quoted": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n" => Status(400);
        "TE with parameter": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n" => Status(400);
        "TE in HTTP/1.0": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" => Status(400);

        // ---- field syntax ----
        "space before colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n" => Status(400);
        "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n" => Status(400);
        "obs-fold with tab": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n\r\n" => Status(400);
        "NUL in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n" => Status(400);
        "lone CR in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n" => Status(400);
        "DEL in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x7f2\r\n\r\n" => Status(400);
        "invalid name char": b"GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n" => Status(400);
        "non-ascii name": b"GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: 1\r\n\r\n" => Status(400);
        "empty name": b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n" => Status(400);
        "bare LF line": b"GET / HTTP/1.1\nHost: a\r\n\r\n" => Status(400);
        "bare LF end": b"GET / HTTP/1.1\r\nHost: a\n\n" => Status(400);
        "value tabs trimmed, original bytes kept": b"GET / HTTP/1.1\r\nHost: a\r\nx-MiXed:\t v\xe9 1 \t\r\nEmpty:\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\nx-MiXed: v\u{fffd} 1\r\nEmpty: \r\n", xf!("a"), "\r\n"));

        "DEL deep in a long value (SIMD path)": [&b"GET / HTTP/1.1\r\nHost: a\r\nX-A: "[..], &[b'v'; 80], b"\x7f", &[b'v'; 40], b"\r\n\r\n"].concat() => Status(400);
        "DEL deep in a long target (SIMD path)": [&b"GET /"[..], &[b'p'; 80], b"\x7f", &[b'p'; 40], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat() => Status(400);
        "fragment deep in a long target": [&b"GET /"[..], &[b'p'; 80], b"#", &[b'p'; 40], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat() => Status(400);
        "non-ascii deep in a long value is forwarded": [&b"GET / HTTP/1.1\r\nHost: a\r\nX-A: "[..], &[b'v'; 70], b"\xe9", b"\r\n\r\n"].concat()
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\nX-A: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\u{fffd}\r\n", xf!("a"), "\r\n"));

        // ---- hop-by-hop ----
        "hop-by-hop stripped": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: websocket\r\nX-Keep: k\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\nX-Keep: k\r\n", xf!("a"), "\r\n"));
        "upgrade to an unlisted protocol not tunnelled": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\nSec-WebSocket-Key: k\r\n\r\n"
            => Upstream(concat!("GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\n", xf!("a"), "\r\n"));
        "upgrade tunnelled": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"
            => Tunnel(concat!("GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\n", xf!("a"), "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
        "upgrade without Connection token": b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
            => Upstream(concat!("GET /ws HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));

        "two Upgrade fields": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n" => Status(400);
        "Connection: close alone": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: c=1\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\nCookie: c=1\r\n", xf!("a"), "\r\n"));

        // ---- forwarding fields ----
        "XFF appended across fields": b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\nAccept: */*\r\nx-forwarded-for: 198.51.100.2, 198.51.100.3\r\n\r\n"
            => Upstream("GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 198.51.100.1, 198.51.100.2, 198.51.100.3, 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: a\r\nX-Forwarded-Port: 443\r\nX-Real-IP: 192.0.2.7\r\n\r\n");
        "forwarding fields replaced": b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));

        "XFF named by Connection is dropped": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "empty XFF ignored": b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For:\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));

        // ---- Expect ----
        "Expect 100-continue stripped": b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
            => Upstream(concat!("PUT /u HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Content-Length: 3\r\n\r\n"));
        "other expectation": b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n" => Status(417);
    }
    .into_iter()
    .chain(issue_11_table())
    .collect()
}

/// The classes of issue 11 (request line shape, h2c and other upgrades). Each case is also a
/// seed of the `request_head` fuzz target (see `fuzz_seeds_hold_the_issue_11_cases`).
#[rustfmt::skip]
fn issue_11_table() -> Vec<Case> {
    cases! {
        // ---- request line without a version: 400 at once, without waiting for more ----
        "HTTP/0.9 line alone": b"GET /\r\n" => Status(400);
        "HTTP/0.9 line then a field": b"GET /index.html?x=1\r\nHost: a\r\n" => Status(400);
        "HTTP/0.9 line, blank line": b"GET /\r\n\r\n" => Status(400);
        "HTTP/0.9 after leading empty line": b"\r\nGET /x\r\n" => Status(400);
        "method alone": b"GET\r\n" => Status(400);
        "target then space, no version": b"GET / \r\n" => Status(400);
        "well-formed line, unknown version, at once": b"GET / HTTP/2.0\r\n" => Status(505);
        "h2 prior-knowledge preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" => Status(505);
        // ---- whitespace inside the target: malformed line, 400 (never 505) ----
        "space in target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "space in target, line alone": b"GET /a b HTTP/1.1\r\n" => Status(400);
        "space in target, unknown version": b"GET /a b HTTP/2.0\r\nHost: a\r\n\r\n" => Status(400);
        "space in absolute target": b"GET http://a/x y HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "several spaces in target": b"GET /a b c d HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "space in query": b"GET /a?b=c d HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "space after version": b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n" => Status(400);
        "tabs as separators": b"GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "vertical tab in target": b"GET /a\x0bb HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);
        "space-separated HTTP/1.1 twice": b"GET / HTTP/1.1 HTTP/1.1\r\nHost: a\r\n\r\n" => Status(400);

        // ---- h2c: never relayed; Upgrade, HTTP2-Settings and their Connection tokens go ----
        "h2c upgrade forwarded plain": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nAccept: */*\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n", xf!("a"), "\r\n"));
        "H2C in capitals": b"GET / HTTP/1.1\r\nHost: a\r\nconnection: upgrade\r\nupgrade: H2C\r\nhttp2-settings: AAM\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "h2c first in a list with websocket": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "h2c last in a list with websocket": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket,h2c\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "HTTP/2.0 as Upgrade token": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: HTTP/2.0\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "HTTP2-Settings without Upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-A: 1\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n", xf!("a"), "\r\n"));
        "HTTP2-Settings without Upgrade, Connection token": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: HTTP2-Settings\r\nHTTP2-Settings: AAM\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "h2c without Connection token": b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "h2c on a POST keeps the body framing": b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\n\r\nabc"
            => Upstream(concat!("POST /p HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Content-Length: 3\r\n\r\n"));
        "h2c with websocket's Connection: keep-alive, Upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "h2c on HTTP/1.0": b"GET / HTTP/1.0\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        // ---- other protocols: only the allowed ones (WebSocket) are tunnelled ----
        "unlisted protocol forwarded plain": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\nX-A: 1\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n", xf!("a"), "\r\n"));
        "websocket with an unlisted one": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, foo/2\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "malformed Upgrade list": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket;q=1\r\n\r\n"
            => Upstream(concat!("GET / HTTP/1.1\r\nHost: a\r\n", xf!("a"), "\r\n"));
        "WebSocket in mixed case tunnelled": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: UPGRADE\r\nUpgrade: WebSocket\r\n\r\n"
            => Tunnel(concat!("GET /ws HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Connection: upgrade\r\nUpgrade: WebSocket\r\n\r\n"));
        "websocket with a version tunnelled": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket/13\r\n\r\n"
            => Tunnel(concat!("GET /ws HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Connection: upgrade\r\nUpgrade: websocket/13\r\n\r\n"));
        "websocket tunnel drops HTTP2-Settings": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nHTTP2-Settings: AAM\r\n\r\n"
            => Tunnel(concat!("GET /ws HTTP/1.1\r\nHost: a\r\n", xf!("a"), "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
    }
}

#[test]
fn wire_table() {
    let limits = limits();
    let cases = table();
    assert!(cases.len() >= 90, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let want = match &case.want {
            Status(s) => Err(*s),
            Upstream(h) => Ok((h.to_string(), false)),
            Tunnel(h) => Ok((h.to_string(), true)),
        };
        let got = run(&case.input, &limits);
        if got != want {
            failures.push(format!("{}:\n  want {want:?}\n  got  {got:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every issue-11 case is a seed of the `request_head` fuzz target, committed under
/// `tests/fuzz/seeds/request_head/` (the fuzzer's own corpus directory is not tracked).
/// `SLUICE_WRITE_SEEDS=1 cargo test --test wire_request` (re)writes them.
#[test]
fn fuzz_seeds_hold_the_issue_11_cases() {
    check_seeds(
        "request_head",
        issue_11_table().iter().map(|c| (c.name, &c.input[..])),
    );
}

/// Checks (or, with `SLUICE_WRITE_SEEDS` set, writes) one seed file per case.
fn check_seeds<'a>(target: &str, cases: impl Iterator<Item = (&'a str, &'a [u8])>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(target);
    let write = std::env::var_os("SLUICE_WRITE_SEEDS").is_some();
    let mut missing = Vec::new();
    for (name, bytes) in cases {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let path = dir.join(format!("issue11-{file}"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "seeds missing or stale (SLUICE_WRITE_SEEDS=1 rewrites them): {missing:#?}"
    );
}

// ---- limits (inputs built at run time) ----

#[test]
fn request_line_too_long_is_414() {
    let mut req = b"GET /".to_vec();
    req.extend(std::iter::repeat_n(b'a', 9000));
    req.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(run(&req, &limits()), Err(414));
}

#[test]
fn head_too_large_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 33 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(run(&req, &limits()), Err(431));
}

#[test]
fn too_many_fields_is_431() {
    let build = |n: usize| {
        let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 1..n {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req
    };
    assert!(run(&build(100), &limits()).is_ok());
    assert_eq!(run(&build(101), &limits()), Err(431));
}

#[test]
fn head_of_exactly_the_limit_is_accepted() {
    let limits = Limits {
        max_head_bytes: 64,
        ..limits()
    };
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    let pad = 64 - req.len() - 4;
    req.extend(std::iter::repeat_n(b'a', pad));
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req.len(), 64);
    assert!(run(&req, &limits).is_ok());
    req.insert(30, b'a');
    assert_eq!(run(&req, &limits), Err(431));
}

// ---- flags of the parsed head ----

fn with_head<R>(input: &[u8], f: impl FnOnce(&sluice::core::http1::RequestHead<'_>) -> R) -> R {
    let limits = limits();
    let Ok(Scan::Complete(len)) = scan_whole(input, &limits) else {
        panic!("scan failed");
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let head = parse_request_head(&input[..len], &limits, &mut storage[..limits.max_headers])
        .expect("valid head");
    f(&head)
}

#[test]
fn keep_alive_rules() {
    let cases: [(&[u8], bool); 6] = [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nConnection: close\r\n\r\n",
            false,
        ),
        (b"GET / HTTP/1.0\r\n\r\n", false),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        (
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            false,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(with_head(input, |h| h.keep_alive), want, "{input:?}");
    }
}

#[test]
fn expect_continue_flag() {
    let flagged = b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    assert!(with_head(flagged, |h| h.expect_continue));
    // Nothing to wait for without a body, and HTTP/1.0 expectations are ignored.
    let no_body = b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
    assert!(!with_head(no_body, |h| h.expect_continue));
    let old = b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    assert!(!with_head(old, |h| h.expect_continue));
}

#[test]
fn upgrade_only_for_http11_with_connection_token() {
    let ws = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(
        with_head(ws, |h| h.upgrade.map(str::to_owned)),
        Some("websocket".to_owned())
    );
    let no_token = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(with_head(no_token, |h| h.upgrade.map(str::to_owned)), None);
    let old = b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(with_head(old, |h| h.upgrade.map(str::to_owned)), None);
}

#[test]
fn accessors() {
    let req = b"\r\nHEAD http://Example.COM:8080/a/b?c=d HTTP/1.1\r\nHost: x\r\n\r\n";
    with_head(req, |h| {
        assert_eq!(h.method, "HEAD");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.authority, "Example.COM:8080");
        assert_eq!(h.host(), "Example.COM");
        assert_eq!(h.path(), "/a/b");
        assert_eq!(h.query(), Some("c=d"));
        assert!(h.is_head());
        assert!(h.is_idempotent());
        assert_eq!(h.framing, Framing::None);
        assert_eq!(h.len, req.len());
        assert_eq!(h.headers.len(), 1);
    });
    with_head(b"OPTIONS * HTTP/1.1\r\nHost: [::1]:1\r\n\r\n", |h| {
        assert_eq!(h.path(), "*");
        assert_eq!(h.host(), "[::1]");
        assert!(!h.is_head());
    });
    with_head(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
        |h| {
            assert!(!h.is_idempotent());
            assert_eq!(h.framing, Framing::Length(1));
        },
    );
}

#[test]
fn ipv6_client_and_mapped_addresses() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let limits = limits();
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let head = parse_request_head(req, &limits, &mut storage[..100]).unwrap();
    for (ip, shown) in [
        ("2001:db8::7", "2001:db8::7"),
        ("::ffff:192.0.2.9", "192.0.2.9"),
    ] {
        let info = ForwardInfo {
            client_ip: ip.parse().unwrap(),
            proto: "http",
            port: 80,
            tunnel: false,
            request_id: "",
        };
        let mut out = Vec::new();
        write_upstream_request(&head, &info, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(&format!("X-Forwarded-For: {shown}\r\n")),
            "{text}"
        );
        assert!(text.contains(&format!("X-Real-IP: {shown}\r\n")), "{text}");
    }
}

#[test]
fn body_bytes_after_head_are_not_part_of_it() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(
        scan_whole(req, &limits()),
        Ok(Scan::Complete(req.len() - 18))
    );
}

// ---- robustness: arbitrary input never panics, and the scanner is split-invariant ----

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn pick(options: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
        proptest::sample::select(options).prop_map(|s| s.as_bytes().to_vec())
    }

    /// A value: a few well-known fragments, digits or raw bytes, glued together.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            4 => pick(&["chunked", "gzip", "close", "keep-alive", "upgrade", "X-A", "100-continue",
                        "websocket", "a", "a:80", "[::1]", "5", ",", " ", "\t", ";", "\"", "@"]),
            1 => "[0-9]{1,22}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..4),
        ];
        prop_oneof![
            3 => pick(&["chunked", "close", "upgrade", "5", "a", "100-continue", "websocket", "x"]),
            2 => proptest::collection::vec(part, 0..5).prop_map(|p| p.concat()),
        ]
    }

    fn field() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            6 => pick(&["Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade",
                        "Expect", "X-Forwarded-For", "X-A", "Keep-Alive", "TE", "host"]),
            1 => proptest::collection::vec(any::<u8>(), 0..4),
        ];
        (name, value()).prop_map(|(n, v)| [n, b": ".to_vec(), v, b"\r\n".to_vec()].concat())
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        (
            pick(&["", "\r\n"]),
            pick(&["GET", "POST", "OPTIONS", "PUT", "CONNECT", "X"]),
            prop_oneof![
                4 => pick(&["/", "/a?b", "*", "http://h:1/p", "http://[::1]", "https://h?q", "/#"]),
                1 => proptest::collection::vec(any::<u8>(), 0..6),
            ],
            pick(&[" HTTP/1.1\r\n", " HTTP/1.0\r\n", " HTTP/2.0\r\n"]),
            pick(&["Host: a\r\n", "Host: a\r\n", "Host: a\r\n", ""]),
            proptest::collection::vec(field(), 0..4),
            proptest::option::weighted(0.3, (any::<prop::sample::Index>(), any::<u8>())),
        )
            .prop_map(|(lead, method, target, version, host, fields, mutation)| {
                let mut v = [
                    lead,
                    method,
                    b" ".to_vec(),
                    target,
                    version,
                    host,
                    fields.concat(),
                ]
                .concat();
                v.extend_from_slice(b"\r\n");
                if let Some((at, byte)) = mutation {
                    let i = at.index(v.len());
                    v[i] = byte;
                }
                v
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn never_panics(input in request(), split in 0usize..64) {
            let limits = limits();
            let whole = scan_whole(&input, &limits);
            // Any split point gives the same answer as the whole buffer.
            let mut scanner = HeadScanner::new();
            let split = split.min(input.len());
            let split_result = match scanner.scan_request(&input[..split], &limits) {
                Ok(Scan::Partial) => scanner.scan_request(&input, &limits).map_err(|e| e.status.0),
                other => other.map_err(|e| e.status.0),
            };
            prop_assert_eq!(whole, split_result);
            if let Ok(Scan::Complete(len)) = whole {
                let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
                if let Ok(head) = parse_request_head(&input[..len], &limits, &mut storage[..100]) {
                    let info = ForwardInfo { client_ip: CLIENT, proto: "http", port: 80, tunnel: true, request_id: "" };
                    let mut out = Vec::new();
                    write_upstream_request(&head, &info, &mut out);
                    // What we emit is itself a valid head that parses to the same framing.
                    let mut again = HeadScanner::new();
                    prop_assert_eq!(again.scan_request(&out, &limits), Ok(Scan::Complete(out.len())));
                    let mut storage2 = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
                    let reparsed = parse_request_head(&out, &limits, &mut storage2[..]);
                    if !head.authority.is_empty() {
                        let reparsed = reparsed.map_err(|e| e.detail);
                        prop_assert!(reparsed.is_ok(), "{:?}", reparsed);
                        if let Ok(r) = reparsed {
                            prop_assert_eq!(r.framing, head.framing);
                            prop_assert_eq!(r.authority, head.authority);
                        }
                    }
                }
            }
        }
    }
}
