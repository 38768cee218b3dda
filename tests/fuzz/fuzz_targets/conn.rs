//! The connection machine under an arbitrary script of events: client bytes, upstream bytes,
//! connects, failures, partial writes and time. It must never panic and must always stay
//! within its buffers.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice::core::conn::{ClientInfo, Conn, ConnConfig};
use sluice::core::route::{BackendId, RouteDecision, Router};
use sluice::core::time::Instant;

struct AnyRouter(u8);

impl Router for AnyRouter {
    fn route(&mut self, _host: &str, path: &str) -> RouteDecision {
        self.0 = self.0.wrapping_add(path.len() as u8);
        match self.0 % 5 {
            0 => RouteDecision::NotFound,
            1 => RouteDecision::NoEndpoints,
            _ => RouteDecision::Forward {
                backend: BackendId(0),
                endpoint: "127.0.0.1:9".parse().unwrap(),
                policy: None,
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let config = ConnConfig {
        buffer_size: 512,
        ..ConnConfig::default()
    };
    let info = ClientInfo {
        peer: "127.0.0.2:4000".parse().unwrap(),
        local: "127.0.0.1:80".parse().unwrap(),
    };
    let mut now = Instant::from_millis(1);
    let mut conn = Conn::new(info, Arc::new(config), now);
    let mut router = AnyRouter(0);
    let mut i = 0;
    while i < data.len() && !conn.is_closed() {
        let op = data[i];
        let len = (data.get(i + 1).copied().unwrap_or(0) as usize).min(data.len() - i);
        let payload = &data[i..i + len];
        i += 2 + len;
        match op % 10 {
            0 | 1 if conn.wants_client_read() => conn.client_data(payload, now, &mut router),
            2 if conn.wants_upstream_read() => conn.upstream_data(payload, now, &mut router),
            3 => conn.upstream_connected(now, op & 0x80 != 0, &mut router),
            4 => conn.upstream_connect_failed(now, &mut router),
            5 => conn.upstream_eof(now, &mut router),
            6 => conn.client_eof(now, &mut router),
            7 => {
                now = now + Duration::from_millis(len as u64 * 500);
                conn.timer(now, &mut router);
            }
            8 => {
                if let Some(buf) = conn.take_client_output() {
                    let n = buf.len().min(len * 7);
                    conn.client_sent(buf, n, now, &mut router);
                }
                if let Some(buf) = conn.take_upstream_output() {
                    let n = buf.len().min(len * 7);
                    conn.upstream_sent(buf, n, now, &mut router);
                }
            }
            _ => conn.begin_shutdown(now),
        }
        while conn.poll_action().is_some() {}
    }
});
