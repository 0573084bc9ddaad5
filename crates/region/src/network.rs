//! The region's network model: fabrics, VLANs, subnets, IP ranges, DNS
//! domains and records, static addresses for machines' interfaces, and the
//! rack configuration derived from all of them.

use std::net::Ipv4Addr;

use kumo_model::network::{
    check_range, check_static, next_free, parse_ip, Cidr, DnsRecord, Domain, Fabric, LinkRequest,
    RackBoot, RackConfig, RackHost, RackSubnet, RangeKind, RogueDhcpReport, RogueDhcpServer,
    Subnet, SubnetRange, Vlan,
};
use kumo_model::{MacAddress, Name};
use kumo_store::{NewEvent, StaticIp, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Actor, Region, RegionError};

const FABRIC: &str = "fabric";
const VLAN: &str = "vlan";
const SUBNET: &str = "subnet";
const RANGE: &str = "iprange";
const DOMAIN: &str = "domain";
const RECORD: &str = "dnsrecord";

fn vlan_key(fabric: &str, vid: u16) -> String {
    format!("{fabric}.{vid}")
}

fn range_key(r: &SubnetRange) -> String {
    format!("{}-{}", r.range.start, r.range.end)
}

fn record_key(r: &DnsRecord) -> String {
    format!("{}.{}.{}.{}", r.name, r.domain, r.rtype, r.data)
}

impl Region {
    async fn objects<T: DeserializeOwned>(
        &self,
        kind: &'static str,
    ) -> Result<Vec<T>, RegionError> {
        self.store()
            .list_network_objects(kind)
            .await?
            .into_iter()
            .map(|v| {
                serde_json::from_value(v)
                    .map_err(|e| RegionError::Internal(format!("stored {kind}: {e}")))
            })
            .collect()
    }

    async fn put<T: Serialize>(
        &self,
        actor: &Actor,
        kind: &'static str,
        key: &str,
        obj: &T,
    ) -> Result<(), RegionError> {
        let body = serde_json::to_value(obj).map_err(|e| RegionError::Internal(e.to_string()))?;
        self.store()
            .put_network_object(kind, key, &body, true)
            .await?;
        self.record_audit(actor, "create", format!("{kind}/{key}"), "")
            .await
    }

    async fn remove(
        &self,
        actor: &Actor,
        kind: &'static str,
        key: &str,
    ) -> Result<(), RegionError> {
        self.store().delete_network_object(kind, key).await?;
        self.record_audit(actor, "delete", format!("{kind}/{key}"), "")
            .await
    }

    fn in_use(what: &'static str, id: &str, by: usize) -> RegionError {
        RegionError::InUse {
            what,
            id: id.to_owned(),
            count: by as i64,
        }
    }

    // ---- fabrics and VLANs ----------------------------------------------

    pub async fn fabrics(&self) -> Result<Vec<Fabric>, RegionError> {
        self.objects(FABRIC).await
    }

    pub async fn create_fabric(&self, actor: &Actor, f: Fabric) -> Result<Fabric, RegionError> {
        Self::require_admin(actor, "creating a fabric")?;
        Name::parse("name", &f.name)?;
        self.put(actor, FABRIC, &f.name, &f).await?;
        // Every fabric has its untagged VLAN, as switches do.
        let untagged = Vlan {
            fabric: f.name.clone(),
            vid: 0,
            name: "untagged".into(),
            mtu: 1500,
            dhcp_on: false,
        };
        self.put(actor, VLAN, &vlan_key(&f.name, 0), &untagged)
            .await?;
        Ok(f)
    }

