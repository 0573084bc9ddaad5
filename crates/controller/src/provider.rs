//! Machine providers behind one trait. `containers` makes systemd-nspawn
//! machines on this host's bridge; `manual` installs the agent on an
//! existing host over SSH; `metal` installs it the same way on a region
//! machine the controller allocated and deployed through a
//! [`MetalBackend`]. All install the same thing: the `kumo` binary,
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
    /// For a container on a metal or manual machine (`lxd:N`): the
    /// machine it runs on.
    pub host: Option<HostRef>,
    pub agent: AgentConfig,
    pub bootstrap: Bootstrap,
}

/// A metal or manual machine that hosts containers, as the controller
/// reaches it over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRef {
    /// The host machine's provider instance (its known-hosts file's name).
    pub instance: String,
    /// `user@address`.
    pub target: String,
    /// The host's address, which its bridge takes over.
    pub address: String,
}

/// What `kumo agent container create` reads on its standard input on the
/// machine that hosts the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostContainerRequest {
    pub name: String,
    pub hostname: String,
    /// The container's IPv4 address; the prefix, gateway and name servers
    /// are the host's.
    pub address: String,
    /// The host's own address: the interface holding it is bridged.
    pub host_address: String,
    /// The root filesystem tarball, already on the host.
    pub rootfs: String,
    pub files: Vec<kumo_containers::InjectedFile>,
    pub enable_units: Vec<String>,
    pub authorized_keys: Vec<String>,
}

/// Where hosts keep the root filesystem tarballs the controller copies.
pub const HOST_ROOTFS_DIR: &str = "/var/cache/kumo";

/// A region machine as the metal provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetalMachine {
    pub system_id: String,
    pub hostname: String,
    pub status: kumo_model::MachineStatus,
    /// The region's latest progress or failure message.
    pub status_message: String,
    pub owner: Option<String>,
    /// Its static addresses; the agent is installed over the first.
    pub addresses: Vec<String>,
}

/// The region, as the `metal` provider needs it: implemented in the
/// region process over the `Region` handle (`kumo`'s `serve.rs`), faked in
/// the controller's tests. Errors are the region's messages.
#[async_trait]
pub trait MetalBackend: Send + Sync {
    /// Allocates a Ready machine matching `constraints` (Juju syntax,
    /// empty for any) to `owner`, under `agent_name`; the machine `owner`
    /// already holds under that name if there is one. A miss says which
    /// constraint ruled out how many machines.
    async fn allocate(
        &self,
        owner: &str,
        constraints: &str,
        agent_name: &str,
    ) -> Result<MetalMachine, String>;
    /// Starts deploying an allocated machine with the region's default
    /// image; the first boot lets in `owner`'s SSH keys.
    async fn deploy(&self, owner: &str, system_id: &str) -> Result<MetalMachine, String>;
    /// The machine now, `None` if the region has none by that id. `owner`
    /// is whom the controller acts for: a backend that is one region user
    /// for every model (a controller outside the region) shows machines
    /// that user holds as `owner`'s.
    async fn machine(&self, owner: &str, system_id: &str) -> Result<Option<MetalMachine>, String>;
    /// Gives the machine back (a deployment in progress is aborted first),
    /// with the region's default erase. Safe to repeat.
    async fn release(&self, owner: &str, system_id: &str) -> Result<(), String>;
}

/// The region machine actions that give back a machine in `status`: a
/// deployment in progress is aborted first; a machine already releasing,
/// erasing or back in the pool needs nothing.
pub fn release_actions(status: kumo_model::MachineStatus) -> &'static [&'static str] {
    use kumo_model::MachineStatus as S;
    match status {
        S::Deploying => &["abort", "release"],
        S::Allocated
        | S::Deployed
        | S::FailedDeployment
        | S::FailedReleasing
        | S::FailedDiskErasing => &["release"],
        _ => &[],
    }
}

/// The user cloud-init makes on the region's Debian image; it has
/// password-less sudo and the owner's SSH keys.
pub const METAL_SSH_USER: &str = "debian";

#[async_trait]
pub trait Provider: Send + Sync {
    /// Makes (or finds already made) the machine and starts its agent;
    /// returns its address. Must be safe to repeat.
    async fn provision(&self, req: &ProvisionRequest) -> Result<String, String>;
    /// Removes the machine (from `host` for a container on a metal or
    /// manual machine); safe to repeat.
    async fn destroy(
        &self,
        kind: ProviderKind,
        instance: &str,
        host: Option<&HostRef>,
    ) -> Result<(), String>;
}

