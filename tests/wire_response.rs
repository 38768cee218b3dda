//! Wire tables for the response side and the body codecs: each case asserts the exact status
//! of the error or the exact bytes sent towards the client (and the decoded body).

use proptest::prelude::*;
use sluice::core::http1::body::{BodyDecoder, BodyEncoder, Decoded, Peer};
use sluice::core::http1::request::uninit_headers;
use sluice::core::http1::response::{
    ClientSide, RequestContext, parse_response_head_uninit, write_client_response,
};
use sluice::core::http1::scan::{HeadScanner, Scan};
use sluice::core::http1::{Framing, Limits, Version};

const GET: RequestContext = RequestContext {
    head_request: false,
    upgrade_requested: false,
};
const HEAD: RequestContext = RequestContext {
    head_request: true,
    upgrade_requested: false,
};
const UPGRADE: RequestContext = RequestContext {
    head_request: false,
    upgrade_requested: true,
};
const C11: ClientSide = ClientSide {
    version: Version::Http11,
    keep_alive: true,
    head_request: false,
    server: None,
};
const C10: ClientSide = ClientSide {
    version: Version::Http10,
    keep_alive: true,
    head_request: false,
    server: None,
};
const C11_HEAD: ClientSide = ClientSide {
    version: Version::Http11,
    keep_alive: true,
    head_request: true,
    server: None,
};
const C11_CLOSE: ClientSide = ClientSide {
    version: Version::Http11,
    keep_alive: false,
    head_request: false,
    server: None,
};
/// What a client of a default configuration gets: `Server: sluice` when the upstream has none.
const C11_SERVER: ClientSide = ClientSide {
    server: Some("sluice"),
    ..C11
};
const C10_SERVER: ClientSide = ClientSide {
    server: Some("sluice"),
    ..C10
};

/// Scans and parses `wire` as an upstream response head, then writes it for `client`.
/// Returns the client head, the upstream framing, the client framing and reusability; or the
/// error status.
fn run(
    wire: &[u8],
    ctx: RequestContext,
    client: ClientSide<'_>,
) -> Result<(String, Framing, Framing, bool), u16> {
    let limits = Limits::default();
    let len = match HeadScanner::new().scan_response(wire, &limits) {
        Ok(Scan::Complete(len)) => len,
        Ok(Scan::Partial) => panic!("incomplete test input"),
        Err(e) => return Err(e.status.0),
    };
    let mut storage = uninit_headers();
    let resp =
        parse_response_head_uninit(&wire[..len], &limits, &mut storage, ctx).map_err(|e| {
            assert_eq!(e.culprit, sluice::core::error::Culprit::Upstream);
            e.status.0
        })?;
    let mut out = Vec::new();
    let cf = write_client_response(&resp, &client, &mut out);
    Ok((
        String::from_utf8(out).unwrap(),
        resp.framing,
        cf.framing,
        resp.reusable,
    ))
}

