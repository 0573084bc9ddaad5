//! Machine providers behind one trait. `containers` makes systemd-nspawn
//! machines on this host's bridge; `manual` installs the agent on an
//! existing host over SSH. Both install the same thing: the `kumo` binary,
//! `/etc/kumo/agent.json`, and `kumo-agent.service`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;
use kumo_model::orchestra::Bootstrap;
use serde::{Deserialize, Serialize};

use crate::docs::ProviderKind;

/// What a machine's agent needs to call in (`/etc/kumo/agent.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub controller_url: String,
    pub model: String,
    pub machine: String,
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub kind: ProviderKind,
    /// The provider's name for the machine; stable across retries.
    pub instance: String,
    pub hostname: String,
    /// Chosen by the controller for container machines.
    pub address: Option<String>,
    /// `ssh:user@host` for manual machines.
    pub placement: Option<String>,
    pub agent: AgentConfig,
    pub bootstrap: Bootstrap,
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// Makes (or finds already made) the machine and starts its agent;
    /// returns its address. Must be safe to repeat.
    async fn provision(&self, req: &ProvisionRequest) -> Result<String, String>;
    /// Removes the machine; safe to repeat.
    async fn destroy(&self, kind: ProviderKind, instance: &str) -> Result<(), String>;
}

/// `k<controller>-<model>-<machine>` with `/` as `-`: a valid container
/// name, unique per controller on a shared host.
pub fn instance_name(controller: &str, model: &str, machine: &str) -> String {
    let mut name = format!("k{controller}-{model}-{}", machine.replace('/', "-"));
    name.truncate(60);
    name
}

/// `10.0.0.100-10.0.0.199`.
pub fn parse_range(range: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = range
        .split_once('-')
        .ok_or_else(|| format!("address range {range:?}: expected FIRST-LAST"))?;
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("address range {range:?}: {a:?} is not an IPv4 address"))?;
    let b: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("address range {range:?}: {b:?} is not an IPv4 address"))?;
    if u32::from(a) > u32::from(b) {
        return Err(format!(
            "address range {range:?}: first address is after the last"
        ));
    }
    Ok((a, b))
}

/// The lowest address of the range no machine has.
pub fn pick_address(
    range: &str,
    used: &std::collections::HashSet<String>,
) -> Result<String, String> {
    let (a, b) = parse_range(range)?;
    (u32::from(a)..=u32::from(b))
        .map(|n| Ipv4Addr::from(n).to_string())
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| format!("address range {range} is full"))
}

pub fn agent_unit() -> String {
    "[Unit]\n\
     Description=kumo machine agent\n\
     After=network-online.target\n\
     Wants=network-online.target\n\
     \n\
     [Service]\n\
     ExecStart=/usr/local/bin/kumo agent machine --config /etc/kumo/agent.json\n\
     Restart=always\n\
     RestartSec=2\n\
     KillMode=process\n\
     \n\
     [Install]\n\
     WantedBy=multi-user.target\n"
        .to_string()
}

/// Machines made as systemd-nspawn containers on this host.
pub struct ContainersProvider {
    pub containers: kumo_containers::Containers,
    /// Where the bookworm rootfs tarball is cached.
    pub cache_dir: PathBuf,
    /// The binary installed as the machine's agent (this one).
    pub kumo_binary: PathBuf,
    /// Extra packages baked into the rootfs.
    pub extra_packages: Vec<String>,
}

impl ContainersProvider {
    pub fn new(state_dir: PathBuf, cache_dir: PathBuf, kumo_binary: PathBuf) -> Self {
        ContainersProvider {
            containers: kumo_containers::Containers::new(state_dir),
            cache_dir,
            kumo_binary,
            extra_packages: Vec::new(),
        }
    }

