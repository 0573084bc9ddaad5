//! The network model and IPAM through the region, on a real store.

use std::sync::Arc;

use kumo_model::api::AddMachine;
use kumo_model::network::{
    DnsRecord, Domain, Fabric, IpRange, LinkRequest, RangeKind, Subnet, SubnetRange, Vlan,
};
use kumo_region::{Actor, ManualClock, Region, RegionConfig, SecretBox, SeededEntropy};

fn admin() -> Actor {
    Actor {
        username: "admin".into(),
        admin: true,
    }
}

async fn region() -> (Region, tempfile::TempDir) {
    let (store, dir) = kumo_store::testing::sqlite().await;
    let r = Region::new(
        store,
        SecretBox::from_key([3; 32]),
        Arc::new(ManualClock::new(1_700_000_000_000)),
        Arc::new(SeededEntropy::new(4)),
        RegionConfig::default(),
    );
    r.ensure_defaults().await.unwrap();
    (r, dir)
}

fn subnet(cidr: &str) -> Subnet {
    let cidr: kumo_model::network::Cidr = cidr.parse().unwrap();
    Subnet {
        cidr,
        fabric: "fabric-0".into(),
        vid: 0,
        gateway: Some(cidr.first_host()),
        dns_servers: vec!["10.20.0.2".parse().unwrap()],
        domain: Some("maas.test".into()),
        managed: true,
    }
}

fn range(cidr: &str, kind: RangeKind, start: &str, end: &str) -> SubnetRange {
    SubnetRange {
        subnet: cidr.parse().unwrap(),
        range: IpRange {
            kind,
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            comment: String::new(),
        },
    }
}

