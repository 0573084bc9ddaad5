//! The rack process: follows the region's configuration by long poll and
//! keeps DHCP (one server per interface), DNS, TFTP and HTTP boot serving
//! it, reloading each in place when its part changes.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kumo_client::Client;
use kumo_model::network::RackConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::http::BootState;
use crate::plan::{self, Interface, PlanSettings};
use crate::Error;

/// Everything `kumo rack serve` is told.
#[derive(Clone, Debug)]
pub struct RackOptions {
    pub name: String,
    /// Interfaces to serve DHCP on; their addresses also serve DNS.
    pub interfaces: Vec<String>,
    /// Lease journals live in `<data_dir>/leases`, boot files in `<data_dir>/boot`.
    pub data_dir: PathBuf,
    /// Where Debian's `ipxe` package put `undionly.kpxe` and `snponly.efi`.
    pub ipxe_dir: PathBuf,
    pub http_port: u16,
    pub tftp_port: u16,
    /// `None`: no DNS server.
    pub dns_port: Option<u16>,
    /// Answer repeated DNS queries in XDP on each served interface
    /// (`kumo_dns::XdpAnswers`); `None`: from the sockets only.
    pub dns_xdp: Option<kumo_dns::XdpMode>,
    pub dns_upstreams: Vec<SocketAddr>,
    /// How long each long poll of the region may wait.
    pub long_poll: Duration,
    /// How often to probe each interface for other DHCP servers; `None`: never.
    pub rogue_dhcp_interval: Option<Duration>,
    /// Answer IPv6 router solicitations with an advertisement that
    /// configures nothing, so iPXE stops waiting for one (see `ndp`).
    pub router_advertisements: bool,
    /// The package proxy's port on the served interfaces; `None`: no proxy.
    pub package_proxy_port: Option<u16>,
}

impl RackOptions {
    pub fn new(name: &str, interfaces: Vec<String>, data_dir: PathBuf) -> Self {
        RackOptions {
            name: name.to_owned(),
            interfaces,
            data_dir,
            ipxe_dir: PathBuf::from("/usr/lib/ipxe"),
            http_port: 5248,
            tftp_port: 69,
            dns_port: Some(53),
            dns_xdp: None,
            dns_upstreams: vec![],
            long_poll: Duration::from_secs(30),
            rogue_dhcp_interval: Some(Duration::from_secs(60)),
            router_advertisements: true,
            package_proxy_port: Some(8000),
        }
    }

    pub fn boot_dir(&self) -> PathBuf {
        self.data_dir.join("boot")
    }

    fn plan_settings(&self) -> PlanSettings {
        PlanSettings {
            rack_name: self.name.clone(),
            http_port: self.http_port,
            serve_dns: self.dns_port.is_some(),
            dns_upstreams: self.dns_upstreams.clone(),
        }
    }
}

/// The first IPv4 address of each interface; an interface without one is
/// an error naming it, since nothing could be served there.
pub fn resolve_interfaces(names: &[String]) -> Result<Vec<Interface>, Error> {
    if names.is_empty() {
        return Err(Error::Interface {
            name: String::new(),
            reason: "no interface given to serve on (use --interface)".into(),
        });
    }
    names
        .iter()
        .map(|name| {
            let addr = kumo_dhcp::interface_addrs(name)
                .into_iter()
                .next()
                .ok_or_else(|| Error::Interface {
                    name: name.clone(),
                    reason: "has no IPv4 address (or does not exist)".into(),
                })?;
            Ok(Interface {
                name: name.clone(),
                addr,
            })
        })
        .collect()
}

/// Copies the iPXE binaries the DHCP server names into the boot directory
/// (TFTP refuses symlinks leading out of its root). A missing one is a
/// warning: iPXE clients (QEMU's ROMs) do not need them.
pub fn install_boot_loaders(ipxe_dir: &Path, boot_dir: &Path) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(boot_dir).map_err(io(boot_dir))?;
    for file in [plan::BIOS_BOOT_FILE, plan::UEFI_BOOT_FILE, "ipxe.efi"] {
        let (from, to) = (ipxe_dir.join(file), boot_dir.join(file));
        if to.exists() {
            continue;
        }
        if !from.exists() {
            tracing::warn!(file = %from.display(), "boot loader missing; install Debian's ipxe package for PXE (non-iPXE) clients");
            continue;
        }
        let tmp = to.with_extension("partial");
        std::fs::copy(&from, &tmp).map_err(io(&from))?;
        std::fs::rename(&tmp, &to).map_err(io(&to))?;
    }
    Ok(())
}

