//! The whole-head fast path must agree exactly with the incremental slow path (scanner, then
//! parser) on every input it accepts.

use proptest::prelude::*;
use sluice::core::http1::request::{parse_request_head, parse_whole_request_head, uninit_headers};
use sluice::core::http1::scan::{HeadScanner, Scan};
use sluice::core::http1::{Limits, MAX_HEADERS_CAP};

fn slow(buf: &[u8], limits: &Limits) -> Option<String> {
    let len = match HeadScanner::new().scan_request(buf, limits) {
        Ok(Scan::Complete(len)) => len,
        Ok(Scan::Partial) => return None,
        Err(e) => return Some(format!("error {}", e.status.0)),
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    Some(
        match parse_request_head(&buf[..len], limits, &mut storage[..]) {
            Ok(head) => format!("{head:?}"),
            Err(e) => format!("error {}", e.status.0),
        },
    )
}

fn fast(buf: &[u8], limits: &Limits) -> Option<String> {
    let mut storage = uninit_headers();
    parse_whole_request_head(buf, limits, &mut storage).map(|r| match r {
        Ok(head) => format!("{head:?}"),
        Err(e) => format!("error {}", e.status.0),
    })
}

const SEEDS: &[&[u8]] = &[
    b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET http://x.example/p HTTP/1.1\r\nHost: y\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
];

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..SEEDS.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..4),
    )
        .prop_map(|(seed, edits)| {
            let mut v = SEEDS[seed].to_vec();
            for (at, byte, kind) in edits {
                if v.is_empty() {
                    break;
                }
                let at = at % v.len();
                let byte = match byte % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => 0,
                    3 => b' ',
                    4 => b':',
                    _ => byte,
                };
                match kind {
                    0 => v[at] = byte,
                    1 => v.insert(at, byte),
                    2 => {
                        v.remove(at);
                    }
                    _ => v.truncate(at),
                }
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn fast_path_agrees_with_slow_path(buf in mutated()) {
        let limits = Limits::default();
        if let Some(f) = fast(&buf, &limits) {
            prop_assert_eq!(Some(f), slow(&buf, &limits));
        }
    }

    #[test]
    fn fast_path_agrees_under_tight_limits(buf in mutated()) {
        let limits = Limits { max_headers: 2, max_request_line: 20, max_head_bytes: 60, ..Limits::default() };
        if let Some(f) = fast(&buf, &limits) {
            prop_assert_eq!(Some(f), slow(&buf, &limits));
        }
    }
}

#[test]
fn fast_path_takes_the_common_case() {
    for seed in SEEDS {
        assert!(
            fast(seed, &Limits::default()).is_some(),
            "{:?}",
            String::from_utf8_lossy(seed)
        );
    }
    // Incomplete, bare LF, leading CRLF: left to the slow path.
    for buf in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(fast(buf, &Limits::default()).is_none());
    }
}
