//! Arbitrary bytes as an upstream response head: never a panic, and re-emission towards a
//! client of either version works for whatever parses. Seeds: `tests/fuzz/seeds/response_head/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::http1::response::{ClientSide, RequestContext, parse_response_head, write_client_response};
use sluice::core::http1::scan::{HeadScanner, Scan};
use sluice::core::http1::{Limits, MAX_HEADERS_CAP, Version};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut scanner = HeadScanner::new();
    let Ok(Scan::Complete(len)) = scanner.scan_response(data, &limits) else {
        return;
    };
    let flags = data.last().copied().unwrap_or(0);
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let ctx = RequestContext {
        head_request: flags & 1 != 0,
        upgrade_requested: flags & 2 != 0,
    };
    if let Ok(resp) = parse_response_head(&data[..len], &limits, &mut storage[..limits.max_headers], ctx) {
        let client = ClientSide {
            version: if flags & 4 != 0 { Version::Http10 } else { Version::Http11 },
            keep_alive: flags & 8 != 0,
            head_request: ctx.head_request,
            server: (flags & 16 != 0).then_some("sluice"),
        };
        let mut out = Vec::new();
        write_client_response(&resp, &client, &mut out);
        assert!(out.ends_with(b"\r\n\r\n"));
        // A 101 always names its protocol.
        assert_eq!(resp.status == 101, resp.upgrade.is_some());
    }
});