/// What the config loop hands the servers.
struct Outputs {
    dhcp: HashMap<String, (Interface, mpsc::Sender<kumo_dhcp::ServerConfig>)>,
    dns: Option<Arc<kumo_dns::Server>>,
    boot: Arc<BootState>,
    images: watch::Sender<Vec<kumo_model::deploy::Image>>,
}

/// Runs the rack until `shutdown` completes.
pub async fn serve(
    opts: RackOptions,
    region: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let interfaces = resolve_interfaces(&opts.interfaces)?;
    let boot_dir = opts.boot_dir();
    install_boot_loaders(&opts.ipxe_dir, &boot_dir)?;
    let lease_dir = opts.data_dir.join("leases");
    std::fs::create_dir_all(&lease_dir).map_err(|source| Error::Io {
        path: lease_dir.display().to_string(),
        source,
    })?;
    let settings = opts.plan_settings();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();

    // Start from an empty configuration so TFTP and HTTP serve at once;
    // DHCP answers nobody until the first configuration arrives.
    let empty = RackConfig::default();
    let mut dhcp = HashMap::new();
    let mut dhcp_counters = Vec::new();
    for iface in &interfaces {
        let (tx, rx) = mpsc::channel(4);
        let (counters_tx, counters_rx) = watch::channel(kumo_dhcp::Counters::default());
        dhcp_counters.push((iface.name.clone(), counters_rx));
        let cfg = plan::dhcp_config(&empty, iface, &settings);
        let journal = lease_dir.join(format!("{}.journal", iface.name));
        let name = iface.name.clone();
        let stop = stopped();
        tasks.spawn(async move {
            kumo_dhcp::run_observed(cfg, &journal, &name, stop, rx, counters_tx)
                .await
                .map_err(Error::from)
        });
        dhcp.insert(iface.name.clone(), (iface.clone(), tx));
    }

    let dns = match opts.dns_port {
        None => None,
        Some(port) => {
            let zones = plan::zones(&empty, &settings, 1)?;
            let server = Arc::new(kumo_dns::Server::new(&zones)?);
            for iface in &interfaces {
                let listener =
                    kumo_dns::Listener::bind(SocketAddr::new(iface.addr.into(), port)).await?;
                let (server, stop) = (server.clone(), stopped());
                let shell = kumo_dns::ShellConfig {
                    xdp: opts.dns_xdp.map(|mode| kumo_dns::XdpConfig {
                        interface: iface.name.clone(),
                        mode,
                    }),
                    ..kumo_dns::ShellConfig::default()
                };
                tasks.spawn(async move {
                    listener
                        .serve(server, shell, stop)
                        .await
                        .map_err(Error::from)
                });
            }
            Some(server)
        }
    };

    let resolver = Arc::new(kumo_tftp::DirResolver::new(&boot_dir)?);
    let tftp = kumo_tftp::Server::bind(
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), opts.tftp_port),
        resolver,
        kumo_tftp::Limits::default(),
    )
    .await?;
    let tftp_counters = tftp.counters();
    {
        let stop = stopped();
        tasks.spawn(async move {
            tokio::select! {
                r = tftp.run() => r.map_err(Error::from),
                () = stop => Ok(()),
            }
        });
    }

    let default_host = format!("{}:{}", interfaces[0].addr, opts.http_port);
    let boot = BootState::new(&opts.name, default_host, boot_dir.clone());
    boot.set_region(region.clone());
    let proxy = opts.package_proxy_port.map(|port| {
        let cfg = crate::proxy::ProxyConfig::new(
            opts.data_dir.join("proxy"),
            port,
            interfaces.iter().map(|i| i.addr).collect(),
        );
        let (status, stop) = (crate::proxy::ProxyStatus::default(), stopped());
        let supervised = status.clone();
        // Returns only once the rack stops: a proxy that fails is retried,
        // never a reason to stop serving DHCP and boot files.
        tasks.spawn(async move {
            crate::proxy::supervise(cfg, supervised, stop).await;
            Ok(())
        });
        status
    });
    let dns_for_metrics = dns.clone();
    let extra = Arc::new(move || {
        let dhcp: Vec<(String, kumo_dhcp::Counters)> = dhcp_counters
            .iter()
            .map(|(name, rx)| (name.clone(), rx.borrow().clone()))
            .collect();
        let proxy_up = proxy.as_ref().map(|p| p.is_up());
        metrics_text(
            &dhcp,
            &tftp_counters.snapshot(),
            dns_for_metrics.as_deref(),
            proxy_up,
        )
    });
    let app = crate::http::router(boot.clone(), extra);
    let http_addr = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), opts.http_port);
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| Error::Io {
            path: format!("http {http_addr}"),
            source,
        })?;
    {
        let stop = stopped();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|source| Error::Io {
                    path: format!("http {http_addr}"),
                    source,
                })
        });
    }
    tracing::info!(rack = %opts.name, interfaces = ?opts.interfaces, http = %http_addr, tftp = opts.tftp_port, dns = ?opts.dns_port, package_proxy = ?opts.package_proxy_port, "rack serving");

    let (images_tx, images_rx) = watch::channel(Vec::new());
    {
        let (region, dir, stop) = (region.clone(), boot_dir.join("images"), stopped());
        tasks.spawn(async move {
            tokio::select! {
                () = crate::images::mirror(region, dir, images_rx) => Ok(()),
                () = stop => Ok(()),
            }
        });
    }
    let outputs = Outputs {
        dhcp,
        dns,
        boot,
        images: images_tx,
    };
    {
        let (region, settings, stop) = (region.clone(), settings.clone(), stopped());
        let long_poll = opts.long_poll;
        tasks.spawn(async move {
            tokio::select! {
                () = follow_region(&region, &settings, &outputs, long_poll) => Ok(()),
                () = stop => Ok(()),
            }
        });
    }

    if let Some(every) = opts.rogue_dhcp_interval {
        let (region, stop) = (region.clone(), stopped());
        let (name, ifaces) = (opts.name.clone(), interfaces.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = probe_for_rogues(&region, &name, &ifaces, every) => Ok(()),
                () = stop => Ok(()),
            }
        });
    }

    if opts.router_advertisements {
        for iface in &interfaces {
            let (name, stop) = (iface.name.clone(), stopped());
            let Some(mac) = crate::ndp::interface_mac(&name) else {
                tracing::warn!(interface = %name, "no MAC in sysfs; not answering router solicitations");
                continue;
            };
            tasks.spawn(async move {
                let answer = async {
                    if let Err(e) = crate::ndp::run(&name, mac).await {
                        tracing::warn!(interface = %name, error = %e, "not answering router solicitations; iPXE will wait for IPv6 before booting");
                    }
                    // Without it the rack still serves: wait for shutdown.
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    () = answer => {}
                    () = stop => {}
                }
                Ok(())
            });
        }
    }

    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => Err(Error::Stopped("a rack service stopped on its own".into())),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::Stopped(format!("a rack service panicked: {e}"))),
        },
    };
    let _ = stop_tx.send(true);
    // Give servers a moment to finish what is under way (and DHCP to
    // fsync), then drop the rest.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tracing::info!(rack = %opts.name, "rack stopped");
    result
}

