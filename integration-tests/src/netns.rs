//! Hosts in network namespaces: each node in its own namespace with an `eth0` on one bridge, a
//! client namespace on the same bridge, and the root namespace (where the harness and etcd run)
//! attached to it too. For tests where addresses and links matter: the floating IP, and
//! partitions of single hosts.
//!
//! ```text
//!   root namespace ── pgbt<pid>-<n> ─┐
//!       .1 harness, .2 services      │        switch namespace (br0)
//!   node1 namespace ── eth0 .11 ─────┤
//!   node2 namespace ── eth0 .12 ─────┤
//!   client namespace ── eth0 .200 ───┘
//! ```
//!
//! - The subnet is a free /24 of 198.18.0.0/15 (reserved for network testing), chosen per
//!   network (under a lock, so concurrent tests never share one) and checked against the root
//!   namespace's routes.
//! - The bridge lives in a namespace of its own, so the root namespace's firewall (Docker's
//!   `FORWARD` policy `DROP` with `bridge-nf-call-iptables=1`, say) does not see the traffic
//!   between the hosts, and tearing down is deleting namespaces.
//! - The root namespace has two addresses on the subnet: `.1` ([`Network::root_address`]), the
//!   source of the harness's own connections (SQL, REST), and `.2`
//!   ([`Network::service_address`]), where [`Network::relay_tcp`] forwards ports to services
//!   listening on loopback (etcd, which the harness starts on 127.0.0.1). A host is cut from the
//!   services alone by dropping `.2` in its namespace ([`Network::block`]), while the harness
//!   still reaches it through `.1`.
//! - Everything is named `pgbt-<pid>-<n>-...` (namespaces) or `pgbt<pid>-<n>` (the root
//!   namespace's link) after the test process; dropping the [`Network`] deletes it, and
//!   [`remove_leftovers`] deletes what test processes that no longer exist left behind (it
//!   runs whenever a network is created).
//!
//! The harness sets the network up with `ip`, `iptables` and `nsenter` (it is an independent
//! oracle and may shell out; the agents use netlink).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::process::pid_alive;
use crate::tools::{Tools, find_program};

/// Prefix of every namespace and link name.
pub const NAME_PREFIX: &str = "pgbt";
/// The interface every host namespace has on the bridge.
pub const HOST_INTERFACE: &str = "eth0";
/// The subnet's prefix length.
pub const PREFIX_LEN: u8 = 24;
/// Last octet of the client namespace's address.
const CLIENT_OCTET: u8 = 200;
/// Last octet of the first host's address (`.11`, `.12`, ...).
const FIRST_HOST_OCTET: u8 = 11;
/// The /24 subnets 198.18.0.0/24 ..= 198.19.255.0/24.
const SUBNETS: u32 = 512;

/// Networks created by this process, for unique names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The programs that set up and use namespaces.
#[derive(Clone, Debug)]
pub struct NetTools {
    pub ip: PathBuf,
    pub iptables: PathBuf,
    /// Starts an agent inside a namespace (enters only the network namespace).
    pub nsenter: PathBuf,
    /// Drops to the agents' user keeping `CAP_NET_ADMIN` and `CAP_NET_RAW` (ambient), which
    /// the agent needs for the floating IP.
    pub setpriv: PathBuf,
}

impl NetTools {
    /// The IPv4 addresses (`a.b.c.d/len`) on `eth0` in namespace `netns` (per
    /// `ip -n <ns> -4 addr`). Needs no [`Network`], so a sampler thread can call it.
    pub fn addresses_in(&self, netns: &str) -> anyhow::Result<Vec<String>> {
        let out = output(
            &self.ip,
            &[
                "-n",
                netns,
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                HOST_INTERFACE,
            ],
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet")?;
                words.next().map(str::to_owned)
            })
            .collect())
    }

    /// Find the programs and check that namespaces can be made (root, `ip netns add` works);
    /// `Err` lists what is missing. The check runs once per process.
    pub fn discover() -> Result<NetTools, Vec<String>> {
        static FOUND: OnceLock<Result<NetTools, Vec<String>>> = OnceLock::new();
        FOUND.get_or_init(discover_uncached).clone()
    }
}

