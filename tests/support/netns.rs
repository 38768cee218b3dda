//! Test helper: a network namespace made by the test, with a TAP or a veth pair in it, and
//! the calling thread moved into it. Dropping it removes the devices and the namespace and
//! moves the thread back, also when the test fails.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice::engine::sys::{NetnsReturn, enter_netns};

/// What link the namespace gets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// A multi-queue TAP `sl0`; the kernel has KERNEL_IP on it.
    Tap,
    /// A veth pair `k0` (kernel, KERNEL_IP) and `s0` (no address: Sluice's AF_PACKET side).
    Veth,
}

/// Kernel side of the link in the namespace (client and upstream pods live here).
pub const KERNEL_IP: [u8; 4] = [10, 99, 0, 1];
/// The kernel side's IPv6 address on the TAP (no duplicate address detection).
pub const KERNEL_IP6: &str = "fd99::1/64";
/// Sluice's own address, owned by its userspace stack.
pub const SLUICE_IP: [u8; 4] = [10, 99, 0, 2];

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e} (is iproute2 installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with a link Sluice's stack owns one end of. Dropping it deletes the
/// devices and the namespace and moves the thread back to where it was.
pub struct NetNs {
    pub name: String,
    devices: Vec<String>,
    back: NetnsReturn,
}

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

impl NetNs {
    pub fn new(link: Link) -> NetNs {
        let name = format!(
            "sluice-test-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]).expect("create a network namespace (needs root)");
        let mut ns = NetNs {
            name: name.clone(),
            devices: Vec::new(),
            back: NetnsReturn::current().expect("current namespace"),
        };
        let n = name.as_str();
        let kernel = format!(
            "{}.{}.{}.{}/24",
            KERNEL_IP[0], KERNEL_IP[1], KERNEL_IP[2], KERNEL_IP[3]
        );
        ip(&["-n", n, "link", "set", "lo", "up"]).unwrap();
        match link {
            Link::Tap => {
                ip(&[
                    "-n",
                    n,
                    "tuntap",
                    "add",
                    "dev",
                    "sl0",
                    "mode",
                    "tap",
                    "multi_queue",
                ])
                .unwrap();
                ns.devices.push("sl0".into());
                ip(&["-n", n, "addr", "add", &kernel, "dev", "sl0"]).unwrap();
                ip(&["-n", n, "addr", "add", KERNEL_IP6, "dev", "sl0", "nodad"]).unwrap();
                ip(&["-n", n, "link", "set", "sl0", "up"]).unwrap();
            }
            Link::Veth => {
                // veth pair, both ends here: the kernel owns k0, Sluice's stack owns s0's wire.
                ip(&[
                    "-n", n, "link", "add", "k0", "type", "veth", "peer", "name", "s0",
                ])
                .unwrap();
                ns.devices.push("k0".into());
                ip(&["-n", n, "addr", "add", &kernel, "dev", "k0"]).unwrap();
                ip(&["-n", n, "link", "set", "k0", "up"]).unwrap();
                ip(&["-n", n, "link", "set", "s0", "up"]).unwrap();
            }
        }
        enter_netns(std::path::Path::new(&format!("/run/netns/{name}"))).expect("enter netns");
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.back.restore();
        for dev in &self.devices {
            let _ = ip(&["-n", &self.name, "link", "del", dev]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