/// `k<controller>-<model>-<machine>` with `/` as `-`: a valid container
/// name, unique per controller on a shared host.
pub fn instance_name(controller: &str, model: &str, machine: &str) -> String {
    let mut name = format!("k{controller}-{model}-{}", machine.replace('/', "-"));
    name.truncate(60);
    name
}

/// The agent name a model machine's region machine is allocated under:
/// unique to the controller, the model (a model made again under the same
/// name is another) and the machine.
pub fn metal_agent_name(controller: &str, model: &str, created_at: i64, machine: &str) -> String {
    format!("kumo:{controller}/{model}@{created_at}/{machine}")
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
        let rootfs = self.rootfs().await?;
        let files = agent_files(req);
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

    /// Installs the agent over SSH on `ssh:user@host` (manual machines,
    /// and metal machines once the region deployed them); through `sudo`
    /// unless the user is root.
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
        let sh = |script: &str| sudo_argv(target, &["sh", "-c", &format!("'{script}'")]);
        let target = &self.ssh_target(req.kind, &req.instance, target);
        if req.kind == ProviderKind::Metal {
            let _ = std::fs::remove_file(&target.known_hosts);
        }
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

    /// A container on a metal or manual machine: the controller's cached
    /// root filesystem is copied to the host once, and the host's own
    /// `kumo` (installed with its agent) makes and boots the container on
    /// a bridge over the host's interface (`kumo agent container create`).
    async fn provision_host_container(
        &self,
        req: &ProvisionRequest,
        host: &HostRef,
    ) -> Result<String, String> {
        let b = &req.bootstrap;
        let address = req
            .address
            .clone()
            .ok_or_else(|| format!("container {}: no address chosen", req.instance))?;
        let host_address = host_ipv4(&host.address).await?;
        let rootfs = self.rootfs().await?;
        let file_name = rootfs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let remote = format!("{HOST_ROOTFS_DIR}/{file_name}");
        let target = self.ssh_target(req.kind, &host.instance, &host.target);
        let have = self
            .ssh_output(
                &target,
                sudo_argv(
                    &host.target,
                    &[
                        "sh",
                        "-c",
                        &format!("'test -f {remote} && echo yes || true'"),
                    ],
                ),
                None,
            )
            .await?;
        if String::from_utf8_lossy(&have).trim() != "yes" {
            let tarball = tokio::fs::read(&rootfs)
                .await
                .map_err(|e| format!("reading {}: {e}", rootfs.display()))?;
            let script = format!(
                "'mkdir -p {HOST_ROOTFS_DIR} && cat > {remote}.partial && mv {remote}.partial {remote}'"
            );
            self.ssh(
                &target,
                sudo_argv(&host.target, &["sh", "-c", &script]),
                Some(tarball),
            )
            .await
            .map_err(|e| format!("copying the root filesystem to {}: {e}", host.target))?;
        }
        let files = agent_files(req);
        let request = HostContainerRequest {
            name: req.instance.clone(),
            hostname: req.hostname.clone(),
            address: address.clone(),
            host_address: host_address.to_string(),
            rootfs: remote,
            files,
            enable_units: vec!["kumo-agent.service".into()],
            authorized_keys: b.authorized_keys.clone(),
        };
        self.ssh(
            &target,
            sudo_argv(
                &host.target,
                &["/usr/local/bin/kumo", "agent", "container", "create"],
            ),
            Some(serde_json::to_vec(&request).expect("request")),
        )
        .await
        .map_err(|e| format!("making container {} on {}: {e}", req.instance, host.target))?;
        Ok(address)
    }

    /// The bookworm root filesystem tarball, built once.
    async fn rootfs(&self) -> Result<PathBuf, String> {
        let mut spec = kumo_containers::RootfsSpec::bookworm();
        spec.extra_packages = self.extra_packages.clone();
        kumo_containers::ensure_rootfs(&self.cache_dir, &spec)
            .await
            .map_err(|e| e.to_string())
    }

    /// The region's data directory (the containers' state is beside it).
    fn data_dir(&self) -> Option<PathBuf> {
        self.containers
            .dir("x")
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.to_path_buf())
    }

    /// Host keys of manual machines are remembered per controller. A metal
    /// machine gets a new host key with every deployment (and may have been
    /// redeployed by someone else since kumo last saw it), so its keys are
    /// kept per region machine, forgotten before each install and when it
    /// is released: an install trusts the key the machine shows first and
    /// holds it to that key for the rest of the install.
    fn known_hosts(&self, kind: ProviderKind, instance: &str) -> PathBuf {
        let Some(dir) = self.data_dir() else {
            return PathBuf::from("/dev/null");
        };
        match kind {
            ProviderKind::Metal => dir.join("metal-known-hosts").join(instance),
            _ => dir.join("ssh_known_hosts"),
        }
    }

    /// `user@host`, with the known-hosts file its kind uses.
    fn ssh_target(&self, kind: ProviderKind, instance: &str, target: &str) -> SshTarget {
        SshTarget {
            target: target.to_string(),
            known_hosts: self.known_hosts(kind, instance),
        }
    }

    /// Runs a command on `user@host` as the controller's user, with
    /// `KUMO_SSH_KEY` if set, else the lab's key (`<data dir>/lab/id_ed25519`,
    /// registered as the admin's) when there is one.
    async fn ssh(
        &self,
        target: &SshTarget,
        args: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<(), String> {
        self.ssh_output(target, args, stdin).await.map(drop)
    }

    /// [`Self::ssh`], returning what the command printed.
    async fn ssh_output(
        &self,
        target: &SshTarget,
        args: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        let lab_key = self
            .data_dir()
            .map(|d| d.join("lab/id_ed25519"))
            .filter(|k| k.exists());
        let key = std::env::var_os("KUMO_SSH_KEY")
            .map(PathBuf::from)
            .or(lab_key);
        ssh_exec(
            &target.target,
            &target.known_hosts,
            key.as_deref(),
            &args,
            stdin,
        )
        .await
    }
}

