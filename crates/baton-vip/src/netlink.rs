//! The real floating IP: rtnetlink for the address, an `AF_PACKET` socket (through
//! `pnet_datalink`, so this crate needs no `unsafe`) for gratuitous ARP.
//!
//! The interface is looked up by name on every operation, so an interface that is deleted and
//! created again (a bond, a VLAN) is found under its new index.

use std::io;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, new_connection};

use crate::arp::{ArpOp, gratuitous_arp};
use crate::{Vip, VipAddress, VipError, caps};

/// How long one send on the packet socket may wait for buffer space.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

const ADD: &str = "adding the floating IP";
const REMOVE: &str = "removing the floating IP";
const ARP: &str = "gratuitous ARP";

/// One IPv4 floating address on one interface, managed through netlink.
pub struct NetlinkVip {
    handle: Handle,
    address: VipAddress,
    interface: String,
}

/// What we need to know about the interface.
struct Link {
    index: u32,
    mac: Option<[u8; 6]>,
}

impl NetlinkVip {
    /// Opens a netlink socket and checks what can be checked before the first failover: the
    /// address family, the interface exists, and the capabilities are there (`CAP_NET_ADMIN`;
    /// `CAP_NET_RAW` too when `announce` is set).
    ///
    /// Must be called inside a tokio runtime (it spawns the netlink connection task).
    pub async fn new(
        address: VipAddress,
        interface: &str,
        announce: bool,
    ) -> Result<NetlinkVip, VipError> {
        if address.ipv4().is_none() {
            return Err(VipError::Unsupported(format!(
                "{address}: only IPv4 floating addresses are supported"
            )));
        }
        if let Some(set) = caps::effective() {
            if !caps::has(set, caps::CAP_NET_ADMIN) {
                return Err(VipError::Permission {
                    action: ADD,
                    capability: "CAP_NET_ADMIN",
                });
            }
            if announce && !caps::has(set, caps::CAP_NET_RAW) {
                return Err(VipError::Permission {
                    action: ARP,
                    capability: "CAP_NET_RAW",
                });
            }
        }
        let (connection, handle, _) =
            new_connection().map_err(|e| VipError::failed("open a netlink socket", e))?;
        tokio::spawn(connection);
        let vip = NetlinkVip {
            handle,
            address,
            interface: interface.to_owned(),
        };
        vip.link().await?;
        if let Some(warning) = promote_secondaries_warning(interface) {
            tracing::warn!("{warning}");
        }
        Ok(vip)
    }

    pub fn address(&self) -> VipAddress {
        self.address
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    async fn link(&self) -> Result<Link, VipError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(self.interface.clone())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(VipError::UnknownInterface(self.interface.clone())),
            Err(e) if errno(&e) == Some(libc_errno::ENODEV) => {
                return Err(VipError::UnknownInterface(self.interface.clone()));
            }
            Err(e) => {
                return Err(VipError::failed(
                    format!("look up network interface {:?}", self.interface),
                    e,
                ));
            }
        };
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        Ok(Link {
            index: msg.header.index,
            mac,
        })
    }

    /// Our address's entries on the interface (normally zero or one; any prefix length).
    async fn entries(&self, index: u32) -> Result<Vec<AddressMessage>, VipError> {
        let ip = self.address.ip();
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_filter(|m| {
                let ours = m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Local(x) if *x == ip)
                        || matches!(a, AddressAttribute::Address(x) if *x == ip)
                });
                futures::future::ready(ours)
            })
            .try_collect()
            .await
            .map_err(|e| VipError::failed(format!("list the addresses of {:?}", self.interface), e))
    }

    fn describe(&self) -> String {
        format!("{} on {}", self.address, self.interface)
    }
}

impl Vip for NetlinkVip {
    async fn is_present(&self) -> Result<bool, VipError> {
        let link = self.link().await?;
        Ok(!self.entries(link.index).await?.is_empty())
    }

    async fn add(&self) -> Result<(), VipError> {
        let link = self.link().await?;
        let result = self
            .handle
            .address()
            .add(link.index, self.address.ip(), self.address.prefix_len())
            .execute()
            .await;
        match result {
            Ok(()) => Ok(()),
            // Already there (added by us before a restart, or by hand): that is what we want.
            Err(e) if errno(&e) == Some(libc_errno::EEXIST) => Ok(()),
            Err(e) if is_permission(&e) => Err(VipError::Permission {
                action: ADD,
                capability: "CAP_NET_ADMIN",
            }),
            Err(e) => Err(VipError::failed(format!("add {}", self.describe()), e)),
        }
    }

