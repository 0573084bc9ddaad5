//! `kumo lab up|down|status`: kumo on one host, the embedded default for
//! trying it. A region on SQLite, a rack serving a bridge, and QEMU
//! machines whose NICs are on that bridge, registered with the `qemu`
//! power driver — so `kumo machines commission lab-1` really boots one.
//!
//! Everything lives in `<data dir>/lab/`: `lab.json` (the settings of the
//! last `lab up`, which `down` and `status` read), the lab region's own
//! data directory `region/` (apart from any region of the user's, so
//! `down --purge` can delete it), the rack's state `rack/`, and per
//! process a pid file and a log, per machine a qcow2 disk, a QMP socket
//! and a console log. Region and rack are this binary, started detached in
//! their own process group so they outlive the command (and a Ctrl-C in
//! its terminal); QEMU is started by the region's power driver, which
//! daemonizes it.
//!
//! `up` converges: what exists is kept, what differs is changed, what is
//! missing is made, so running it twice changes nothing the second time.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kumo_client::{enc, Client, ClientError};
use kumo_model::api::{AddMachine, MachineView, UpdateMachine, UpdateTagMachines};
use kumo_model::network::{
    Cidr, Domain, IpRange, LinkRequest, RangeKind, Subnet, SubnetRange, Vlan,
};
use kumo_store::StaticIp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{Profile, Profiles, RegionFile, DEFAULT_LISTEN};
use crate::output::{emit, table, Format};

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Create the lab, or bring it back to what it should be (as root): a
    /// bridge with the rack's address, a tap and a disk per machine, the
    /// lab's region and rack in the background, a managed subnet with DHCP,
    /// and QEMU machines lab-1…lab-N with the qemu power driver.
    Up(UpArgs),
    /// Stop the lab's machines, rack and region and delete its bridge and
    /// taps (as root); disks and region data stay unless --purge.
    Down {
        /// Also delete the disks, the lab's region data, logs and CLI profile.
        #[arg(long)]
        purge: bool,
    },
    /// What of the lab runs: region, rack, network, machines.
    Status,
}

/// Each option defaults to what the last `lab up` used, else to the value shown.
#[derive(Args, Debug, Default)]
pub struct UpArgs {
    /// Number of QEMU machines [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_MACHINES as i64))]
    pub machines: Option<u32>,
    /// Memory per machine [default: 1024].
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// Disk per machine [default: 4].
    #[arg(long)]
    pub disk_gib: Option<u32>,
    /// The lab's bridge; taps are named after it, <bridge>t1… [default: kumolab0].
    #[arg(long)]
    pub bridge: Option<String>,
    /// The lab network; the rack is its .1 [default: 10.248.0.0/24].
    #[arg(long)]
    pub cidr: Option<String>,
    /// The region API's address [default: the lab region's region.json, else 127.0.0.1:5240].
    #[arg(long)]
    pub region_listen: Option<String>,
    /// The rack's HTTP boot port [default: 5248].
    #[arg(long)]
    pub rack_http_port: Option<u16>,
    /// The rack's TFTP port [default: 69].
    #[arg(long)]
    pub rack_tftp_port: Option<u16>,
    /// The rack's DNS port [default: 53].
    #[arg(long)]
    pub rack_dns_port: Option<u16>,
    /// The rack's package proxy port, handed to deployed machines [default: 8000].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=32767))]
    pub package_proxy_port: Option<u16>,
    /// Run no package proxy.
    #[arg(long, conflicts_with = "package_proxy_port")]
    pub no_package_proxy: bool,
    /// QEMU's accelerator: tcg runs anywhere (slowly), kvm needs a working
    /// /dev/kvm [default: tcg].
    #[arg(long, value_parser = ["tcg", "kvm"])]
    pub accel: Option<String>,
    /// Do not build the ephemeral environment machines boot to enlist and
    /// commission (built once, then again when this kumo binary is newer).
    #[arg(long)]
    pub no_ephemeral: bool,
    /// Do not build the Debian image machines deploy (`kumo images build`,
    /// done once when the lab's region holds no image).
    #[arg(long)]
    pub no_image: bool,
    /// Then commission every lab machine that needs it and deploy every
    /// Ready one, waiting until all are Deployed.
    #[arg(long, conflicts_with = "no_image")]
    pub deploy: bool,
}

/// At most 99 machines: static addresses come from .10–.99 and .200–.254,
/// and a tap's name must fit in 15 bytes.
const MAX_MACHINES: u32 = 99;
const RACK_NAME: &str = "lab-rack";
const PROFILE: &str = "lab";
const DOMAIN: &str = "lab.kumo";
const TAG: &str = "lab";
/// Linux's limit on interface names (IFNAMSIZ less the NUL).
const IFNAMSIZ: usize = 15;

/// What `lab up` made, saved as `lab.json` for `down` and `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)] // a field added later takes its default in an older lab.json
struct Settings {
    machines: u32,
    memory_mib: u64,
    disk_gib: u32,
    bridge: String,
    cidr: String,
    rack_http_port: u16,
    rack_tftp_port: u16,
    rack_dns_port: u16,
    package_proxy_port: Option<u16>,
    accel: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            machines: 2,
            memory_mib: 1024,
            disk_gib: 4,
            bridge: "kumolab0".into(),
            cidr: "10.248.0.0/24".into(),
            rack_http_port: 5248,
            rack_tftp_port: 69,
            rack_dns_port: 53,
            package_proxy_port: Some(8000),
            accel: "tcg".into(),
        }
    }
}

impl Settings {
    fn merge(mut self, a: &UpArgs) -> Self {
        macro_rules! take {
            ($($f:ident),*) => { $(if let Some(v) = a.$f.clone() { self.$f = v; })* };
        }
        take!(
            machines,
            memory_mib,
            disk_gib,
            bridge,
            cidr,
            rack_http_port,
            rack_tftp_port,
            rack_dns_port,
            accel
        );
        if a.no_package_proxy {
            self.package_proxy_port = None;
        } else if let Some(p) = a.package_proxy_port {
            self.package_proxy_port = Some(p);
        }
        self
    }

    fn network(&self) -> Result<Cidr> {
        let c: Cidr = self
            .cidr
            .parse()
            .with_context(|| format!("--cidr {}", self.cidr))?;
        if c.prefix() > 24 {
            bail!(
                "--cidr {}: the lab needs a /24 or larger (reserved .1–.9, dynamic .100–.199)",
                self.cidr
            );
        }
        Ok(c)
    }

    /// The rack's address: the network's .1.
    fn rack_ip(&self) -> Result<Ipv4Addr> {
        Ok(offset(self.network()?.network(), 1))
    }

    fn proxy_url(&self) -> Result<Option<String>> {
        let ip = self.rack_ip()?;
        Ok(self.package_proxy_port.map(|p| format!("http://{ip}:{p}/")))
    }

