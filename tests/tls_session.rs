//! The sans-IO TLS session in memory, no sockets: a rustls client and a `TlsSession` with bytes
//! moved between them by hand, the way the engine moves them (rustls's own client/server
//! pairing style). Checks the contract the worker relies on.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection};
use sluice::control::certs;
use sluice::core::time::Instant;
use sluice::core::tls::{CertTableBuilder, Received, TlsSession, TlsSettings};
use support::tls::AnyCert;

fn pair() -> (ClientConnection, TlsSession, TlsSettings) {
    pair_with(certs::provider(), rustls::DEFAULT_VERSIONS)
}

/// A client with `provider`'s suites in its order and `versions`, and a server as in `pair`.
fn pair_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (ClientConnection, TlsSession, TlsSettings) {
    let settings = TlsSettings::new(
        certs::provider(),
        rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        rustls::server::ServerSessionMemoryCache::new(16),
        Duration::from_secs(10),
    )
    .unwrap();
    let mut table = CertTableBuilder::default();
    table.default_cert(certs::self_signed().unwrap().key);
    let config = settings.server_config(Arc::new(table.build()));
    let server = TlsSession::new(config, &settings, Instant::from_nanos(0)).unwrap();
    let client_config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let client =
        ClientConnection::new(Arc::new(client_config), "x.test".try_into().unwrap()).unwrap();
    (client, server, settings)
}

/// Client → server: everything the client has to say; returns the plaintext delivered.
fn to_server(client: &mut ClientConnection, server: &mut TlsSession) -> (Vec<u8>, Received) {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    let mut plain = Vec::new();
    let r = server
        .receive(&wire, &mut |p| plain.extend_from_slice(p))
        .unwrap();
    (plain, r)
}

/// Server → client, written `chunk` bytes at a time (short writes); returns the plaintext
/// buffers the server hands back, in order.
fn to_client(
    server: &mut TlsSession,
    client: &mut ClientConnection,
    chunk: usize,
) -> Vec<(Vec<u8>, usize)> {
    let mut returned = Vec::new();
    while let Some(out) = server.take_output() {
        let n = out.len().min(chunk);
        client.read_tls(&mut &out[..n]).unwrap();
        client.process_new_packets().unwrap();
        if let Some(back) = server.sent(out, n) {
            returned.push(back);
        }
    }
    returned
}

fn handshake(client: &mut ClientConnection, server: &mut TlsSession) {
    for _ in 0..4 {
        to_server(client, server);
        to_client(server, client, usize::MAX);
        if !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
    }
    panic!("handshake did not complete");
}

#[test]
fn handshake_then_plaintext_both_ways() {
    let (mut client, mut server, _settings) = pair();
    assert!(
        server.deadline().is_some(),
        "handshake deadline while handshaking"
    );
    assert!(!server.wants_plain(), "no plaintext before the handshake");
    handshake(&mut client, &mut server);
    assert_eq!(server.deadline(), None);
    assert_eq!(server.server_name(), Some("x.test"));
    assert_eq!(client.alpn_protocol(), None, "the client offered no ALPN");

    client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let (plain, r) = to_server(&mut client, &mut server);
    assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r, Received::Open);

    assert!(server.wants_plain());
    server.push_plain(b"HTTP/1.1 200 OK\r\n\r\n".to_vec());
    assert!(!server.wants_plain(), "one buffer at a time");
    let back = to_client(&mut server, &mut client, usize::MAX);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].1, 19);
    let mut got = vec![0u8; 19];
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    assert!(server.flushed());
}

