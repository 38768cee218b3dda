//! `sluice run --engine userspace` as a user runs it: the binary in a network namespace made
//! by the test, owning its address on a multi-queue TAP through smoltcp, with real curl on
//! the kernel side of the TAP, and a route change in the watched directory reaching its
//! workers; and the `[userspace]` config keys, their errors and defaults.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice::config::{Config, EngineKind};
use sluice::demo::spawn_upstream;
use sluice::engine::userspace::{DeviceKind, PollMode};

mod support;
use support::netns::{KERNEL_IP, Link, NetNs};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn manifests(upstream: SocketAddr) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        upstream.port(),
        upstream.ip()
    )
}

/// Kills the child if the test fails before it is stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sluice_run_with_the_userspace_engine_serves_curl_through_a_tap() {
    let ns = NetNs::new(Link::Tap);
    let up = spawn_upstream("A", SocketAddr::from((KERNEL_IP, 0))).unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-us-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.yaml"), manifests(up.addr)).unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        "engine = \"uring\"\n[userspace]\ninterface = \"sl0\"\naddresses = [\"10.99.0.2/24\"]\nmac = \"02:00:00:00:99:02\"\n",
    )
    .unwrap();
    // The binary inherits this thread's namespace; --engine overrides the file's engine.
    let mut child = Command::new(BIN)
        .args(["run", "--engine", "userspace", "--workers", "2", "--config"])
        .arg(&config)
        .arg("--manifests")
        .arg(&dir)
        .args(["--http", "0.0.0.0:80", "--admin", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Running(child);
    let mut lines = BufReader::new(stderr).lines();
    let served = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some(rest) = line.split_once("serving http on ").map(|(_, rest)| rest) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert_eq!(served, "10.99.0.2:80");
    std::thread::spawn(move || for _ in lines {});
    for i in 0..5 {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "curl", "-sS", "--max-time", "10"])
            .args(["-H", "Host: app.test"])
            .arg(format!("http://10.99.0.2/curl/{i}"))
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("A GET /curl/{i} body=0\n")
        );
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "curl", "-s", "-o", "/dev/null"])
        .args([
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "-H",
            "Host: nowhere",
        ])
        .arg("http://10.99.0.2/")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    // A route change in the watched directory reaches the userspace workers (no reload).
    let b = spawn_upstream("B", SocketAddr::from((KERNEL_IP, 0))).unwrap();
    let tmp = dir.join(".app.yaml.tmp");
    std::fs::write(&tmp, manifests(b.addr)).unwrap();
    std::fs::rename(&tmp, dir.join("app.yaml")).unwrap();
    let mut seen_b = false;
    for _ in 0..100 {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "curl", "-sS", "--max-time", "10"])
            .args(["-H", "Host: app.test", "http://10.99.0.2/after"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).starts_with("B GET /after") {
            seen_b = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen_b,
        "the changed route never reached the userspace workers"
    );
    // SIGTERM drains and exits 0.
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let mut child = child;
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(status.expect("sluice stops on SIGTERM").success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_device_is_a_clear_error_not_a_panic() {
    let _ns = NetNs::new(Link::Veth);
    let config = std::env::temp_dir().join(format!("sluice-us-nodev-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "engine = \"userspace\"\n[userspace]\ndevice = \"af_packet\"\ninterface = \"nope0\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--workers", "1", "--config"])
        .arg(&config)
        .args(["--http", "0.0.0.0:80", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no interface named \"nope0\""), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "t.toml").map_err(|e| e.to_string())
}

#[test]
fn userspace_keys_parse() {
    let c = parse(
        "engine = \"userspace\"\n[userspace]\ndevice = \"af_packet\"\ninterface = \"eth1\"\n\
         addresses = [\"192.0.2.10/24\", \"2001:db8::10/64\"]\nmac = \"02:aa:bb:cc:dd:ee\"\n\
         gateway = \"192.0.2.1\"\ngateway6 = \"2001:db8::1\"\nmtu = 9000\npoll = \"busy\"\n\
         tcp_buffer = \"16k\"\nbacklog = 128\nfanout_group = 7\n",
    )
    .unwrap();
    assert_eq!(c.engine, EngineKind::Userspace);
    let u = &c.userspace;
    assert_eq!(u.device, DeviceKind::AfPacket);
    assert_eq!(u.interface, "eth1");
    assert_eq!(u.addresses.len(), 2);
    assert_eq!(u.mac, [2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    assert_eq!(u.gateway, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(u.gateway6, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(
        (u.mtu, u.poll, u.tcp_buffer, u.backlog, u.fanout_group),
        (9000, PollMode::Busy, 16384, 128, 7)
    );
}

#[test]
fn bad_userspace_keys_name_the_field_and_the_line() {
    let cases = [
        (
            "engine = \"dpdk\"\n",
            "t.toml:1:10: engine: unknown engine \"dpdk\"",
        ),
        (
            "[userspace]\ndevice = \"xdp\"\n",
            "t.toml:2:10: userspace.device: unknown device",
        ),
        (
            "[userspace]\naddresses = [\"10.0.0.1\"]\n",
            "t.toml:2:13: userspace.addresses: expected an address with prefix",
        ),
        (
            "[userspace]\naddresses = [\"10.0.0.1/24\", \"10.0.0.2/24\"]\n",
            "userspace.addresses: two addresses must be one IPv4 and one IPv6",
        ),
        (
            "[userspace]\naddresses = []\n",
            "userspace.addresses: one or two addresses",
        ),
        (
            "[userspace]\nmac = \"01:00:00:00:00:01\"\n",
            "t.toml:2:7: userspace.mac: \"01:00:00:00:00:01\" is a multicast MAC address",
        ),
        (
            "[userspace]\ngateway = \"fd00::1\"\n",
            "userspace.gateway: must be an IPv4 address",
        ),
        (
            "[userspace]\nmtu = 100\n",
            "userspace.mtu: must be between 576 and 9000 (got 100)",
        ),
        (
            "[userspace]\npoll = \"spin\"\n",
            "userspace.poll: unknown poll mode",
        ),
        (
            "[userspace]\nbacklog = 0\n",
            "userspace.backlog: must be between 1 and 4096",
        ),
        (
            "[userspace]\ninterface = \"a-very-long-interface-name\"\n",
            "userspace.interface: not an interface name",
        ),
        ("[userspace]\nqueues = 4\n", "unknown field `queues`"),
    ];
    for (text, want) in cases {
        let err = parse(text).expect_err(text);
        assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
    }
}
