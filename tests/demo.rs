//! `sluice demo` as a newcomer meets it: `/` answers with the guide (HTML for a browser, text
//! for curl) listing the routes and the commands, through Sluice itself; the demo's routes and
//! its 404 still work beside it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Demo {
    child: Child,
    http: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sluice demo` on free ports. A port found free can be taken by another socket
/// before the demo binds it; the demo then exits at once, and it is started again on other
/// ports (a few times, then the test fails with what the demo said).
fn start_demo() -> Demo {
    let mut said = Vec::new();
    for _ in 0..5 {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(BIN)
            .args(["demo", "--workers", "1", "--http", &http.to_string()])
            .args(["--https", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let serving = lines.by_ref().map_while(Result::ok).find_map(|line| {
            if line.contains("serving http on ") {
                Some(())
            } else {
                said.push(line);
                None
            }
        });
        if serving.is_some() {
            std::thread::spawn(move || for _ in lines {});
            return Demo { child, http };
        }
        let _ = child.wait();
    }
    panic!("sluice demo exited early five times:\n{}", said.join("\n"));
}

/// One request with `Connection: close`; returns (status line, headers, body).
fn get(addr: SocketAddr, host: &str, path: &str, accept: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").expect("a complete head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

#[test]
fn root_answers_with_the_guide_text_for_curl_and_html_for_browsers() {
    let demo = start_demo();
    let host = demo.http.to_string();

    let (status, headers, body) = get(demo.http, &host, "/", "*/*");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/plain"), "{headers}");
    assert!(body.contains("Routes:"), "{body}");
    assert!(body.contains("demo.local"), "{body}");
    assert!(body.contains("*.apps.local"), "{body}");
    assert!(
        body.contains(&format!(
            "curl -H 'Host: demo.local' http://{host}/api/users"
        )),
        "{body}"
    );

    let (status, headers, body) = get(
        demo.http,
        "localhost",
        "/",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(body.starts_with("<!doctype html>"), "{body}");
    assert!(body.contains("<h2>Routes</h2>"), "{body}");
    assert!(body.contains("Host: x.apps.local"), "{body}");
    assert!(!body.contains("<script"), "{body}");
}

#[test]
fn demo_routes_and_the_404_still_work_beside_the_guide() {
    let demo = start_demo();
    let (status, headers, body) = get(demo.http, "demo.local", "/", "*/*");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("x-upstream: pod-a"), "{headers}");
    assert!(body.starts_with("pod-a GET /"), "{body}");

    let (_, headers, _) = get(demo.http, "demo.local", "/api/users", "*/*");
    assert!(headers.contains("x-upstream: pod-b"), "{headers}");

    // The guide is on exactly `/` for hosts without rules: anything else is Sluice's 404.
    let (status, _, _) = get(demo.http, "nowhere", "/nothing-here", "*/*");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
}
