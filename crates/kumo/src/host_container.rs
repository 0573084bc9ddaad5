//! `kumo agent container …`: containers on a metal or manual machine
//! (`lxd:N`), run there as root by the controller over SSH. The machine's
//! interface is moved under a bridge (`kumobr0`) so containers get
//! addresses on the machine's network; each container is a systemd
//! template unit (`kumo-container@NAME`) so it boots with the machine.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kumo_containers::{ContainerSpec, Containers, HOST_BRIDGE};
use kumo_controller::provider::HostContainerRequest;
use serde::{Deserialize, Serialize};

use crate::cli::AgentContainerCommand;

const STATE_DIR: &str = "/var/lib/kumo/containers";
/// The host's own address, for the bridge at boot.
const HOST_FILE: &str = "/var/lib/kumo/container-host.json";
/// Where cloud-init puts a deployed machine's APT proxy.
const HOST_APT_PROXY: &str = "/etc/apt/apt.conf.d/90cloud-init-aptproxy";
const UNIT_PATH: &str = "/etc/systemd/system/kumo-container@.service";

/// Runs the container in a delegated cgroup (systemd inside manages its
/// own), boots it with the machine, and powers it off cleanly on stop.
const UNIT: &str = "[Unit]
Description=kumo container %i
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
Delegate=yes
TimeoutStartSec=300
ExecStart=/usr/local/bin/kumo agent container start %i
ExecStop=/usr/local/bin/kumo agent container stop %i

[Install]
WantedBy=multi-user.target
";

#[derive(Serialize, Deserialize)]
struct HostFile {
    host_address: String,
}

pub async fn run(cmd: AgentContainerCommand) -> Result<()> {
    let containers = Containers::new(PathBuf::from(STATE_DIR));
    match cmd {
        AgentContainerCommand::Create => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the container request on standard input")?;
            let req: HostContainerRequest =
                serde_json::from_str(&text).context("parsing the container request")?;
            create(&containers, req).await
        }
        AgentContainerCommand::Start { name } => {
            let host: HostFile = serde_json::from_slice(
                &std::fs::read(HOST_FILE).with_context(|| format!("reading {HOST_FILE}"))?,
            )
            .with_context(|| format!("parsing {HOST_FILE}"))?;
            bridge(&host.host_address).await?;
            match containers.start(&name).await {
                // Slow, not broken (a loaded machine, host keys being
                // made): failing here would have systemd kill it.
                Err(e @ kumo_containers::Error::BootTimeout { .. }) => {
                    tracing::warn!("container {name} is still booting: {e}");
                    Ok(())
                }
                other => other.with_context(|| format!("starting container {name}")),
            }
        }
        AgentContainerCommand::Stop { name } => containers
            .stop(&name)
            .await
            .with_context(|| format!("stopping container {name}")),
        AgentContainerCommand::Destroy { name } => {
            kumo_containers::validate_name(&name)?;
            // The unit's stop powers the container off.
            let unit = format!("kumo-container@{name}.service");
            let _ = systemctl(&["disable", "--now", &unit]).await;
            containers
                .destroy(&name)
                .await
                .with_context(|| format!("destroying container {name}"))
        }
    }
}

async fn bridge(host_address: &str) -> Result<kumo_containers::HostNetwork> {
    let address: Ipv4Addr = host_address
        .parse()
        .with_context(|| format!("host address {host_address:?}"))?;
    Ok(
        kumo_containers::ensure_host_bridge(Path::new("/var/lib/kumo"), HOST_BRIDGE, address)
            .await?,
    )
}

async fn create(containers: &Containers, req: HostContainerRequest) -> Result<()> {
    let address: Ipv4Addr = req
        .address
        .parse()
        .with_context(|| format!("container address {:?}", req.address))?;
    ensure_nspawn().await?;
    std::fs::create_dir_all("/var/lib/kumo")?;
    std::fs::write(
        HOST_FILE,
        serde_json::to_vec(&HostFile {
            host_address: req.host_address.clone(),
        })?,
    )
    .with_context(|| format!("writing {HOST_FILE}"))?;
    let net = bridge(&req.host_address).await?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut files = req.files;
    // Without a proxy of the controller's, the container fetches packages
    // the way its host does (a region machine: the rack's proxy).
    if !files
        .iter()
        .any(|f| f.path.starts_with("/etc/apt/apt.conf.d/"))
    {
        if let Ok(proxy) = std::fs::read(HOST_APT_PROXY) {
            files.push(kumo_containers::InjectedFile::new(
                HOST_APT_PROXY,
                proxy,
                0o644,
            ));
        }
    }
    let spec = ContainerSpec {
        name: req.name.clone(),
        hostname: req.hostname.clone(),
        rootfs: PathBuf::from(&req.rootfs),
        bridge: HOST_BRIDGE.into(),
        address: format!("{address}/{}", net.prefix),
        gateway: net.gateway.map(|g| g.to_string()),
        dns: kumo_containers::nameservers(&resolv),
        files,
        enable_units: req.enable_units,
        authorized_keys: req.authorized_keys,
    };
    let unit = format!("kumo-container@{}.service", req.name);
    // A new attempt carries a new agent token: the old container goes.
    match containers.create(&spec).await {
        Err(kumo_containers::Error::SpecMismatch { .. }) => {
            let _ = systemctl(&["stop", &unit]).await;
            containers.destroy(&req.name).await?;
            containers.create(&spec).await?;
        }
        other => other?,
    }
    let agent = containers.rootfs_dir(&req.name).join("usr/local/bin/kumo");
    // This binary is the container's agent too.
    let me = std::env::current_exe().context("finding this kumo binary")?;
    kumo_controller::provider::copy_binary(&me, &agent)
        .with_context(|| format!("installing the agent in {}", agent.display()))?;
    if std::fs::read_to_string(UNIT_PATH).ok().as_deref() != Some(UNIT) {
        std::fs::write(UNIT_PATH, UNIT).with_context(|| format!("writing {UNIT_PATH}"))?;
        systemctl(&["daemon-reload"]).await?;
    }
    systemctl(&["enable", &unit]).await?;
    if let Err(e) = systemctl(&["restart", &unit]).await {
        let console =
            std::fs::read_to_string(containers.console_log(&req.name)).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{e:#}; console.log ends:\n{}", tail.join("\n"));
    }
    println!("{address}");
    Ok(())
}

/// Debian's systemd-nspawn is in systemd-container, not on a fresh image.
async fn ensure_nspawn() -> Result<()> {
    let have = |p: &str| Path::new(p).exists();
    if have("/usr/bin/systemd-nspawn") {
        return Ok(());
    }
    let mut last = String::new();
    for _ in 0..3 {
        let out = tokio::process::Command::new("sh")
            .args([
                "-c",
                "timeout 180 apt-get update -qq && \
                 DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends systemd-container",
            ])
            .output()
            .await
            .context("running apt-get")?;
        if out.status.success() && have("/usr/bin/systemd-nspawn") {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    }
    bail!("installing systemd-container (for systemd-nspawn) failed: {last}")
}

async fn systemctl(args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new("systemctl")
        .args(args)
        .output()
        .await
        .context("running systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