    async fn remove(&self) -> Result<(), VipError> {
        let link = match self.link().await {
            Ok(link) => link,
            // No interface, no address on it.
            Err(VipError::UnknownInterface(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in self.entries(link.index).await? {
            match self.handle.address().del(entry).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc_errno::EADDRNOTAVAIL) => {}
                Err(e) if is_permission(&e) => {
                    return Err(VipError::Permission {
                        action: REMOVE,
                        capability: "CAP_NET_ADMIN",
                    });
                }
                Err(e) => return Err(VipError::failed(format!("remove {}", self.describe()), e)),
            }
        }
        Ok(())
    }

    async fn announce(&self) -> Result<(), VipError> {
        let Some(ip) = self.address.ipv4() else {
            return Ok(());
        };
        let link = self.link().await?;
        let Some(mac) = link.mac else {
            return Err(VipError::Unsupported(format!(
                "{:?} has no Ethernet hardware address; gratuitous ARP is not possible there",
                self.interface
            )));
        };
        let frames = [
            gratuitous_arp(mac, ip, ArpOp::Request),
            gratuitous_arp(mac, ip, ArpOp::Reply),
        ];
        let interface = self.interface.clone();
        let sent =
            tokio::task::spawn_blocking(move || send_frames(&interface, link.index, &frames))
                .await
                .map_err(|e| VipError::failed(ARP, e))?;
        match sent {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc_errno::EPERM | libc_errno::EACCES)
                ) =>
            {
                Err(VipError::Permission {
                    action: ARP,
                    capability: "CAP_NET_RAW",
                })
            }
            Err(e) => Err(VipError::failed(
                format!("{ARP} for {} on {:?}", self.address.ip(), self.interface),
                e,
            )),
        }
    }
}

/// Linux deletes every secondary address of a subnet with its primary one unless
/// `promote_secondaries` is set. Should the floating IP ever become the primary address of the
/// host's own subnet (the host's address re-added while the floating IP is up, as some DHCP
/// clients do), removing it would take the host's address with it.
pub fn promote_secondaries_warning(interface: &str) -> Option<String> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/promote_secondaries");
    let value = std::fs::read_to_string(&path).ok()?;
    (value.trim() == "0").then(|| {
        format!(
            "{path} is 0: if the floating IP becomes the primary address of its subnet on \
             {interface:?}, removing it also removes the other addresses of that subnet; set \
             net.ipv4.conf.{interface}.promote_secondaries=1 (sysctl)"
        )
    })
}

/// Opens a packet socket bound to the interface and sends each frame as is.
fn send_frames(interface: &str, index: u32, frames: &[[u8; 42]]) -> io::Result<()> {
    let iface = pnet_datalink::NetworkInterface {
        name: interface.to_owned(),
        description: String::new(),
        index,
        mac: None,
        ips: Vec::new(),
        flags: 0,
    };
    let config = pnet_datalink::Config {
        write_timeout: Some(SEND_TIMEOUT),
        read_timeout: Some(Duration::from_millis(1)),
        promiscuous: false,
        read_buffer_size: 64,
        write_buffer_size: 64,
        ..pnet_datalink::Config::default()
    };
    let mut tx = match pnet_datalink::channel(&iface, config)? {
        pnet_datalink::Channel::Ethernet(tx, _rx) => tx,
        _ => return Err(io::Error::other("unexpected packet channel type")),
    };
    for frame in frames {
        tx.send_to(frame, None)
            .unwrap_or_else(|| Err(io::Error::other("frame larger than the send buffer")))?;
    }
    Ok(())
}

/// The errno of a netlink error answer.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

fn is_permission(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc_errno::EPERM | libc_errno::EACCES))
}

/// The few errno values we look at (Linux numbering, which netlink reports).
mod libc_errno {
    pub(super) const EPERM: i32 = 1;
    pub(super) const EACCES: i32 = 13;
    pub(super) const EEXIST: i32 = 17;
    pub(super) const ENODEV: i32 = 19;
    pub(super) const EADDRNOTAVAIL: i32 = 99;
}