struct Case {
    name: &'static str,
    wire: &'static str,
    ctx: RequestContext,
    client: ClientSide<'static>,
    /// `Err(status)` or the exact client head, upstream framing, reusable.
    expect: Result<(&'static str, Framing, bool), u16>,
}

fn ok(
    head: &'static str,
    framing: Framing,
    reusable: bool,
) -> Result<(&'static str, Framing, bool), u16> {
    Ok((head, framing, reusable))
}

fn cases() -> Vec<Case> {
    use Framing::*;
    let c = |name, wire, ctx, client, expect| Case {
        name,
        wire,
        ctx,
        client,
        expect,
    };
    vec![
        c(
            "content-length passes",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nX-App: 1\r\nContent-Length: 5\r\n\r\n",
                Length(5),
                true,
            ),
        ),
        c(
            "reason phrase kept",
            "HTTP/1.1 404 Nope Not Here\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 404 Nope Not Here\r\nContent-Length: 0\r\n\r\n",
                Length(0),
                true,
            ),
        ),
        c(
            "empty reason",
            "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
                Length(0),
                true,
            ),
        ),
        c(
            "identical duplicate CL folds",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                Length(3),
                true,
            ),
        ),
        c(
            "CL list folds",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                Length(3),
                true,
            ),
        ),
        c(
            "differing CL",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "signed CL",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "hex CL",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "empty CL",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "overflowing CL",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "CL and TE",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "chunked to 1.1 stays chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
                true,
            ),
        ),
        c(
            "chunked case-insensitive",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
                true,
            ),
        ),
        c(
            "chunked to 1.0 is close-delimited",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
            C10,
            ok(
                "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n",
                Chunked,
                true,
            ),
        ),
        c(
            "gzip then chunked is not decoded",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "chunked not last",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "unknown coding alone",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "chunked twice",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "malformed TE",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "close-delimited becomes chunked for 1.1",
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
                CloseDelimited,
                false,
            ),
        ),
        c(
            "close-delimited stays for 1.0",
            "HTTP/1.0 200 OK\r\n\r\n",
            GET,
            C10,
            ok(
                "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n",
                CloseDelimited,
                false,
            ),
        ),
        c(
            "1.0 upstream with keep-alive is reusable",
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
                Length(1),
                true,
            ),
        ),
        c(
            "1.0 upstream without keep-alive is not",
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
                Length(1),
                false,
            ),
        ),
        c(
            "Connection: close upstream not reusable",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
                Length(1),
                false,
            ),
        ),
        c(
            "1.0 client kept alive says so",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
            GET,
            C10,
            ok(
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                Length(1),
                true,
            ),
        ),
        c(
            "client closing says so",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
            GET,
            C11_CLOSE,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                Length(1),
                true,
            ),
        ),
        c(
            "HEAD keeps the length, no body",
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            HEAD,
            C11_HEAD,
            ok(
                "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                None,
                true,
            ),
        ),
        c(
            "204 has no body",
            "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
            GET,
            C11,
            ok("HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", None, true),
        ),
        c(
            "204 with CL is still bodiless",
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            GET,
            C11,
            ok("HTTP/1.1 204 No Content\r\n\r\n", None, true),
        ),
        c(
            "304 keeps its length",
            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\n\r\n",
                None,
                true,
            ),
        ),
        c(
            "103 is interim and bodiless",
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
                None,
                true,
            ),
        ),
        c(
            "101 after an upgrade request",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\r\n",
            UPGRADE,
            C11,
            ok(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\nConnection: upgrade\r\n\r\n",
                None,
                false,
            ),
        ),
        c(
            "101 without an upgrade request",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "hop-by-hop removed",
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nTrailer: X-T\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n",
                Length(0),
                true,
            ),
        ),
        c(
            "Set-Cookie repeated stays repeated",
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            ok(
                "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
                Length(0),
                true,
            ),
        ),
        c(
            "status out of range",
            "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "two-digit status",
            "HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "HTTP/2 status line",
            "HTTP/2 200 OK\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c("garbage", "hello world\r\n\r\n", GET, C11, Err(502)),
        c(
            "space before colon",
            "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "obs-fold",
            "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "bare LF",
            "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        c(
            "NUL in value",
            "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
        // ---- issue 11: Server on every response, h2c never switched to ----
        c(
            "Server added when the upstream sent none",
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
            GET,
            C11_SERVER,
            ok(
                "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
                Length(2),
                true,
            ),
        ),
        c(
            "upstream's Server kept, ours not added",
            "HTTP/1.1 200 OK\r\nserver: pod/1.0\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11_SERVER,
            ok(
                "HTTP/1.1 200 OK\r\nserver: pod/1.0\r\nContent-Length: 0\r\n\r\n",
                Length(0),
                true,
            ),
        ),
        c(
            "upstream's empty Server kept",
            "HTTP/1.1 204 No Content\r\nServer:\r\n\r\n",
            GET,
            C11_SERVER,
            ok("HTTP/1.1 204 No Content\r\nServer: \r\n\r\n", None, true),
        ),
        c(
            "Server named by Connection is dropped, ours added",
            "HTTP/1.1 200 OK\r\nConnection: Server\r\nServer: hidden\r\nContent-Length: 0\r\n\r\n",
            GET,
            C11_SERVER,
            ok(
                "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Length: 0\r\n\r\n",
                Length(0),
                true,
            ),
        ),
        c(
            "Server on a re-chunked 1.1 answer",
            "HTTP/1.1 200 OK\r\n\r\n",
            GET,
            C11_SERVER,
            ok(
                "HTTP/1.1 200 OK\r\nServer: sluice\r\nTransfer-Encoding: chunked\r\n\r\n",
                CloseDelimited,
                false,
            ),
        ),
        c(
            "Server on a 1.0 client's answer",
            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
            GET,
            C10_SERVER,
            ok(
                "HTTP/1.0 304 Not Modified\r\nServer: sluice\r\nETag: \"x\"\r\nConnection: keep-alive\r\n\r\n",
                None,
                true,
            ),
        ),
        c(
            "Server on a HEAD answer",
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            HEAD,
            ClientSide {
                head_request: true,
                ..C11_SERVER
            },
            ok(
                "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Length: 9\r\n\r\n",
                None,
                true,
            ),
        ),
        c(
            "configured Server value",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            GET,
            ClientSide {
                server: Some("edge"),
                ..C11
            },
            ok(
                "HTTP/1.1 404 Not Found\r\nServer: edge\r\nContent-Length: 0\r\n\r\n",
                Length(0),
                true,
            ),
        ),
        c(
            "Server on a 101",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            UPGRADE,
            C11_SERVER,
            ok(
                "HTTP/1.1 101 Switching Protocols\r\nServer: sluice\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                None,
                false,
            ),
        ),
        c(
            "101 without an Upgrade field",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
            UPGRADE,
            C11,
            Err(502),
        ),
        c(
            "101 to h2c without an upgrade request",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            GET,
            C11,
            Err(502),
        ),
    ]
}