fn discover_uncached() -> Result<NetTools, Vec<String>> {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root (network namespaces, and agents with CAP_NET_ADMIN)".to_owned());
    }
    let mut find = |name: &str, package: &str| {
        let found = find_program("", name);
        if found.is_none() {
            missing.push(format!("{name} ({package})"));
        }
        found.unwrap_or_default()
    };
    let tools = NetTools {
        ip: find("ip", "apt-get install iproute2"),
        iptables: find("iptables", "apt-get install iptables"),
        nsenter: find("nsenter", "util-linux"),
        setpriv: find("setpriv", "util-linux"),
    };
    if !missing.is_empty() {
        return Err(missing);
    }
    // Containers without CAP_SYS_ADMIN have `ip` but cannot make namespaces.
    let probe = format!("{NAME_PREFIX}-{}-probe", std::process::id());
    match run(&tools.ip, &["netns", "add", &probe]) {
        Ok(()) => {
            let _ = run(&tools.ip, &["netns", "del", &probe]);
            Ok(tools)
        }
        Err(e) => Err(vec![format!(
            "the right to create network namespaces ({e:#})"
        )]),
    }
}

/// One host on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
}

/// What a node needs to run inside its namespace: where its agent starts, which address it
/// serves on, which subnet its `pg_hba` must allow.
#[derive(Clone, Debug)]
pub struct NodeNet {
    pub netns: String,
    pub address: Ipv4Addr,
    /// `198.18.x.0/24`.
    pub subnet: String,
    pub(crate) tools: NetTools,
}

impl NodeNet {
    /// `program` as the agents' user inside the namespace, with `CAP_NET_ADMIN` and
    /// `CAP_NET_RAW` as ambient capabilities (as `deploy/pgbaton.service` grants them):
    /// `nsenter --net=<ns> -- setpriv --reuid ... -- <program>`. Both exec, so the process
    /// started is the program itself.
    pub fn command_as_agent_user(&self, tools: &Tools, program: &Path) -> anyhow::Result<Command> {
        let run_as = tools
            .run_as
            .as_ref()
            .context("hosts in network namespaces need the tests to run as root")?;
        let home = nix::unistd::User::from_uid(run_as.uid)
            .ok()
            .flatten()
            .map(|u| u.dir)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut cmd = Command::new(&self.tools.nsenter);
        cmd.arg(format!("--net={}", netns_path(&self.netns).display()))
            .arg("--")
            .arg(&self.tools.setpriv)
            .arg(format!("--reuid={}", run_as.uid))
            .arg(format!("--regid={}", run_as.gid))
            .arg("--init-groups")
            .arg("--inh-caps=+net_admin,+net_raw")
            .arg("--ambient-caps=+net_admin,+net_raw")
            .arg("--")
            .arg(program)
            .env("HOME", home)
            .env("USER", &run_as.name)
            .env("LOGNAME", &run_as.name);
        Ok(cmd)
    }
}

