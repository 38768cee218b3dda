//! Head parsing of a typical ~500-byte browser request: scan for the end of the head, parse and
//! validate it, and re-emit it for the upstream (the whole per-request head cost).

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::core::http1::Limits;
use sluice::core::http1::forward::{ForwardInfo, write_upstream_request};
use sluice::core::http1::request::{
    parse_request_head_uninit, parse_whole_request_head, uninit_headers,
};
use sluice::core::http1::scan::{HeadScanner, Scan};

const BROWSER_REQUEST: &[u8] = b"GET /static/js/app.3f9a1c.js?v=2 HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://shop.example.com/products/42\r\n\
Connection: keep-alive\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; consent=1\r\n\
Sec-Fetch-Dest: script\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Site: same-origin\r\n\
If-None-Match: \"5d8c72a5edda8d6a\"\r\n\
Priority: u=1\r\n\r\n";

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("head");
    group.throughput(Throughput::Bytes(BROWSER_REQUEST.len() as u64));
    // What the connection machine does when a head arrives whole (the common case).
    group.bench_function("whole-head", |b| {
        b.iter(|| {
            let mut storage = uninit_headers();
            let head = parse_whole_request_head(black_box(BROWSER_REQUEST), &limits, &mut storage)
                .expect("fast path must take a whole head")
                .expect("benchmark request must parse");
            black_box(head.framing);
        })
    });
    // What it does when the head arrives in pieces: incremental scan, then parse.
    group.bench_function("scan+parse", |b| {
        b.iter(|| {
            let mut scanner = HeadScanner::new();
            let Ok(Scan::Complete(len)) = scanner.scan_request(black_box(BROWSER_REQUEST), &limits)
            else {
                panic!("benchmark request must scan")
            };
            let mut storage = uninit_headers();
            let head = parse_request_head_uninit(&BROWSER_REQUEST[..len], &limits, &mut storage)
                .expect("benchmark request must parse");
            black_box(head.framing);
        })
    });
    // Baseline: httparse alone, no validation (what the rest costs on top of it).
    group.bench_function("httparse-only", |b| {
        b.iter(|| {
            let mut storage = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut storage);
            black_box(req.parse(black_box(BROWSER_REQUEST)).is_ok());
        })
    });
    group.bench_function("scan-only", |b| {
        b.iter(|| {
            let mut scanner = HeadScanner::new();
            black_box(
                scanner
                    .scan_request(black_box(BROWSER_REQUEST), &limits)
                    .is_ok(),
            );
        })
    });
    let info = ForwardInfo {
        client_ip: Ipv4Addr::new(192, 0, 2, 10).into(),
        proto: "http",
        port: 80,
        tunnel: false,
        request_id: "",
    };
    let mut out = Vec::with_capacity(1024);
    group.bench_function("whole-head+emit", |b| {
        b.iter(|| {
            let mut storage = uninit_headers();
            let head = parse_whole_request_head(black_box(BROWSER_REQUEST), &limits, &mut storage)
                .expect("fast path must take a whole head")
                .expect("benchmark request must parse");
            out.clear();
            write_upstream_request(&head, &info, &mut out);
            black_box(out.len());
        })
    });
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