#[test]
fn response_wire_table() {
    let cases = cases();
    assert!(cases.len() >= 40);
    for case in cases {
        let got = run(case.wire.as_bytes(), case.ctx, case.client);
        match case.expect {
            Err(status) => assert_eq!(got.map(|g| g.0), Err(status), "{}", case.name),
            Ok((head, framing, reusable)) => {
                let (out, up, _, re) = got.unwrap_or_else(|s| panic!("{}: got {s}", case.name));
                assert_eq!(out, head, "{}", case.name);
                assert_eq!(up, framing, "{}", case.name);
                assert_eq!(re, reusable, "{}", case.name);
            }
        }
    }
}

/// Body, trailers, and bytes left over.
type Decoded3 = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Decodes `wire` fed in pieces of `step` bytes, as a connection would (unconsumed bytes stay
/// buffered). Returns the body, the trailers and the bytes left over; or the error status.
fn decode(
    wire: &[u8],
    framing: Framing,
    peer: Peer,
    limits: &Limits,
    step: usize,
) -> Result<Decoded3, u16> {
    decode_until(wire, framing, peer, limits, step, true)
}

/// As [`decode`]; without `eof` the peer keeps its connection open after the last byte, and a
/// body still waiting for more is `Err(0)`.
fn decode_until(
    wire: &[u8],
    framing: Framing,
    peer: Peer,
    limits: &Limits,
    step: usize,
    eof: bool,
) -> Result<Decoded3, u16> {
    let mut d = BodyDecoder::new(framing, peer, limits);
    let mut buffered = Vec::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match d.decode(&buffered).map_err(|e| e.status.0)? {
                (used, Decoded::Data(data)) => {
                    body.extend_from_slice(data);
                    buffered.drain(..used);
                }
                (used, Decoded::Done) => {
                    buffered.drain(..used);
                    buffered.extend_from_slice(&wire[fed..]);
                    return Ok((body, d.trailers().to_vec(), buffered));
                }
                (used, Decoded::NeedMore) => {
                    buffered.drain(..used);
                    break;
                }
            }
        }
        if fed == wire.len() {
            if !eof {
                return Err(0);
            }
            d.eof().map_err(|e| e.status.0)?;
            return Ok((body, d.trailers().to_vec(), buffered));
        }
        let n = step.min(wire.len() - fed);
        buffered.extend_from_slice(&wire[fed..fed + n]);
        fed += n;
    }
}

