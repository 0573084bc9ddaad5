//! Hidden helper subcommands: kumo's real server shells (`kumo_dhcp::run`,
//! `kumo_dns::Listener`, `kumo_tftp::Server`) each as its own process, so
//! the benchmarks measure kumo exactly as they measure Kea, BIND, dnsmasq
//! and tftpd-hpa. Logging is at warn, like the peers' configurations.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use kumo_dhcp::{RateLimit, ServerConfig, SubnetConfig};

#[derive(clap::Args, Debug)]
pub struct DhcpArgs {
    /// The interface to serve (SO_BINDTODEVICE).
    #[arg(long)]
    interface: String,
    #[arg(long)]
    journal: PathBuf,
    #[arg(long)]
    server_id: Ipv4Addr,
    #[arg(long)]
    network: Ipv4Addr,
    #[arg(long)]
    prefix_len: u8,
    #[arg(long)]
    pool_start: Ipv4Addr,
    #[arg(long)]
    pool_end: Ipv4Addr,
    #[arg(long, default_value_t = 3600)]
    lease_secs: u32,
}

#[derive(clap::Args, Debug)]
pub struct DnsArgs {
    #[arg(long)]
    listen: SocketAddr,
    /// A `kumo_dns::ZoneSet` as JSON.
    #[arg(long)]
    zones: PathBuf,
    /// UDP threads [default: the shell's, one per core].
    #[arg(long)]
    udp_workers: Option<usize>,
    /// Replies cached per UDP thread [default: the shell's]; 0 disables the cache.
    #[arg(long)]
    cache_entries: Option<usize>,
    /// Answer repeated queries in XDP on this interface (the one `--listen` is on).
    #[arg(long)]
    xdp: Option<String>,
    /// auto, native or generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: kumo_dns::XdpMode,
}

#[derive(clap::Args, Debug)]
pub struct TftpArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    root: PathBuf,
}

pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUMO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub async fn dhcp(a: DhcpArgs) -> Result<()> {
    init_logging();
    let subnet = SubnetConfig {
        network: a.network,
        prefix_len: a.prefix_len,
        gateway: Some(a.server_id),
        dns_servers: vec![a.server_id],
        domain: Some("bench.kumo.test".into()),
        dynamic_ranges: vec![a.pool_start..=a.pool_end],
        reserved_ranges: vec![],
        lease_secs: a.lease_secs,
        hosts: vec![],
    };
    let mut config = ServerConfig::new(a.server_id, vec![subnet]);
    // The flood guards are for unknown MACs on a real rack; a load tool is
    // nothing but unknown MACs, and Kea and dnsmasq have no such limit.
    config.unknown_client_rate = RateLimit {
        burst: u32::MAX,
        per_second: u32::MAX,
    };
    config.max_pending_offer_percent = 100;
    let (_reload, rx) = tokio::sync::mpsc::channel(1);
    kumo_dhcp::run(config, &a.journal, &a.interface, terminated(), rx)
        .await
        .context("kumo dhcp")
}

pub async fn dns(a: DnsArgs) -> Result<()> {
    init_logging();
    let text = std::fs::read_to_string(&a.zones)
        .with_context(|| format!("reading {}", a.zones.display()))?;
    let zones: kumo_dns::ZoneSet = serde_json::from_str(&text).context("parsing the zone set")?;
    let server = Arc::new(kumo_dns::Server::new(&zones)?);
    let mut shell = kumo_dns::ShellConfig::default();
    if let Some(n) = a.udp_workers {
        shell.udp_workers = n;
    }
    if let Some(n) = a.cache_entries {
        shell.udp_cache_entries = n;
    }
    shell.xdp = a.xdp.map(|interface| kumo_dns::XdpConfig {
        interface,
        mode: a.xdp_mode,
    });
    kumo_dns::run(a.listen, server.clone(), shell, terminated())
        .await
        .context("kumo dns")?;
    // In the log, so a run shows where its answers came from.
    eprintln!("kumo dns counters at exit: {:?}", server.counters());
    Ok(())
}

pub async fn tftp(a: TftpArgs) -> Result<()> {
    init_logging();
    let resolver = Arc::new(kumo_tftp::DirResolver::new(&a.root)?);
    let server = kumo_tftp::Server::bind(a.listen, resolver, kumo_tftp::Limits::default()).await?;
    tokio::select! {
        r = server.run() => r.context("kumo tftp"),
        () = terminated() => Ok(()),
    }
}
