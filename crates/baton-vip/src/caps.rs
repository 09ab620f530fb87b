//! The agent's effective capabilities, read from `/proc/self/status`, so a missing
//! `CAP_NET_ADMIN` or `CAP_NET_RAW` is reported when the agent starts instead of at the first
//! failover.

/// `CAP_NET_ADMIN`: add and remove addresses.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`: send on a raw packet socket.
pub const CAP_NET_RAW: u32 = 13;

/// The `CapEff` bit set from the text of `/proc/<pid>/status`; `None` when it is not there.
pub fn parse_effective(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let hex = line.strip_prefix("CapEff:")?.trim();
        u64::from_str_radix(hex, 16).ok()
    })
}

/// Whether `set` holds capability number `cap`.
pub fn has(set: u64, cap: u32) -> bool {
    cap < 64 && set & (1u64 << cap) != 0
}

/// This process's effective capabilities; `None` when they cannot be read (then nothing is
/// checked up front and the kernel's answer decides).
pub fn effective() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(parse_effective)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tpgbaton\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\n\
                      CapEff:\t0000000000003000\nCapBnd:\t000001ffffffffff\n";
        let set = parse_effective(status).expect("CapEff");
        assert!(has(set, CAP_NET_ADMIN));
        assert!(has(set, CAP_NET_RAW));
        assert!(!has(set, 0));
        let only_admin = parse_effective("CapEff:\t0000000000001000\n").expect("CapEff");
        assert!(has(only_admin, CAP_NET_ADMIN) && !has(only_admin, CAP_NET_RAW));
        assert_eq!(parse_effective("Name:\tx\n"), None);
        assert_eq!(parse_effective("CapEff:\tzz\n"), None);
        assert!(!has(u64::MAX, 64));
    }
}