    async fn provision_container(&self, req: &ProvisionRequest) -> Result<String, String> {
        let b = &req.bootstrap;
        let address = req
            .address
            .clone()
            .ok_or_else(|| format!("container {}: no address chosen", req.instance))?;
        // Before minutes of debootstrap: is there a bridge to attach to?
        if !std::path::Path::new("/sys/class/net")
            .join(&b.bridge)
            .join("bridge")
            .exists()
        {
            return Err(format!(
                "bridge {} does not exist on this host (kumo bootstrap --bridge)",
                b.bridge
            ));
        }
        let mut spec = kumo_containers::RootfsSpec::bookworm();
        spec.extra_packages = self.extra_packages.clone();
        let rootfs = kumo_containers::ensure_rootfs(&self.cache_dir, &spec)
            .await
            .map_err(|e| e.to_string())?;
        let mut files = vec![
            kumo_containers::InjectedFile::new(
                "/etc/kumo/agent.json",
                serde_json::to_vec_pretty(&req.agent).expect("agent config"),
                0o600,
            ),
            kumo_containers::InjectedFile::new(
                "/etc/systemd/system/kumo-agent.service",
                agent_unit(),
                0o644,
            ),
        ];
        if let Some(p) = &b.apt_proxy {
            files.push(kumo_containers::apt_proxy_file(p));
        }
        let spec = kumo_containers::ContainerSpec {
            name: req.instance.clone(),
            hostname: req.hostname.clone(),
            rootfs,
            bridge: b.bridge.clone(),
            address: format!("{address}/{}", b.prefix),
            gateway: b.gateway.clone(),
            dns: b.dns.clone(),
            files,
            enable_units: vec!["kumo-agent.service".into()],
            authorized_keys: b.authorized_keys.clone(),
        };
        // A retry after a failure starts from scratch: the agent token in
        // the spec is new each attempt.
        if let Ok(kumo_containers::ContainerState::Missing) =
            self.containers.state(&req.instance).await
        {
        } else {
            self.containers
                .destroy(&req.instance)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.containers
            .create(&spec)
            .await
            .map_err(|e| e.to_string())?;
        let dest = self
            .containers
            .rootfs_dir(&req.instance)
            .join("usr/local/bin/kumo");
        copy_binary(&self.kumo_binary, &dest)
            .map_err(|e| format!("installing the agent in {}: {e}", dest.display()))?;
        self.containers
            .start(&req.instance)
            .await
            .map_err(|e| e.to_string())?;
        Ok(address)
    }

    async fn provision_manual(&self, req: &ProvisionRequest) -> Result<String, String> {
        let target = req
            .placement
            .as_deref()
            .and_then(|p| p.strip_prefix("ssh:"))
            .ok_or_else(|| {
                format!(
                    "machine {}: manual machines need ssh:user@host",
                    req.agent.machine
                )
            })?;
        let host = target.rsplit('@').next().unwrap_or(target).to_string();
        let binary = std::fs::read(&self.kumo_binary)
            .map_err(|e| format!("reading {}: {e}", self.kumo_binary.display()))?;
        let sh = |script: &str| vec!["sh".to_string(), "-c".to_string(), format!("'{script}'")];
        self.ssh(
            target,
            sh("mkdir -p /etc/kumo /usr/local/bin && cat > /usr/local/bin/kumo.new && chmod 755 /usr/local/bin/kumo.new && mv /usr/local/bin/kumo.new /usr/local/bin/kumo"),
            Some(binary),
        )
        .await?;
        self.ssh(
            target,
            sh("umask 077 && cat > /etc/kumo/agent.json"),
            Some(serde_json::to_vec_pretty(&req.agent).expect("config")),
        )
        .await?;
        self.ssh(
            target,
            sh("cat > /etc/systemd/system/kumo-agent.service && systemctl daemon-reload && systemctl enable kumo-agent.service && systemctl restart kumo-agent.service"),
            Some(agent_unit().into_bytes()),
        )
        .await?;
        Ok(host)
    }

    /// Runs a command on `user@host` as the controller's user, with
    /// `KUMO_SSH_KEY` if set; host keys are remembered per controller.
    async fn ssh(
        &self,
        target: &str,
        args: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let known_hosts = self
            .containers
            .dir("x")
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("ssh_known_hosts"))
            .unwrap_or_else(|| PathBuf::from("/dev/null"));
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "ConnectTimeout=10",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()));
        if let Ok(key) = std::env::var("KUMO_SSH_KEY") {
            cmd.args(["-i", &key]);
        }
        cmd.arg(target)
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("ssh: {e}"))?;
        let mut input = child.stdin.take().expect("piped");
        if let Some(data) = stdin {
            input
                .write_all(&data)
                .await
                .map_err(|e| format!("ssh {target}: {e}"))?;
        }
        drop(input);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("ssh {target}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ssh {target} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }
}

fn copy_binary(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, to)
}

#[async_trait]
impl Provider for ContainersProvider {
    async fn provision(&self, req: &ProvisionRequest) -> Result<String, String> {
        match req.kind {
            ProviderKind::Containers => self.provision_container(req).await,
            ProviderKind::Manual => self.provision_manual(req).await,
        }
    }

    async fn destroy(&self, kind: ProviderKind, instance: &str) -> Result<(), String> {
        match kind {
            ProviderKind::Containers => self
                .containers
                .destroy(instance)
                .await
                .map_err(|e| e.to_string()),
            // A manual machine is the operator's: kumo only removes its
            // agent, and an unreachable host does not block the removal.
            ProviderKind::Manual => {
                let sh = "sh -c 'systemctl disable --now kumo-agent.service; rm -f /etc/kumo/agent.json'";
                if let Err(e) = self.ssh(instance, vec![sh.to_string()], None).await {
                    tracing::warn!("removing the agent from {instance}: {e}");
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_picked_lowest_free_first() {
        let used = ["10.0.0.10".to_string(), "10.0.0.11".to_string()]
            .into_iter()
            .collect();
        assert_eq!(
            pick_address("10.0.0.10-10.0.0.12", &used).unwrap(),
            "10.0.0.12"
        );
        assert!(pick_address("10.0.0.10-10.0.0.11", &used)
            .unwrap_err()
            .contains("full"));
        assert!(parse_range("10.0.0.9-10.0.0.1")
            .unwrap_err()
            .contains("after"));
        assert!(parse_range("10.0.0.9").unwrap_err().contains("FIRST-LAST"));
    }

    #[test]
    fn instance_names_are_container_names() {
        assert_eq!(
            instance_name("1a2b3c", "default", "0/lxd/1"),
            "k1a2b3c-default-0-lxd-1"
        );
    }
}