/// Long-polls the region forever, applying each new configuration. A
/// region that is down or answers an error is retried with back-off; the
/// servers keep their last configuration meanwhile.
async fn follow_region(region: &Client, settings: &PlanSettings, out: &Outputs, wait: Duration) {
    let mut tag: Option<String> = None;
    let mut applied_zones: Option<kumo_dns::ZoneSet> = None;
    let mut applied_dhcp: HashMap<String, kumo_dhcp::ServerConfig> = HashMap::new();
    let mut backoff = Duration::from_millis(250);
    loop {
        match region.rack_config(tag.as_deref(), wait.as_secs()).await {
            Ok(None) => {}
            Ok(Some((new_tag, cfg))) => {
                backoff = Duration::from_millis(250);
                apply(&cfg, settings, out, &mut applied_dhcp, &mut applied_zones).await;
                tracing::info!(tag = %new_tag, subnets = cfg.subnets.len(), hosts = cfg.hosts.len(), "rack configuration applied");
                tag = Some(new_tag);
            }
            Err(e) => {
                tracing::warn!(region = %region.base(), error = %e, retry_in = ?backoff, "rack configuration not fetched");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn apply(
    cfg: &RackConfig,
    settings: &PlanSettings,
    out: &Outputs,
    applied_dhcp: &mut HashMap<String, kumo_dhcp::ServerConfig>,
    applied_zones: &mut Option<kumo_dns::ZoneSet>,
) {
    out.boot.set_boot_table(&cfg.boot);
    out.images.send_if_modified(|images| {
        let changed = *images != cfg.images;
        if changed {
            images.clone_from(&cfg.images);
        }
        changed
    });
    for (name, (iface, tx)) in &out.dhcp {
        let next = plan::dhcp_config(cfg, iface, settings);
        if applied_dhcp.get(name) == Some(&next) {
            continue;
        }
        if let Err(e) = next.validate() {
            tracing::error!(interface = %name, error = %e, "dhcp configuration from the region refused; keeping the old one");
            continue;
        }
        if tx.send(next.clone()).await.is_ok() {
            applied_dhcp.insert(name.clone(), next);
        }
    }
    let Some(dns) = &out.dns else { return };
    // Compare without the serial, which changes on every build.
    let unchanged = match plan::zones(cfg, settings, 0) {
        Ok(z) => applied_zones.as_ref() == Some(&z),
        Err(_) => false,
    };
    if unchanged {
        return;
    }
    let serial = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    match plan::zones(cfg, settings, serial).and_then(|z| Ok(dns.reload(&z).map(|()| z)?)) {
        Ok(_) => {
            *applied_zones = plan::zones(cfg, settings, 0).ok();
            tracing::info!(serial, "dns zones reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "dns zones from the region refused; keeping the old ones")
        }
    }
}

/// How long a probe listens for offers.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// Every `every`, sends a DHCPDISCOVER on each interface and reports to the
/// region whichever servers other than this rack answer. The report is the
/// full list each round, so the region also learns when one goes away.
async fn probe_for_rogues(region: &Client, rack: &str, interfaces: &[Interface], every: Duration) {
    let own: Vec<Ipv4Addr> = interfaces.iter().map(|i| i.addr).collect();
    // One MAC per process, locally administered and unicast (never a real
    // NIC's), so our own server keeps re-offering the probe one address.
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfc) | 0x02;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(?every, probe_mac = %kumo_dhcp::MacAddr(mac), "probing for rogue dhcp servers");
    loop {
        tick.tick().await;
        tracing::debug!("rogue dhcp probe round");
        let mut servers = vec![];
        for iface in interfaces {
            let xid: u32 = rand::random();
            match kumo_dhcp::probe(&iface.name, &own, PROBE_WAIT, xid, kumo_dhcp::MacAddr(mac))
                .await
            {
                Ok(found) => servers.extend(found.into_iter().map(|r| {
                    kumo_model::network::RogueDhcpServer {
                        interface: r.interface,
                        server_id: r.server_id,
                        offered_ip: Some(r.offered_ip),
                        source: (r.source_ip != r.server_id).then_some(r.source_ip),
                    }
                })),
                Err(e) => {
                    tracing::warn!(interface = %iface.name, error = %e, "rogue dhcp probe failed")
                }
            }
        }
        for s in &servers {
            tracing::warn!(interface = %s.interface, server = %s.server_id, "another dhcp server answers on a served network");
        }
        let report = kumo_model::network::RogueDhcpReport {
            rack: rack.to_owned(),
            servers,
        };
        if let Err(e) = region
            .post::<_, serde_json::Value>("/api/v1/rack/rogue-dhcp", &report)
            .await
        {
            tracing::warn!(error = %e, "rogue dhcp report not delivered; next round retries");
        }
    }
}

/// A DHCP counter's name, help and how to read it.
type DhcpFamily = (&'static str, &'static str, fn(&kumo_dhcp::Counters) -> u64);

/// The DHCP (per interface, as of the last second), TFTP and DNS counters,
/// and whether the package proxy is up, in Prometheus text form.
fn metrics_text(
    dhcp: &[(String, kumo_dhcp::Counters)],
    t: &kumo_tftp::CounterSnapshot,
    dns: Option<&kumo_dns::Server>,
    proxy_up: Option<bool>,
) -> String {
    let mut out = String::new();
    let families: [DhcpFamily; 8] = [
        ("received", "DHCP packets received", |c| c.received),
        ("offered", "DHCPOFFERs sent", |c| c.offered),
        ("acked", "DHCPACKs sent", |c| c.acked),
        ("naked", "DHCPNAKs sent", |c| c.naked),
        (
            "dropped_malformed",
            "DHCP packets dropped as malformed",
            |c| c.dropped_malformed,
        ),
        (
            "dropped_rate_limited",
            "DISCOVERs from unknown clients dropped by the flood limit",
            |c| c.dropped_rate_limited,
        ),
        (
            "dropped_pool_exhausted",
            "DHCP requests dropped for want of a free address",
            |c| c.dropped_pool_exhausted,
        ),
        (
            "dropped_no_subnet",
            "DHCP requests from links with no configured subnet",
            |c| c.dropped_no_subnet,
        ),
    ];
    for (name, help, get) in families {
        out.push_str(&format!(
            "# HELP kumo_rack_dhcp_{name} {help}.\n# TYPE kumo_rack_dhcp_{name} counter\n"
        ));
        for (iface, c) in dhcp {
            out.push_str(&format!(
                "kumo_rack_dhcp_{name}_total{{interface=\"{iface}\"}} {}\n",
                get(c)
            ));
        }
    }
    let mut counter = |name: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP kumo_rack_{name} {help}.\n# TYPE kumo_rack_{name} counter\nkumo_rack_{name}_total {value}\n"
        ));
    };
    counter("tftp_requests", "TFTP read requests accepted", t.requests);
    counter(
        "tftp_transfers_completed",
        "TFTP transfers completed",
        t.transfers_completed,
    );
    counter(
        "tftp_transfers_failed",
        "TFTP transfers failed or aborted",
        t.transfers_failed,
    );
    counter(
        "tftp_not_found",
        "TFTP requests for missing files",
        t.not_found,
    );
    counter(
        "tftp_access_violations",
        "TFTP requests refused for leaving the root",
        t.access_violations,
    );
    counter(
        "tftp_malformed",
        "TFTP datagrams dropped as malformed",
        t.malformed,
    );
    if let Some(dns) = dns {
        let d = dns.counters();
        counter("dns_queries", "DNS queries received", d.queries);
        counter(
            "dns_answered",
            "DNS queries answered from the rack's zones",
            d.answered,
        );
        counter("dns_nxdomain", "DNS answers that were NXDOMAIN", d.nxdomain);
        counter(
            "dns_answered_in_xdp",
            "DNS answers sent in XDP (part of dns_answered)",
            d.offloaded,
        );
        counter(
            "dns_xdp_missed",
            "DNS queries XDP saw but left to the server (not yet answered, or answered from older zones)",
            d.offload_missed,
        );
        counter(
            "dns_forwarded",
            "DNS queries forwarded upstream",
            d.forwarded,
        );
        counter(
            "dns_forward_failed",
            "DNS forwards no upstream answered",
            d.forward_failed,
        );
        counter(
            "dns_malformed_dropped",
            "DNS messages dropped as malformed",
            d.malformed_dropped,
        );
    }
    if let Some(up) = proxy_up {
        out.push_str(&format!(
            "# HELP kumo_rack_package_proxy_up Whether the package proxy (apt-cacher-ng) accepts connections.\n\
             # TYPE kumo_rack_package_proxy_up gauge\nkumo_rack_package_proxy_up {}\n",
            u8::from(up)
        ));
    }
    out
}
