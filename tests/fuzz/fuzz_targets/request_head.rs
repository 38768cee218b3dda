//! Arbitrary bytes as a request head: scanning and parsing must never panic, and a head that
//! parses must re-emit upstream without panicking and without HTTP2-Settings (h2c is never
//! relayed). Seeds: `tests/fuzz/seeds/request_head/` (see `tests/fuzz/README.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::http1::forward::{ForwardInfo, write_upstream_request};
use sluice::core::http1::scan::{HeadScanner, Scan};
use sluice::core::http1::{Limits, MAX_HEADERS_CAP, Upgrades, parse_request_head};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut scanner = HeadScanner::new();
    // Feed in two pieces to exercise the incremental path.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    if let Ok(Scan::Partial) = scanner.scan_request(&data[..split], &limits) {
        let _ = scanner.scan_request(data, &limits);
    }
    let mut scanner = HeadScanner::new();
    if let Ok(Scan::Complete(len)) = scanner.scan_request(data, &limits) {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        if let Ok(head) = parse_request_head(&data[..len], &limits, &mut storage[..limits.max_headers]) {
            let mut out = Vec::new();
            let info = ForwardInfo {
                client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                proto: "http",
                port: 80,
                tunnel: head.upgrade.is_some_and(|proto| Upgrades::default().allows(proto)),
                request_id: "",
            };
            write_upstream_request(&head, &info, &mut out);
            assert!(out.ends_with(b"\r\n\r\n"));
            // Only an allowed upgrade goes upstream (h2c never), and HTTP2-Settings never does.
            let lower = out.to_ascii_lowercase();
            let has_field = |name: &[u8]| lower.windows(name.len()).any(|w| w == name);
            assert_eq!(has_field(b"\r\nupgrade:"), info.tunnel);
            assert!(!has_field(b"\r\nhttp2-settings:"));
        }
    }
});
