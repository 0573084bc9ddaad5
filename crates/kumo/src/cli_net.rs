//! CLI verbs for the network model: `kumo fabrics|vlans|subnets|ipranges|
//! domains|dns-records …`, machine links, and the rack configuration.

use anyhow::Result;
use clap::Subcommand;
use kumo_client::{enc, Client};
use kumo_model::network::{
    Cidr, DnsRecord, Domain, Fabric, IpRange, LinkRequest, RackConfig, RangeKind, Subnet,
    SubnetRange, Vlan,
};
use kumo_store::StaticIp;
use serde_json::Value;

use crate::cli::GroupCommand;
use crate::output::{emit, table, Format};

#[derive(Subcommand, Debug)]
pub enum VlanCommand {
    #[command(alias = "ls")]
    List,
    Create {
        fabric: String,
        vid: u16,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
    },
    /// Change a VLAN; `--dhcp on` is "provide DHCP" (needs a dynamic range).
    Update {
        fabric: String,
        vid: u16,
        #[arg(long, value_parser = ["on", "off"])]
        dhcp: Option<String>,
        #[arg(long)]
        mtu: Option<u32>,
        #[arg(long)]
        name: Option<String>,
    },
    #[command(alias = "rm")]
    Delete { fabric: String, vid: u16 },
}