#[test]
fn the_server_order_picks_aes_128_gcm_over_a_client_preferring_aes_256() {
    // rustls's stock aws-lc-rs provider lists AES-256-GCM first, as OpenSSL clients do.
    let stock = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    assert_eq!(
        stock.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    for (versions, expected) in [
        (
            &[&rustls::version::TLS13][..],
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &[&rustls::version::TLS12][..],
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let (mut client, mut server, _settings) = pair_with(stock.clone(), versions);
        handshake(&mut client, &mut server);
        let suite = client.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(expected), "{versions:?}");
    }
    // Every suite the provider has is still offered.
    assert_eq!(
        certs::provider().cipher_suites.len(),
        stock.cipher_suites.len()
    );
}

#[test]
fn the_plaintext_buffer_comes_back_only_after_all_its_ciphertext_is_written() {
    let (mut client, mut server, _settings) = pair();
    handshake(&mut client, &mut server);
    let body: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
    server.push_plain(body.clone());
    // Short writes of 1000 bytes: the buffer is handed back once, at the very end.
    let mut returned = Vec::new();
    let mut writes = 0;
    let mut got = Vec::new();
    while let Some(out) = server.take_output() {
        let n = out.len().min(1000);
        writes += 1;
        client.read_tls(&mut &out[..n]).unwrap();
        client.process_new_packets().unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(k) = client.reader().read(&mut buf) {
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        if let Some(back) = server.sent(out, n) {
            assert!(
                server.flushed(),
                "handed back only when nothing is left to write"
            );
            returned.push(back);
        }
    }
    assert!(writes > 50);
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0].1, body.len());
    assert_eq!(got, body);
}

#[test]
fn more_than_rustls_takes_at_once_is_a_short_write() {
    let (mut client, mut server, _settings) = pair();
    handshake(&mut client, &mut server);
    let big = vec![7u8; 200_000];
    server.push_plain(big.clone());
    // The client reads nothing here: its plaintext limit is not what is tested.
    let mut back = Vec::new();
    while let Some(out) = server.take_output() {
        let n = out.len();
        if let Some(b) = server.sent(out, n) {
            back.push(b);
        }
    }
    assert_eq!(back.len(), 1);
    let (buf, written) = &back[0];
    assert_eq!(buf.len(), big.len());
    assert!(
        *written > 0 && *written < big.len(),
        "short count {written}"
    );
}

#[test]
fn close_notify_from_the_client_ends_the_stream_and_garbage_is_an_error() {
    let (mut client, mut server, _settings) = pair();
    handshake(&mut client, &mut server);
    client.send_close_notify();
    let (_, r) = to_server(&mut client, &mut server);
    assert_eq!(r, Received::Closed);

    let (_, mut server, _settings) = pair();
    let err = server
        .receive(b"GET / HTTP/1.1\r\n\r\n", &mut |_| panic!("no plaintext"))
        .unwrap_err();
    assert!(!err.0.is_empty());
    // The alert rustls wants to send is there to be written before closing.
    assert!(server.take_output().is_some_and(|o| o[0] == 0x15));
}

#[test]
fn cert_table_host_rules_match_routing() {
    let key = |_: &str| certs::self_signed().unwrap().key;
    let (exact, wild, default) = (key("exact"), key("wild"), key("default"));
    let mut b = CertTableBuilder::default();
    assert!(b.add("A.example.com", Some(exact.clone()), false));
    assert!(b.add("*.example.com", Some(wild.clone()), true));
    // A host listed without a certificate of its own (force-ssl-redirect, bad Secret).
    assert!(b.add("nocert.example.com", None, true));
    // The first certificate for a host wins.
    assert!(!b.add("a.example.com", Some(wild.clone()), true));
    b.default_cert(default.clone());
    let t = b.build();
    let pick = |sni: Option<&str>| t.select(sni).unwrap();
    assert!(
        Arc::ptr_eq(&pick(Some("a.example.com")), &exact),
        "exact beats wildcard"
    );
    assert!(
        Arc::ptr_eq(&pick(Some("a.EXAMPLE.com.")), &exact),
        "case, trailing dot"
    );
    assert!(Arc::ptr_eq(&pick(Some("b.example.com")), &wild));
    assert!(
        Arc::ptr_eq(&pick(Some("nocert.example.com")), &wild),
        "no own certificate: the wildcard's, before the default"
    );
    assert!(
        Arc::ptr_eq(&pick(Some("x.y.example.com")), &default),
        "one label only"
    );
    assert!(Arc::ptr_eq(&pick(Some("example.com")), &default));
    assert!(Arc::ptr_eq(&pick(None), &default));
    // Redirects: the exact entry decides, as in routing; redirect flags are or-ed.
    assert!(t.redirects("a.example.com"), "or-ed by the second add");
    assert!(t.redirects("b.example.com:80"));
    assert!(t.redirects("nocert.example.com"));
    assert!(!t.redirects("other.test"));
}
