//! Command-line grammar (clap) and the client-side commands. Verbs follow
//! MAAS and Juju habits: `kumo machines commission node1`,
//! `kumo machines allocate --constraints "tags=compute cores=4"`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kumo_client::{enc, Client};
use kumo_model::api::{
    ActionOptions, AddMachine, AllocateRequest, AuditEvent, CreateUser, Group, MachineEvent,
    MachineView, NewApiKey, Tag, UpdateMachine, UpdateTagMachines, User,
};
use kumo_model::EraseMode;
use serde_json::{Map, Value};

use crate::config::{Profile, Profiles};
use crate::output::{emit, fields, mib, table, time, Format};

#[derive(Parser, Debug)]
#[command(
    name = "kumo",
    version,
    about = "Racks of servers to a verified OpenStack cloud",
    propagate_version = true
)]
pub struct Cli {
    /// CLI profile to use (see `kumo login`); defaults to the current one.
    #[arg(long, global = true, env = "KUMO_PROFILE")]
    pub profile: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the region's data directory, an admin user and an API key.
    Init(InitArgs),
    /// Run the region.
    Region {
        #[command(subcommand)]
        command: RegionCommand,
    },
    /// Save a profile: a region URL and an API key.
    Login {
        profile: String,
        url: String,
        key: String,
    },
    /// Forget a profile.
    Logout { profile: String },
    /// List profiles; `*` marks the current one.
    Profiles,
    /// Show who the current profile authenticates as.
    Whoami,
    /// Machines: add, list, and drive them through their lifecycle.
    #[command(alias = "machine")]
    Machines {
        #[command(subcommand)]
        command: MachineCommand,
    },
    /// Tags: manual, or automatic from an expression over hardware facts.
    #[command(alias = "tag")]
    Tags {
        #[command(subcommand)]
        command: TagCommand,
    },
    /// Availability zones.
    #[command(alias = "zone")]
    Zones {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Resource pools.
    #[command(alias = "pool")]
    Pools {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Machine events, newest last.
    Events {
        /// Only this machine's (system id or hostname), or a rack's (rack:NAME).
        #[arg(long)]
        machine: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The audit log: who changed what (admins only).
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Users and their API keys.
    #[command(alias = "user")]
    Users {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Power types and their parameters.
    PowerTypes,
    /// Fabrics (layer-2 domains).
    #[command(alias = "fabric")]
    Fabrics {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// VLANs on fabrics; `update --dhcp on` provides DHCP on one.
    #[command(alias = "vlan")]
    Vlans {
        #[command(subcommand)]
        command: crate::cli_net::VlanCommand,
    },
    /// Subnets.
    #[command(alias = "subnet")]
    Subnets {
        #[command(subcommand)]
        command: crate::cli_net::SubnetCommand,
    },
    /// Dynamic and reserved IP ranges.
    #[command(alias = "iprange")]
    Ipranges {
        #[command(subcommand)]
        command: crate::cli_net::RangeCommand,
    },
    /// DNS domains.
    #[command(alias = "domain")]
    Domains {
        #[command(subcommand)]
        command: crate::cli_net::DomainCommand,
    },
    /// DNS records in kumo's domains.
    #[command(alias = "dns-record")]
    DnsRecords {
        #[command(subcommand)]
        command: crate::cli_net::RecordCommand,
    },
    /// Rack services.
    Rack {
        #[command(subcommand)]
        command: RackCommand,
    },
    /// Your SSH keys, for the machines you deploy.
    #[command(name = "sshkeys", alias = "ssh-keys")]
    SshKeys {
        #[command(subcommand)]
        command: crate::cli_deploy::SshKeyCommand,
    },
    /// Commissioning and testing scripts machines run.
    #[command(alias = "script")]
    Scripts {
        #[command(subcommand)]
        command: crate::cli_scripts::ScriptCommand,
    },
    /// OS images for deploying, and the boot images the rack serves.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// The machine-side agent.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// kumo on this host: region, rack and QEMU machines on a bridge.
    Lab {
        #[command(subcommand)]
        command: crate::lab::LabCommand,
    },
    /// Orchestration, as Juju has it: bootstrap, models, deploy, relate, status…
    #[command(flatten)]
    Models(crate::cli_models::ModelCommand),
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Build the ephemeral environment's kernel and initramfs from Debian's
    /// packages and this kumo binary (needs apt-get, dpkg-deb, depmod, ldd;
    /// build kumo with --release first for a small, fast initramfs).
    BuildEphemeral(BuildEphemeralArgs),
    /// The images the region holds for deploying.
    List,
    /// Upload an image built by `kumo images build`, from its manifest
    /// (`<name>.json` beside the image file).
    Upload {
        manifest: PathBuf,
        /// Register it under another name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete an image from the region (not while a machine deploys it).
    Delete { name: String },
    /// Build a bootable Debian disk image for deployment (as root: needs
    /// debootstrap, sfdisk, loop devices, mkfs.ext4; see
    /// scripts/deps-images.sh). The root filesystem is cached, so a
    /// rebuild takes seconds.
    Build(BuildImageArgs),
}

#[derive(Args, Debug)]
pub struct BuildImageArgs {
    /// The image's name: <output>/<name>.img.zst and <name>.json.
    #[arg(long, default_value = crate::disk_image::DEFAULT_NAME)]
    pub name: String,
    /// The Debian release to debootstrap.
    #[arg(long, default_value = crate::disk_image::DEFAULT_RELEASE)]
    pub release: String,
    /// The Debian mirror packages come from.
    #[arg(long, default_value = crate::disk_image::DEFAULT_MIRROR)]
    pub mirror: String,
    /// The raw disk image's size; deployed machines grow the root
    /// partition to their whole disk on first boot.
    #[arg(long, default_value_t = crate::disk_image::DEFAULT_SIZE_MIB)]
    pub size_mib: u64,
    /// Where to write the image [default: <data dir>/images].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Cached root filesystems and packages [default: <data dir>/cache/images].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Another Debian package to install (repeatable).
    #[arg(long = "package", value_name = "PACKAGE")]
    pub packages: Vec<String>,
    /// Only build: do not upload the image to the region of the current
    /// profile (`kumo images upload <output>/<name>.json` does it later).
    #[arg(long)]
    pub no_upload: bool,
}

#[derive(Args, Debug)]
pub struct BuildEphemeralArgs {
    /// Where to write vmlinuz and initrd.img [default: <data dir>/rack/boot/ephemeral/amd64,
    /// which `kumo rack serve` serves].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Downloaded and unpacked packages [default: <data dir>/cache/ephemeral].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The kumo binary to put in the initramfs [default: this one].
    #[arg(long)]
    pub kumo_binary: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Run in the network-booted ephemeral environment: read the kernel
    /// command line (kumo.purpose, kumo.metadata_url, kumo.token, BOOTIF),
    /// enlist or commission this machine through the rack, then power off.
    Ephemeral(AgentEphemeralArgs),
    /// Run a model machine's agent (the systemd service kumo installs):
    /// long-poll the controller and run each unit's charm hooks.
    Machine(AgentMachineArgs),
    /// Containers on this machine (`lxd:N`), as the controller asks for
    /// them over SSH; run as root.
    Container {
        #[command(subcommand)]
        command: AgentContainerCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentContainerCommand {
    /// Make (or remake) and boot a container from the controller's JSON
    /// request on standard input; prints its address.
    Create,
    /// Boot a made container (its `kumo-container@NAME` unit runs this).
    Start { name: String },
    /// Power a container off.
    Stop { name: String },
    /// Stop and remove a container; a missing one is no error.
    Destroy { name: String },
}

#[derive(Args, Debug)]
pub struct AgentMachineArgs {
    /// The controller URL, model, machine and token.
    #[arg(long, default_value = "/etc/kumo/agent.json")]
    pub config: PathBuf,
    /// Where charms, hook tool sockets and logs are kept.
    #[arg(long, default_value = "/var/lib/kumo/agent")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct AgentEphemeralArgs {
    /// Where /proc and /sys are (a fake tree for trying the agent out).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The kernel command line to read [default: <root>/proc/cmdline].
    #[arg(long)]
    pub cmdline: Option<PathBuf>,
    /// Do not power off when done.
    #[arg(long)]
    pub no_power_off: bool,
}

#[derive(Subcommand, Debug)]
pub enum RackCommand {
    /// Show what racks serve: DHCP subnets with known hosts, DNS data.
    Config,
    /// Run the rack: DHCP, TFTP, HTTP boot and DNS on the given
    /// interfaces, following the region's configuration (needs root for
    /// ports 67, 69 and 53). Talks to the region of the current profile,
    /// which must hold an admin key.
    Serve(RackServeArgs),
    /// Other DHCP servers racks heard on the networks they serve.
    RogueDhcp,
}

#[derive(Args, Debug)]
pub struct RackServeArgs {
    /// An interface to serve on (repeat for several); it needs an IPv4 address.
    #[arg(long = "interface", short = 'i', required = true)]
    pub interfaces: Vec<String>,
    /// This rack's name [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Rack state (lease journals, boot files) [default: <data dir>/rack].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where Debian's ipxe package installed undionly.kpxe and snponly.efi.
    #[arg(long, default_value = "/usr/lib/ipxe")]
    pub ipxe_dir: PathBuf,
    #[arg(long, default_value_t = 5248)]
    pub http_port: u16,
    #[arg(long, default_value_t = 69)]
    pub tftp_port: u16,
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Serve no DNS (machines get the subnets' own DNS servers only).
    #[arg(long)]
    pub no_dns: bool,
    /// Answer repeated DNS queries in XDP, in the kernel's driver, before
    /// the socket (auto, native or generic; auto is native where the
    /// driver has it, generic on veths and elsewhere). Needs a kernel
    /// with BPF; if the program cannot be attached, DNS is served from
    /// the sockets and the log says why.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "auto")]
    pub dns_xdp: Option<String>,
    /// Where to forward names outside kumo's domains, e.g. 192.0.2.53 or
    /// 192.0.2.53:53 (repeatable) [default: the nameservers in /etc/resolv.conf].
    #[arg(long = "dns-upstream")]
    pub dns_upstreams: Vec<String>,
    /// Do not answer IPv6 router solicitations (by default the rack answers
    /// with an advertisement that configures nothing, so iPXE does not wait
    /// about 16 s for an IPv6 router on every boot).
    #[arg(long)]
    pub no_router_advertisements: bool,
    /// Seconds between probes for other DHCP servers on each interface; 0 disables.
    #[arg(long, default_value_t = 60)]
    pub rogue_dhcp_interval: u64,
    /// The package proxy's port on the served interfaces (apt-cacher-ng,
    /// which cannot listen above 32767).
    #[arg(long, default_value_t = 8000, value_parser = clap::value_parser!(u16).range(1..=32767))]
    pub package_proxy_port: u16,
    /// Run no package proxy.
    #[arg(long)]
    pub no_package_proxy: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Data directory [default: $KUMO_DATA_DIR or ~/.local/share/kumo].
    #[arg(long, env = "KUMO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL [default: sqlite in the data directory]; postgres://… for PostgreSQL.
    #[arg(long)]
    pub database: Option<String>,
    /// Address the region will listen on [default: 127.0.0.1:5240].
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long, default_value = "admin")]
    pub admin: String,
    /// Admin password [default: generated and printed once].
    #[arg(long, env = "KUMO_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Name of the CLI profile saved for the admin.
    #[arg(long, default_value = "local")]
    pub profile: String,
    /// Do not save a CLI profile.
    #[arg(long)]
    pub no_login: bool,
    /// Print the admin's API key and nothing else (no profile is saved,
    /// the generated password is not shown): for `kumo bootstrap --to`,
    /// which runs this on the controller's host.
    #[arg(long, hide = true)]
    pub key_only: bool,
}

#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// Serve the REST API and run the power and watchdog workers.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, env = "KUMO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Override the listen address from region.json.
    #[arg(long)]
    pub listen: Option<String>,
    /// Override the database URL from region.json.
    #[arg(long)]
    pub database: Option<String>,
    /// The HTTP proxy deployed machines fetch packages through, e.g. the
    /// rack's `http://10.248.0.1:8000/`.
    #[arg(long)]
    pub package_proxy: Option<String>,
    /// Where container machines' root filesystem is cached
    /// [default: <data dir>/cache/containers].
    #[arg(long, env = "KUMO_CONTAINERS_CACHE")]
    pub containers_cache: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum MachineCommand {
    /// List machines, optionally filtered.
    #[command(alias = "ls")]
    List {
        /// Comma-separated statuses, e.g. ready,deployed.
        #[arg(long)]
        status: Option<String>,
        /// Machines carrying all these comma-separated tags.
        #[arg(long)]
        tags: Option<String>,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        arch: Option<String>,
    },
    /// Show one machine.
    Show {
        machine: String,
    },
    /// Add a machine.
    Add(MachineFields),
    /// Change a machine's fields; power parameters merge key by key.
    Update {
        machine: String,
        #[command(flatten)]
        fields: UpdateFields,
    },
    /// Delete a machine that is not allocated or deployed.
    #[command(alias = "rm")]
    Delete {
        machine: String,
    },
    /// Boot the machine to take its hardware inventory and run the
    /// commissioning scripts.
    Commission {
        machine: String,
        /// The commissioning scripts to run, in order, comma-separated
        /// [default: all of them]; "" runs none.
        #[arg(long, value_delimiter = ',')]
        scripts: Option<Vec<String>>,
    },
    /// Boot the machine to run the testing scripts.
    Test {
        machine: String,
        /// The testing scripts to run, in order, comma-separated [default: all of them].
        #[arg(long, value_delimiter = ',')]
        scripts: Option<Vec<String>>,
    },
    /// What a script printed on the machine in its latest run.
    ScriptOutput {
        machine: String,
        script: String,
        /// Its stderr instead of its stdout.
        #[arg(long)]
        stderr: bool,
    },
    /// Allocate a machine by constraints, or a named machine.
    Allocate {
        machine: Option<String>,
        /// e.g. "tags=compute,ssd not_tags=gpu cores=4 mem=8G arch=amd64 zone=z pool=p".
        #[arg(long, short = 'c', default_value = "")]
        constraints: String,
        /// What the machine is for; asking again with the same name gives
        /// back the machine you already hold by it (a script safe to rerun).
        #[arg(long)]
        agent_name: Option<String>,
    },
    /// Install an operating system on the machine.
    Deploy {
        machine: String,
        /// The image to write [default: debian-12, or the only image].
        #[arg(long)]
        image: Option<String>,
        /// A cloud-init user-data file for the first boot.
        #[arg(long)]
        user_data: Option<PathBuf>,
    },
    /// Return the machine to the pool.
    Release {
        machine: String,
        #[arg(long, value_parser = ["none", "quick", "full"], default_value = "none")]
        erase: String,
    },
    /// Stop the operation in progress.
    Abort {
        machine: String,
    },
    MarkBroken {
        machine: String,
        #[arg(long)]
        reason: Option<String>,
    },
    MarkFixed {
        machine: String,
    },
    /// Boot the machine into the rescue environment.
    Rescue {
        machine: String,
    },
    ExitRescue {
        machine: String,
    },
    PowerOn {
        machine: String,
    },
    PowerOff {
        machine: String,
    },
    /// Ask the machine's BMC for its power state now.
    PowerState {
        machine: String,
    },
    /// Give an interface a static address on a subnet (the lowest free one unless --ip).
    Link {
        machine: String,
        #[arg(long)]
        mac: String,
        #[arg(long)]
        subnet: String,
        #[arg(long)]
        ip: Option<String>,
    },
    /// Release a static address.
    Unlink {
        machine: String,
        ip: String,
    },
    /// A machine's static addresses.
    Addresses {
        machine: String,
    },
}

#[derive(Args, Debug)]
pub struct MachineFields {
    #[arg(long)]
    pub hostname: String,
    /// A MAC address; repeat for several NICs.
    #[arg(long = "mac", required = true)]
    pub macs: Vec<String>,
    #[arg(long)]
    pub arch: Option<String>,
    /// ipmi, redfish, qemu, virsh, wol, webhook or manual (see `kumo power-types`).
    #[arg(long)]
    pub power_type: Option<String>,
    /// A power parameter as key=value; repeat as needed.
    #[arg(long = "power-param", value_name = "KEY=VALUE")]
    pub power_params: Vec<String>,
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long)]
    pub pool: Option<String>,
    #[arg(long)]
    pub cores: Option<u32>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u64>,
    /// A manual tag; repeat as needed.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateFields {
    #[arg(long)]
    pub hostname: Option<String>,
    /// Replace the machine's MAC addresses; repeat for several.
    #[arg(long = "mac")]
    pub macs: Vec<String>,
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long)]
    pub power_type: Option<String>,
    /// key=value; an empty value (key=) removes the parameter.
    #[arg(long = "power-param", value_name = "KEY=VALUE")]
    pub power_params: Vec<String>,
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long)]
    pub pool: Option<String>,
    #[arg(long)]
    pub cores: Option<u32>,
    #[arg(long)]
    pub memory: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum TagCommand {
    #[command(alias = "ls")]
    List,
    Show {
        name: String,
    },
    /// Create a tag; with --definition it is automatic, e.g.
    /// --definition 'cpu_count >= 8 && disks.exists(d, d.size_gb >= 500)'.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        definition: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    Update {
        name: String,
        #[arg(long)]
        definition: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    #[command(alias = "rm")]
    Delete {
        name: String,
    },
    /// Put a manual tag on machines.
    Add {
        name: String,
        machines: Vec<String>,
    },
    /// Take a manual tag off machines.
    Remove {
        name: String,
        machines: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    #[command(alias = "ls")]
    List,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    #[command(alias = "rm")]
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    #[command(alias = "ls")]
    List,
    Create {
        username: String,
        #[arg(long, env = "KUMO_NEW_USER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        admin: bool,
    },
    /// Make a new API key for a user (printed once).
    ApiKey { username: String },
}

fn parse_params(raw: &[String], allow_remove: bool) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for kv in raw {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--power-param {kv:?}: expected KEY=VALUE");
        };
        if k.is_empty() {
            bail!("--power-param {kv:?}: the key is empty");
        }
        let value = if v.is_empty() && allow_remove {
            Value::Null
        } else if v.starts_with('[') {
            // JSON arrays (e.g. qemu's command) pass through as arrays.
            serde_json::from_str(v)
                .with_context(|| format!("--power-param {k}: not a JSON array"))?
        } else {
            Value::String(v.to_owned())
        };
        out.insert(k.to_owned(), value);
    }
    Ok(out)
}

fn machine_table(ms: &[MachineView]) -> comfy_table::Table {
    table(
        &[
            "HOSTNAME",
            "SYSTEM ID",
            "STATUS",
            "POWER",
            "OWNER",
            "ARCH",
            "CORES",
            "MEMORY",
            "ZONE",
            "POOL",
            "TAGS",
        ],
        ms.iter()
            .map(|v| {
                let m = &v.machine;
                vec![
                    m.hostname.to_string(),
                    m.system_id.to_string(),
                    m.status.to_string(),
                    m.power_state.as_str().into(),
                    m.owner.clone().unwrap_or_else(|| "-".into()),
                    m.arch.clone(),
                    m.cpu_count.to_string(),
                    mib(m.memory_mib),
                    m.zone.to_string(),
                    m.pool.to_string(),
                    m.tags.join(","),
                ]
            })
            .collect(),
    )
}

fn machine_detail(v: &MachineView) -> comfy_table::Table {
    let m = &v.machine;
    let mut rows = vec![
        ("hostname", m.hostname.to_string()),
        ("system id", m.system_id.to_string()),
        (
            "status",
            if m.status_message.is_empty() {
                m.status.to_string()
            } else {
                format!("{} ({})", m.status, m.status_message)
            },
        ),
        ("owner", m.owner.clone().unwrap_or_else(|| "-".into())),
        (
            "power",
            format!("{} via {}", m.power_state.as_str(), m.power_type),
        ),
        ("arch", m.arch.clone()),
        ("cores", m.cpu_count.to_string()),
        ("memory", mib(m.memory_mib)),
        ("storage", format!("{:.1} GB", m.storage_bytes as f64 / 1e9)),
        (
            "macs",
            m.macs
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("zone", m.zone.to_string()),
        ("pool", m.pool.to_string()),
        ("tags", m.tags.join(", ")),
        ("actions", v.allowed_actions.join(", ")),
    ];
    for (k, val) in &m.power_parameters {
        rows.push((
            "power param",
            format!(
                "{k}={}",
                val.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| val.to_string())
            ),
        ));
    }
    if let Some(d) = &m.deployment {
        let stage = match d.stage {
            kumo_model::deploy::DeployStage::Installing => "writing the image",
            kumo_model::deploy::DeployStage::Installed => "image on disk",
        };
        rows.push((
            "deployment",
            format!("{} since {} ({stage})", d.image, time(d.started_at)),
        ));
    }
    if let Some(d) = m.deadline {
        rows.push(("deadline", time(d)));
    }
    fields(rows)
}

fn events_table(es: &[MachineEvent]) -> comfy_table::Table {
    table(
        &["TIME", "MACHINE", "KIND", "MESSAGE"],
        es.iter()
            .map(|e| {
                vec![
                    time(e.at),
                    e.system_id.clone(),
                    e.kind.clone(),
                    e.message.clone(),
                ]
            })
            .collect(),
    )
}

async fn show_machine(c: &Client, format: Format, path: &str, body: Option<&Value>) -> Result<()> {
    let v: MachineView = match body {
        Some(b) => c.post(path, b).await?,
        None => c.get(path).await?,
    };
    emit(format, &v, machine_detail)
}

pub async fn run_client_command(cmd: Command, profile: Option<&str>, format: Format) -> Result<()> {
    match cmd {
        Command::Login { profile, url, key } => {
            let c = Client::new(&url, Some(key.clone()));
            let me: Value = c
                .get("/api/v1/whoami")
                .await
                .context("checking the key with the region")?;
            let mut p = Profiles::load()?;
            p.profiles.insert(
                profile.clone(),
                Profile {
                    url,
                    key,
                    model: None,
                },
            );
            p.current = Some(profile.clone());
            p.save()?;
            println!(
                "logged in to profile {profile} as {}",
                me["username"].as_str().unwrap_or("?")
            );
            return Ok(());
        }
        Command::Logout { profile } => {
            let mut p = Profiles::load()?;
            if p.profiles.remove(&profile).is_none() {
                bail!("no profile named {profile:?}");
            }
            if p.current.as_deref() == Some(&profile) {
                p.current = None;
            }
            p.save()?;
            return Ok(());
        }
        Command::Profiles => {
            let p = Profiles::load()?;
            let rows = p
                .profiles
                .iter()
                .map(|(n, pr)| {
                    vec![
                        if p.current.as_deref() == Some(n) {
                            format!("* {n}")
                        } else {
                            format!("  {n}")
                        },
                        pr.url.clone(),
                    ]
                })
                .collect();
            println!("{}", table(&["PROFILE", "URL"], rows));
            return Ok(());
        }
        _ => {}
    }
    // A controller on a host of its own needs no profile yet: it makes one.
    let cmd = match cmd {
        Command::Models(crate::cli_models::ModelCommand::Bootstrap(a)) if a.to.is_some() => {
            return crate::bootstrap_host::bootstrap_on_host(a).await;
        }
        cmd => cmd,
    };
    let (prof_name, prof) = Profiles::load()?.pick(profile)?;
    let c = Client::new(&prof.url, Some(prof.key));
    match cmd {
        Command::Models(command) => crate::cli_models::run(&c, format, &prof_name, command).await,
        Command::Whoami => {
            let me: Value = c.get("/api/v1/whoami").await?;
            emit(format, &me, |m| {
                fields(vec![
                    ("username", m["username"].as_str().unwrap_or("").into()),
                    ("admin", m["admin"].to_string()),
                ])
            })
        }
        Command::Machines { command } => machines(&c, format, command).await,
        Command::Tags { command } => tags(&c, format, command).await,
        Command::Zones { command } => groups(&c, format, "zones", command).await,
        Command::Pools { command } => groups(&c, format, "pools", command).await,
        Command::Events { machine, limit } => {
            let path = match machine {
                Some(m) => format!("/api/v1/machines/{}/events?limit={limit}", enc(&m)),
                None => format!("/api/v1/events?limit={limit}"),
            };
            let es: Vec<MachineEvent> = c.get(&path).await?;
            emit(format, &es, |es| events_table(es))
        }
        Command::Audit { limit } => {
            let es: Vec<AuditEvent> = c.get(&format!("/api/v1/audit?limit={limit}")).await?;
            emit(format, &es, |es| {
                table(
                    &["TIME", "USER", "ACTION", "OBJECT", "DETAIL"],
                    es.iter()
                        .map(|e| {
                            vec![
                                time(e.at),
                                e.username.clone(),
                                e.action.clone(),
                                e.object.clone(),
                                e.detail.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        Command::Users { command } => match command {
            UserCommand::List => {
                let us: Vec<User> = c.get("/api/v1/users").await?;
                emit(format, &us, |us| {
                    table(
                        &["USERNAME", "ADMIN"],
                        us.iter()
                            .map(|u| vec![u.username.clone(), u.admin.to_string()])
                            .collect(),
                    )
                })
            }
            UserCommand::Create {
                username,
                password,
                admin,
            } => {
                let u: User = c
                    .post(
                        "/api/v1/users",
                        &CreateUser {
                            username,
                            password,
                            admin,
                        },
                    )
                    .await?;
                emit(format, &u, |u| {
                    fields(vec![
                        ("username", u.username.clone()),
                        ("admin", u.admin.to_string()),
                    ])
                })
            }
            UserCommand::ApiKey { username } => {
                let k: NewApiKey = c
                    .post(
                        &format!("/api/v1/users/{}/api-keys", enc(&username)),
                        &Value::Null,
                    )
                    .await?;
                emit(format, &k, |k| {
                    fields(vec![
                        ("username", k.username.clone()),
                        ("key", k.key.clone()),
                    ])
                })
            }
        },
        Command::PowerTypes => {
            let ts: Vec<Value> = c.get("/api/v1/power-types").await?;
            emit(format, &ts, |ts| {
                let mut rows = Vec::new();
                for t in ts {
                    for p in t["parameters"].as_array().into_iter().flatten() {
                        rows.push(vec![
                            t["name"].as_str().unwrap_or("").into(),
                            p["name"].as_str().unwrap_or("").into(),
                            if p["required"].as_bool() == Some(true) {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                            if p["secret"].as_bool() == Some(true) {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                            p["description"].as_str().unwrap_or("").into(),
                        ]);
                    }
                }
                table(
                    &["TYPE", "PARAMETER", "REQUIRED", "SECRET", "DESCRIPTION"],
                    rows,
                )
            })
        }
        Command::Fabrics { command } => crate::cli_net::fabrics(&c, format, command).await,
        Command::Vlans { command } => crate::cli_net::vlans(&c, format, command).await,
        Command::Subnets { command } => crate::cli_net::subnets(&c, format, command).await,
        Command::Ipranges { command } => crate::cli_net::ranges(&c, format, command).await,
        Command::Domains { command } => crate::cli_net::domains(&c, format, command).await,
        Command::DnsRecords { command } => crate::cli_net::records(&c, format, command).await,
        Command::Rack {
            command: RackCommand::Config,
        } => crate::cli_net::rack_config(&c, format).await,
        Command::Rack {
            command: RackCommand::RogueDhcp,
        } => crate::cli_net::rogue_dhcp(&c, format).await,
        Command::Rack {
            command: RackCommand::Serve(_),
        } => unreachable!("handled in main"),
        Command::Images {
            command: ImagesCommand::List,
        } => crate::cli_deploy::list_images(&c, format).await,
        Command::Images {
            command: ImagesCommand::Delete { name },
        } => crate::cli_deploy::delete_image(&c, &name).await,
        Command::Images {
            command: ImagesCommand::Upload { manifest, name },
        } => {
            let m = crate::cli_deploy::Manifest::read(&manifest)?;
            let image = crate::cli_deploy::upload_image(&c, &m, name.as_deref()).await?;
            emit(format, &vec![image], |i| crate::cli_deploy::image_table(i))
        }
        Command::SshKeys { command } => crate::cli_deploy::ssh_keys(&c, format, command).await,
        Command::Scripts { command } => crate::cli_scripts::scripts(&c, format, command).await,
        Command::Init(_)
        | Command::Images { .. }
        | Command::Agent { .. }
        | Command::Lab { .. }
        | Command::Region { .. }
        | Command::Login { .. }
        | Command::Logout { .. }
        | Command::Profiles => unreachable!("handled above"),
    }
}

async fn machines(c: &Client, format: Format, cmd: MachineCommand) -> Result<()> {
    let action = |m: &str, a: &str| format!("/api/v1/machines/{}/actions/{a}", enc(m));
    let none = Value::Object(Map::new());
    match cmd {
        MachineCommand::List {
            status,
            tags,
            zone,
            pool,
            owner,
            hostname,
            arch,
        } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("status", status),
                ("tags", tags),
                ("zone", zone),
                ("pool", pool),
                ("owner", owner),
                ("hostname", hostname),
                ("arch", arch),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            let ms: Vec<MachineView> = c.get(&format!("/api/v1/machines?{}", q.join("&"))).await?;
            emit(format, &ms, |ms| machine_table(ms))
        }
        MachineCommand::Show { machine } => {
            show_machine(
                c,
                format,
                &format!("/api/v1/machines/{}", enc(&machine)),
                None,
            )
            .await?;
            if format == Format::Table {
                crate::cli_scripts::print_results(c, &machine).await?;
            }
            Ok(())
        }
        MachineCommand::Add(f) => {
            let req = AddMachine {
                hostname: f.hostname,
                arch: f.arch,
                macs: f.macs,
                power_type: f.power_type,
                power_parameters: parse_params(&f.power_params, false)?,
                zone: f.zone,
                pool: f.pool,
                cpu_count: f.cores,
                memory_mib: f.memory,
                tags: f.tags,
            };
            show_machine(
                c,
                format,
                "/api/v1/machines",
                Some(&serde_json::to_value(req)?),
            )
            .await
        }
        MachineCommand::Update { machine, fields: f } => {
            let params = parse_params(&f.power_params, true)?;
            let req = UpdateMachine {
                hostname: f.hostname,
                arch: f.arch,
                macs: (!f.macs.is_empty()).then_some(f.macs),
                power_type: f.power_type,
                power_parameters: (!params.is_empty()).then_some(params),
                zone: f.zone,
                pool: f.pool,
                cpu_count: f.cores,
                memory_mib: f.memory,
            };
            let v: MachineView = c
                .patch(&format!("/api/v1/machines/{}", enc(&machine)), &req)
                .await?;
            emit(format, &v, machine_detail)
        }
        MachineCommand::Delete { machine } => {
            c.delete(&format!("/api/v1/machines/{}", enc(&machine)))
                .await?;
            println!("deleted {machine}");
            Ok(())
        }
        MachineCommand::Allocate {
            machine: Some(m), ..
        } => show_machine(c, format, &action(&m, "allocate"), Some(&none)).await,
        MachineCommand::Allocate {
            machine: None,
            constraints,
            agent_name,
        } => {
            let body = serde_json::to_value(AllocateRequest {
                constraints,
                agent_name,
            })?;
            show_machine(c, format, "/api/v1/machines/allocate", Some(&body)).await
        }
        MachineCommand::Release { machine, erase } => {
            let opts = ActionOptions {
                erase: Some(EraseMode::parse(&erase)?),
                ..Default::default()
            };
            show_machine(
                c,
                format,
                &action(&machine, "release"),
                Some(&serde_json::to_value(opts)?),
            )
            .await
        }
        MachineCommand::MarkBroken { machine, reason } => {
            let opts = ActionOptions {
                reason,
                ..Default::default()
            };
            show_machine(
                c,
                format,
                &action(&machine, "mark-broken"),
                Some(&serde_json::to_value(opts)?),
            )
            .await
        }
        MachineCommand::PowerState { machine } => {
            let v: MachineView = c.post(&action(&machine, "power-query"), &none).await?;
            match format {
                Format::Table => {
                    println!("{}: {}", v.machine.hostname, v.machine.power_state.as_str())
                }
                _ => emit(
                    format,
                    &serde_json::json!({"system_id": v.machine.system_id, "hostname": v.machine.hostname, "power_state": v.machine.power_state}),
                    |_| unreachable!(),
                )?,
            }
            Ok(())
        }
        MachineCommand::Commission { machine, scripts } => {
            let opts = ActionOptions {
                scripts,
                ..Default::default()
            };
            let body = serde_json::to_value(opts)?;
            show_machine(c, format, &action(&machine, "commission"), Some(&body)).await
        }
        MachineCommand::Test { machine, scripts } => {
            let opts = ActionOptions {
                scripts,
                ..Default::default()
            };
            let body = serde_json::to_value(opts)?;
            show_machine(c, format, &action(&machine, "test"), Some(&body)).await
        }
        MachineCommand::ScriptOutput {
            machine,
            script,
            stderr,
        } => crate::cli_scripts::print_output(c, format, &machine, &script, stderr).await,
        MachineCommand::Deploy {
            machine,
            image,
            user_data,
        } => {
            let user_data = match user_data {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?,
                ),
                None => None,
            };
            let opts = ActionOptions {
                image,
                user_data,
                ..Default::default()
            };
            show_machine(
                c,
                format,
                &action(&machine, "deploy"),
                Some(&serde_json::to_value(opts)?),
            )
            .await
        }
        MachineCommand::Abort { machine } => {
            show_machine(c, format, &action(&machine, "abort"), Some(&none)).await
        }
        MachineCommand::MarkFixed { machine } => {
            show_machine(c, format, &action(&machine, "mark-fixed"), Some(&none)).await
        }
        MachineCommand::Rescue { machine } => {
            show_machine(c, format, &action(&machine, "rescue"), Some(&none)).await
        }
        MachineCommand::ExitRescue { machine } => {
            show_machine(c, format, &action(&machine, "exit-rescue"), Some(&none)).await
        }
        MachineCommand::PowerOn { machine } => {
            show_machine(c, format, &action(&machine, "power-on"), Some(&none)).await
        }
        MachineCommand::PowerOff { machine } => {
            show_machine(c, format, &action(&machine, "power-off"), Some(&none)).await
        }
        MachineCommand::Link {
            machine,
            mac,
            subnet,
            ip,
        } => crate::cli_net::link(c, format, machine, mac, subnet, ip).await,
        MachineCommand::Unlink { machine, ip } => crate::cli_net::unlink(c, machine, ip).await,
        MachineCommand::Addresses { machine } => {
            crate::cli_net::addresses(c, format, machine).await
        }
    }
}

async fn tags(c: &Client, format: Format, cmd: TagCommand) -> Result<()> {
    let show = |t: &Tag| {
        fields(vec![
            ("name", t.name.clone()),
            ("definition", t.definition.clone()),
            ("comment", t.comment.clone()),
        ])
    };
    match cmd {
        TagCommand::List => {
            let ts: Vec<Tag> = c.get("/api/v1/tags").await?;
            emit(format, &ts, |ts| {
                table(
                    &["NAME", "KIND", "DEFINITION", "COMMENT"],
                    ts.iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                if t.definition.is_empty() {
                                    "manual".into()
                                } else {
                                    "automatic".into()
                                },
                                t.definition.clone(),
                                t.comment.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        TagCommand::Show { name } => {
            let t: Tag = c.get(&format!("/api/v1/tags/{}", enc(&name))).await?;
            emit(format, &t, show)
        }
        TagCommand::Create {
            name,
            definition,
            comment,
        } => {
            let t: Tag = c
                .post(
                    "/api/v1/tags",
                    &Tag {
                        name,
                        definition,
                        comment,
                    },
                )
                .await?;
            emit(format, &t, show)
        }
        TagCommand::Update {
            name,
            definition,
            comment,
        } => {
            let cur: Tag = c.get(&format!("/api/v1/tags/{}", enc(&name))).await?;
            let t = Tag {
                name: name.clone(),
                definition: definition.unwrap_or(cur.definition),
                comment: comment.unwrap_or(cur.comment),
            };
            let t: Tag = c.put(&format!("/api/v1/tags/{}", enc(&name)), &t).await?;
            emit(format, &t, show)
        }
        TagCommand::Delete { name } => {
            c.delete(&format!("/api/v1/tags/{}", enc(&name))).await?;
            println!("deleted tag {name}");
            Ok(())
        }
        TagCommand::Add { name, machines } | TagCommand::Remove { name, machines }
            if machines.is_empty() =>
        {
            bail!("name at least one machine to tag with {name}")
        }
        TagCommand::Add { name, machines } => {
            let _: Value = c
                .post(
                    &format!("/api/v1/tags/{}/machines", enc(&name)),
                    &UpdateTagMachines {
                        add: machines.clone(),
                        remove: vec![],
                    },
                )
                .await?;
            println!("tagged {} with {name}", machines.join(", "));
            Ok(())
        }
        TagCommand::Remove { name, machines } => {
            let _: Value = c
                .post(
                    &format!("/api/v1/tags/{}/machines", enc(&name)),
                    &UpdateTagMachines {
                        add: vec![],
                        remove: machines.clone(),
                    },
                )
                .await?;
            println!("removed {name} from {}", machines.join(", "));
            Ok(())
        }
    }
}

async fn groups(c: &Client, format: Format, kind: &str, cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::List => {
            let gs: Vec<Group> = c.get(&format!("/api/v1/{kind}")).await?;
            emit(format, &gs, |gs| {
                table(
                    &["NAME", "DESCRIPTION"],
                    gs.iter()
                        .map(|g| vec![g.name.clone(), g.description.clone()])
                        .collect(),
                )
            })
        }
        GroupCommand::Create { name, description } => {
            let g: Group = c
                .post(&format!("/api/v1/{kind}"), &Group { name, description })
                .await?;
            emit(format, &g, |g| {
                fields(vec![
                    ("name", g.name.clone()),
                    ("description", g.description.clone()),
                ])
            })
        }
        GroupCommand::Delete { name } => {
            c.delete(&format!("/api/v1/{kind}/{}", enc(&name))).await?;
            println!("deleted {} {name}", kind.trim_end_matches('s'));
            Ok(())
        }
    }
}
