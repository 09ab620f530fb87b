//! The floating IP's port: [`Vip`], the address it manages and the no-op [`NoVip`].

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use crate::BoxError;

/// One floating address: an IP and its prefix length (`10.0.0.100/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipAddress {
    ip: IpAddr,
    prefix_len: u8,
}

impl VipAddress {
    /// Checks that the prefix length fits the address family.
    pub fn new(ip: IpAddr, prefix_len: u8) -> Result<VipAddress, String> {
        let max = max_prefix(ip);
        if prefix_len > max {
            return Err(format!(
                "prefix length /{prefix_len} is too long for {ip} (at most /{max})"
            ));
        }
        Ok(VipAddress { ip, prefix_len })
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The IPv4 address, `None` for IPv6.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `10.0.0.100/24`, or a bare address, which means a host prefix (`/32`, `/128`).
impl FromStr for VipAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<VipAddress, String> {
        let s = s.trim();
        let (ip_text, prefix_text) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s, None),
        };
        let ip: IpAddr = ip_text
            .parse()
            .map_err(|_| format!("{ip_text:?} is not an IP address"))?;
        let prefix_len = match prefix_text {
            None => max_prefix(ip),
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|_| !p.starts_with('+'))
                .ok_or_else(|| format!("{p:?} is not a prefix length"))?,
        };
        VipAddress::new(ip, prefix_len)
    }
}

impl fmt::Display for VipAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// What can go wrong with the floating IP. The messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("no network interface named {0:?} on this host")]
    UnknownInterface(String),
    /// The agent lacks a capability; `action` is what it was trying to do.
    #[error(
        "{action} needs {capability}, which the agent does not have \
         (grant it with AmbientCapabilities={capability} in the systemd unit, or run as root)"
    )]
    Permission {
        action: &'static str,
        capability: &'static str,
    },
    #[error("{0}")]
    Unsupported(String),
    /// Any other failure: what was being done, and the error the system reported.
    #[error("{action}: {source}")]
    Failed {
        action: String,
        #[source]
        source: BoxError,
    },
}

impl VipError {
    /// [`VipError::Failed`]: `action` failed with `source`.
    pub fn failed(action: impl Into<String>, source: impl Into<BoxError>) -> VipError {
        VipError::Failed {
            action: action.into(),
            source: source.into(),
        }
    }
}

/// One floating address on one interface of this host.
///
/// Every operation is idempotent: adding a present address or removing an absent one succeeds.
pub trait Vip: Send + Sync + 'static {
    /// The address is on the interface (with any prefix length).
    fn is_present(&self) -> impl Future<Output = Result<bool, VipError>> + Send;
    /// Put the address on the interface.
    fn add(&self) -> impl Future<Output = Result<(), VipError>> + Send;
    /// Take the address off the interface.
    fn remove(&self) -> impl Future<Output = Result<(), VipError>> + Send;
    /// Tell the segment the address is here now: one gratuitous ARP request and one reply.
    fn announce(&self) -> impl Future<Output = Result<(), VipError>> + Send;
}

/// No floating IP: every operation succeeds and the address is never present.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoVip;

impl Vip for NoVip {
    async fn is_present(&self) -> Result<bool, VipError> {
        Ok(false)
    }
    async fn add(&self) -> Result<(), VipError> {
        Ok(())
    }
    async fn remove(&self) -> Result<(), VipError> {
        Ok(())
    }
    async fn announce(&self) -> Result<(), VipError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String, String> {
        s.parse::<VipAddress>().map(|a| a.to_string())
    }

    #[test]
    fn addresses_parse_with_and_without_prefix() {
        assert_eq!(parse("10.0.0.100/24").as_deref(), Ok("10.0.0.100/24"));
        assert_eq!(parse(" 10.0.0.100 ").as_deref(), Ok("10.0.0.100/32"));
        assert_eq!(parse("10.0.0.100/0").as_deref(), Ok("10.0.0.100/0"));
        assert_eq!(parse("fd00::5/64").as_deref(), Ok("fd00::5/64"));
        assert_eq!(parse("fd00::5").as_deref(), Ok("fd00::5/128"));
        let a: VipAddress = "192.168.1.7/31".parse().expect("parses");
        assert_eq!(a.ipv4(), Some(Ipv4Addr::new(192, 168, 1, 7)));
        assert_eq!(a.prefix_len(), 31);
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert_eq!(
            parse("10.0.0.300/24"),
            Err("\"10.0.0.300\" is not an IP address".to_owned())
        );
        assert_eq!(
            parse("10.0.0.1/33"),
            Err("prefix length /33 is too long for 10.0.0.1 (at most /32)".to_owned())
        );
        assert_eq!(
            parse("10.0.0.1/x"),
            Err("\"x\" is not a prefix length".to_owned())
        );
        assert_eq!(
            parse("10.0.0.1/+8"),
            Err("\"+8\" is not a prefix length".to_owned())
        );
        assert_eq!(
            parse("10.0.0.1/"),
            Err("\"\" is not a prefix length".to_owned())
        );
        assert!(parse("fd00::1/129").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn errors_name_the_capability() {
        let e = VipError::Permission {
            action: "adding the floating IP",
            capability: "CAP_NET_ADMIN",
        };
        assert!(
            e.to_string()
                .starts_with("adding the floating IP needs CAP_NET_ADMIN"),
            "{e}"
        );
        assert_eq!(
            VipError::UnknownInterface("eth9".to_owned()).to_string(),
            "no network interface named \"eth9\" on this host"
        );
    }

    #[tokio::test]
    async fn no_vip_does_nothing() {
        let v = NoVip;
        v.add().await.expect("add");
        v.announce().await.expect("announce");
        assert!(!v.is_present().await.expect("present"));
        v.remove().await.expect("remove");
    }
}