/// What a container machine's agent is made of: its config, its unit and
/// the controller's APT proxy, if any.
fn agent_files(req: &ProvisionRequest) -> Vec<kumo_containers::InjectedFile> {
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
    if let Some(p) = &req.bootstrap.apt_proxy {
        files.push(kumo_containers::apt_proxy_file(p));
    }
    files
}

/// `argv` as run on `target` (`user@host`): through `sudo -n` unless the
/// user is root.
fn sudo_argv(target: &str, argv: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    if !target.starts_with("root@") && target.contains('@') {
        out.splice(0..0, ["sudo".to_string(), "-n".to_string()]);
    }
    out
}

/// A host's address as an IPv4 address: a manual machine may be known by
/// name.
async fn host_ipv4(address: &str) -> Result<Ipv4Addr, String> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host((address, 22))
        .await
        .map_err(|e| format!("resolving host {address}: {e}"))?
        .find_map(|a| match a.ip() {
            std::net::IpAddr::V4(v4) => Some(v4),
            _ => None,
        })
        .ok_or_else(|| format!("host {address} has no IPv4 address"))
}

/// Runs `args` on `target` (`user@host`) over SSH without prompting:
/// `key` if given, a new host's key trusted and kept in `known_hosts`, a
/// changed one refused. Returns what the command printed on stdout; a
/// failure carries its stderr.
pub async fn ssh_exec(
    target: &str,
    known_hosts: &std::path::Path,
    key: Option<&std::path::Path>,
    args: &[String],
    stdin: Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = known_hosts.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
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
    if let Some(key) = key {
        cmd.arg("-i").arg(key);
    }
    cmd.arg(target)
        .args(args)
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
    Ok(out.stdout)
}

struct SshTarget {
    target: String,
    known_hosts: PathBuf,
}

/// Installs `from` at `to` (mode 755) through a temporary file beside it,
/// so a running copy of `to` is replaced, never half-written.
pub fn copy_binary(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
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
        if let Some(host) = &req.host {
            return self.provision_host_container(req, host).await;
        }
        match req.kind {
            ProviderKind::Containers => self.provision_container(req).await,
            ProviderKind::Manual | ProviderKind::Metal => self.provision_manual(req).await,
        }
    }

    async fn destroy(
        &self,
        kind: ProviderKind,
        instance: &str,
        host: Option<&HostRef>,
    ) -> Result<(), String> {
        if let Some(host) = host {
            // The host may be gone already (released, unreachable): its
            // containers went with it.
            let target = self.ssh_target(kind, &host.instance, &host.target);
            let argv = sudo_argv(
                &host.target,
                &[
                    "/usr/local/bin/kumo",
                    "agent",
                    "container",
                    "destroy",
                    instance,
                ],
            );
            if let Err(e) = self.ssh(&target, argv, None).await {
                tracing::warn!("removing container {instance} from {}: {e}", host.target);
            }
            return Ok(());
        }
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
                let target = self.ssh_target(kind, instance, instance);
                if let Err(e) = self.ssh(&target, vec![sh.to_string()], None).await {
                    tracing::warn!("removing the agent from {instance}: {e}");
                }
                Ok(())
            }
            // The controller released the region machine; only its host
            // key is left to forget.
            ProviderKind::Metal => {
                let _ = std::fs::remove_file(self.known_hosts(kind, instance));
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