#[tokio::test]
async fn subnets_ranges_and_dhcp_as_the_seed_sets_them_up() {
    let (r, _d) = region().await;
    let a = admin();
    assert_eq!(
        r.fabrics().await.unwrap()[0].name,
        "fabric-0",
        "the region starts with a fabric"
    );
    r.create_fabric(
        &a,
        Fabric {
            name: "fabric-1".into(),
            description: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        r.vlans().await.unwrap().len(),
        2,
        "each fabric comes with its untagged VLAN"
    );
    r.create_subnet(&a, subnet("10.20.0.0/24")).await.unwrap();

    // Turning DHCP on needs a dynamic range first, as MAAS insists.
    let mut v = r.vlan("fabric-0", 0).await.unwrap();
    v.dhcp_on = true;
    let e = r.update_vlan(&a, v.clone()).await.unwrap_err();
    assert_eq!(e.field().as_deref(), Some("dhcp_on"), "{e}");
    r.create_range(
        &a,
        range(
            "10.20.0.0/24",
            RangeKind::Dynamic,
            "10.20.0.100",
            "10.20.0.199",
        ),
    )
    .await
    .unwrap();
    r.create_range(
        &a,
        range(
            "10.20.0.0/24",
            RangeKind::Reserved,
            "10.20.0.2",
            "10.20.0.9",
        ),
    )
    .await
    .unwrap();
    r.update_vlan(&a, v).await.unwrap();

    // Bad input names the field.
    let e = r
        .create_range(
            &a,
            range(
                "10.20.0.0/24",
                RangeKind::Dynamic,
                "10.20.0.150",
                "10.20.0.250",
            ),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overlaps the dynamic range"), "{e}");
    let e = r
        .create_subnet(&a, subnet("10.20.0.0/25"))
        .await
        .unwrap_err();
    assert_eq!(e.field().as_deref(), Some("cidr"), "{e}");
    let mut bad = subnet("10.21.0.0/24");
    bad.vid = 42;
    assert_eq!(
        r.create_subnet(&a, bad)
            .await
            .unwrap_err()
            .field()
            .as_deref(),
        Some("vid")
    );
    let mut bad = subnet("10.22.0.0/24");
    bad.gateway = Some("10.99.0.1".parse().unwrap());
    assert_eq!(
        r.create_subnet(&a, bad)
            .await
            .unwrap_err()
            .field()
            .as_deref(),
        Some("gateway")
    );
    assert!(r
        .create_vlan(
            &a,
            Vlan {
                fabric: "fabric-0".into(),
                vid: 5000,
                name: String::new(),
                mtu: 1500,
                dhcp_on: false
            }
        )
        .await
        .is_err());

    // Machines get sticky static addresses outside every range.
    let m = r
        .add_machine(
            &a,
            AddMachine {
                hostname: "node1".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ip = r
        .link_machine(
            &a,
            "node1",
            LinkRequest {
                mac: "52:54:00:00:00:01".into(),
                subnet: "10.20.0.0/24".into(),
                ip: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ip.ip, "10.20.0.10",
        "the first free address after the gateway and the reserved range"
    );
    r.add_machine(
        &a,
        AddMachine {
            hostname: "node2".into(),
            macs: vec!["52:54:00:00:00:02".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = r
        .link_machine(
            &a,
            "node2",
            LinkRequest {
                mac: "52:54:00:00:00:02".into(),
                subnet: "10.20.0.0/24".into(),
                ip: Some("10.20.0.150".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("dynamic range"), "{e}");
    let e = r
        .link_machine(
            &a,
            "node2",
            LinkRequest {
                mac: "52:54:00:00:00:02".into(),
                subnet: "10.20.0.0/24".into(),
                ip: Some("10.20.0.10".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already allocated"), "{e}");
    let e = r
        .link_machine(
            &a,
            "node2",
            LinkRequest {
                mac: "52:54:00:00:00:09".into(),
                subnet: "10.20.0.0/24".into(),
                ip: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.field().as_deref(), Some("mac"));
    r.link_machine(
        &a,
        "node2",
        LinkRequest {
            mac: "52:54:00:00:00:02".into(),
            subnet: "10.20.0.0/24".into(),
            ip: Some("10.20.0.50".into()),
        },
    )
    .await
    .unwrap();

    // DNS: a domain with a record; the machines are named in it.
    r.create_domain(
        &a,
        Domain {
            name: "maas.test".into(),
            ttl: 300,
            authoritative: true,
        },
    )
    .await
    .unwrap();
    r.create_dns_record(
        &a,
        DnsRecord {
            domain: "maas.test".into(),
            name: "region".into(),
            rtype: "A".into(),
            data: "10.20.0.2".into(),
            ttl: None,
        },
    )
    .await
    .unwrap();
    let e = r
        .create_dns_record(
            &a,
            DnsRecord {
                domain: "maas.test".into(),
                name: "region".into(),
                rtype: "CNAME".into(),
                data: "node1.maas.test".into(),
                ttl: None,
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("CNAME cannot share"), "{e}");
    let e = r
        .create_dns_record(
            &a,
            DnsRecord {
                domain: "maas.test".into(),
                name: "x".into(),
                rtype: "A".into(),
                data: "10.20.0.256".into(),
                ttl: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.field().as_deref(), Some("data"));

    let cfg = r.rack_config().await.unwrap();
    assert_eq!(cfg.subnets.len(), 1);
    let s = &cfg.subnets[0];
    assert_eq!(s.dynamic_ranges.len(), 1);
    assert_eq!(s.reserved_ranges.len(), 1);
    let hosts: Vec<(&str, String)> = s
        .hosts
        .iter()
        .map(|h| (h.hostname.as_str(), h.ip.to_string()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("node1", "10.20.0.10".to_string()),
            ("node2", "10.20.0.50".to_string())
        ]
    );
    assert!(cfg
        .hosts
        .contains(&("node1.maas.test".to_string(), "10.20.0.10".parse().unwrap())));
    assert_eq!(cfg.records.len(), 1);

    // Deletes refuse what is still in use, and free what they own.
    let e = r.delete_subnet(&a, "10.20.0.0/24").await.unwrap_err();
    assert_eq!(e.code(), "in_use", "{e}");
    r.unlink_machine(&a, "node2", "10.20.0.50").await.unwrap();
    r.delete_machine(&a, m.system_id.as_str()).await.unwrap();
    r.delete_subnet(&a, "10.20.0.0/24").await.unwrap();
    assert!(r.ranges(None).await.unwrap().is_empty());
    r.delete_fabric(&a, "fabric-0").await.unwrap();
    assert_eq!(
        r.vlans().await.unwrap().len(),
        1,
        "only fabric-1's VLAN is left"
    );
}

#[tokio::test]
async fn only_admins_change_the_network() {
    let (r, _d) = region().await;
    let bob = Actor {
        username: "bob".into(),
        admin: false,
    };
    assert_eq!(
        r.create_fabric(
            &bob,
            Fabric {
                name: "f".into(),
                description: String::new()
            }
        )
        .await
        .unwrap_err()
        .code(),
        "forbidden"
    );
}

#[tokio::test]
async fn the_rack_long_poll_wakes_on_a_change_and_times_out_without_one() {
    let (r, _d) = region().await;
    let (tag, _) = r
        .rack_config_wait(None, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    // Nothing changes: the wait runs out and the tag stays.
    let t0 = std::time::Instant::now();
    let (same, _) = r
        .rack_config_wait(Some(&tag), std::time::Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(same, tag);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(300));
    // A change made while a rack waits wakes it with the new configuration.
    let waiter = {
        let (r, tag) = (r.clone(), tag.clone());
        tokio::spawn(async move {
            r.rack_config_wait(Some(&tag), std::time::Duration::from_secs(60))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    r.create_domain(
        &admin(),
        Domain {
            name: "lab.test".into(),
            ttl: 60,
            authoritative: true,
        },
    )
    .await
    .unwrap();
    let (new_tag, cfg) = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("the change woke the waiting rack")
        .unwrap();
    assert_ne!(new_tag, tag);
    assert_eq!(cfg.domains[0].name, "lab.test");
    // An unknown tag (another region's, or a stale one) answers at once.
    let (now, _) = r
        .rack_config_wait(Some("stale"), std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(now, new_tag);
}

#[tokio::test]
async fn a_stopping_region_ends_the_rack_long_poll_at_once() {
    let (r, _d) = region().await;
    let (tag, _) = r
        .rack_config_wait(None, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let waiter = {
        let (r, tag) = (r.clone(), tag.clone());
        tokio::spawn(async move {
            r.rack_config_wait(Some(&tag), std::time::Duration::from_secs(300))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    r.begin_shutdown();
    let (same, _) = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("shutdown ended the long poll")
        .unwrap();
    assert_eq!(same, tag);
    // A poll that starts while stopping does not wait either.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        r.rack_config_wait(Some(&tag), std::time::Duration::from_secs(300)),
    )
    .await
    .expect("a new long poll answers at once")
    .unwrap();
}

#[tokio::test]
async fn machines_boot_purpose_follows_their_status_in_the_rack_config() {
    let (r, _d) = region().await;
    let m = r
        .add_machine(
            &admin(),
            AddMachine {
                hostname: "node1".into(),
                macs: vec!["52:54:00:00:00:01".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let cfg = r.rack_config().await.unwrap();
    assert_eq!(cfg.boot.len(), 1);
    assert_eq!(cfg.boot[0].mac, "52:54:00:00:00:01");
    assert_eq!(cfg.boot[0].system_id, m.system_id.to_string());
    assert_eq!(
        cfg.boot[0].purpose,
        kumo_model::boot::BootPurpose::PowerOff,
        "a New machine waits for commissioning"
    );
}

#[tokio::test]
async fn rogue_dhcp_reports_become_events_once_and_are_forgotten_when_gone() {
    use kumo_model::network::{RogueDhcpReport, RogueDhcpServer};
    let (r, _d) = region().await;
    let rogue = RogueDhcpServer {
        interface: "br0".into(),
        server_id: "10.20.0.250".parse().unwrap(),
        offered_ip: Some("10.20.0.77".parse().unwrap()),
        source: None,
    };
    let report = |servers: Vec<RogueDhcpServer>| RogueDhcpReport {
        rack: "rack1".into(),
        servers,
    };
    r.report_rogue_dhcp(&admin(), report(vec![rogue.clone()]))
        .await
        .unwrap();
    // The same finding again is not a new event.
    r.report_rogue_dhcp(&admin(), report(vec![rogue.clone()]))
        .await
        .unwrap();
    let listed = r.rogue_dhcp().await.unwrap();
    assert_eq!(listed, vec![report(vec![rogue.clone()])]);
    let events = r.machine_events(Some("rack:rack1"), 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0]
        .message
        .contains("rogue dhcp server 10.20.0.250 answering on br0, offering 10.20.0.77"));
    r.report_rogue_dhcp(&admin(), report(vec![])).await.unwrap();
    assert!(r.rogue_dhcp().await.unwrap().is_empty());
    let events = r.machine_events(Some("rack:rack1"), 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].kind, "rogue-dhcp-gone");
    // Only admins (the rack's key) report.
    let user = Actor {
        username: "bob".into(),
        admin: false,
    };
    assert!(r
        .report_rogue_dhcp(&user, report(vec![rogue]))
        .await
        .is_err());
}