/// A bridge with hosts in namespaces, deleted on drop (see the module documentation).
pub struct Network {
    tools: NetTools,
    /// `pgbt-<pid>-<n>`: the namespaces' common prefix.
    tag: String,
    /// The first three octets of the subnet.
    net: [u8; 3],
    switch: String,
    root_link: String,
    hosts: Vec<Host>,
    client: Host,
    /// Hosts powered off ([`Network::power_off`]).
    down: BTreeSet<String>,
    /// `(host, peer)` pairs cut by [`Network::block`].
    blocked: BTreeSet<(String, Ipv4Addr)>,
    /// Hosts cut from the whole bridge by [`Network::isolate`].
    isolated: BTreeSet<String>,
    relay: Option<Relay>,
    /// Namespaces created so far (deleted on drop, in reverse).
    created: Vec<String>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("tag", &self.tag)
            .field("subnet", &self.subnet())
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A bridge, one namespace per name in `hosts` (addresses `.11`, `.12`, ... in order) and a
    /// client namespace (`.200`), all with `lo` and `eth0` up; the root namespace gets `.1`
    /// and `.2`. Removes the leftovers of dead test processes first.
    pub fn create(tools: &NetTools, hosts: &[String]) -> anyhow::Result<Network> {
        if hosts.len() > usize::from(CLIENT_OCTET - FIRST_HOST_OCTET) {
            bail!("too many hosts for one network: {}", hosts.len());
        }
        for h in hosts {
            if h.is_empty()
                || h.len() > 15
                || h == "client"
                || h == "root"
                || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                bail!("{h:?} cannot name a host of a network");
            }
        }
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{NAME_PREFIX}-{pid}-{n}");
        let root_link = format!("{NAME_PREFIX}{pid}-{n}");
        // One subnet per network across concurrent test processes: choose it and put it on the
        // root namespace's link (which makes its route) under one lock.
        let _lock = lock()?;
        remove_leftovers_with(tools);
        let net = free_subnet(tools, pid.wrapping_mul(4).wrapping_add(n))?;
        let host_at = |i: usize, name: &str| Host {
            name: name.to_owned(),
            netns: format!("{tag}-{name}"),
            address: Ipv4Addr::new(net[0], net[1], net[2], FIRST_HOST_OCTET + i as u8),
        };
        let mut network = Network {
            tools: tools.clone(),
            switch: format!("{tag}-sw"),
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| host_at(i, h))
                .collect(),
            client: Host {
                name: "client".to_owned(),
                netns: format!("{tag}-client"),
                address: Ipv4Addr::new(net[0], net[1], net[2], CLIENT_OCTET),
            },
            tag,
            net,
            root_link,
            down: BTreeSet::new(),
            blocked: BTreeSet::new(),
            isolated: BTreeSet::new(),
            relay: None,
            created: Vec::new(),
        };
        network.build()?;
        eprintln!(
            "harness: network {} on {} (hosts: {}; client {})",
            network.tag,
            network.subnet(),
            network
                .hosts
                .iter()
                .map(|h| format!("{} {}", h.name, h.address))
                .collect::<Vec<_>>()
                .join(", "),
            network.client.address
        );
        Ok(network)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let sw = self.switch.clone();
        self.add_netns(&sw)?;
        self.ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let mut all = self.hosts.clone();
        all.push(self.client.clone());
        for h in &all {
            self.add_netns(&h.netns)?;
            self.ip(&[
                "-n",
                &sw,
                "link",
                "add",
                &h.name,
                "type",
                "veth",
                "peer",
                "name",
                HOST_INTERFACE,
                "netns",
                &h.netns,
            ])?;
            self.ip(&["-n", &sw, "link", "set", &h.name, "master", "br0", "up"])?;
            // A secondary address (the floating IP) must not take the others with it.
            self.sysctl(&h.netns, "net.ipv4.conf.all.promote_secondaries=1")?;
            self.sysctl(
                &h.netns,
                &format!("net.ipv4.conf.{HOST_INTERFACE}.promote_secondaries=1"),
            )?;
            self.boot_host(h)?;
        }
        let link = self.root_link.clone();
        self.ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "root", "netns", &sw,
        ])?;
        self.ip(&["-n", &sw, "link", "set", "root", "master", "br0", "up"])?;
        for a in [self.root_address(), self.service_address()] {
            self.ip(&["addr", "add", &format!("{a}/{PREFIX_LEN}"), "dev", &link])?;
        }
        self.ip(&["link", "set", &link, "up"])?;
        Ok(())
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        self.ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        self.ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// The interface has only the host's own address, and is up.
    fn boot_host(&self, h: &Host) -> anyhow::Result<()> {
        let ns = h.netns.as_str();
        self.ip(&["-n", ns, "-4", "addr", "flush", "dev", HOST_INTERFACE])?;
        self.ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/{PREFIX_LEN}", h.address),
            "dev",
            HOST_INTERFACE,
        ])?;
        self.ip(&["-n", ns, "link", "set", HOST_INTERFACE, "up"])
    }

    fn sysctl(&self, netns: &str, setting: &str) -> anyhow::Result<()> {
        let (key, value) = setting.split_once('=').context("key=value")?;
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // /proc/sys/net shows the namespace of the process that reads it.
        let script = format!("echo {value} > {path}");
        run(
            &self.tools.ip,
            &["netns", "exec", netns, "sh", "-c", &script],
        )
        .with_context(|| format!("set {setting} in {netns}"))
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run(&self.tools.ip, args)
    }

    // ----- addresses and names -----

    /// `198.18.x.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/{PREFIX_LEN}", self.address(0))
    }

    /// The subnet's address with last octet `last`.
    pub fn address(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], last)
    }

    /// The root namespace's address the harness's connections come from (`.1`).
    pub fn root_address(&self) -> Ipv4Addr {
        self.address(1)
    }

    /// The root namespace's address where [`Network::relay_tcp`] listens (`.2`): etcd, as
    /// the hosts see it.
    pub fn service_address(&self) -> Ipv4Addr {
        self.address(2)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host named `name` (the client is `client`).
    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        if name == self.client.name {
            return Ok(&self.client);
        }
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name:?} in network {}", self.tag))
    }

    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The programs this network uses (e.g. `nsenter`, to start a process in a namespace).
    pub fn tools(&self) -> &NetTools {
        &self.tools
    }

    /// What node `name` needs to run in its namespace.
    pub fn node_net(&self, name: &str) -> anyhow::Result<NodeNet> {
        let h = self.host(name)?;
        Ok(NodeNet {
            netns: h.netns.clone(),
            address: h.address,
            subnet: self.subnet(),
            tools: self.tools.clone(),
        })
    }

    // ----- observing -----

    /// The IPv4 addresses (`a.b.c.d/len`) on host `name`'s `eth0` (per `ip -n <ns> -4 addr`).
    pub fn addresses(&self, name: &str) -> anyhow::Result<Vec<String>> {
        self.tools.addresses_in(&self.host(name)?.netns)
    }

    /// Whether `address` is on host `name`'s `eth0` (a powered-off host holds nothing).
    pub fn holds(&self, name: &str, address: Ipv4Addr) -> anyhow::Result<bool> {
        if self.is_down(name) {
            return Ok(false);
        }
        let want = address.to_string();
        Ok(self
            .addresses(name)?
            .iter()
            .any(|a| a.split('/').next() == Some(want.as_str())))
    }

    /// The hosts (not the client) whose `eth0` holds `address`, in order.
    pub fn holders(&self, address: Ipv4Addr) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for h in &self.hosts {
            if self.holds(&h.name, address)? {
                out.push(h.name.clone());
            }
        }
        Ok(out)
    }

    /// The hardware address of host `name`'s `eth0`.
    pub fn mac(&self, name: &str) -> anyhow::Result<[u8; 6]> {
        let ns = &self.host(name)?.netns;
        let out = output(
            &self.tools.ip,
            &["-n", ns, "-o", "link", "show", "dev", HOST_INTERFACE],
        )?;
        let text = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .with_context(|| format!("no link/ether in {out:?}"))?;
        parse_mac(text).with_context(|| format!("hardware address {text:?}"))
    }

    // ----- faults -----

    /// The host dies, as far as the network can tell: its `eth0` goes down without its
    /// addresses. Kill its processes too (the cluster's `kill_host` does both).
    pub fn power_off(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.host(name)?.netns.clone();
        self.ip(&["-n", &ns, "-4", "addr", "flush", "dev", HOST_INTERFACE])?;
        self.ip(&["-n", &ns, "link", "set", HOST_INTERFACE, "down"])?;
        self.down.insert(name.to_owned());
        eprintln!("harness: host {name} powered off (eth0 down, addresses flushed)");
        Ok(())
    }

    /// The host boots again: `eth0` up with only its own address (a floating IP it held
    /// before it died is gone, as after a real reboot). No-op unless powered off.
    pub fn boot(&mut self, name: &str) -> anyhow::Result<()> {
        if !self.down.contains(name) {
            return Ok(());
        }
        let h = self.host(name)?.clone();
        self.boot_host(&h)?;
        self.down.remove(name);
        eprintln!("harness: host {name} booted (eth0 up with {})", h.address);
        Ok(())
    }

    pub fn is_down(&self, name: &str) -> bool {
        self.down.contains(name)
    }

    /// Cut host `name` from `peer`: every packet between them is dropped silently (iptables
    /// `DROP` both ways inside the host's namespace), so connections hang as in a real
    /// partition. The harness still reaches the host from [`Network::root_address`] unless
    /// that is the peer.
    pub fn block(&mut self, name: &str, peer: Ipv4Addr) -> anyhow::Result<()> {
        let ns = self.host(name)?.netns.clone();
        if self.blocked.contains(&(name.to_owned(), peer)) {
            return Ok(());
        }
        let peer_s = peer.to_string();
        self.iptables(&ns, &["-I", "INPUT", "-s", &peer_s, "-j", "DROP"])?;
        self.iptables(&ns, &["-I", "OUTPUT", "-d", &peer_s, "-j", "DROP"])?;
        self.blocked.insert((name.to_owned(), peer));
        eprintln!("harness: cut {name} from {peer}");
        Ok(())
    }

    /// Undo [`Network::block`].
    pub fn unblock(&mut self, name: &str, peer: Ipv4Addr) -> anyhow::Result<()> {
        let ns = self.host(name)?.netns.clone();
        if !self.blocked.remove(&(name.to_owned(), peer)) {
            return Ok(());
        }
        let peer_s = peer.to_string();
        self.iptables(&ns, &["-D", "INPUT", "-s", &peer_s, "-j", "DROP"])?;
        self.iptables(&ns, &["-D", "OUTPUT", "-d", &peer_s, "-j", "DROP"])?;
        eprintln!("harness: healed {name} from {peer}");
        Ok(())
    }

    /// Cut host `name` from the services behind [`Network::service_address`] (etcd) only.
    pub fn cut_from_services(&mut self, name: &str) -> anyhow::Result<()> {
        self.block(name, self.service_address())
    }

    /// Cut host `name` from everything on the bridge: every packet in or out of its `eth0` is
    /// dropped silently (its loopback and Unix sockets keep working, so local clients still
    /// reach its PostgreSQL). The harness cannot reach it either until [`Network::heal`].
    pub fn isolate(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.host(name)?.netns.clone();
        if self.isolated.contains(name) {
            return Ok(());
        }
        self.iptables(&ns, &["-I", "INPUT", "-i", HOST_INTERFACE, "-j", "DROP"])?;
        self.iptables(&ns, &["-I", "OUTPUT", "-o", HOST_INTERFACE, "-j", "DROP"])?;
        self.isolated.insert(name.to_owned());
        eprintln!("harness: isolated {name} from the bridge");
        Ok(())
    }

    /// Undo every [`Network::block`] and [`Network::isolate`] of host `name`.
    pub fn heal(&mut self, name: &str) -> anyhow::Result<()> {
        if self.isolated.remove(name) {
            let ns = self.host(name)?.netns.clone();
            self.iptables(&ns, &["-D", "INPUT", "-i", HOST_INTERFACE, "-j", "DROP"])?;
            self.iptables(&ns, &["-D", "OUTPUT", "-o", HOST_INTERFACE, "-j", "DROP"])?;
            eprintln!("harness: {name} rejoined the bridge");
        }
        let peers: Vec<Ipv4Addr> = self
            .blocked
            .iter()
            .filter(|(h, _)| h == name)
            .map(|(_, p)| *p)
            .collect();
        for p in peers {
            self.unblock(name, p)?;
        }
        Ok(())
    }

    fn iptables(&self, netns: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", netns];
        let iptables = self.tools.iptables.to_string_lossy().into_owned();
        all.push(&iptables);
        all.push("-w");
        all.extend_from_slice(args);
        run(&self.tools.ip, &all)
    }

    // ----- services and clients -----

    /// Forward TCP connections to [`Network::service_address`]`:port` to `to` (a service on
    /// the root namespace's loopback, e.g. an etcd member), on a thread of its own so that
    /// nothing the test does can stall it. Returns the address the hosts use.
    pub fn relay_tcp(&mut self, port: u16, to: SocketAddr) -> anyhow::Result<SocketAddrV4> {
        let from = SocketAddrV4::new(self.service_address(), port);
        let listener = std::net::TcpListener::bind(from)
            .with_context(|| format!("listen on {from} to relay to {to}"))?;
        listener.set_nonblocking(true)?;
        if self.relay.is_none() {
            self.relay = Some(Relay::start(&self.tag)?);
        }
        let relay = self.relay.as_ref().expect("started above");
        relay.handle.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(from)
    }

    /// The namespace file of host `name`, for `setns`.
    pub fn netns_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        Ok(netns_path(&self.host(name)?.netns))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
        // Deleting the switch namespace deletes the bridge and every veth pair with it.
        for ns in self.created.iter().rev() {
            if let Err(e) = run(&self.tools.ip, &["netns", "del", ns]) {
                eprintln!("harness: {e:#}");
            }
        }
        let _ = run(&self.tools.ip, &["link", "del", &self.root_link]);
    }
}