    fn tap(&self, i: u32) -> String {
        format!("{}t{i}", self.bridge)
    }

    fn check_names(&self) -> Result<()> {
        let longest = self.tap(self.machines);
        if self.bridge.is_empty() || longest.len() > IFNAMSIZ {
            bail!(
                "--bridge {:?}: interface names are at most {IFNAMSIZ} bytes, and tap {longest} would be {}",
                self.bridge,
                longest.len()
            );
        }
        if !self
            .bridge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("--bridge {:?}: use letters, digits, - and _", self.bridge);
        }
        Ok(())
    }
}

fn offset(ip: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) + n)
}

fn machine_name(i: u32) -> String {
    format!("lab-{i}")
}

/// 52:54:00 is QEMU's prefix; 6b:75 is "ku".
fn machine_mac(i: u32) -> String {
    format!("52:54:00:6b:75:{i:02x}")
}

/// Where the lab's files are.
struct Paths {
    lab: PathBuf,
}

impl Paths {
    fn new() -> Self {
        Paths {
            lab: crate::config::default_data_dir().join("lab"),
        }
    }
    fn ssh_key(&self) -> PathBuf {
        self.lab.join("id_ed25519")
    }
    fn settings(&self) -> PathBuf {
        self.lab.join("lab.json")
    }
    fn region_dir(&self) -> PathBuf {
        self.lab.join("region")
    }
    fn rack_dir(&self) -> PathBuf {
        self.lab.join("rack")
    }
    fn ephemeral_dir(&self) -> PathBuf {
        self.rack_dir().join("boot/ephemeral/amd64")
    }
    fn file(&self, name: &str, ext: &str) -> PathBuf {
        self.lab.join(format!("{name}.{ext}"))
    }
    fn load(&self) -> Result<Option<Settings>> {
        let p = self.settings();
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(
                serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    fn save(&self, s: &Settings) -> Result<()> {
        let p = self.settings();
        std::fs::write(&p, serde_json::to_string_pretty(s)? + "\n")
            .with_context(|| format!("writing {}", p.display()))
    }
    fn region_url(&self) -> String {
        let listen = RegionFile::load(&self.region_dir())
            .map(|f| f.listen)
            .unwrap_or_else(|_| DEFAULT_LISTEN.to_owned());
        format!("http://{listen}")
    }
}

pub async fn run(cmd: LabCommand, format: Format) -> Result<()> {
    match cmd {
        LabCommand::Up(a) => up(a).await,
        LabCommand::Down { purge } => down(purge),
        LabCommand::Status => status(format).await,
    }
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kumo lab {what} needs root: it manages a bridge and taps, and the rack serves DHCP (try sudo)");
    }
    Ok(())
}

/// A program on PATH, or an error naming the Debian package.
fn find_program(name: &str, package: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: apt-get install {package}"))
}

// ---- processes ---------------------------------------------------------

/// Whether `pid` is a live process (a zombie no reaper collected is dead).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The live process a lab pid file names. Every lab process has the lab
/// directory in its command line (`--data-dir`, `-pidfile`), so a pid the
/// kernel has since given to another program is never taken for ours.
fn lab_process(pid_file: &Path, lab: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let lab = lab.display().to_string();
    let ours = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .any(|a| a.contains(&lab));
    (ours && alive(pid)).then_some(pid)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// SIGTERM, then SIGKILL if it is still there after `grace`. True when it
/// stopped within the grace period.
fn stop_process(pid: i32, grace: Duration) -> bool {
    signal(pid, libc::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(pid, libc::SIGKILL);
    false
}

/// The last lines of a log, for errors about the process that wrote it.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A background kumo process of the lab: `region` or `rack`.
struct Daemon<'a> {
    name: &'static str,
    args: Vec<String>,
    paths: &'a Paths,
}

enum Started {
    /// Already running with these arguments.
    Running(i32),
    /// Just started; not yet known to be ready.
    New(Child),
}

impl Daemon<'_> {
    fn pid_file(&self) -> PathBuf {
        self.paths.file(self.name, "pid")
    }
    fn args_file(&self) -> PathBuf {
        self.paths.file(self.name, "args")
    }
    fn log(&self) -> PathBuf {
        self.paths.file(self.name, "log")
    }

    /// Leaves it running if it runs with the same arguments; restarts it
    /// if they changed; starts it if it is not running.
    fn ensure(&self) -> Result<Started> {
        if let Some(pid) = lab_process(&self.pid_file(), &self.paths.lab) {
            let running: Option<Vec<String>> = std::fs::read_to_string(self.args_file())
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok());
            if running.as_ref() == Some(&self.args) {
                return Ok(Started::Running(pid));
            }
            println!(
                "restarting the {} (pid {pid}): its settings changed",
                self.name
            );
            if !stop_process(pid, Duration::from_secs(15)) {
                println!("  the {} did not stop within 15 s; killed it", self.name);
            }
        }
        let exe = std::env::current_exe().context("finding this kumo binary")?;
        let log_path = self.log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a Ctrl-C (SIGINT to the terminal's
        // foreground group) or the end of this command does not reach it;
        // `kumo lab down` stops it through its pid file.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {}: {}", self.name, exe.display()))?;
        std::fs::write(self.pid_file(), format!("{}\n", child.id()))
            .with_context(|| format!("writing {}", self.pid_file().display()))?;
        std::fs::write(self.args_file(), serde_json::to_string(&self.args)?)
            .with_context(|| format!("writing {}", self.args_file().display()))?;
        Ok(Started::New(child))
    }

    /// Waits until `ready` answers; fails with the log's tail if the
    /// process exits first or `secs` pass.
    async fn wait_ready<F, Fut>(&self, started: &mut Started, secs: u64, ready: F) -> Result<i32>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (pid, mut child) = match started {
            Started::Running(pid) => (*pid, None),
            Started::New(c) => (c.id() as i32, Some(c)),
        };
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if ready().await {
                return Ok(pid);
            }
            let exited = match child.as_mut() {
                Some(c) => c.try_wait()?.map(|s| format!(" ({s})")),
                None => (!alive(pid)).then(String::new),
            };
            if let Some(status) = exited {
                let _ = std::fs::remove_file(self.pid_file());
                bail!(
                    "the lab's {} exited{status}; the end of {}:\n{}",
                    self.name,
                    self.log().display(),
                    log_tail(&self.log(), 15)
                );
            }
            if Instant::now() > end {
                bail!(
                    "the lab's {} (pid {pid}) is not ready after {secs} s; the end of {}:\n{}",
                    self.name,
                    self.log().display(),
                    log_tail(&self.log(), 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn answers(url: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build();
    match client {
        Ok(c) => c
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    }
}

// ---- the network ---------------------------------------------------------

/// Runs `ip` from iproute2. Not a netlink crate: the lab makes a few links
/// once, `ip` is on every Debian host, and a failure then reads as the
/// command a person would type to reproduce it.
fn ip(what: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("{what}: running ip (apt-get install iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{what}: ip {} exited {}: {}",
            args.join(" "),
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The bridge with the rack's address, up, and a tap per machine on it.
fn ensure_network(s: &Settings) -> Result<Vec<String>> {
    let mut made = Vec::new();
    let br = s.bridge.as_str();
    if !link_exists(br) {
        ip(
            &format!("creating bridge {br}"),
            &["link", "add", "name", br, "type", "bridge"],
        )?;
        made.push(format!("bridge {br}"));
    }
    let addr = format!("{}/{}", s.rack_ip()?, s.network()?.prefix());
    ip(
        &format!("giving bridge {br} the rack's address {addr}"),
        &["addr", "replace", &addr, "dev", br],
    )?;
    ip(
        &format!("bringing bridge {br} up"),
        &["link", "set", br, "up"],
    )?;
    for i in 1..=s.machines {
        let tap = s.tap(i);
        if !link_exists(&tap) {
            ip(
                &format!("creating tap {tap}"),
                &["tuntap", "add", "name", &tap, "mode", "tap"],
            )?;
            made.push(format!("tap {tap}"));
        }
        ip(
            &format!("putting tap {tap} on bridge {br}"),
            &["link", "set", &tap, "master", br, "up"],
        )?;
    }
    Ok(made)
}

/// The lab's taps that exist: `<bridge>t<digits>`.
fn lab_taps(bridge: &str) -> Vec<String> {
    let mut taps: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix(bridge)
                .and_then(|r| r.strip_prefix('t'))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    taps.sort();
    taps
}

fn ensure_disk(path: &Path, gib: u32) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let qemu_img = find_program("qemu-img", "qemu-utils")?;
    let out = Command::new(&qemu_img)
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{gib}G"))
        .output()
        .with_context(|| format!("creating disk {}: running qemu-img", path.display()))?;
    if !out.status.success() {
        bail!(
            "creating disk {}: qemu-img create exited {}: {}",
            path.display(),
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(true)
}

// ---- the region ------------------------------------------------------------

fn is_status(e: &ClientError, status: u16) -> bool {
    matches!(e, ClientError::Api { status: s, .. } if *s == status)
}

/// `GET path`, with 404 as `None`.
async fn get_opt<T: serde::de::DeserializeOwned>(c: &Client, path: &str) -> Result<Option<T>> {
    match c.get(path).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `kumo init` for the lab's region the first time; afterwards only the
/// listen address is brought in line with `--region-listen`.
async fn ensure_region_dir(paths: &Paths, listen: Option<&str>) -> Result<()> {
    let dir = paths.region_dir();
    if RegionFile::path(&dir).exists() {
        let mut file = RegionFile::load(&dir)?;
        if let Some(l) = listen.filter(|l| *l != file.listen) {
            file.listen = l.to_owned();
            file.save(&dir)?;
        }
        return Ok(());
    }
    println!("initialising the lab's region in {}", dir.display());
    crate::serve::initialise(crate::cli::InitArgs {
        data_dir: Some(dir),
        database: None,
        listen: listen.map(str::to_owned),
        admin: "admin".into(),
        password: None,
        profile: PROFILE.into(),
        no_login: false,
        key_only: false,
    })
    .await
    .map(drop)
}

/// A client for the lab's region through the `lab` profile, which is made
/// current. A profile that is missing, points elsewhere or holds a key the
/// region does not know (another config directory, a purged lab) gets a
/// new API key, minted straight in the region's database.
async fn ensure_profile(paths: &Paths, url: &str) -> Result<Client> {
    let mut profiles = Profiles::load()?;
    if let Some(p) = profiles.profiles.get(PROFILE).filter(|p| p.url == url) {
        let c = Client::new(url, Some(p.key.clone()));
        match c.get::<Value>("/api/v1/whoami").await {
            Ok(_) => {
                if profiles.current.as_deref() != Some(PROFILE) {
                    profiles.current = Some(PROFILE.into());
                    profiles.save()?;
                }
                return Ok(c);
            }
            Err(e) if is_status(&e, 401) => {}
            Err(e) => return Err(e).context("asking the lab's region who the lab profile is"),
        }
    }
    let dir = paths.region_dir();
    let file = RegionFile::load(&dir)?;
    let region = kumo_region::Region::open(
        &file.database,
        &dir.join("secret.key"),
        kumo_region::RegionConfig::default(),
    )
    .await
    .with_context(|| format!("opening the lab's region database {}", file.database))?;
    let key = region
        .create_api_key(&kumo_region::Actor::system(), "admin")
        .await
        .context("making an API key for the lab profile")?
        .key;
    region.store().close().await;
    profiles.profiles.insert(
        PROFILE.into(),
        Profile {
            url: url.to_owned(),
            key: key.clone(),
            model: None,
        },
    );
    profiles.current = Some(PROFILE.into());
    profiles.save()?;
    println!(
        "saved CLI profile {PROFILE} with a new API key ({})",
        Profiles::path().display()
    );
    Ok(Client::new(url, Some(key)))
}

/// The managed subnet with the rack as gateway, reserved .1–.9 (rack
/// and gateway), dynamic .100–.199 (enlistment), DHCP on its VLAN and the
/// lab.kumo domain.
async fn ensure_network_model(c: &Client, s: &Settings) -> Result<Vec<String>> {
    let mut made = Vec::new();
    let net = s.network()?;
    let base = net.network();
    let cidr = net.to_string();
    let subnet_path = format!("/api/v1/subnets/{}/{}", base, net.prefix());
    let subnet: Subnet = match get_opt(c, &subnet_path).await? {
        Some(sub) => sub,
        None => {
            let sub = Subnet {
                cidr: net,
                fabric: "fabric-0".into(),
                vid: 0,
                gateway: Some(s.rack_ip()?),
                dns_servers: vec![],
                domain: Some(DOMAIN.into()),
                managed: true,
            };
            let sub: Subnet = c
                .post("/api/v1/subnets", &sub)
                .await
                .with_context(|| format!("creating subnet {cidr}"))?;
            made.push(format!("subnet {cidr}"));
            sub
        }
    };
    let have: Vec<SubnetRange> = c
        .get(&format!("/api/v1/ipranges?subnet={}", enc(&cidr)))
        .await
        .with_context(|| format!("listing the ranges of {cidr}"))?;
    let wanted = [
        (RangeKind::Reserved, 1, 9, "rack and gateway"),
        (RangeKind::Dynamic, 100, 199, "enlistment"),
        (RangeKind::Reserved, 200, 249, "container machines"),
    ];
    for (kind, from, to, comment) in wanted {
        let (start, end) = (offset(base, from), offset(base, to));
        if have
            .iter()
            .any(|r| r.range.kind == kind && r.range.start == start)
        {
            continue;
        }
        let r = SubnetRange {
            subnet: net,
            range: IpRange {
                kind,
                start,
                end,
                comment: comment.into(),
            },
        };
        let _: SubnetRange = c
            .post("/api/v1/ipranges", &r)
            .await
            .with_context(|| format!("creating range {start}-{end} on {cidr}"))?;
        made.push(format!("{comment} range {start}-{end}"));
    }
    let vlans: Vec<Vlan> = c.get("/api/v1/vlans").await.context("listing VLANs")?;
    if let Some(v) = vlans
        .into_iter()
        .find(|v| v.fabric == subnet.fabric && v.vid == subnet.vid)
    {
        if !v.dhcp_on {
            let path = format!("/api/v1/vlans/{}/{}", enc(&v.fabric), v.vid);
            let (fabric, vid) = (v.fabric.clone(), v.vid);
            let _: Vlan = c
                .put(&path, &Vlan { dhcp_on: true, ..v })
                .await
                .with_context(|| format!("turning DHCP on for VLAN {fabric}/{vid}"))?;
            made.push(format!("DHCP on VLAN {fabric}/{vid}"));
        }
    }
    let domains: Vec<Domain> = c.get("/api/v1/domains").await.context("listing domains")?;
    if !domains.iter().any(|d| d.name == DOMAIN) {
        let d = Domain {
            name: DOMAIN.into(),
            ttl: 300,
            authoritative: true,
        };
        let _: Domain = c
            .post("/api/v1/domains", &d)
            .await
            .with_context(|| format!("creating domain {DOMAIN}"))?;
        made.push(format!("domain {DOMAIN}"));
    }
    Ok(made)
}

/// QEMU's command line for machine `i`, which the region's qemu power
/// driver runs (appending -daemonize) on power-on.
fn qemu_command(paths: &Paths, s: &Settings, i: u32, qemu: &Path) -> Vec<String> {
    let name = machine_name(i);
    let p = |ext: &str| paths.file(&name, ext).display().to_string();
    let args = [
        "-name".to_owned(),
        name.clone(),
        "-machine".into(),
        "pc".into(),
        // TCG unless told: a /dev/kvm that exists need not work (nested
        // or sandboxed hosts), and then the guest hangs without a word.
        "-accel".into(),
        s.accel.clone(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        s.memory_mib.to_string(),
        "-display".into(),
        "none".into(),
        "-nodefaults".into(),
        "-boot".into(),
        "n".into(),
        "-netdev".into(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", s.tap(i)),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={}", machine_mac(i)),
        // A serial number on the disk (-device, since -drive serial= is
        // gone from QEMU), so commissioning reports one, as real disks do.
        "-drive".into(),
        format!("file={},if=none,id=d0,format=qcow2", p("qcow2")),
        "-device".into(),
        format!("virtio-blk-pci,drive=d0,serial=kumo-{name}"),
        // The console, appended across power cycles (-serial file: would
        // truncate it at every boot).
        "-chardev".into(),
        format!("file,id=console,path={},append=on", p("console.log")),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p("qmp")),
        "-pidfile".into(),
        p("pid"),
    ];
    std::iter::once(qemu.display().to_string())
        .chain(args)
        .collect()
}

/// lab-i registered with the qemu power driver, the lab tag and a static
/// address on the subnet. An existing machine's power settings and memory
/// are brought in line; returns what changed.
async fn ensure_machine(
    c: &Client,
    paths: &Paths,
    s: &Settings,
    i: u32,
    qemu: &Path,
) -> Result<Option<String>> {
    let name = machine_name(i);
    let mac = machine_mac(i);
    let mut params = Map::new();
    params.insert(
        "qmp_socket".into(),
        json!(paths.file(&name, "qmp").display().to_string()),
    );
    params.insert(
        "command".into(),
        json!(serde_json::to_string(&qemu_command(paths, s, i, qemu))?),
    );
    let path = format!("/api/v1/machines/{}", enc(&name));
    let mut change = None;
    match get_opt::<MachineView>(c, &path).await? {
        None => {
            let add = AddMachine {
                hostname: name.clone(),
                arch: None,
                macs: vec![mac.clone()],
                power_type: Some("qemu".into()),
                power_parameters: params,
                zone: None,
                pool: None,
                cpu_count: Some(1),
                memory_mib: Some(s.memory_mib),
                tags: vec![TAG.into()],
            };
            let _: MachineView = c
                .post("/api/v1/machines", &add)
                .await
                .with_context(|| format!("adding machine {name}"))?;
            change = Some(format!("machine {name}"));
        }
        Some(v) => {
            let m = &v.machine;
            let same = m.power_type == "qemu"
                && params
                    .iter()
                    .all(|(k, x)| m.power_parameters.get(k) == Some(x));
            if !same {
                let upd = UpdateMachine {
                    power_type: Some("qemu".into()),
                    power_parameters: Some(params),
                    memory_mib: Some(s.memory_mib),
                    ..Default::default()
                };
                let _: MachineView = c
                    .patch(&path, &upd)
                    .await
                    .with_context(|| format!("updating machine {name}'s power settings"))?;
                change = Some(format!("power settings of {name}"));
            }
            if !m.tags.iter().any(|t| t == TAG) {
                let _: Value = c
                    .post(
                        &format!("/api/v1/tags/{TAG}/machines"),
                        &UpdateTagMachines {
                            add: vec![name.clone()],
                            remove: vec![],
                        },
                    )
                    .await
                    .with_context(|| format!("tagging {name} with {TAG}"))?;
            }
        }
    }
    let net = s.network()?;
    let addrs: Vec<StaticIp> = c
        .get(&format!("{path}/addresses"))
        .await
        .with_context(|| format!("listing {name}'s addresses"))?;
    let on_subnet = addrs
        .iter()
        .any(|a| a.ip.parse::<Ipv4Addr>().is_ok_and(|ip| net.contains(ip)));
    if !on_subnet {
        let _: StaticIp = c
            .post(
                &format!("{path}/addresses"),
                &LinkRequest {
                    mac,
                    subnet: net.to_string(),
                    ip: None,
                },
            )
            .await
            .with_context(|| format!("giving {name} an address on {net}"))?;
    }
    Ok(change)
}

/// Builds the ephemeral environment into the rack's boot directory when
/// it is missing or older than this kumo binary (it carries the binary).
async fn ensure_ephemeral(paths: &Paths) -> Result<bool> {
    let out = paths.ephemeral_dir();
    let exe = std::env::current_exe().context("finding this kumo binary")?;
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = modified(&out.join("initrd.img"));
    if out.join("vmlinuz").exists() && built.is_some() && built >= modified(&exe) {
        return Ok(false);
    }
    println!(
        "building the ephemeral environment into {} (Debian's kernel and busybox, and this kumo)",
        out.display()
    );
    let opts = crate::images::BuildOptions {
        output: out,
        cache_dir: crate::config::default_data_dir().join("cache/ephemeral"),
        kumo_binary: exe,
    };
    tokio::task::spawn_blocking(move || crate::images::build(&opts))
        .await
        .context("building the ephemeral environment")??;
    Ok(true)
}

// ---- up ----------------------------------------------------------------------

async fn up(a: UpArgs) -> Result<()> {
    let t0 = Instant::now();
    require_root("up")?;
    let paths = Paths::new();
    let previous = paths.load()?;
    let s = previous.clone().unwrap_or_default().merge(&a);
    s.check_names()?;
    let rack_ip = s.rack_ip()?;
    if let Some(p) = previous
        .as_ref()
        .filter(|p| p.bridge != s.bridge || p.cidr != s.cidr)
    {
        bail!(
            "the lab in {} uses bridge {} and {}; `kumo lab down --purge` first to make one with {} and {}",
            paths.lab.display(),
            p.bridge,
            p.cidr,
            s.bridge,
            s.cidr
        );
    }
    let qemu = find_program("qemu-system-x86_64", "qemu-system-x86")?;
    find_program("qemu-img", "qemu-utils")?;
    std::fs::create_dir_all(&paths.lab)
        .with_context(|| format!("creating {}", paths.lab.display()))?;
    {
        // Logs and the region's data: root's only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.lab, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing {}", paths.lab.display()))?;
    }
    let mut made = ensure_network(&s)?;
    for i in 1..=s.machines {
        let disk = paths.file(&machine_name(i), "qcow2");
        if ensure_disk(&disk, s.disk_gib)? {
            made.push(format!("disk {}", disk.display()));
        }
    }
    paths.save(&s)?;

    // On the lab's bridge, so container machines' agents reach the
    // controller in the region process.
    let default_listen = format!("{}:5240", s.rack_ip()?);
    ensure_region_dir(
        &paths,
        Some(a.region_listen.as_deref().unwrap_or(&default_listen)),
    )
    .await?;
    let listen = RegionFile::load(&paths.region_dir())?.listen;
    let url = format!("http://{listen}");
    // The listen address is passed though region.json holds it, so a
    // changed one changes the arguments and restarts the region.
    let mut region_args: Vec<String> = vec![
        "region".into(),
        "serve".into(),
        "--data-dir".into(),
        paths.region_dir().display().to_string(),
        "--listen".into(),
        listen,
    ];
    if let Some(proxy) = s.proxy_url()? {
        region_args.extend(["--package-proxy".into(), proxy]);
    }
    let region = Daemon {
        name: "region",
        args: region_args,
        paths: &paths,
    };
    let mut started = region.ensure()?;
    let healthz = format!("{url}/healthz");
    let region_pid = region
        .wait_ready(&mut started, 60, || answers(&healthz))
        .await?;
    if matches!(started, Started::New(_)) {
        made.push(format!("region (pid {region_pid})"));
    }
    let c = ensure_profile(&paths, &url).await?;
    made.extend(ensure_network_model(&c, &s).await?);

    if !a.no_ephemeral && ensure_ephemeral(&paths).await? {
        made.push("the ephemeral environment".into());
    }
    let mut rack_args: Vec<String> = vec![
        "--profile".into(),
        PROFILE.into(),
        "rack".into(),
        "serve".into(),
        "-i".into(),
        s.bridge.clone(),
        "--name".into(),
        RACK_NAME.into(),
        "--data-dir".into(),
        paths.rack_dir().display().to_string(),
        "--http-port".into(),
        s.rack_http_port.to_string(),
        "--tftp-port".into(),
        s.rack_tftp_port.to_string(),
        "--dns-port".into(),
        s.rack_dns_port.to_string(),
    ];
    match s.package_proxy_port {
        Some(p) => rack_args.extend(["--package-proxy-port".into(), p.to_string()]),
        None => rack_args.push("--no-package-proxy".into()),
    }
    let rack = Daemon {
        name: "rack",
        args: rack_args,
        paths: &paths,
    };
    let mut started = rack.ensure()?;
    let metrics = format!("http://{rack_ip}:{}/metrics", s.rack_http_port);
    let rack_pid = rack
        .wait_ready(&mut started, 60, || answers(&metrics))
        .await?;
    if matches!(started, Started::New(_)) {
        made.push(format!("rack (pid {rack_pid})"));
    }

    for i in 1..=s.machines {
        made.extend(ensure_machine(&c, &paths, &s, i, &qemu).await?);
    }
    if ensure_ssh_key(&c, &paths).await? {
        made.push("the lab's SSH key".into());
    }
    if ensure_controller(&c, &paths, &s, &url).await? {
        made.push("the controller (model default)".into());
    }
    // Container machines a `lab down` stopped boot again.
    let containers = kumo_containers::Containers::new(paths.region_dir().join("containers"));
    for name in containers.list().await.unwrap_or_default() {
        if matches!(
            containers.state(&name).await,
            Ok(kumo_containers::ContainerState::Stopped)
        ) {
            containers
                .start(&name)
                .await
                .with_context(|| format!("starting container machine {name}"))?;
            made.push(format!("container {name}"));
        }
    }
    if !a.no_image && ensure_image(&c, &paths).await? {
        made.push("the Debian image".into());
    }
    let beyond = lab_taps(&s.bridge).len() as u32;
    if beyond > s.machines {
        println!(
            "note: {beyond} taps exist and {} machines were asked for; extra machines are kept (`kumo machines delete` them)",
            s.machines
        );
    }

    if made.is_empty() {
        println!("the lab was already up; nothing changed");
    } else {
        println!("made: {}", made.join(", "));
    }
    summary(&c, &paths, &s, &url, t0.elapsed()).await?;
    if a.deploy {
        deploy_all(&c, s.machines).await?;
        summary(&c, &paths, &s, &url, t0.elapsed()).await?;
    }
    Ok(())
}

/// Bootstraps the controller on the lab's bridge: container machines get
/// .200–.249 (reserved in IPAM), the rack's package proxy, the lab key for
/// `kumo ssh`; agents call the region on the bridge. True when it was not
/// bootstrapped before.
async fn ensure_controller(c: &Client, paths: &Paths, s: &Settings, url: &str) -> Result<bool> {
    let net = s.network()?;
    let rack = s.rack_ip()?;
    let port = url
        .rsplit(':')
        .next()
        .unwrap_or("5240")
        .trim_end_matches('/');
    let key = std::fs::read_to_string(paths.ssh_key().with_extension("pub")).unwrap_or_default();
    let wanted = kumo_model::orchestra::Bootstrap {
        agent_url: format!("http://{rack}:{port}"),
        bridge: s.bridge.clone(),
        address_range: format!(
            "{}-{}",
            offset(net.network(), 200),
            offset(net.network(), 249)
        ),
        prefix: net.prefix(),
        gateway: Some(rack.to_string()),
        dns: vec![],
        apt_proxy: s.proxy_url()?,
        authorized_keys: key
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        controller_id: String::new(),
    };
    let have: Option<kumo_model::orchestra::Bootstrap> = match c.get("/api/v1/controller").await {
        Ok(b) => Some(b),
        Err(ClientError::Api { code, .. }) if code == "not_bootstrapped" => None,
        Err(e) => return Err(e).context("asking whether the controller is bootstrapped"),
    };
    if have.as_ref().is_some_and(|h| {
        kumo_model::orchestra::Bootstrap {
            controller_id: String::new(),
            ..h.clone()
        } == wanted
    }) {
        return Ok(false);
    }
    let _: Value = c
        .put("/api/v1/controller", &wanted)
        .await
        .context("bootstrapping the controller")?;
    Ok(have.is_none())
}

/// The key deployed lab machines accept for `debian`: made once with
/// ssh-keygen in the lab directory and registered as the admin's, so the
/// summary's `ssh -i` line works with no key of the user's.
async fn ensure_ssh_key(c: &Client, paths: &Paths) -> Result<bool> {
    let private = paths.ssh_key();
    let public = private.with_extension("pub");
    if !public.exists() {
        find_program("ssh-keygen", "openssh-client")?;
        let _ = std::fs::remove_file(&private);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kumo-lab", "-f"])
            .arg(&private)
            .output()
            .context("running ssh-keygen")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen for {} failed: {}",
                private.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let line = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {}", public.display()))?;
    let key = kumo_model::deploy::SshKey::parse(line.trim(), 0)
        .with_context(|| format!("the lab's key {}", public.display()))?;
    let known: Vec<kumo_model::deploy::SshKey> = c
        .get("/api/v1/ssh-keys")
        .await
        .context("listing the admin's SSH keys")?;
    if known.iter().any(|k| k.fingerprint == key.fingerprint) {
        return Ok(false);
    }
    let _: Value = c
        .post(
            "/api/v1/ssh-keys",
            &kumo_model::api::NewSshKey {
                key: line.trim().to_owned(),
            },
        )
        .await
        .context("registering the lab's SSH key")?;
    Ok(true)
}

/// Builds the Debian image with `kumo images build` and uploads it to the
/// lab's region when the region holds no image yet. A child process, as
/// the build enters a mount namespace of its own, which a threaded
/// process cannot.
async fn ensure_image(c: &Client, paths: &Paths) -> Result<bool> {
    let images: Vec<Value> = c
        .get("/api/v1/images")
        .await
        .context("listing the lab region's images")?;
    if !images.is_empty() {
        return Ok(false);
    }
    let exe = std::env::current_exe().context("finding this kumo binary")?;
    let out = paths.lab.join("image-build");
    let cache = crate::config::default_data_dir().join("cache/images");
    println!(
        "building the Debian image machines deploy (kumo images build; a few minutes the first time, cached in {})",
        cache.display()
    );
    let status = tokio::process::Command::new(&exe)
        .args(["--profile", PROFILE, "images", "build", "--output"])
        .arg(&out)
        .arg("--cache-dir")
        .arg(&cache)
        .status()
        .await
        .context("running kumo images build")?;
    if !status.success() {
        bail!(
            "kumo images build {status}; its log is in {} (`kumo lab up --no-image` skips the image)",
            out.display()
        );
    }
    Ok(true)
}

/// What the lab does next with a machine in `status` on the way to
/// Deployed: an action to ask for, nothing while a task runs, or an error
/// for a status an operator must look at.
fn next_step(status: &str) -> Result<Option<&'static str>, String> {
    match status {
        "new" | "failed_commissioning" => Ok(Some("commission")),
        "ready" | "allocated" | "failed_deployment" => Ok(Some("deploy")),
        "commissioning" | "deploying" | "deployed" | "releasing" | "disk_erasing" | "testing" => {
            Ok(None)
        }
        other => Err(format!(
            "is {other}; the lab deploys New, Ready and Allocated machines"
        )),
    }
}

/// Commissions and deploys every lab machine, printing each status change,
/// until all are Deployed. A machine that fails once is retried once, as
/// TCG machines on a loaded host sometimes miss a watchdog.
async fn deploy_all(c: &Client, machines: u32) -> Result<()> {
    const LIMIT: Duration = Duration::from_secs(45 * 60);
    let t0 = Instant::now();
    let names: Vec<String> = (1..=machines).map(machine_name).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut asked: BTreeMap<(String, &str), u32> = BTreeMap::new();
    println!(
        "\ncommissioning and deploying {} (under TCG, several minutes; `kumo events --machine lab-1` shows each step)",
        names.join(", ")
    );
    loop {
        let mut done = 0;
        for name in &names {
            let v: MachineView = c
                .get(&format!("/api/v1/machines/{}", enc(name)))
                .await
                .with_context(|| format!("reading machine {name}"))?;
            let status = v.machine.status.as_str().to_owned();
            if last.get(name) != Some(&status) {
                println!("  {:>6.0} s  {name}: {status}", t0.elapsed().as_secs_f64());
                last.insert(name.clone(), status.clone());
            }
            if status == "deployed" {
                done += 1;
                continue;
            }
            let step = next_step(&status).map_err(|e| anyhow::anyhow!("machine {name} {e}"))?;
            let Some(action) = step else { continue };
            let tries = asked.entry((name.clone(), action)).or_insert(0);
            if *tries >= 2 {
                bail!(
                    "machine {name} is {status} after {tries} tries of {action}; see `kumo --profile {PROFILE} events --machine {name}`"
                );
            }
            *tries += 1;
            let _: MachineView = c
                .post(
                    &format!("/api/v1/machines/{}/actions/{action}", enc(name)),
                    &json!({}),
                )
                .await
                .with_context(|| format!("asking machine {name} to {action}"))?;
        }
        if done == names.len() {
            println!(
                "all {} machines deployed in {:.0} s; log in with `ssh debian@<address>` from the host",
                names.len(),
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if t0.elapsed() > LIMIT {
            bail!(
                "the lab's machines were not all deployed after {} minutes",
                LIMIT.as_secs() / 60
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn summary(c: &Client, paths: &Paths, s: &Settings, url: &str, took: Duration) -> Result<()> {
    let ms: Vec<MachineView> = c
        .get(&format!("/api/v1/machines?tags={TAG}"))
        .await
        .context("listing the lab's machines")?;
    let mut rows = Vec::new();
    for v in &ms {
        let m = &v.machine;
        let name = m.hostname.to_string();
        let addrs: Vec<StaticIp> = c
            .get(&format!("/api/v1/machines/{}/addresses", enc(&name)))
            .await
            .unwrap_or_default();
        rows.push(vec![
            name.clone(),
            m.status.as_str().to_owned(),
            m.power_state.as_str().to_owned(),
            m.macs.first().map(|x| x.to_string()).unwrap_or_default(),
            addrs.first().map(|a| a.ip.clone()).unwrap_or_default(),
            paths.file(&name, "console.log").display().to_string(),
        ]);
    }
    let rack_ip = s.rack_ip()?;
    println!("\nkumo lab is up ({:.1} s)", took.as_secs_f64());
    println!(
        "  region   {url}   (data: {})",
        paths.region_dir().display()
    );
    println!(
        "  rack     {RACK_NAME} on {} ({rack_ip}): DHCP, DNS :{}, TFTP :{}, HTTP boot :{}",
        s.bridge, s.rack_dns_port, s.rack_tftp_port, s.rack_http_port
    );
    match s.proxy_url()? {
        Some(p) => println!("  proxy    {p}   (apt-cacher-ng, for deployed machines' packages)"),
        None => println!("  proxy    none"),
    }
    println!(
        "  profile  {PROFILE} (current, in {})",
        Profiles::path().display()
    );
    println!("  logs     {}/{{region,rack}}.log\n", paths.lab.display());
    println!(
        "{}",
        table(
            &["MACHINE", "STATUS", "POWER", "MAC", "ADDRESS", "CONSOLE"],
            rows.clone()
        )
    );
    let first = ms
        .first()
        .map(|v| v.machine.hostname.to_string())
        .unwrap_or_else(|| machine_name(1));
    // Rows were built from `ms` in order; column 4 is the address.
    let ssh = ms
        .iter()
        .zip(&rows)
        .find(|(v, row)| v.machine.status.as_str() == "deployed" && !row[4].is_empty())
        .map(|(v, row)| {
            format!(
                "  ssh -i {key} debian@{ip}   # {host}, deployed\n",
                key = paths.ssh_key().display(),
                ip = row[4],
                host = v.machine.hostname
            )
        })
        .unwrap_or_default();
    let steps = if ssh.is_empty() {
        format!(
            "  kumo machines commission {first}   # powers it on: it network-boots, reports its hardware, powers off
  tail -f {console}
  kumo machines deploy {first}       # once Ready; the image is in the region (kumo images list)",
            console = paths.file(&first, "console.log").display()
        )
    } else {
        format!(
            "{ssh}  kumo machines release {first} --erase quick   # back to Ready, its disk wiped
  kumo events --machine {first}"
        )
    };
    println!(
        "\nnext:
{steps}
  dig @{rack_ip}{dns} {first}.{DOMAIN}
  kumo lab status
  kumo lab down                    # --purge also deletes the disks and the lab's region",
        dns = match s.rack_dns_port {
            53 => String::new(),
            p => format!(" -p {p}"),
        },
    );
    Ok(())
}

// ---- down ----------------------------------------------------------------------

fn down(purge: bool) -> Result<()> {
    require_root("down")?;
    let paths = Paths::new();
    let settings = paths.load()?;
    let mut done = Vec::new();
    // The rack first: it holds a long poll open on the region, which the
    // region's graceful shutdown would otherwise wait out (up to 30 s).
    for (name, grace) in [("rack", 15), ("region", 15)] {
        let pid_file = paths.file(name, "pid");
        if let Some(pid) = lab_process(&pid_file, &paths.lab) {
            let clean = stop_process(pid, Duration::from_secs(grace));
            done.push(format!(
                "stopped the {name} (pid {pid}{})",
                if clean { "" } else { ", killed" }
            ));
        }
        let _ = std::fs::remove_file(&pid_file);
    }
    // Container machines (the controller's) stop through their init; their
    // root filesystems stay, and the next `lab up` boots them again.
    let containers = kumo_containers::Containers::new(paths.region_dir().join("containers"));
    let handle = tokio::runtime::Handle::current();
    for name in
        tokio::task::block_in_place(|| handle.block_on(containers.list())).unwrap_or_default()
    {
        let running = matches!(
            tokio::task::block_in_place(|| handle.block_on(containers.state(&name))),
            Ok(kumo_containers::ContainerState::Running { .. })
        );
        if running {
            match tokio::task::block_in_place(|| handle.block_on(containers.stop(&name))) {
                Ok(()) => done.push(format!("stopped container {name}")),
                Err(e) => eprintln!("warning: stopping container {name}: {e}"),
            }
        }
    }
    // The rack stops its package proxy; one a killed rack left behind goes too.
    let proxy_pid = paths.rack_dir().join("proxy/run/apt-cacher-ng.pid");
    if let Some(pid) = lab_process(&proxy_pid, &paths.lab) {
        stop_process(pid, Duration::from_secs(5));
        done.push(format!("stopped the package proxy (pid {pid})"));
    }
    for entry in std::fs::read_dir(&paths.lab)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(machine) = file.strip_suffix(".pid").filter(|m| m.starts_with("lab-")) else {
            continue;
        };
        if let Some(pid) = lab_process(&path, &paths.lab) {
            stop_process(pid, Duration::from_secs(5));
            done.push(format!("powered off {machine} (qemu pid {pid})"));
        }
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(paths.file(machine, "qmp"));
    }
    if let Some(s) = &settings {
        for tap in lab_taps(&s.bridge) {
            ip(&format!("deleting tap {tap}"), &["link", "del", &tap])?;
            done.push(format!("deleted tap {tap}"));
        }
        if link_exists(&s.bridge) {
            ip(
                &format!("deleting bridge {}", s.bridge),
                &["link", "del", &s.bridge],
            )?;
            done.push(format!("deleted bridge {}", s.bridge));
        }
    }
    if purge {
        if paths.lab.exists() {
            std::fs::remove_dir_all(&paths.lab)
                .with_context(|| format!("removing {}", paths.lab.display()))?;
            done.push(format!(
                "removed {} (disks, the lab's region data, rack state, logs)",
                paths.lab.display()
            ));
        }
        let mut profiles = Profiles::load()?;
        if profiles.profiles.remove(PROFILE).is_some() {
            if profiles.current.as_deref() == Some(PROFILE) {
                profiles.current = None;
            }
            profiles.save()?;
            done.push(format!("removed CLI profile {PROFILE}"));
        }
    }
    if done.is_empty() {
        println!("nothing to do: no lab runs from {}", paths.lab.display());
    }
    for d in done {
        println!("{d}");
    }
    if !purge && paths.lab.exists() {
        println!(
            "kept disks and the lab's region in {} (`kumo lab up` resumes; `kumo lab down --purge` deletes them)",
            paths.lab.display()
        );
    }
    Ok(())
}

// ---- status ----------------------------------------------------------------------

#[derive(Serialize)]
struct Component {
    name: String,
    running: bool,
    pid: Option<i32>,
    detail: String,
}

#[derive(Serialize)]
struct Status {
    lab_dir: String,
    settings: Option<Settings>,
    components: Vec<Component>,
}

async fn status(format: Format) -> Result<()> {
    let paths = Paths::new();
    let settings = paths.load()?;
    let mut components = Vec::new();
    let Some(s) = settings.clone() else {
        let st = Status {
            lab_dir: paths.lab.display().to_string(),
            settings,
            components,
        };
        return emit(format, &st, |_| {
            table(
                &["LAB"],
                vec![vec![format!(
                    "no lab in {} (`kumo lab up` makes one)",
                    paths.lab.display()
                )]],
            )
        });
    };
    let url = paths.region_url();
    let pid = |name: &str| lab_process(&paths.file(name, "pid"), &paths.lab);
    let region_pid = pid("region");
    components.push(Component {
        name: "region".into(),
        running: region_pid.is_some(),
        pid: region_pid,
        detail: url.clone(),
    });
    let rack_pid = pid("rack");
    let rack_ip = s.rack_ip()?;
    let mut rack_detail = format!("{RACK_NAME} on {} ({rack_ip})", s.bridge);
    if rack_pid.is_some() && s.package_proxy_port.is_some() {
        let metrics = reqwest::get(format!("http://{rack_ip}:{}/metrics", s.rack_http_port))
            .await
            .ok();
        let text = match metrics {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        };
        let up = text.lines().any(|l| l == "kumo_rack_package_proxy_up 1");
        rack_detail.push_str(&format!(
            "; package proxy {}",
            if up { "up" } else { "down" }
        ));
    }
    components.push(Component {
        name: "rack".into(),
        running: rack_pid.is_some(),
        pid: rack_pid,
        detail: rack_detail,
    });
    components.push(Component {
        name: format!("bridge {}", s.bridge),
        running: link_exists(&s.bridge),
        pid: None,
        detail: format!("{} taps", lab_taps(&s.bridge).len()),
    });
    // Machines by their pid files (QEMU writes them) and the region's view.
    let mut statuses = BTreeMap::new();
    if region_pid.is_some() {
        if let Ok(p) = Profiles::load().and_then(|p| p.pick(Some(PROFILE))) {
            let c = Client::new(&p.1.url, Some(p.1.key));
            if let Ok(ms) = c
                .get::<Vec<MachineView>>(&format!("/api/v1/machines?tags={TAG}"))
                .await
            {
                for v in ms {
                    statuses.insert(
                        v.machine.hostname.to_string(),
                        v.machine.status.as_str().to_owned(),
                    );
                }
            }
        }
    }
    for i in 1..=s.machines {
        let name = machine_name(i);
        let pid = pid(&name);
        let mut detail = format!("power {}", if pid.is_some() { "on" } else { "off" });
        if let Some(st) = statuses.get(&name) {
            detail.push_str(&format!(", {st}"));
        }
        detail.push_str(&format!(
            "; console {}",
            paths.file(&name, "console.log").display()
        ));
        components.push(Component {
            name,
            running: pid.is_some(),
            pid,
            detail,
        });
    }
    let st = Status {
        lab_dir: paths.lab.display().to_string(),
        settings,
        components,
    };
    emit(format, &st, |st| {
        table(
            &["COMPONENT", "RUNNING", "PID", "DETAIL"],
            st.components
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        if c.running { "yes" } else { "no" }.into(),
                        c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        c.detail.clone(),
                    ]
                })
                .collect(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_all_commissions_new_machines_deploys_ready_ones_and_stops_on_others() {
        assert_eq!(next_step("new"), Ok(Some("commission")));
        assert_eq!(next_step("failed_commissioning"), Ok(Some("commission")));
        assert_eq!(next_step("ready"), Ok(Some("deploy")));
        assert_eq!(next_step("allocated"), Ok(Some("deploy")));
        assert_eq!(next_step("commissioning"), Ok(None));
        assert_eq!(next_step("deploying"), Ok(None));
        let broken = next_step("broken").unwrap_err();
        assert!(broken.contains("is broken"), "{broken}");
    }

    #[test]
    fn options_default_to_the_last_up_then_to_the_built_in_values() {
        let last = Settings {
            machines: 3,
            ..Settings::default()
        };
        let s = last.clone().merge(&UpArgs::default());
        assert_eq!(s, last);
        let s = last.merge(&UpArgs {
            memory_mib: Some(2048),
            no_package_proxy: true,
            ..Default::default()
        });
        assert_eq!(
            (s.machines, s.memory_mib, s.package_proxy_port),
            (3, 2048, None)
        );
    }

    #[test]
    fn addresses_and_names_come_from_the_cidr_and_bridge() {
        let s = Settings {
            bridge: "kltest0".into(),
            cidr: "10.249.0.0/24".into(),
            ..Settings::default()
        };
        assert_eq!(s.rack_ip().unwrap(), Ipv4Addr::new(10, 249, 0, 1));
        assert_eq!(
            s.proxy_url().unwrap().as_deref(),
            Some("http://10.249.0.1:8000/")
        );
        assert_eq!(s.tap(12), "kltest0t12");
        assert_eq!(machine_mac(10), "52:54:00:6b:75:0a");
        s.check_names().unwrap();
        let long = Settings {
            bridge: "averylongbridge".into(),
            ..Settings::default()
        };
        let e = long.check_names().unwrap_err().to_string();
        assert!(e.contains("at most 15 bytes"), "{e}");
        let small = Settings {
            cidr: "10.249.0.0/25".into(),
            ..Settings::default()
        };
        assert!(small.rack_ip().is_err());
    }

    #[test]
    fn qemu_boots_from_the_network_with_its_disk_and_console_in_the_lab() {
        let paths = Paths {
            lab: "/d/lab".into(),
        };
        let s = Settings::default();
        let argv = qemu_command(&paths, &s, 2, Path::new("/usr/bin/qemu-system-x86_64")).join(" ");
        for part in [
            "-m 1024",
            "-boot n",
            "ifname=kumolab0t2,",
            "mac=52:54:00:6b:75:02",
            "-drive file=/d/lab/lab-2.qcow2,if=none,id=d0,format=qcow2",
            "serial=kumo-lab-2",
            "path=/d/lab/lab-2.console.log,append=on",
            "-qmp unix:/d/lab/lab-2.qmp,server=on,wait=off",
            "-pidfile /d/lab/lab-2.pid",
        ] {
            assert!(argv.contains(part), "{part:?} missing from {argv}");
        }
    }
}
