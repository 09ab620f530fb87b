//! `NetlinkVip` against a real kernel, in a throwaway network namespace with a veth pair
//! (`vip0` ↔ `vip0p`). The namespace and links are set up with `ip` (tests may; the product
//! uses netlink). Skipped, with a note, when not root or when namespaces cannot be made.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_vip::{NetlinkVip, Vip, VipAddress, VipError};

struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root to create a network namespace");
            return None;
        }
        let name = format!("pgbaton-vip-{}", std::process::id());
        if !ip(&["netns", "add", &name]) {
            eprintln!("skipping: `ip netns add` failed");
            return None;
        }
        let ns = Netns(name);
        let setup = [
            vec![
                "link", "add", "vip0", "type", "veth", "peer", "name", "vip0p",
            ],
            vec!["link", "set", "vip0", "up"],
            vec!["link", "set", "vip0p", "up"],
            vec!["link", "set", "lo", "up"],
        ];
        for args in setup {
            if !ns.ip(&args) {
                eprintln!("skipping: `ip -n {} {}` failed", ns.0, args.join(" "));
                return None;
            }
        }
        Some(ns)
    }

    fn ip(&self, args: &[&str]) -> bool {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn addresses(&self, dev: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0, "-4", "-o", "addr", "show", "dev", dev])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered the namespace, with its own tokio runtime (the
    /// netlink and packet sockets are created in the namespace of the thread that opens them).
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f());
        })
        .join()
        .expect("test thread panicked");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Gratuitous ARP frames for `ip` seen on `dev` within `within`.
fn capture_arp(dev: &str, ip: Ipv4Addr, within: Duration) -> Vec<Vec<u8>> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == dev)
        .expect("capture interface");
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(100)),
        promiscuous: false,
        ..pnet_datalink::Config::default()
    };
    let pnet_datalink::Channel::Ethernet(_tx, mut rx) =
        pnet_datalink::channel(&iface, config).expect("capture channel")
    else {
        panic!("unexpected channel type");
    };
    let mut frames = Vec::new();
    let end = Instant::now() + within;
    while Instant::now() < end && frames.len() < 2 {
        if let Ok(frame) = rx.next()
            && frame.len() >= 42
            && frame[12..14] == [0x08, 0x06]
            && frame[28..32] == ip.octets()
        {
            frames.push(frame.to_vec());
        }
    }
    frames
}

/// Who answers for `ip`, asked from `vip0p` (this thread is in the namespace already).
fn probe_from_peer(ip: Ipv4Addr) -> Vec<[u8; 6]> {
    baton_vip::probe::arp_owners("vip0p", ip, Duration::from_millis(300)).expect("probe")
}

#[test]
fn netlink_vip_in_a_namespace() {
    let Some(ns) = Netns::create() else { return };
    let addr: VipAddress = "10.99.0.100/24".parse().expect("address");
    let ns_name = ns.0.clone();

    ns.run(move || async move {
        // Unknown interface: a clear error at construction.
        match NetlinkVip::new(addr, "nope0", true).await {
            Err(VipError::UnknownInterface(name)) => assert_eq!(name, "nope0"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("an unknown interface was accepted"),
        }

        let vip = NetlinkVip::new(addr, "vip0", true).await.expect("new");
        assert!(!vip.is_present().await.expect("present"));
        vip.add().await.expect("add");
        assert!(vip.is_present().await.expect("present"));
        vip.add().await.expect("adding twice is fine");

        // The announcement reaches the other end of the veth pair.
        let capture = std::thread::spawn(move || {
            let file = std::fs::File::open(format!("/run/netns/{ns_name}")).expect("ns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            capture_arp(
                "vip0p",
                Ipv4Addr::new(10, 99, 0, 100),
                Duration::from_secs(5),
            )
        });
        // Give the capture socket time to open before sending (resend until it sees them).
        let mut frames = Vec::new();
        for _ in 0..20 {
            vip.announce().await.expect("announce");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if capture.is_finished() {
                frames = capture.join().expect("capture thread");
                break;
            }
        }
        assert_eq!(frames.len(), 2, "saw {frames:?}");
        let ops: Vec<u8> = frames.iter().map(|f| f[21]).collect();
        assert!(ops.contains(&1) && ops.contains(&2), "{ops:?}");
        for f in &frames {
            assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
            assert_eq!(&f[38..42], &[10, 99, 0, 100], "target = sender");
        }

        // A probe from the other end finds exactly one owner: vip0.
        let vip0_mac = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == "vip0")
            .and_then(|i| i.mac)
            .expect("vip0 mac")
            .octets();
        let owners = probe_from_peer(Ipv4Addr::new(10, 99, 0, 100));
        assert_eq!(owners, vec![vip0_mac]);

        vip.remove().await.expect("remove");
        assert!(!vip.is_present().await.expect("present"));
        vip.remove().await.expect("removing twice is fine");
        assert!(probe_from_peer(Ipv4Addr::new(10, 99, 0, 100)).is_empty());
    });
    assert!(!ns.addresses("vip0").contains("10.99.0.100"));

    // An address added by hand, with another prefix length, is seen and removed.
    assert!(ns.ip(&["addr", "add", "10.99.0.100/32", "dev", "vip0"]));
    ns.run(move || async move {
        let vip = NetlinkVip::new(addr, "vip0", true).await.expect("new");
        assert!(vip.is_present().await.expect("present"));
        vip.remove().await.expect("remove");
        assert!(!vip.is_present().await.expect("present"));
        vip.add().await.expect("add");
    });
    let shown = ns.addresses("vip0");
    assert!(shown.contains("10.99.0.100/24"), "{shown}");
    // The host's own address in the same subnet (added first, so it is the primary one and
    // the floating IP a secondary) survives the removal.
    ns.run(move || async move {
        let vip = NetlinkVip::new(addr, "vip0", true).await.expect("new");
        vip.remove().await.expect("remove");
    });
    assert!(ns.ip(&["addr", "add", "10.99.0.5/24", "dev", "vip0"]));
    ns.run(move || async move {
        let vip = NetlinkVip::new(addr, "vip0", true).await.expect("new");
        vip.add().await.expect("add");
        vip.remove().await.expect("remove");
    });
    let shown = ns.addresses("vip0");
    assert!(
        shown.contains("10.99.0.5/24") && !shown.contains("10.99.0.100"),
        "{shown}"
    );
}

#[test]
fn ipv6_is_refused_clearly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr: VipAddress = "fd00::5/64".parse().expect("address");
    let err = rt
        .block_on(NetlinkVip::new(addr, "lo", true))
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "fd00::5/64: only IPv4 floating addresses are supported"
    );
}
