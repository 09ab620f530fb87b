//! Who holds an address on the segment: send an ARP probe and collect the hardware addresses
//! that answer. For tests and diagnostics (a duplicate floating IP shows as two owners); the
//! agent itself does not use it. Blocking: call it from a plain thread or `spawn_blocking`.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::arp::{self, FRAME_LEN};

/// Sends one ARP probe for `target` out of `interface` and returns the distinct hardware
/// addresses that answered within `wait`, in the order they answered. Needs `CAP_NET_RAW`.
pub fn arp_owners(interface: &str, target: Ipv4Addr, wait: Duration) -> io::Result<Vec<[u8; 6]>> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == interface)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface named {interface:?}"),
            )
        })?;
    let mac = iface
        .mac
        .map(|m| m.octets())
        .ok_or_else(|| io::Error::other(format!("{interface:?} has no hardware address")))?;
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(20)),
        write_timeout: Some(Duration::from_secs(1)),
        promiscuous: false,
        ..pnet_datalink::Config::default()
    };
    let (mut tx, mut rx) = match pnet_datalink::channel(&iface, config)? {
        pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
        _ => return Err(io::Error::other("unexpected packet channel type")),
    };
    let frame: [u8; FRAME_LEN] = arp::probe(mac, target);
    tx.send_to(&frame, None)
        .unwrap_or_else(|| Err(io::Error::other("frame larger than the send buffer")))?;
    let end = Instant::now() + wait;
    let mut owners: Vec<[u8; 6]> = Vec::new();
    while Instant::now() < end {
        let frame = match rx.next() {
            Ok(frame) => frame,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(p) = arp::parse(frame)
            && p.op == 2
            && p.sender_ip == target
            && p.sender_mac != mac
            && !owners.contains(&p.sender_mac)
        {
            owners.push(p.sender_mac);
        }
    }
    Ok(owners)
}