    pub async fn delete_fabric(&self, actor: &Actor, name: &str) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a fabric")?;
        let subnets: Vec<Subnet> = self.objects(SUBNET).await?;
        let n = subnets.iter().filter(|s| s.fabric == name).count();
        if n > 0 {
            return Err(RegionError::invalid(
                "fabric",
                format!("fabric {name} still has {n} subnets; delete them first"),
            ));
        }
        self.store().get_network_object(FABRIC, name).await?;
        for v in self.vlans().await?.into_iter().filter(|v| v.fabric == name) {
            self.remove(actor, VLAN, &vlan_key(&v.fabric, v.vid))
                .await?;
        }
        self.remove(actor, FABRIC, name).await
    }

    pub async fn vlans(&self) -> Result<Vec<Vlan>, RegionError> {
        self.objects(VLAN).await
    }

    pub async fn vlan(&self, fabric: &str, vid: u16) -> Result<Vlan, RegionError> {
        let v = self
            .store()
            .get_network_object(VLAN, &vlan_key(fabric, vid))
            .await?;
        serde_json::from_value(v).map_err(|e| RegionError::Internal(e.to_string()))
    }

    pub async fn create_vlan(&self, actor: &Actor, v: Vlan) -> Result<Vlan, RegionError> {
        Self::require_admin(actor, "creating a VLAN")?;
        if v.vid > 4094 {
            return Err(RegionError::invalid(
                "vid",
                format!("{} is not a VLAN id (0 to 4094)", v.vid),
            ));
        }
        if !(552..=65535).contains(&v.mtu) {
            return Err(RegionError::invalid(
                "mtu",
                format!("{} is not a usable MTU (552 to 65535)", v.mtu),
            ));
        }
        self.fabric_exists(&v.fabric).await?;
        self.put(actor, VLAN, &vlan_key(&v.fabric, v.vid), &v)
            .await?;
        Ok(v)
    }

    /// Changes a VLAN's name, MTU or DHCP; `dhcp_on` is MAAS's "provide DHCP".
    pub async fn update_vlan(&self, actor: &Actor, v: Vlan) -> Result<Vlan, RegionError> {
        Self::require_admin(actor, "updating a VLAN")?;
        self.vlan(&v.fabric, v.vid).await?;
        if v.dhcp_on {
            let subnets: Vec<Subnet> = self.objects(SUBNET).await?;
            let ranges: Vec<SubnetRange> = self.objects(RANGE).await?;
            let has_dynamic = subnets
                .iter()
                .filter(|s| s.fabric == v.fabric && s.vid == v.vid && s.managed)
                .any(|s| {
                    ranges
                        .iter()
                        .any(|r| r.subnet == s.cidr && r.range.kind == RangeKind::Dynamic)
                });
            if !has_dynamic {
                return Err(RegionError::invalid(
                    "dhcp_on",
                    format!("VLAN {}.{} has no managed subnet with a dynamic range; add one before turning DHCP on", v.fabric, v.vid),
                ));
            }
        }
        let body = serde_json::to_value(&v).map_err(|e| RegionError::Internal(e.to_string()))?;
        self.store()
            .put_network_object(VLAN, &vlan_key(&v.fabric, v.vid), &body, false)
            .await?;
        self.record_audit(
            actor,
            "update",
            format!("vlan/{}", vlan_key(&v.fabric, v.vid)),
            "",
        )
        .await?;
        Ok(v)
    }

    pub async fn delete_vlan(
        &self,
        actor: &Actor,
        fabric: &str,
        vid: u16,
    ) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a VLAN")?;
        let subnets: Vec<Subnet> = self.objects(SUBNET).await?;
        let n = subnets
            .iter()
            .filter(|s| s.fabric == fabric && s.vid == vid)
            .count();
        if n > 0 {
            return Err(Self::in_use("vlan", &vlan_key(fabric, vid), n));
        }
        self.remove(actor, VLAN, &vlan_key(fabric, vid)).await
    }

    async fn fabric_exists(&self, name: &str) -> Result<(), RegionError> {
        match self.store().get_network_object(FABRIC, name).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => Err(RegionError::invalid(
                "fabric",
                format!("no fabric named {name:?}"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    // ---- subnets and ranges ----------------------------------------------

    pub async fn subnets(&self) -> Result<Vec<Subnet>, RegionError> {
        self.objects(SUBNET).await
    }

    pub async fn subnet(&self, cidr: &str) -> Result<Subnet, RegionError> {
        let c: Cidr = cidr.parse()?;
        let v = self
            .store()
            .get_network_object(SUBNET, &c.to_string())
            .await?;
        serde_json::from_value(v).map_err(|e| RegionError::Internal(e.to_string()))
    }

    pub async fn create_subnet(&self, actor: &Actor, s: Subnet) -> Result<Subnet, RegionError> {
        Self::require_admin(actor, "creating a subnet")?;
        self.fabric_exists(&s.fabric).await?;
        if let Err(RegionError::NotFound { .. }) = self.vlan(&s.fabric, s.vid).await {
            return Err(RegionError::invalid(
                "vid",
                format!("fabric {} has no VLAN {}", s.fabric, s.vid),
            ));
        }
        if let Some(gw) = s.gateway {
            if !s.cidr.is_host(gw) {
                return Err(RegionError::invalid(
                    "gateway",
                    format!("{gw} is not a host address of {}", s.cidr),
                ));
            }
        }
        if let Some(d) = &s.domain {
            kumo_model::network::check_dns_name("domain", d)?;
        }
        if let Some(o) = self
            .subnets()
            .await?
            .into_iter()
            .find(|o| o.cidr.overlaps(&s.cidr))
        {
            return Err(RegionError::invalid(
                "cidr",
                format!("{} overlaps subnet {}", s.cidr, o.cidr),
            ));
        }
        self.put(actor, SUBNET, &s.cidr.to_string(), &s).await?;
        Ok(s)
    }

    pub async fn delete_subnet(&self, actor: &Actor, cidr: &str) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a subnet")?;
        let s = self.subnet(cidr).await?;
        let key = s.cidr.to_string();
        let used = self.store().static_ips(Some(&key)).await?.len();
        if used > 0 {
            return Err(Self::in_use("subnet", &key, used));
        }
        for r in self.ranges(Some(&key)).await? {
            self.remove(actor, RANGE, &range_key(&r)).await?;
        }
        self.remove(actor, SUBNET, &key).await
    }

    pub async fn ranges(&self, subnet: Option<&str>) -> Result<Vec<SubnetRange>, RegionError> {
        let all: Vec<SubnetRange> = self.objects(RANGE).await?;
        Ok(match subnet {
            Some(s) => {
                let c: Cidr = s.parse()?;
                all.into_iter().filter(|r| r.subnet == c).collect()
            }
            None => all,
        })
    }

    pub async fn create_range(
        &self,
        actor: &Actor,
        r: SubnetRange,
    ) -> Result<SubnetRange, RegionError> {
        Self::require_admin(actor, "creating an IP range")?;
        let s = self
            .subnet(&r.subnet.to_string())
            .await
            .map_err(|e| match e {
                RegionError::NotFound { .. } => {
                    RegionError::invalid("subnet", format!("no subnet {}", r.subnet))
                }
                other => other,
            })?;
        let others: Vec<_> = self
            .ranges(Some(&s.cidr.to_string()))
            .await?
            .into_iter()
            .map(|o| o.range)
            .collect();
        check_range(&s.cidr, s.gateway, &r.range, &others)?;
        let taken: Vec<String> = self
            .store()
            .static_ips(Some(&s.cidr.to_string()))
            .await?
            .into_iter()
            .filter(|ip| ip.ip.parse::<Ipv4Addr>().is_ok_and(|a| r.range.contains(a)))
            .map(|ip| ip.ip)
            .collect();
        if !taken.is_empty() {
            return Err(RegionError::invalid(
                "start",
                format!(
                    "the range holds static addresses already allocated: {}",
                    taken.join(", ")
                ),
            ));
        }
        self.put(actor, RANGE, &range_key(&r), &r).await?;
        Ok(r)
    }

    pub async fn delete_range(
        &self,
        actor: &Actor,
        subnet: &str,
        start: &str,
    ) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting an IP range")?;
        let start = parse_ip("start", start)?;
        let r = self
            .ranges(Some(subnet))
            .await?
            .into_iter()
            .find(|r| r.range.start == start)
            .ok_or_else(|| RegionError::NotFound {
                what: "iprange",
                id: format!("{subnet} {start}"),
            })?;
        self.remove(actor, RANGE, &range_key(&r)).await
    }

    // ---- DNS ---------------------------------------------------------------

    pub async fn domains(&self) -> Result<Vec<Domain>, RegionError> {
        self.objects(DOMAIN).await
    }

    pub async fn create_domain(&self, actor: &Actor, d: Domain) -> Result<Domain, RegionError> {
        Self::require_admin(actor, "creating a domain")?;
        kumo_model::network::check_dns_name("name", &d.name)?;
        self.put(actor, DOMAIN, &d.name.to_ascii_lowercase(), &d)
            .await?;
        Ok(d)
    }

    pub async fn delete_domain(&self, actor: &Actor, name: &str) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a domain")?;
        let records: Vec<DnsRecord> = self.objects(RECORD).await?;
        let n = records.iter().filter(|r| r.domain == name).count();
        if n > 0 {
            return Err(Self::in_use("domain", name, n));
        }
        self.remove(actor, DOMAIN, name).await
    }

    pub async fn dns_records(&self) -> Result<Vec<DnsRecord>, RegionError> {
        self.objects(RECORD).await
    }

    pub async fn create_dns_record(
        &self,
        actor: &Actor,
        r: DnsRecord,
    ) -> Result<DnsRecord, RegionError> {
        Self::require_admin(actor, "creating a DNS record")?;
        r.validate()?;
        if self
            .store()
            .get_network_object(DOMAIN, &r.domain)
            .await
            .is_err()
        {
            return Err(RegionError::invalid(
                "domain",
                format!("no domain named {:?}", r.domain),
            ));
        }
        let existing: Vec<DnsRecord> = self.dns_records().await?;
        let same_name: Vec<&DnsRecord> = existing
            .iter()
            .filter(|o| o.domain == r.domain && o.name == r.name)
            .collect();
        if (r.rtype == "CNAME" && !same_name.is_empty())
            || same_name.iter().any(|o| o.rtype == "CNAME")
        {
            return Err(RegionError::invalid(
                "rtype",
                format!(
                    "{}.{}: a CNAME cannot share its name with other records",
                    r.name, r.domain
                ),
            ));
        }
        self.put(actor, RECORD, &record_key(&r), &r).await?;
        Ok(r)
    }

    pub async fn delete_dns_record(&self, actor: &Actor, r: DnsRecord) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a DNS record")?;
        self.remove(actor, RECORD, &record_key(&r)).await
    }

    // ---- static addresses ----------------------------------------------------

    /// Gives a machine's interface a static address on a subnet.
    pub async fn link_machine(
        &self,
        actor: &Actor,
        id: &str,
        req: LinkRequest,
    ) -> Result<StaticIp, RegionError> {
        Self::require_admin(actor, "linking a machine to a subnet")?;
        let m = self.machine(id).await?;
        let mac: MacAddress = req.mac.parse()?;
        if !m.macs.contains(&mac) {
            return Err(RegionError::invalid(
                "mac",
                format!("machine {} has no interface {mac}", m.system_id),
            ));
        }
        let s = self.subnet(&req.subnet).await.map_err(|e| match e {
            RegionError::NotFound { .. } => {
                RegionError::invalid("subnet", format!("no subnet {}", req.subnet))
            }
            other => other,
        })?;
        let key = s.cidr.to_string();
        let ranges: Vec<_> = self
            .ranges(Some(&key))
            .await?
            .into_iter()
            .map(|r| r.range)
            .collect();
        if self
            .store()
            .machine_static_ips(m.system_id.as_str())
            .await?
            .iter()
            .any(|i| i.mac == mac.to_string() && i.subnet == key)
        {
            return Err(RegionError::AlreadyExists {
                what: "link",
                value: format!("{mac} on {key}"),
            });
        }
        // Another writer may take the same address; the unique key refuses
        // it and we choose again.
        for _ in 0..8 {
            let used: Vec<Ipv4Addr> = self
                .store()
                .static_ips(Some(&key))
                .await?
                .iter()
                .filter_map(|i| i.ip.parse().ok())
                .collect();
            let ip = match &req.ip {
                Some(ip) => {
                    let ip = parse_ip("ip", ip)?;
                    check_static(&s.cidr, s.gateway, &ranges, &used, ip)?;
                    ip
                }
                None => next_free(&s.cidr, s.gateway, &ranges, &used).ok_or_else(|| {
                    RegionError::invalid(
                        "subnet",
                        format!("subnet {key} has no free static address left"),
                    )
                })?,
            };
            let sip = StaticIp {
                ip: ip.to_string(),
                subnet: key.clone(),
                system_id: m.system_id.to_string(),
                mac: mac.to_string(),
            };
            match self.store().add_static_ip(&sip, self.now()).await {
                Ok(()) => {
                    self.record_audit(
                        actor,
                        "link",
                        format!("machine/{} {mac} {ip}", m.system_id),
                        "",
                    )
                    .await?;
                    return Ok(sip);
                }
                Err(StoreError::Duplicate { .. }) if req.ip.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegionError::Busy(m.system_id.to_string()))
    }

    pub async fn unlink_machine(
        &self,
        actor: &Actor,
        id: &str,
        ip: &str,
    ) -> Result<(), RegionError> {
        Self::require_admin(actor, "unlinking a machine")?;
        let m = self.machine(id).await?;
        let held = self
            .store()
            .machine_static_ips(m.system_id.as_str())
            .await?;
        if !held.iter().any(|h| h.ip == ip) {
            return Err(RegionError::NotFound {
                what: "ip",
                id: format!("{ip} on machine {}", m.system_id),
            });
        }
        self.store().remove_static_ip(ip).await?;
        self.record_audit(actor, "unlink", format!("machine/{} {ip}", m.system_id), "")
            .await
    }

    pub async fn machine_addresses(&self, id: &str) -> Result<Vec<StaticIp>, RegionError> {
        let m = self.machine(id).await?;
        Ok(self
            .store()
            .machine_static_ips(m.system_id.as_str())
            .await?)
    }

    // ---- what racks serve ----------------------------------------------------

    /// DHCP for managed subnets on VLANs with DHCP on, and DNS for every
    /// domain, with each linked machine named `hostname.domain`.
    pub async fn rack_config(&self) -> Result<RackConfig, RegionError> {
        let vlans = self.vlans().await?;
        let ranges: Vec<SubnetRange> = self.objects(RANGE).await?;
        let ips = self.store().static_ips(None).await?;
        let machines = self.store().list_machines(&Default::default()).await?;
        let hostname_of = |sid: &str| {
            machines
                .iter()
                .find(|m| m.system_id.as_str() == sid)
                .map(|m| m.hostname.to_string())
        };
        let mut cfg = RackConfig {
            domains: self.domains().await?,
            records: self.dns_records().await?,
            boot: machines
                .iter()
                .flat_map(|m| {
                    m.macs.iter().map(|mac| RackBoot {
                        mac: mac.to_string(),
                        system_id: m.system_id.to_string(),
                        hostname: m.hostname.to_string(),
                        purpose: m.boot_purpose(),
                    })
                })
                .collect(),
            images: self.images().await?,
            ..Default::default()
        };
        for s in self.subnets().await? {
            let key = s.cidr.to_string();
            let hosts: Vec<RackHost> = ips
                .iter()
                .filter(|i| i.subnet == key)
                .filter_map(|i| {
                    Some(RackHost {
                        mac: i.mac.clone(),
                        ip: i.ip.parse().ok()?,
                        hostname: hostname_of(&i.system_id)?,
                    })
                })
                .collect();
            if let Some(domain) = &s.domain {
                cfg.hosts.extend(
                    hosts
                        .iter()
                        .map(|h| (format!("{}.{domain}", h.hostname), h.ip)),
                );
            }
            let vlan = vlans
                .iter()
                .find(|v| v.fabric == s.fabric && v.vid == s.vid);
            if !(s.managed && vlan.is_some_and(|v| v.dhcp_on)) {
                continue;
            }
            let mine: Vec<_> = ranges
                .iter()
                .filter(|r| r.subnet == s.cidr)
                .map(|r| r.range.clone())
                .collect();
            cfg.subnets.push(RackSubnet {
                cidr: s.cidr,
                gateway: s.gateway,
                dns_servers: s.dns_servers.clone(),
                domain: s.domain.clone(),
                mtu: vlan.map(|v| v.mtu).unwrap_or(1500),
                dynamic_ranges: mine
                    .iter()
                    .filter(|r| r.kind == RangeKind::Dynamic)
                    .cloned()
                    .collect(),
                reserved_ranges: mine
                    .iter()
                    .filter(|r| r.kind == RangeKind::Reserved)
                    .cloned()
                    .collect(),
                hosts,
            });
        }
        Ok(cfg)
    }

    /// The rack configuration and its entity tag, once it differs from
    /// `known` (the tag the rack holds) or `wait` has passed, whichever is
    /// first. Changes made through this process wake the wait at once;
    /// those made by other region processes are seen at the next poll.
    pub async fn rack_config_wait(
        &self,
        known: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<(String, RackConfig), RegionError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.subscribe_changes();
        loop {
            changes.mark_unchanged();
            let cfg = self.rack_config().await?;
            let tag = rack_config_tag(&cfg);
            let now = tokio::time::Instant::now();
            if known != Some(tag.as_str()) || now >= deadline || self.is_stopping() {
                return Ok((tag, cfg));
            }
            let poll = (now + self.inner.config.poll_interval).min(deadline);
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep_until(poll) => {}
            }
        }
    }

    /// Records what a rack's rogue DHCP probe found: an event for each
    /// server not reported by that rack before, and an event when one
    /// stops answering. The list lives as network objects of kind
    /// `rogue-dhcp`, one per rack.
    pub async fn report_rogue_dhcp(
        &self,
        actor: &Actor,
        report: RogueDhcpReport,
    ) -> Result<Vec<RogueDhcpServer>, RegionError> {
        Self::require_admin(actor, "reporting rogue DHCP servers")?;
        kumo_model::network::check_dns_name("rack", &report.rack)?;
        let key = report.rack.clone();
        let before: Vec<RogueDhcpServer> =
            match self.store().get_network_object(ROGUE_DHCP, &key).await {
                Ok(v) => serde_json::from_value::<RogueDhcpReport>(v)
                    .map(|r| r.servers)
                    .unwrap_or_default(),
                Err(StoreError::NotFound { .. }) => vec![],
                Err(e) => return Err(e.into()),
            };
        let same = |a: &RogueDhcpServer, b: &RogueDhcpServer| {
            a.interface == b.interface && a.server_id == b.server_id
        };
        let subject = format!("rack:{}", report.rack);
        for s in &report.servers {
            if !before.iter().any(|b| same(b, s)) {
                let offered = s
                    .offered_ip
                    .map(|ip| format!(", offering {ip}"))
                    .unwrap_or_default();
                let message = format!(
                    "rogue dhcp server {} answering on {}{offered}",
                    s.server_id, s.interface
                );
                tracing::warn!(rack = %report.rack, "{message}");
                self.store()
                    .add_machine_event(
                        &subject,
                        self.now(),
                        &NewEvent {
                            kind: "rogue-dhcp",
                            message,
                        },
                    )
                    .await?;
            }
        }
        for b in &before {
            if !report.servers.iter().any(|s| same(b, s)) {
                let message = format!(
                    "rogue dhcp server {} no longer answers on {}",
                    b.server_id, b.interface
                );
                self.store()
                    .add_machine_event(
                        &subject,
                        self.now(),
                        &NewEvent {
                            kind: "rogue-dhcp-gone",
                            message,
                        },
                    )
                    .await?;
            }
        }
        if before != report.servers {
            let body = serde_json::to_value(&report).expect("plain data serialises");
            match self
                .store()
                .put_network_object(ROGUE_DHCP, &key, &body, false)
                .await
            {
                Err(StoreError::NotFound { .. }) => {
                    self.store()
                        .put_network_object(ROGUE_DHCP, &key, &body, true)
                        .await?
                }
                r => r?,
            }
        }
        Ok(report.servers)
    }

    /// Every rack's latest rogue DHCP findings, by rack name.
    pub async fn rogue_dhcp(&self) -> Result<Vec<RogueDhcpReport>, RegionError> {
        let reports: Vec<RogueDhcpReport> = self.objects(ROGUE_DHCP).await?;
        Ok(reports
            .into_iter()
            .filter(|r| !r.servers.is_empty())
            .collect())
    }
}

const ROGUE_DHCP: &str = "rogue-dhcp";

/// A short stable digest of a rack configuration: equal configurations
/// get equal tags on every region process.
pub fn rack_config_tag(cfg: &RackConfig) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(cfg).expect("plain data serialises");
    let digest = sha2::Sha256::digest(&json);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}
