//! The bridge containers on a deployed or manual machine attach to: the
//! machine's own network interface moved under a bridge, so containers
//! get addresses on the machine's network as Juju's LXD containers do on
//! MAAS machines (`br-eth0`). The plan is pure (what `ip -j` printed in,
//! commands out); [`ensure_host_bridge`] runs it.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;
use tokio::process::Command;

use crate::Error;

/// The bridge kumo makes on a machine that hosts containers.
pub const HOST_BRIDGE: &str = "kumobr0";

/// The interface holding the machine's address, before it is bridged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub nic: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

/// What the machine's network looks like from the bridge's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// Where the bridge stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgePlan {
    /// The address is on the bridge already.
    Ready(HostNetwork),
    /// The address is on `uplink`; these commands move it to the bridge.
    Convert {
        network: HostNetwork,
        commands: Vec<Vec<String>>,
    },
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    gateway: Option<String>,
}

/// Decides how to put `address` (the machine's, as the controller reaches
/// it) on `bridge`, from `ip -j addr show` and `ip -j -4 route show
/// default`. Pure.
pub fn bridge_plan(
    addrs_json: &str,
    default_routes_json: &str,
    bridge: &str,
    address: Ipv4Addr,
) -> Result<BridgePlan, Error> {
    let bad = |reason: String| Error::Bridge {
        bridge: bridge.to_owned(),
        reason,
    };
    let links: Vec<Link> = serde_json::from_str(addrs_json)
        .map_err(|e| bad(format!("unreadable `ip -j addr show` output: {e}")))?;
    let routes: Vec<Route> = serde_json::from_str(default_routes_json)
        .map_err(|e| bad(format!("unreadable `ip -j route show default` output: {e}")))?;
    let gateway = routes
        .iter()
        .find_map(|r| r.gateway.as_deref()?.parse::<Ipv4Addr>().ok());
    let holder = links.iter().find_map(|l| {
        l.addr_info
            .iter()
            .find(|a| a.family == "inet" && a.local.parse() == Ok(address))
            .map(|a| (l, a.prefixlen))
    });
    let Some((link, prefix)) = holder else {
        return Err(bad(format!(
            "no interface on this machine has the address {address}"
        )));
    };
    let network = HostNetwork { prefix, gateway };
    if link.ifname == bridge {
        return Ok(BridgePlan::Ready(network));
    }
    let mac = link
        .address
        .clone()
        .ok_or_else(|| bad(format!("interface {} has no MAC address", link.ifname)))?;
    let uplink = Uplink {
        nic: link.ifname.clone(),
        mac,
        address,
        prefix,
    };
    let bridge_exists = links.iter().any(|l| l.ifname == bridge);
    Ok(BridgePlan::Convert {
        commands: convert_commands(bridge, bridge_exists, &uplink, gateway),
        network,
    })
}

fn convert_commands(
    bridge: &str,
    bridge_exists: bool,
    up: &Uplink,
    gateway: Option<Ipv4Addr>,
) -> Vec<Vec<String>> {
    let cidr = format!("{}/{}", up.address, up.prefix);
    let mut script: Vec<Vec<&str>> = Vec::new();
    if !bridge_exists {
        // No STP: the machine's link must not stop forwarding for 15 s.
        script.push(vec![
            "link",
            "add",
            "name",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
    }
    // The bridge keeps the interface's MAC, so the switch, the region's
    // DHCP reservations and neighbours' ARP caches stay right.
    script.extend([
        vec!["link", "set", "dev", bridge, "address", &up.mac],
        vec!["link", "set", "dev", bridge, "up"],
        vec!["link", "set", "dev", &up.nic, "master", bridge],
        vec!["addr", "del", &cidr, "dev", &up.nic],
        vec!["addr", "add", &cidr, "dev", bridge],
    ]);
    let gw = gateway.map(|g| g.to_string());
    if let Some(gw) = &gw {
        script.push(vec![
            "route", "replace", "default", "via", gw, "dev", bridge,
        ]);
    }
    script
        .into_iter()
        .map(|c| c.into_iter().map(String::from).collect())
        .collect()
}

/// Makes sure `address` is on `bridge`, moving it from the interface that
/// holds it (with the default route) if need be; returns the prefix and
/// gateway containers on the bridge use. Safe to repeat, and serialised
/// across processes by a lock in `lock_dir`: the commands run one after
/// another within milliseconds, so a session reaching the machine over
/// that interface (the controller's SSH) survives the move.
pub async fn ensure_host_bridge(
    lock_dir: &Path,
    bridge: &str,
    address: Ipv4Addr,
) -> Result<HostNetwork, Error> {
    std::fs::create_dir_all(lock_dir).map_err(Error::io("creating", lock_dir))?;
    let lock_path = lock_dir.join("bridge.lock");
    let lock = std::fs::File::create(&lock_path).map_err(Error::io("creating", &lock_path))?;
    let lock = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io("locking", lock_path)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(lock)
    })
    .await
    .expect("lock task panicked")?;
    let addrs = ip(&["-j", "addr", "show"]).await?;
    let routes = ip(&["-j", "-4", "route", "show", "default"]).await?;
    let plan = bridge_plan(&addrs, &routes, bridge, address)?;
    let network = match plan {
        BridgePlan::Ready(n) => n,
        BridgePlan::Convert { network, commands } => {
            tracing::info!(bridge, %address, "moving the machine's address to the bridge");
            for c in &commands {
                let args: Vec<&str> = c.iter().map(String::as_str).collect();
                ip(&args).await?;
            }
            network
        }
    };
    drop(lock);
    Ok(network)
}

