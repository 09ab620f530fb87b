//! The floating IP ("VIP") that follows the primary: add and remove one address on one network
//! interface through netlink, and announce it with gratuitous ARP on a raw packet socket.
//!
//! This crate only *does* things; it decides nothing. The agent's VIP task
//! (`baton_agent::vip::run_vip`) decides when the address must be on this host.
//!
//! - [`NetlinkVip`]: the real one (rtnetlink; an `AF_PACKET` socket for ARP). Needs
//!   `CAP_NET_ADMIN` (address changes) and `CAP_NET_RAW` (gratuitous ARP), not root.
//! - [`NoVip`]: does nothing and never holds the address.
//!
//! The [`Vip`] trait, [`VipAddress`], [`VipError`] and [`NoVip`] live in `baton-ports` (re-exported
//! here), so that what uses a floating IP need not depend on netlink.
//!
//! Pure parts, unit-tested: [`arp::gratuitous_arp`] (the 42-byte frame),
//! [`arp::probe`] and [`arp::parse`], [`caps::parse_effective`] (capabilities from
//! `/proc/self/status`). [`probe::arp_owners`] asks the segment who holds an address (tests,
//! diagnostics).

pub mod arp;
pub mod caps;
mod netlink;
pub mod probe;

pub use baton_ports::{NoVip, Vip, VipAddress, VipError};
pub use netlink::{NetlinkVip, promote_secondaries_warning};
