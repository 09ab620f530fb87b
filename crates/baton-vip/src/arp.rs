//! Gratuitous ARP frames, built by hand: 14 bytes of Ethernet header and 28 of ARP (RFC 826),
//! as `arping -U` (request) and `arping -A` (reply) send them. Both carry the floating address
//! as sender *and* target protocol address, so every host and switch on the segment updates its
//! cache to our hardware address (RFC 5227 §3 "ARP Announcement").

use std::net::Ipv4Addr;

/// Length of an Ethernet frame holding an ARP packet, without padding or FCS.
pub const FRAME_LEN: usize = 42;

const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const HTYPE_ETHERNET: [u8; 2] = [0x00, 0x01];
const PTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Which of the two gratuitous forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    /// An ARP request for our own address (`arping -U`): target hardware address zero.
    Request,
    /// An unsolicited ARP reply (`arping -A`): target hardware address our own.
    Reply,
}

/// The frame announcing that `ip` lives at `mac`, broadcast to the segment.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr, op: ArpOp) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    // Ethernet: destination, source, EtherType.
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP);
    // ARP: hardware type, protocol type, lengths, operation.
    f[14..16].copy_from_slice(&HTYPE_ETHERNET);
    f[16..18].copy_from_slice(&PTYPE_IPV4);
    f[18] = 6;
    f[19] = 4;
    let (oper, target_mac) = match op {
        ArpOp::Request => (1u16, [0u8; 6]),
        ArpOp::Reply => (2u16, mac),
    };
    f[20..22].copy_from_slice(&oper.to_be_bytes());
    // Sender hardware and protocol address, target hardware and protocol address.
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An ARP probe (RFC 5227 §2.1.1) asking who has `target`: sender protocol address 0.0.0.0, so
/// no cache on the segment learns anything from it. Every host holding `target` answers.
pub fn probe(mac: [u8; 6], target: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = gratuitous_arp(mac, target, ArpOp::Request);
    f[28..32].copy_from_slice(&[0; 4]);
    f
}

/// The fields of an Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

/// Reads an Ethernet frame as Ethernet/IPv4 ARP; `None` for anything else.
pub fn parse(frame: &[u8]) -> Option<ArpPacket> {
    if frame.len() < FRAME_LEN
        || frame[12..14] != ETHERTYPE_ARP
        || frame[14..16] != HTYPE_ETHERNET
        || frame[16..18] != PTYPE_IPV4
        || frame[18] != 6
        || frame[19] != 4
    {
        return None;
    }
    let mac = |at: usize| -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&frame[at..at + 6]);
        m
    };
    let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    Some(ArpPacket {
        op: u16::from_be_bytes([frame[20], frame[21]]),
        sender_mac: mac(22),
        sender_ip: ip(28),
        target_mac: mac(32),
        target_ip: ip(38),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn request_frame_is_byte_exact() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(10, 0, 0, 100), ArpOp::Request);
        assert_eq!(
            hex(&f),
            // dst broadcast | src | 0806 | htype 1 | ptype 0800 | 6 | 4 | op 1 |
            // sha | spa 10.0.0.100 | tha 0 | tpa 10.0.0.100
            "ff ff ff ff ff ff 02 42 ac 11 00 02 08 06 00 01 08 00 06 04 00 01 \
             02 42 ac 11 00 02 0a 00 00 64 00 00 00 00 00 00 0a 00 00 64"
        );
    }

    #[test]
    fn reply_frame_carries_our_mac_as_target() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(192, 168, 7, 1), ArpOp::Reply);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(&f[32..38], &MAC);
        assert_eq!(&f[28..32], &[192, 168, 7, 1]);
        assert_eq!(&f[38..42], &[192, 168, 7, 1]);
        assert_eq!(&f[0..6], &[0xff; 6]);
    }

    #[test]
    fn probes_and_parsing() {
        let target = Ipv4Addr::new(10, 0, 0, 100);
        let p = probe(MAC, target);
        let parsed = parse(&p).expect("an ARP frame");
        assert_eq!(
            parsed,
            ArpPacket {
                op: 1,
                sender_mac: MAC,
                sender_ip: Ipv4Addr::UNSPECIFIED,
                target_mac: [0; 6],
                target_ip: target,
            }
        );
        let reply = parse(&gratuitous_arp(MAC, target, ArpOp::Reply)).expect("an ARP frame");
        assert_eq!(
            (reply.op, reply.sender_ip, reply.target_mac),
            (2, target, MAC)
        );
        // Padding to the Ethernet minimum is fine; other EtherTypes and short frames are not.
        let mut padded = p.to_vec();
        padded.resize(60, 0);
        assert!(parse(&padded).is_some());
        let mut ipv4 = p;
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(parse(&ipv4), None);
        assert_eq!(parse(&p[..41]), None);
    }
}