async fn ip(args: &[&str]) -> Result<String, Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: "ip".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            tail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The name servers in a `resolv.conf`, IPv4 and IPv6. Pure.
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                .map(String::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","address":"00:00:00:00:00:00",
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":2,"ifname":"ens3","address":"52:54:00:12:34:02",
       "addr_info":[{"family":"inet","local":"10.217.0.11","prefixlen":24},
                    {"family":"inet6","local":"fe80::1","prefixlen":64}]}
    ]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"10.217.0.1","dev":"ens3","flags":[]}]"#;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_address_moves_to_a_new_bridge_with_the_interfaces_mac_and_the_default_route() {
        let plan = bridge_plan(ADDRS, ROUTES, "kumobr0", ip("10.217.0.11")).unwrap();
        let BridgePlan::Convert { network, commands } = plan else {
            panic!("expected a conversion: {plan:?}")
        };
        assert_eq!(
            network,
            HostNetwork {
                prefix: 24,
                gateway: Some(ip("10.217.0.1"))
            }
        );
        let lines: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "link add name kumobr0 type bridge stp_state 0 forward_delay 0",
                "link set dev kumobr0 address 52:54:00:12:34:02",
                "link set dev kumobr0 up",
                "link set dev ens3 master kumobr0",
                "addr del 10.217.0.11/24 dev ens3",
                "addr add 10.217.0.11/24 dev kumobr0",
                "route replace default via 10.217.0.1 dev kumobr0",
            ]
        );
    }

    #[test]
    fn a_bridge_left_half_made_is_not_made_again() {
        let links: serde_json::Value = serde_json::from_str(ADDRS).unwrap();
        let mut links = links.as_array().unwrap().clone();
        links.push(
            serde_json::json!({"ifname":"kumobr0","address":"52:54:00:12:34:02","addr_info":[]}),
        );
        let plan = bridge_plan(
            &serde_json::to_string(&links).unwrap(),
            "[]",
            "kumobr0",
            ip("10.217.0.11"),
        )
        .unwrap();
        let BridgePlan::Convert { network, commands } = plan else {
            panic!("expected a conversion: {plan:?}")
        };
        assert_eq!(network.gateway, None);
        assert!(!commands.iter().any(|c| c[1] == "add" && c[0] == "link"));
        assert!(!commands.iter().any(|c| c[0] == "route"));
    }

    #[test]
    fn an_address_already_on_the_bridge_needs_nothing() {
        let addrs = ADDRS.replace("\"ens3\"", "\"kumobr0\"");
        assert_eq!(
            bridge_plan(&addrs, ROUTES, "kumobr0", ip("10.217.0.11")).unwrap(),
            BridgePlan::Ready(HostNetwork {
                prefix: 24,
                gateway: Some(ip("10.217.0.1"))
            })
        );
    }

    #[test]
    fn an_address_the_machine_does_not_have_is_an_error_naming_it() {
        let e = bridge_plan(ADDRS, ROUTES, "kumobr0", ip("10.217.0.99")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bridge kumobr0: no interface on this machine has the address 10.217.0.99"
        );
        let e = bridge_plan("not json", ROUTES, "kumobr0", ip("10.217.0.11")).unwrap_err();
        assert!(
            e.to_string()
                .contains("unreadable `ip -j addr show` output"),
            "{e}"
        );
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "# by cloud-init\nsearch lab.kumo\nnameserver 10.217.0.1\nnameserver  fd00::1\nnameserver bogus\n";
        assert_eq!(nameservers(text), ["10.217.0.1", "fd00::1"]);
    }
}