#[derive(Subcommand, Debug)]
pub enum SubnetCommand {
    #[command(alias = "ls")]
    List,
    Show {
        cidr: String,
    },
    Create {
        cidr: String,
        #[arg(long, default_value = "fabric-0")]
        fabric: String,
        #[arg(long, default_value_t = 0)]
        vid: u16,
        #[arg(long)]
        gateway: Option<String>,
        /// Repeat for several.
        #[arg(long = "dns-server")]
        dns_servers: Vec<String>,
        #[arg(long)]
        domain: Option<String>,
        /// Only record the subnet; kumo serves no DHCP or IPAM on it.
        #[arg(long)]
        unmanaged: bool,
    },
    #[command(alias = "rm")]
    Delete {
        cidr: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RangeCommand {
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        subnet: Option<String>,
    },
    /// e.g. `kumo ipranges create 10.20.0.0/24 dynamic 10.20.0.100 10.20.0.199`
    Create {
        subnet: String,
        #[arg(value_parser = ["dynamic", "reserved"])]
        kind: String,
        start: String,
        end: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    #[command(alias = "rm")]
    Delete { subnet: String, start: String },
}

#[derive(Subcommand, Debug)]
pub enum DomainCommand {
    #[command(alias = "ls")]
    List,
    Create {
        name: String,
        #[arg(long, default_value_t = 300)]
        ttl: u32,
    },
    #[command(alias = "rm")]
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RecordCommand {
    #[command(alias = "ls")]
    List,
    /// e.g. `kumo dns-records create maas.test region A 10.20.0.2`
    Create {
        domain: String,
        name: String,
        rtype: String,
        data: String,
        #[arg(long)]
        ttl: Option<u32>,
    },
    #[command(alias = "rm")]
    Delete {
        domain: String,
        name: String,
        rtype: String,
        data: String,
    },
}

fn parse_field<T: std::str::FromStr>(field: &str, s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("invalid {field} {s:?}"))
}

fn cidr_path(cidr: &str) -> Result<String> {
    let c: Cidr = cidr.parse()?;
    Ok(format!("{}/{}", c.network(), c.prefix()))
}

/// Fabrics take the same verbs as zones and pools.
pub async fn fabrics(c: &Client, format: Format, cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::List => {
            let fs: Vec<Fabric> = c.get("/api/v1/fabrics").await?;
            emit(format, &fs, |fs| {
                table(
                    &["NAME", "DESCRIPTION"],
                    fs.iter()
                        .map(|f| vec![f.name.clone(), f.description.clone()])
                        .collect(),
                )
            })
        }
        GroupCommand::Create { name, description } => {
            let f: Fabric = c
                .post("/api/v1/fabrics", &Fabric { name, description })
                .await?;
            println!("created fabric {} with its untagged VLAN 0", f.name);
            Ok(())
        }
        GroupCommand::Delete { name } => {
            c.delete(&format!("/api/v1/fabrics/{}", enc(&name))).await?;
            println!("deleted fabric {name}");
            Ok(())
        }
    }
}

pub async fn vlans(c: &Client, format: Format, cmd: VlanCommand) -> Result<()> {
    match cmd {
        VlanCommand::List => {
            let vs: Vec<Vlan> = c.get("/api/v1/vlans").await?;
            emit(format, &vs, |vs| {
                table(
                    &["FABRIC", "VID", "NAME", "MTU", "DHCP"],
                    vs.iter()
                        .map(|v| {
                            vec![
                                v.fabric.clone(),
                                v.vid.to_string(),
                                v.name.clone(),
                                v.mtu.to_string(),
                                if v.dhcp_on { "on".into() } else { "off".into() },
                            ]
                        })
                        .collect(),
                )
            })
        }
        VlanCommand::Create {
            fabric,
            vid,
            name,
            mtu,
        } => {
            let _: Vlan = c
                .post(
                    "/api/v1/vlans",
                    &Vlan {
                        fabric: fabric.clone(),
                        vid,
                        name,
                        mtu,
                        dhcp_on: false,
                    },
                )
                .await?;
            println!("created VLAN {fabric}.{vid}");
            Ok(())
        }
        VlanCommand::Update {
            fabric,
            vid,
            dhcp,
            mtu,
            name,
        } => {
            let all: Vec<Vlan> = c.get("/api/v1/vlans").await?;
            let mut v = all
                .into_iter()
                .find(|v| v.fabric == fabric && v.vid == vid)
                .ok_or_else(|| anyhow::anyhow!("no VLAN {vid} on fabric {fabric}"))?;
            if let Some(d) = dhcp {
                v.dhcp_on = d == "on";
            }
            if let Some(m) = mtu {
                v.mtu = m;
            }
            if let Some(n) = name {
                v.name = n;
            }
            let v: Vlan = c
                .put(&format!("/api/v1/vlans/{}/{vid}", enc(&fabric)), &v)
                .await?;
            println!(
                "VLAN {}.{}: mtu {}, dhcp {}",
                v.fabric,
                v.vid,
                v.mtu,
                if v.dhcp_on { "on" } else { "off" }
            );
            Ok(())
        }
        VlanCommand::Delete { fabric, vid } => {
            c.delete(&format!("/api/v1/vlans/{}/{vid}", enc(&fabric)))
                .await?;
            println!("deleted VLAN {fabric}.{vid}");
            Ok(())
        }
    }
}

fn subnet_rows(ss: &[Subnet]) -> comfy_table::Table {
    table(
        &[
            "CIDR", "FABRIC", "VID", "GATEWAY", "DNS", "DOMAIN", "MANAGED",
        ],
        ss.iter()
            .map(|s| {
                vec![
                    s.cidr.to_string(),
                    s.fabric.clone(),
                    s.vid.to_string(),
                    s.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.dns_servers
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    s.domain.clone().unwrap_or_else(|| "-".into()),
                    s.managed.to_string(),
                ]
            })
            .collect(),
    )
}

pub async fn subnets(c: &Client, format: Format, cmd: SubnetCommand) -> Result<()> {
    match cmd {
        SubnetCommand::List => {
            let ss: Vec<Subnet> = c.get("/api/v1/subnets").await?;
            emit(format, &ss, |ss| subnet_rows(ss))
        }
        SubnetCommand::Show { cidr } => {
            let s: Subnet = c
                .get(&format!("/api/v1/subnets/{}", cidr_path(&cidr)?))
                .await?;
            emit(format, &s, |s| subnet_rows(std::slice::from_ref(s)))
        }
        SubnetCommand::Create {
            cidr,
            fabric,
            vid,
            gateway,
            dns_servers,
            domain,
            unmanaged,
        } => {
            let s = Subnet {
                cidr: cidr.parse()?,
                fabric,
                vid,
                gateway: gateway
                    .as_deref()
                    .map(|g| parse_field("gateway", g))
                    .transpose()?,
                dns_servers: dns_servers
                    .iter()
                    .map(|d| parse_field("dns-server", d))
                    .collect::<Result<_>>()?,
                domain,
                managed: !unmanaged,
            };
            let s: Subnet = c.post("/api/v1/subnets", &s).await?;
            emit(format, &s, |s| subnet_rows(std::slice::from_ref(s)))
        }
        SubnetCommand::Delete { cidr } => {
            c.delete(&format!("/api/v1/subnets/{}", cidr_path(&cidr)?))
                .await?;
            println!("deleted subnet {cidr}");
            Ok(())
        }
    }
}

pub async fn ranges(c: &Client, format: Format, cmd: RangeCommand) -> Result<()> {
    match cmd {
        RangeCommand::List { subnet } => {
            let q = subnet
                .map(|s| format!("?subnet={}", enc(&s)))
                .unwrap_or_default();
            let rs: Vec<SubnetRange> = c.get(&format!("/api/v1/ipranges{q}")).await?;
            emit(format, &rs, |rs| {
                table(
                    &["SUBNET", "KIND", "START", "END", "SIZE", "COMMENT"],
                    rs.iter()
                        .map(|r| {
                            vec![
                                r.subnet.to_string(),
                                format!("{:?}", r.range.kind).to_lowercase(),
                                r.range.start.to_string(),
                                r.range.end.to_string(),
                                r.range.len().to_string(),
                                r.range.comment.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        RangeCommand::Create {
            subnet,
            kind,
            start,
            end,
            comment,
        } => {
            let r = SubnetRange {
                subnet: subnet.parse()?,
                range: IpRange {
                    kind: if kind == "dynamic" {
                        RangeKind::Dynamic
                    } else {
                        RangeKind::Reserved
                    },
                    start: parse_field("start", &start)?,
                    end: parse_field("end", &end)?,
                    comment,
                },
            };
            let _: SubnetRange = c.post("/api/v1/ipranges", &r).await?;
            println!("created {kind} range {start}-{end} on {subnet}");
            Ok(())
        }
        RangeCommand::Delete { subnet, start } => {
            c.delete(&format!(
                "/api/v1/ipranges/{}/{}",
                cidr_path(&subnet)?,
                enc(&start)
            ))
            .await?;
            println!("deleted the range starting at {start} on {subnet}");
            Ok(())
        }
    }
}

pub async fn domains(c: &Client, format: Format, cmd: DomainCommand) -> Result<()> {
    match cmd {
        DomainCommand::List => {
            let ds: Vec<Domain> = c.get("/api/v1/domains").await?;
            emit(format, &ds, |ds| {
                table(
                    &["NAME", "TTL", "AUTHORITATIVE"],
                    ds.iter()
                        .map(|d| {
                            vec![
                                d.name.clone(),
                                d.ttl.to_string(),
                                d.authoritative.to_string(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        DomainCommand::Create { name, ttl } => {
            let _: Domain = c
                .post(
                    "/api/v1/domains",
                    &Domain {
                        name: name.clone(),
                        ttl,
                        authoritative: true,
                    },
                )
                .await?;
            println!("created domain {name}");
            Ok(())
        }
        DomainCommand::Delete { name } => {
            c.delete(&format!("/api/v1/domains/{}", enc(&name))).await?;
            println!("deleted domain {name}");
            Ok(())
        }
    }
}

pub async fn records(c: &Client, format: Format, cmd: RecordCommand) -> Result<()> {
    match cmd {
        RecordCommand::List => {
            let rs: Vec<DnsRecord> = c.get("/api/v1/dns-records").await?;
            emit(format, &rs, |rs| {
                table(
                    &["DOMAIN", "NAME", "TYPE", "DATA", "TTL"],
                    rs.iter()
                        .map(|r| {
                            vec![
                                r.domain.clone(),
                                r.name.clone(),
                                r.rtype.clone(),
                                r.data.clone(),
                                r.ttl.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                )
            })
        }
        RecordCommand::Create {
            domain,
            name,
            rtype,
            data,
            ttl,
        } => {
            let _: DnsRecord = c
                .post(
                    "/api/v1/dns-records",
                    &DnsRecord {
                        domain,
                        name: name.clone(),
                        rtype: rtype.to_ascii_uppercase(),
                        data,
                        ttl,
                    },
                )
                .await?;
            println!("created {rtype} record {name}");
            Ok(())
        }
        RecordCommand::Delete {
            domain,
            name,
            rtype,
            data,
        } => {
            let body = DnsRecord {
                domain,
                name: name.clone(),
                rtype: rtype.to_ascii_uppercase(),
                data,
                ttl: None,
            };
            let _: Value = c
                .request(reqwest::Method::DELETE, "/api/v1/dns-records", Some(&body))
                .await?;
            println!("deleted {rtype} record {name}");
            Ok(())
        }
    }
}

pub async fn link(
    c: &Client,
    format: Format,
    machine: String,
    mac: String,
    subnet: String,
    ip: Option<String>,
) -> Result<()> {
    let s: StaticIp = c
        .post(
            &format!("/api/v1/machines/{}/addresses", enc(&machine)),
            &LinkRequest { mac, subnet, ip },
        )
        .await?;
    emit(format, &s, |s| {
        table(
            &["IP", "SUBNET", "MAC", "MACHINE"],
            vec![vec![
                s.ip.clone(),
                s.subnet.clone(),
                s.mac.clone(),
                s.system_id.clone(),
            ]],
        )
    })
}

pub async fn addresses(c: &Client, format: Format, machine: String) -> Result<()> {
    let ss: Vec<StaticIp> = c
        .get(&format!("/api/v1/machines/{}/addresses", enc(&machine)))
        .await?;
    emit(format, &ss, |ss| {
        table(
            &["IP", "SUBNET", "MAC"],
            ss.iter()
                .map(|s| vec![s.ip.clone(), s.subnet.clone(), s.mac.clone()])
                .collect(),
        )
    })
}

pub async fn unlink(c: &Client, machine: String, ip: String) -> Result<()> {
    c.delete(&format!(
        "/api/v1/machines/{}/addresses/{}",
        enc(&machine),
        enc(&ip)
    ))
    .await?;
    println!("released {ip} from {machine}");
    Ok(())
}

pub async fn rack_config(c: &Client, format: Format) -> Result<()> {
    let cfg: RackConfig = c.get("/api/v1/rack/config").await?;
    emit(
        if format == Format::Table {
            Format::Yaml
        } else {
            format
        },
        &cfg,
        |_| unreachable!("tables print as YAML"),
    )
}

pub async fn rogue_dhcp(c: &Client, format: Format) -> Result<()> {
    let reports: Vec<kumo_model::network::RogueDhcpReport> =
        c.get("/api/v1/rack/rogue-dhcp").await?;
    emit(format, &reports, |reports| {
        let rows = reports
            .iter()
            .flat_map(|r| {
                r.servers.iter().map(|s| {
                    vec![
                        r.rack.clone(),
                        s.interface.clone(),
                        s.server_id.to_string(),
                        s.offered_ip.map(|i| i.to_string()).unwrap_or_default(),
                    ]
                })
            })
            .collect();
        table(&["RACK", "INTERFACE", "SERVER", "OFFERED"], rows)
    })
}
