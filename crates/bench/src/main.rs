//! kumo-bench: benchmarks that drive real kumo processes over their real
//! interfaces, so the figures are what an operator would see.

mod agents;
mod dhcp;
mod dns;
mod lab;
mod region;
mod serve;
mod stats;
mod tftp;

use std::future::Future;
use std::pin::Pin;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(name = "kumo-bench", about = "Benchmarks of kumo processes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List/show/allocate latency and region RSS by machine count, on
    /// SQLite and PostgreSQL, against a real `kumo region serve`.
    Region(region::Args),
    /// Controller RSS per agent connection and `status` latency with 1,000
    /// and 10,000 simulated agents (the real protocol, no hooks).
    Agents(agents::Args),
    /// perfdhcp against kumo's DHCP server, Kea and dnsmasq (root: network namespaces).
    Dhcp(dhcp::Args),
    /// dnsperf against kumo's DNS server, BIND and dnsmasq (root: network namespaces).
    Dns(dns::Args),
    /// TFTP MB/s from kumo's TFTP server and tftpd-hpa (root: network namespaces).
    Tftp(tftp::Args),
    /// kumo's DHCP shell as its own process (used by `dhcp`).
    #[command(hide = true)]
    ServeDhcp(serve::DhcpArgs),
    /// kumo's DNS shell as its own process (used by `dns`).
    #[command(hide = true)]
    ServeDns(serve::DnsArgs),
    /// kumo's TFTP shell as its own process (used by `tftp`).
    #[command(hide = true)]
    ServeTftp(serve::TftpArgs),
    /// A controller with N simulated machines as its own process (used by `agents`).
    #[command(hide = true)]
    ServeController(agents::ServeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = match Cli::parse().command {
        Command::ServeDhcp(a) => return serve::dhcp(a).await,
        Command::ServeDns(a) => return serve::dns(a).await,
        Command::ServeTftp(a) => return serve::tftp(a).await,
        Command::ServeController(a) => return agents::serve(a).await,
        Command::Region(a) => Box::pin(region::run(a)) as Pin<Box<dyn Future<Output = _>>>,
        Command::Agents(a) => Box::pin(agents::run(a)),
        Command::Dhcp(a) => Box::pin(dhcp::run(a)),
        Command::Dns(a) => Box::pin(dns::run(a)),
        Command::Tftp(a) => Box::pin(tftp::run(a)),
    };
    // Ctrl-C or SIGTERM drops the benchmark, whose guards kill the servers
    // and remove the network namespaces.
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = bench => r,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    }
}