/// `/run/netns/<name>`, as `ip netns add` makes it.
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

/// Run `f` on a new thread inside network namespace `netns` (e.g. `/run/netns/<name>`'s name)
/// with a tokio runtime of its own, and await its result. Sockets `f` opens belong to that
/// namespace. (A fresh thread each time: a thread that has entered a namespace never serves
/// anything else.)
pub async fn run_in<T, F, Fut>(netns: &str, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = netns_path(netns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns {netns}"))
        .spawn(move || {
            let result = enter(&path).and_then(|()| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("build a runtime")?;
                Ok(rt.block_on(f()))
            });
            let _ = tx.send(result);
        })
        .context("spawn a thread")?;
    rx.await
        .with_context(|| format!("the thread in {netns} panicked"))?
}

/// Run the blocking `f` on a new thread inside network namespace `netns`.
pub fn spawn_in<T, F>(netns: &str, f: F) -> std::thread::JoinHandle<anyhow::Result<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let path = netns_path(netns);
    std::thread::Builder::new()
        .name(format!("netns {netns}"))
        .spawn(move || enter(&path).map(|()| f()))
        .expect("spawn a thread")
}

/// Move the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {}", path.display()))
}

/// Delete the namespaces and root-namespace links of test processes that no longer exist
/// (`pgbt-<pid>-...`, `pgbt<pid>-...`). Processes still running inside such a namespace keep
/// it alive until they are killed (`scripts/kill-test-leftovers.sh`), cut off from everything.
pub fn remove_leftovers() -> anyhow::Result<()> {
    let tools = NetTools::discover().map_err(|m| anyhow::anyhow!("{}", m.join("; ")))?;
    let _lock = lock()?;
    remove_leftovers_with(&tools);
    Ok(())
}

