//! Manual checks of the floating IP on a real host (run as root or with the capabilities):
//!
//! ```text
//! cargo run -p baton-vip --example vip -- add 10.0.0.100/24 eth0
//! cargo run -p baton-vip --example vip -- announce 10.0.0.100/24 eth0
//! cargo run -p baton-vip --example vip -- present 10.0.0.100/24 eth0
//! cargo run -p baton-vip --example vip -- remove 10.0.0.100/24 eth0
//! cargo run -p baton-vip --example vip -- owners 10.0.0.100 eth0   # who answers ARP for it
//! ```

use baton_vip::{NetlinkVip, Vip, VipAddress};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, address, interface] = args.as_slice() else {
        eprintln!("usage: vip add|remove|present|announce|owners ADDRESS[/PREFIX] INTERFACE");
        std::process::exit(2);
    };
    let address: VipAddress = match address.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if op == "owners" {
        let Some(ip) = address.ipv4() else {
            eprintln!("owners: IPv4 only");
            std::process::exit(2);
        };
        match baton_vip::probe::arp_owners(interface, ip, std::time::Duration::from_secs(1)) {
            Ok(owners) => {
                for mac in owners {
                    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
                    println!("{}", hex.join(":"));
                }
                return;
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    let result = async {
        let vip = NetlinkVip::new(address, interface, op == "announce").await?;
        match op.as_str() {
            "add" => vip.add().await,
            "remove" => vip.remove().await,
            "announce" => vip.announce().await,
            _ => vip.is_present().await.map(|p| println!("{p}")),
        }
    }
    .await;
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