type BodyExpect = Result<(&'static str, &'static str, &'static str), u16>;

fn chunk_cases() -> Vec<(&'static str, &'static str, Peer, BodyExpect)> {
    use Peer::*;
    vec![
        (
            "simple",
            "5\r\nhello\r\n0\r\n\r\n",
            Upstream,
            Ok(("hello", "", "")),
        ),
        (
            "several chunks",
            "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            Client,
            Ok(("abcde", "", "")),
        ),
        (
            "upper hex",
            "A\r\n0123456789\r\n0\r\n\r\n",
            Client,
            Ok(("0123456789", "", "")),
        ),
        (
            "leading zeros",
            "0005\r\nhello\r\n000\r\n\r\n",
            Client,
            Ok(("hello", "", "")),
        ),
        (
            "extension dropped",
            "5;name=value\r\nhello\r\n0;last\r\n\r\n",
            Client,
            Ok(("hello", "", "")),
        ),
        (
            "quoted extension",
            "5;n=\"a;b\\\"c\"\r\nhello\r\n0\r\n\r\n",
            Client,
            Ok(("hello", "", "")),
        ),
        (
            "BWS before extension",
            "5 ;x\r\nhello\r\n0\r\n\r\n",
            Client,
            Ok(("hello", "", "")),
        ),
        (
            "trailers kept",
            "1\r\na\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n",
            Upstream,
            Ok(("a", "X-Sum: 1\r\nX-B: 2\r\n", "")),
        ),
        (
            "pipelined bytes left",
            "1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
            Client,
            Ok(("a", "", "GET / HTTP/1.1\r\n")),
        ),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("signed size", "+5\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        (
            "leading space",
            " 5\r\nhello\r\n0\r\n\r\n",
            Client,
            Err(400),
        ),
        ("empty size", "\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        (
            "17 hex digits overflow",
            "10000000000000000\r\n",
            Client,
            Err(400),
        ),
        (
            "16 f digits too large",
            "ffffffffffffffff0\r\n",
            Upstream,
            Err(502),
        ),
        (
            "size then junk",
            "5 x\r\nhello\r\n0\r\n\r\n",
            Client,
            Err(400),
        ),
        (
            "bare LF after size",
            "5\nhello\r\n0\r\n\r\n",
            Client,
            Err(400),
        ),
        (
            "bare CR after size",
            "5\rhello\r\n0\r\n\r\n",
            Client,
            Err(400),
        ),
        (
            "missing CRLF after data",
            "5\r\nhelloX\r\n0\r\n\r\n",
            Client,
            Err(400),
        ),
        (
            "LF only after data",
            "5\r\nhello\n0\r\n\r\n",
            Client,
            Err(400),
        ),
        ("bare LF at the end", "0\r\n\n", Client, Err(400)),
        (
            "trailer without colon",
            "0\r\nX-Sum 1\r\n\r\n",
            Client,
            Err(400),
        ),
        (
            "trailer space before colon",
            "0\r\nX-Sum : 1\r\n\r\n",
            Client,
            Err(400),
        ),
        (
            "trailer obs-fold",
            "0\r\nX-A: 1\r\n  more\r\n\r\n",
            Upstream,
            Err(502),
        ),
        ("trailer bare LF", "0\r\nX-A: 1\n\r\n", Client, Err(400)),
        ("truncated chunk at eof", "5\r\nhel", Upstream, Err(502)),
        (
            "missing last chunk at eof",
            "5\r\nhello\r\n",
            Client,
            Err(400),
        ),
        (
            "control byte in extension",
            "5;a\x01\r\nhello\r\n0\r\n\r\n",
            Client,
            Err(400),
        ),
    ]
    .into_iter()
    .chain(issue_11_chunk_cases())
    .collect()
}

/// Issue 11: chunk extensions outside RFC 9112's grammar and lines of the chunked framing
/// that do not end in CRLF. Each is also a seed of the `chunked_body` fuzz target.
#[rustfmt::skip]
fn issue_11_chunk_cases() -> Vec<(&'static str, &'static str, Peer, BodyExpect)> {
    use Peer::*;
    vec![
        // ---- chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ) ----
        ("ext: token value", "5;a=b\r\nhello\r\n0\r\n\r\n", Client, Ok(("hello", "", ""))),
        ("ext: several", "5;a;b=c;d=\"e f\"\r\nhello\r\n0;z\r\n\r\n", Client, Ok(("hello", "", ""))),
        ("ext: BWS everywhere allowed", "5 \t; a \t= b ;c\r\nhello\r\n0\r\n\r\n", Upstream, Ok(("hello", "", ""))),
        ("ext: quoted pair and obs-text", "5;a=\"\\\"\\\\\u{e9}\"\r\nhello\r\n0\r\n\r\n", Client, Ok(("hello", "", ""))),
        ("ext: empty quoted value", "5;a=\"\"\r\nhello\r\n0\r\n\r\n", Client, Ok(("hello", "", ""))),
        ("ext: nothing after ;", "5;\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: ;; empty name", "5;;a\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: empty name before =", "5;=b\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: = without value", "5;a=\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: two values", "5;a=b=c\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: space inside token value", "5;a=b c\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: space inside name", "5;a b\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: separator in name", "5;a/b\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: separator in value", "5;a=b@c\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: comma", "5;a=b,c=d\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: non-ASCII name", "5;\u{e9}\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: DEL", "5;a=\x7f\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: NUL", "5;a\0\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: bare LF ends the line", "5;a\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: bare CR", "5;a\rb\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: unterminated quote", "5;a=\"b\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: CR LF inside quotes", "5;a=\"b\r\nc\"\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: text after closing quote", "5;a=\"b\"c\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: control byte in quotes", "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: escaped control byte", "5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: quoted name", "5;\"a\"\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: whitespace before CRLF", "5;a \r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: whitespace after value before CRLF", "5;a=b\t\r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("size: whitespace before CRLF", "5 \r\nhello\r\n0\r\n\r\n", Client, Err(400)),
        ("ext: on the last chunk", "5\r\nhello\r\n0;a=b c\r\n\r\n", Client, Err(400)),
        ("ext: upstream's malformed extension", "5;a=b c\r\nhello\r\n0\r\n\r\n", Upstream, Err(502)),
        ("ext: upstream's bare LF", "5;a\nhello\r\n0\r\n\r\n", Upstream, Err(502)),
        // ---- every line of the framing ends in CRLF ----
        ("bare LF after the last chunk", "5\r\nhello\r\n0\r\n\n", Client, Err(400)),
        ("bare LF after the last chunk, more follows", "0\r\n\nGET / HTTP/1.1\r\n", Client, Err(400)),
        ("bare LF ending the trailers", "0\r\nX-A: 1\r\n\n", Client, Err(400)),
        ("bare LF between trailers", "0\r\nX-A: 1\r\n\nX-B: 2\r\n\r\n", Client, Err(400)),
        ("bare LF ending a trailer line", "0\r\nX-A: 1\nX-B: 2\r\n\r\n", Client, Err(400)),
        ("bare LF as the last chunk's line end", "5\r\nhello\r\n0\n\r\n", Client, Err(400)),
        ("bare CR after the last chunk", "0\r\n\rX", Client, Err(400)),
        ("bare LF after the last chunk, upstream", "5\r\nhello\r\n0\r\n\n", Upstream, Err(502)),
        ("bare LF ending the trailers, upstream", "0\r\nX-A: 1\r\n\n", Upstream, Err(502)),
    ]
}

#[test]
fn chunked_wire_table_at_every_split() {
    let limits = Limits::default();
    let cases = chunk_cases();
    assert!(cases.len() >= 65, "only {} cases", cases.len());
    for (name, wire, peer, expect) in cases {
        for step in [1, 2, 3, 7, usize::MAX] {
            let got = decode(wire.as_bytes(), Framing::Chunked, peer, &limits, step);
            match expect {
                Err(status) => {
                    assert_eq!(got, Err(status), "{name} step {step}");
                    if !name.contains("at eof") {
                        // Found in the bytes themselves, not by the peer closing: a peer that
                        // keeps its connection open gets the same answer, never a wait.
                        let open = decode_until(
                            wire.as_bytes(),
                            Framing::Chunked,
                            peer,
                            &limits,
                            step,
                            false,
                        );
                        assert_eq!(open, Err(status), "{name} step {step}, connection open");
                    }
                }
                Ok((body, trailers, rest)) => {
                    let (b, t, r) = got.unwrap_or_else(|s| panic!("{name} step {step}: {s}"));
                    assert_eq!(String::from_utf8(b).unwrap(), body, "{name} step {step}");
                    assert_eq!(
                        String::from_utf8(t).unwrap(),
                        trailers,
                        "{name} step {step}"
                    );
                    assert_eq!(String::from_utf8(r).unwrap(), rest, "{name} step {step}");
                }
            }
        }
    }
}

/// Every issue-11 body case is a seed of the `chunked_body` fuzz target, and the Server / 101
/// response cases seeds of `response_head`, committed under `tests/fuzz/seeds/` (the fuzzer's
/// own corpus directory is not tracked). `SLUICE_WRITE_SEEDS=1` (re)writes them.
#[test]
fn fuzz_seeds_hold_the_issue_11_cases() {
    check_seeds(
        "chunked_body",
        issue_11_chunk_cases()
            .into_iter()
            .map(|(name, wire, _, _)| (name, wire.as_bytes())),
    );
    check_seeds(
        "response_head",
        cases()
            .into_iter()
            .filter(|c| c.name.contains("Server") || c.name.contains("101"))
            .map(|c| (c.name, c.wire.as_bytes())),
    );
}

/// Checks (or, with `SLUICE_WRITE_SEEDS` set, writes) one seed file per case.
fn check_seeds<'a>(target: &str, cases: impl Iterator<Item = (&'a str, &'a [u8])>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(target);
    let write = std::env::var_os("SLUICE_WRITE_SEEDS").is_some();
    let mut missing = Vec::new();
    let mut count = 0;
    for (name, bytes) in cases {
        count += 1;
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
    assert!(count > 0, "no cases for {target}");
    assert!(
        missing.is_empty(),
        "seeds missing or stale (SLUICE_WRITE_SEEDS=1 rewrites them): {missing:#?}"
    );
}

#[test]
fn chunk_limits() {
    let limits = Limits {
        max_chunk_ext: 8,
        max_trailer_bytes: 16,
        max_body_bytes: Some(10),
        ..Limits::default()
    };
    let d = |wire: &str, peer| decode(wire.as_bytes(), Framing::Chunked, peer, &limits, usize::MAX);
    assert!(d("1;abcdef\r\na\r\n0\r\n\r\n", Peer::Client).is_ok());
    assert_eq!(d("1;abcdefgh\r\na\r\n0\r\n\r\n", Peer::Client), Err(400));
    assert_eq!(
        d("0\r\nX-Long-Trailer: 123456\r\n\r\n", Peer::Client),
        Err(431)
    );
    assert_eq!(
        d("0\r\nX-Long-Trailer: 123456\r\n\r\n", Peer::Upstream),
        Err(502)
    );
    assert!(d("a\r\n0123456789\r\n0\r\n\r\n", Peer::Client).is_ok());
    assert_eq!(
        d("a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n", Peer::Client),
        Err(413)
    );
    // The body limit is the client's: upstream bodies are not limited.
    assert!(d("a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n", Peer::Upstream).is_ok());
}

#[test]
fn length_bodies_stop_exactly_and_detect_truncation() {
    let limits = Limits::default();
    assert_eq!(
        decode(b"helloGET /", Framing::Length(5), Peer::Client, &limits, 3),
        Ok((b"hello".to_vec(), vec![], b"GET /".to_vec()))
    );
    assert_eq!(
        decode(b"hel", Framing::Length(5), Peer::Upstream, &limits, 1),
        Err(502)
    );
    assert_eq!(
        decode(b"hel", Framing::Length(5), Peer::Client, &limits, 1),
        Err(400)
    );
    assert_eq!(
        decode(
            b"anything at all",
            Framing::CloseDelimited,
            Peer::Upstream,
            &limits,
            4
        ),
        Ok((b"anything at all".to_vec(), vec![], vec![]))
    );
    assert_eq!(
        decode(b"next", Framing::None, Peer::Client, &limits, 1),
        Ok((vec![], vec![], b"next".to_vec()))
    );
}

#[test]
fn encoder_frames_chunks_and_never_emits_an_empty_one() {
    let mut out = Vec::new();
    let mut e = BodyEncoder::new(Framing::Chunked);
    e.encode(b"", &mut out);
    e.encode(&[b'x'; 26], &mut out);
    e.finish(b"X-T: 1\r\n", &mut out);
    let mut expected = b"1a\r\n".to_vec();
    expected.extend_from_slice(&[b'x'; 26]);
    expected.extend_from_slice(b"\r\n0\r\nX-T: 1\r\n\r\n");
    assert_eq!(out, expected);
    let mut out = Vec::new();
    let mut e = BodyEncoder::new(Framing::Length(3));
    e.encode(b"abc", &mut out);
    e.finish(b"", &mut out);
    assert_eq!(out, b"abc");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn chunked_round_trip_at_any_split(
        pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        step in 1usize..64,
    ) {
        let mut wire = Vec::new();
        let mut e = BodyEncoder::new(Framing::Chunked);
        for p in &pieces {
            e.encode(p, &mut wire);
        }
        e.finish(b"", &mut wire);
        let (body, trailers, rest) = decode(&wire, Framing::Chunked, Peer::Upstream, &Limits::default(), step).unwrap();
        prop_assert_eq!(body, pieces.concat());
        prop_assert!(trailers.is_empty());
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn chunked_decoding_is_split_invariant(wire in proptest::collection::vec(
        prop_oneof![Just(b'0'), Just(b'1'), Just(b'a'), Just(b'\r'), Just(b'\n'), Just(b';'), Just(b':'), Just(b' '), any::<u8>()], 0..80),
        step in 1usize..16,
    ) {
        let limits = Limits::default();
        let whole = decode(&wire, Framing::Chunked, Peer::Client, &limits, usize::MAX);
        let split = decode(&wire, Framing::Chunked, Peer::Client, &limits, step);
        prop_assert_eq!(whole, split);
    }
}

/// Which responses must stream to the client unheld (`ResponseHead::streams`, what
/// `postpone_output` never holds back).
#[test]
fn responses_that_must_stream() {
    let cases: [(&str, RequestContext, bool); 10] = [
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", GET, false),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n",
            GET,
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5\r\n\r\n",
            GET,
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-type:  TEXT/Event-Stream ;charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n",
            GET,
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-streams\r\nContent-Length: 5\r\n\r\n",
            GET,
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nContent-Length: 5\r\n\r\n",
            GET,
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nX-Accel-Buffering: yes\r\nContent-Length: 5\r\n\r\n",
            GET,
            false,
        ),
        ("HTTP/1.0 200 OK\r\n\r\n", GET, true),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            UPGRADE,
            true,
        ),
    ];
    for (wire, ctx, streams) in cases {
        let mut storage = uninit_headers();
        let head =
            parse_response_head_uninit(wire.as_bytes(), &Limits::default(), &mut storage, ctx)
                .unwrap_or_else(|e| panic!("{wire:?}: {e:?}"));
        assert_eq!(head.streams(), streams, "{wire:?}");
    }
}