fn remove_leftovers_with(tools: &NetTools) {
    let dead = |rest: &str| {
        rest.split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|pid| !pid_alive(pid))
    };
    if let Ok(list) = output(&tools.ip, &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(rest) = ns.strip_prefix(&format!("{NAME_PREFIX}-"))
                && dead(rest)
            {
                eprintln!("harness: removing leftover network namespace {ns}");
                let _ = run(&tools.ip, &["netns", "del", ns]);
            }
        }
    }
    if let Ok(links) = output(&tools.ip, &["-o", "link", "show"]) {
        for line in links.lines() {
            // `12: pgbt123-0@if3: <...`
            let Some(name) = line.split_whitespace().nth(1) else {
                continue;
            };
            let name = name.trim_end_matches(':');
            let name = name.split('@').next().unwrap_or(name);
            if let Some(rest) = name.strip_prefix(NAME_PREFIX)
                && rest.starts_with(|c: char| c.is_ascii_digit())
                && dead(rest)
            {
                eprintln!("harness: removing leftover link {name}");
                let _ = run(&tools.ip, &["link", "del", name]);
            }
        }
    }
}

/// Serialises subnet choice and leftover removal across test processes.
fn lock() -> anyhow::Result<Flock<std::fs::File>> {
    let path = std::env::temp_dir().join("pgbaton-test-netns.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("lock {}", path.display()))
}

/// The first three octets of a /24 in 198.18.0.0/15 that no route of the root namespace
/// overlaps, trying from `seed` on.
fn free_subnet(tools: &NetTools, seed: u32) -> anyhow::Result<[u8; 3]> {
    let routes = output(&tools.ip, &["-4", "route", "show", "table", "all"])?;
    let taken: Vec<(u32, u8)> = routes.lines().filter_map(route_prefix).collect();
    for i in 0..SUBNETS {
        let k = (seed.wrapping_add(i)) % SUBNETS;
        let net = [198, 18 + (k / 256) as u8, (k % 256) as u8];
        let base = u32::from(Ipv4Addr::new(net[0], net[1], net[2], 0));
        if !taken
            .iter()
            .any(|&(p, len)| overlaps((base, PREFIX_LEN), (p, len)))
        {
            return Ok(net);
        }
    }
    bail!("every /24 of 198.18.0.0/15 overlaps a route of this host")
}

/// The destination prefix of one line of `ip -4 route show table all` (`None` for `default`).
fn route_prefix(line: &str) -> Option<(u32, u8)> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "throw",
        "unreachable",
        "prohibit",
        "blackhole",
        "nat",
        "anycast",
    ];
    let mut words = line.split_whitespace();
    let mut dest = words.next()?;
    if TYPES.contains(&dest) {
        dest = words.next()?;
    }
    if dest == "default" {
        return None;
    }
    let (addr, len) = match dest.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (dest, 32),
    };
    Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len))
}

/// Whether two prefixes share an address.
fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn run(program: &Path, args: &[&str]) -> anyhow::Result<()> {
    output(program, args).map(drop)
}

fn output(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {} {}", program.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The relay's thread and runtime.
struct Relay {
    handle: tokio::runtime::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Relay {
    fn start(tag: &str) -> anyhow::Result<Relay> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build the relay's runtime")?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("relay {tag}"))
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // Dropping the runtime drops every task and closes every socket.
            })
            .context("spawn the relay thread")?;
        Ok(Relay {
            handle,
            stop,
            thread,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prefixes_and_overlaps() {
        let p = |s: &str| route_prefix(s);
        assert_eq!(p("default via 192.0.2.1 dev eth0"), None);
        assert_eq!(
            p("172.17.0.0/16 dev docker0 proto kernel scope link src 172.17.0.1 linkdown"),
            Some((u32::from(Ipv4Addr::new(172, 17, 0, 0)), 16))
        );
        assert_eq!(
            p("local 192.0.2.2 dev eth0 table local proto kernel scope host src 192.0.2.2"),
            Some((u32::from(Ipv4Addr::new(192, 0, 2, 2)), 32))
        );
        let net = |a, b, c, d, len| (u32::from(Ipv4Addr::new(a, b, c, d)), len);
        assert!(overlaps(net(198, 18, 5, 0, 24), net(198, 18, 0, 0, 16)));
        assert!(overlaps(net(198, 18, 5, 0, 24), net(198, 18, 5, 7, 32)));
        assert!(!overlaps(net(198, 18, 5, 0, 24), net(198, 18, 6, 0, 24)));
        assert!(overlaps(net(198, 18, 5, 0, 24), net(0, 0, 0, 0, 0)));
    }

    #[test]
    fn macs() {
        let mac = parse_mac("02:fc:00:00:0a:ff").expect("mac");
        assert_eq!(mac, [2, 0xfc, 0, 0, 0x0a, 0xff]);
        assert_eq!(format_mac(&mac), "02:fc:00:00:0a:ff");
        assert_eq!(parse_mac("02:fc"), None);
    }
}
