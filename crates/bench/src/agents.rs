//! The agents benchmark: N simulated machine agents against one
//! controller, each on its own TCP connection, speaking the real agent
//! protocol (`GET …/view[?since=TAG]` long polls, `POST …/running` and
//! `…/commit`) and deciding with the real `kumo_uniter::next`, but running
//! no hooks: each owed hook is committed at once as succeeded. Prints the
//! controller's resident memory per parked agent connection (Juju's figure
//! is about 400 KB) and `kumo status` latency with all agents connected.
//!
//! The controller is its own process (`kumo-bench serve-controller`, hidden)
//! so its RSS is its own: a SQLite region, the controller with a provider
//! that makes no machines (it records each machine's agent token and hands
//! out an address), N machines each with one unit of a hookless charm,
//! served by `kumo_api::serve_with` as `kumo region serve` does.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use kumo_controller::{Controller, ControllerConfig, Provider, ProviderKind, ProvisionRequest};
use kumo_model::orchestra::{AddUnits, Bootstrap, Deploy};
use kumo_uniter::{
    complete, next, CommitAck, HookCommit, HookResult, MachineView, Operation, WorkloadState,
    WorkloadStatus,
};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use crate::stats::{ms, Summary};

/// The model the simulated machines live in. A `manual` model: the
/// provider, not the controller, gives each machine its address (see
/// `SimProvider`). In a `containers` model the controller picks addresses
/// itself, scanning the range against a list of used ones for each
/// machine, which at 10,000 machines takes far longer than the benchmark.
const MODEL: &str = "bench";
const APPLICATION: &str = "sim";
/// Deploy and add-unit take at most this many units per call.
const BATCH: usize = 100;
/// Juju's figure for a controller's memory per agent connection.
const JUJU_KB_PER_AGENT: u64 = 400;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agent counts, comma-separated; each runs against a fresh controller.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    counts: Vec<usize>,
    /// `kumo status` calls measured per count, with every agent connected.
    #[arg(long, default_value_t = 20)]
    status_calls: usize,
    /// Agents opening their connection at once (the rest wait their turn,
    /// so the listen backlog copes).
    #[arg(long, default_value_t = 200)]
    connecting: usize,
    /// Give up on a count when its agents are not all idle after this long.
    #[arg(long, default_value_t = 3600)]
    idle_timeout_secs: u64,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    listen: SocketAddr,
    /// Machines, each with one unit of the hookless charm.
    #[arg(long)]
    machines: usize,
    /// Written once the controller is ready: `key`, `setup_secs` and one
    /// `machine` line per machine with its agent token, tab-separated.
    #[arg(long)]
    tokens_out: PathBuf,
}

// ---- the controller process ---------------------------------------------------

/// A provider that makes nothing: it records the agent token the
/// controller hands each machine and answers with an address.
#[derive(Default)]
struct SimProvider {
    tokens: Mutex<BTreeMap<String, String>>,
}

#[async_trait::async_trait]
impl Provider for SimProvider {
    async fn provision(&self, req: &ProvisionRequest) -> Result<String, String> {
        let n: u32 = req.agent.machine.parse().map_err(|_| {
            format!(
                "simulated machines are numbered, not {:?}",
                req.agent.machine
            )
        })?;
        self.tokens
            .lock()
            .expect("tokens lock")
            .insert(req.agent.machine.clone(), req.agent.token.clone());
        Ok(Ipv4Addr::from(0x0a00_0000 | (n + 1)).to_string())
    }

    async fn destroy(
        &self,
        _: ProviderKind,
        _: &str,
        _: Option<&kumo_controller::HostRef>,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// A charm with metadata and nothing else: every hook is a no-op.
fn charm_archive() -> Result<Vec<u8>> {
    let metadata = b"name: sim\nsummary: a simulated workload with no hooks\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(metadata.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header, "metadata.yaml", &metadata[..])?;
    Ok(b.into_inner()?)
}

pub async fn serve(a: ServeArgs) -> Result<()> {
    crate::serve::init_logging();
    raise_nofile()?;
    ensure!(a.machines > 0, "--machines must be at least 1");
    let t = Instant::now();
    // Bound first: agents that connect early wait in the backlog.
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    std::fs::create_dir_all(&a.data_dir)?;
    let database = format!("sqlite:{}", a.data_dir.join("kumo.db").display());
    let region = kumo_region::Region::open(
        &database,
        &a.data_dir.join("secret.key"),
        kumo_region::RegionConfig::default(),
    )
    .await
    .with_context(|| format!("opening the region database {database}"))?;
    let system = kumo_region::Actor::system();
    region
        .create_user(
            &system,
            kumo_model::api::CreateUser {
                username: "bench".into(),
                password: "kumo-bench-password".into(),
                admin: true,
            },
        )
        .await?;
    let key = region.create_api_key(&system, "bench").await?.key;
    let provider = Arc::new(SimProvider::default());
    let controller = Controller::open(
        region.store().clone(),
        ControllerConfig::new(a.data_dir.clone()),
        Arc::new(kumo_region::SystemClock),
        Arc::new(kumo_region::OsEntropy),
        provider.clone(),
        kumo_region::SecretBox::from_key([7; 32]),
    )
    .await
    .context("opening the controller")?;
    controller
        .bootstrap(Bootstrap {
            agent_url: format!("http://{}", a.listen),
            bridge: "kumo-bench0".into(),
            address_range: "10.0.0.1-10.0.255.254".into(),
            prefix: 16,
            gateway: None,
            dns: vec![],
            apt_proxy: None,
            authorized_keys: vec![],
            controller_id: String::new(),
        })
        .await?;
    controller.add_model(MODEL, Some("manual"), None).await?;
    let charm = controller.upload_charm(&charm_archive()?)?;
    let first = a.machines.min(BATCH);
    controller
        .deploy(
            MODEL,
            &Deploy {
                charm: charm.sha256.clone(),
                application: Some(APPLICATION.into()),
                config: BTreeMap::new(),
                num_units: first as u32,
                to: vec![],
                constraints: None,
            },
        )
        .await?;
    let mut placed = first;
    while placed < a.machines {
        let count = (a.machines - placed).min(BATCH);
        controller
            .add_units(
                MODEL,
                APPLICATION,
                &AddUnits {
                    count: count as u32,
                    to: vec![],
                },
            )
            .await?;
        placed += count;
    }
    for _ in 0..3 {
        controller.provision_pending().await?;
        if provider.tokens.lock().expect("tokens lock").len() == a.machines {
            break;
        }
    }
    let tokens = provider.tokens.lock().expect("tokens lock").clone();
    ensure!(
        tokens.len() == a.machines,
        "provisioned {} of {} machines",
        tokens.len(),
        a.machines
    );
    let setup = t.elapsed();
    // Hand setup's freed heap back to the kernel, so the RSS the client
    // reads before its agents connect is what the controller holds.
    // SAFETY: glibc's malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
    // SIGUSR1: trim again, so the client can tell what the connections
    // hold from what the allocator kept after the busy start.
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            // SAFETY: as above.
            unsafe { libc::malloc_trim(0) };
        }
    });
    let mut text = format!("key\t{key}\nsetup_secs\t{:.3}\n", setup.as_secs_f64());
    for (machine, token) in &tokens {
        text.push_str(&format!("machine\t{machine}\t{token}\n"));
    }
    let tmp = a.tokens_out.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &a.tokens_out)?;
    eprintln!(
        "serve-controller: {} machines ready in {:.1} s on {}",
        a.machines,
        setup.as_secs_f64(),
        a.listen
    );
    // What `kumo region serve` runs beside the API.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let provisioner = tokio::spawn(controller.clone().run_provisioner(stop_rx.clone()));
    let workers = region.spawn_workers(stop_rx);
    let stopping = region.clone();
    let shutdown = async move {
        crate::serve::terminated().await;
        stopping.begin_shutdown();
    };
    kumo_api::serve_with(region.clone(), Some(controller), listener, shutdown)
        .await
        .context("serving the API")?;
    let _ = stop_tx.send(true);
    let _ = workers.await;
    let _ = provisioner.await;
    region.store().close().await;
    Ok(())
}

// ---- the simulated agents -----------------------------------------------------

/// What every agent task updates, for the driver to watch.
#[derive(Default)]
struct Progress {
    /// Agents that have connected at least once.
    connected: AtomicUsize,
    /// Agents all of whose units reached Idle (install…start done).
    idle: AtomicUsize,
    /// Agents with a long poll outstanding on a view with nothing owed.
    parked: AtomicUsize,
    commits: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Progress {
    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("error lock") = Some(format!("{e:#}"));
    }
}

struct Sim {
    addr: SocketAddr,
    host: String,
    connecting: Semaphore,
    progress: Progress,
}

/// Aborts a spawned task when dropped: an agent's connection dies with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One HTTP/1.1 keep-alive connection, the agent's own.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    _task: AbortOnDrop,
}

/// Longer than the controller's 50 s poll, with room for a busy controller.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            _task: AbortOnDrop(task),
        })
    }

    async fn call(
        &mut self,
        host: &str,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let exchange = async {
            self.sender.ready().await?;
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, host)
                .header(header::AUTHORIZATION, format!("Bearer {token}"));
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            let resp = self.sender.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{path}: no answer in {REQUEST_TIMEOUT:?}"))?
    }
}

struct Agent {
    machine: String,
    token: String,
    base: String,
    conn: Option<Conn>,
    /// The tag of the last view seen; the next poll waits for a change.
    since: Option<String>,
    /// The last view had nothing owed, so the next poll parks.
    waiting_idle: bool,
    reached_idle: bool,
    ever_connected: bool,
    charms: HashSet<String>,
}

impl Agent {
    fn new(machine: String, token: String) -> Agent {
        Agent {
            base: format!("/agent/v1/models/{MODEL}/machines/{machine}"),
            machine,
            token,
            conn: None,
            since: None,
            waiting_idle: false,
            reached_idle: false,
            ever_connected: false,
            charms: HashSet::new(),
        }
    }

    /// Plays the machine agent until aborted; errors reconnect after a pause.
    async fn run(mut self, sim: Arc<Sim>) {
        loop {
            if let Err(e) = self.step(&sim).await {
                sim.progress
                    .error(&e.context(format!("machine {}", self.machine)));
                self.conn = None;
                self.since = None;
                self.waiting_idle = false;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn call(
        &mut self,
        sim: &Sim,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let conn = self.conn.as_mut().expect("connected");
        conn.call(&sim.host, &self.token, method, path, body).await
    }

    /// One poll and, when a hook is owed, its commit: as
    /// `kumo agent machine` does, one hook at a time per machine.
    async fn step(&mut self, sim: &Sim) -> Result<()> {
        if self.conn.is_none() {
            let _permit = sim.connecting.acquire().await?;
            self.conn = Some(Conn::open(sim.addr).await?);
            if !self.ever_connected {
                self.ever_connected = true;
                sim.progress.connected.fetch_add(1, Ordering::Relaxed);
            }
        }
        let path = match &self.since {
            Some(t) => format!("{}/view?since={t}", self.base),
            None => format!("{}/view", self.base),
        };
        let parked = self.waiting_idle;
        if parked {
            sim.progress.parked.fetch_add(1, Ordering::Relaxed);
        }
        let polled = self.call(sim, Method::GET, &path, None).await;
        if parked {
            sim.progress.parked.fetch_sub(1, Ordering::Relaxed);
        }
        let (status, body) = polled?;
        ensure!(
            status.is_success(),
            "poll: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let view: MachineView =
            serde_json::from_slice(&body).context("decoding the machine view")?;
        let owed = view
            .units
            .iter()
            .find_map(|u| match next(&u.view, &u.state) {
                Operation::Run(h) | Operation::Skip(h) => Some((u, h)),
                _ => None,
            });
        let Some((unit, hook)) = owed else {
            let idle = !view.units.is_empty()
                && view
                    .units
                    .iter()
                    .all(|u| next(&u.view, &u.state) == Operation::Idle);
            if idle && !self.reached_idle {
                self.reached_idle = true;
                sim.progress.idle.fetch_add(1, Ordering::Relaxed);
            }
            self.waiting_idle = idle;
            self.since = Some(view.tag);
            return Ok(());
        };
        self.waiting_idle = false;
        // The real agent fetches the charm before its first hook.
        let sha = unit.view.charm.sha256.clone();
        if !self.charms.contains(&sha) {
            let (status, body) = self
                .call(
                    sim,
                    Method::GET,
                    &format!("{}/charms/{sha}", self.base),
                    None,
                )
                .await?;
            ensure!(
                status.is_success() && !body.is_empty(),
                "charm {sha}: HTTP {status}"
            );
            self.charms.insert(sha);
        }
        let running = serde_json::json!({"unit": unit.view.unit, "hook": hook.name()});
        let (status, body) = self
            .call(
                sim,
                Method::POST,
                &format!("{}/running", self.base),
                Some(serde_json::to_vec(&running)?),
            )
            .await?;
        ensure!(
            status.is_success(),
            "running: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let commit = HookCommit {
            unit: unit.view.unit.clone(),
            base_version: unit.state_version,
            state: complete(&unit.state, &hook, unit.view.resolve.seq),
            hook,
            result: HookResult::Succeeded,
            unit_settings: BTreeMap::new(),
            app_settings: BTreeMap::new(),
            leader_settings: BTreeMap::new(),
            workload_status: Some(WorkloadStatus {
                state: WorkloadState::Active,
                message: String::new(),
            }),
            ports: None,
            logs: vec![],
            output: String::new(),
            action: None,
        };
        let (status, body) = self
            .call(
                sim,
                Method::POST,
                &format!("{}/commit", self.base),
                Some(serde_json::to_vec(&commit)?),
            )
            .await?;
        if status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND {
            // Refused, as the real agent handles it: start from a fresh view.
            self.since = None;
            return Ok(());
        }
        ensure!(
            status.is_success(),
            "commit: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let _: CommitAck = serde_json::from_slice(&body).context("decoding the commit ack")?;
        sim.progress.commits.fetch_add(1, Ordering::Relaxed);
        // The view that answered this poll: the next returns once it
        // includes the commit.
        self.since = Some(view.tag);
        Ok(())
    }
}

// ---- the driver ---------------------------------------------------------------

/// Raises this process's open-file limit to its hard limit (children
/// inherit it); returns the new limit.
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        lim.rlim_cur = lim.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(lim.rlim_cur)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

struct Row {
    agents: usize,
    setup: f64,
    connected: Duration,
    idle: Duration,
    commits: u64,
    errors: u64,
    last_error: Option<String>,
    rss_before: u64,
    rss_parked: u64,
    /// After the controller's malloc_trim: what is live, less what the
    /// allocator kept from the start's transient load.
    rss_trimmed: u64,
    hwm: u64,
    client_rss: u64,
    status: Summary,
    status_bytes: usize,
    units_ok: usize,
}

impl Row {
    fn kib_per_agent(&self) -> f64 {
        (self.rss_parked as f64 - self.rss_before as f64) / self.agents as f64
    }

    fn trimmed_kib_per_agent(&self) -> f64 {
        (self.rss_trimmed as f64 - self.rss_before as f64) / self.agents as f64
    }
}

pub async fn run(a: Args) -> Result<()> {
    ensure!(
        !a.counts.is_empty() && a.counts.iter().all(|&n| n > 0),
        "--counts: positive numbers"
    );
    let nofile = raise_nofile()?;
    let most = a.counts.iter().copied().max().unwrap_or(0);
    ensure!(
        (most as u64) + 256 <= nofile,
        "{most} agents need {} open files, and the hard limit is {nofile}",
        most + 256
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kumo agents benchmark: {} simulated agents (the real protocol, no hooks), each on its own \
         TCP connection, against one controller process (SQLite); open-file limit {nofile}",
        a.counts
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    );
    println!(
        "host: {cores} cores ({}); the agents, this driver and the controller share them",
        cpu_model()
    );
    let mut rows = Vec::new();
    for &n in &a.counts {
        let row = bench_one(&a, n)
            .await
            .with_context(|| format!("{n} agents"))?;
        println!(
            "{n} agents: all idle in {:.1} s, {:.0} KiB per agent connection, status p50 {:.1} ms",
            row.idle.as_secs_f64(),
            row.kib_per_agent(),
            ms(row.status.p50)
        );
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "Controller process RSS (VmRSS, MiB): after setup (N machines and units, no agent \
         connected; heap trimmed), with every agent's long poll parked, and then after \
         malloc_trim(0) (what is live, less what the allocator kept from the busy start); \
         peak = VmHWM. KiB/agent = (RSS - RSS after setup) / N, raw and trimmed; Juju ≈ \
         {JUJU_KB_PER_AGENT} KB per agent connection."
    );
    println!(
        "status = GET /api/v1/models/{MODEL}/status over loopback with every agent connected \
         (ms; p50/p95, max). idle = every unit has run install … start; commits/s = hook \
         commits over that time."
    );
    let header = format!(
        "{:>6} | {:>7} {:>9} {:>8} | {:>7} {:>9} | {:>7} {:>7} {:>7} {:>7} | {:>9} {:>7} {:>5} | {:>22} {:>8} | {:>6}",
        "agents",
        "setup s",
        "connect s",
        "idle s",
        "commits",
        "commits/s",
        "setup",
        "parked",
        "trimmed",
        "peak",
        "KiB/agent",
        "trimmed",
        "Juju",
        "status p50/p95 (max)",
        "body KiB",
        "errors"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for r in rows {
        let mib = |k: u64| k as f64 / 1024.0;
        println!(
            "{:>6} | {:>7.1} {:>9.1} {:>8.1} | {:>7} {:>9.0} | {:>7.1} {:>7.1} {:>7.1} {:>7.1} | {:>9.1} {:>7.1} {:>5} | {:>22} {:>8.0} | {:>6}",
            r.agents,
            r.setup,
            r.connected.as_secs_f64(),
            r.idle.as_secs_f64(),
            r.commits,
            r.commits as f64 / r.idle.as_secs_f64().max(1e-9),
            mib(r.rss_before),
            mib(r.rss_parked),
            mib(r.rss_trimmed),
            mib(r.hwm),
            r.kib_per_agent(),
            r.trimmed_kib_per_agent(),
            format!("≈{JUJU_KB_PER_AGENT}"),
            format!(
                "{:.1}/{:.1} ({:.1})",
                ms(r.status.p50),
                ms(r.status.p95),
                ms(r.status.max)
            ),
            r.status_bytes as f64 / 1024.0,
            r.errors
        );
    }
    for r in rows {
        println!(
            "{} agents: {}/{} units active and idle in the last status; driver (all agents) RSS {:.1} MiB",
            r.agents,
            r.units_ok,
            r.agents,
            r.client_rss as f64 / 1024.0
        );
        if let Some(e) = &r.last_error {
            println!(
                "{} agents: {} errors (retried); the last: {e}",
                r.agents, r.errors
            );
        }
    }
}

/// The `serve-controller` child.
struct Server {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Server {
    fn start(
        data: &Path,
        listen: SocketAddr,
        machines: usize,
        tokens: &Path,
        log: &Path,
    ) -> Result<Server> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve-controller")
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--machines")
            .arg(machines.to_string())
            .arg("--tokens-out")
            .arg(tokens)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting kumo-bench serve-controller")?;
        let pid = child.id().context("controller process id")?;
        Ok(Server {
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the controller exited ({status})\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "controller log (last lines):\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// SIGTERM, then SIGKILL if parked requests hold up the graceful stop.
    async fn stop(mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

struct Tokens {
    key: String,
    setup: f64,
    machines: Vec<(String, String)>,
}

fn read_tokens(path: &Path) -> Result<Tokens> {
    let text = std::fs::read_to_string(path)?;
    let mut t = Tokens {
        key: String::new(),
        setup: 0.0,
        machines: Vec::new(),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["key", k] => t.key = k.to_string(),
            ["setup_secs", s] => t.setup = s.parse()?,
            ["machine", m, tok] => t.machines.push((m.to_string(), tok.to_string())),
            _ => bail!("bad line in {}: {line:?}", path.display()),
        }
    }
    ensure!(!t.key.is_empty(), "no API key in {}", path.display());
    Ok(t)
}

async fn bench_one(a: &Args, n: usize) -> Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("kumo-bench-agents-")
        .tempdir()?;
    let listen: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let tokens_path = dir.path().join("tokens");
    let mut server = Server::start(
        &dir.path().join("data"),
        listen,
        n,
        &tokens_path,
        &dir.path().join("controller.log"),
    )?;
    let result = measure(a, n, listen, &tokens_path, &mut server).await;
    let result = result.map_err(|e| e.context(server.log_tail()));
    server.stop().await;
    result
}

async fn measure(
    a: &Args,
    n: usize,
    listen: SocketAddr,
    tokens_path: &Path,
    server: &mut Server,
) -> Result<Row> {
    let t = Instant::now();
    while !tokens_path.exists() {
        server.check_running()?;
        ensure!(
            t.elapsed() < Duration::from_secs(3600),
            "the controller was not ready within an hour"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens = read_tokens(tokens_path)?;
    ensure!(
        tokens.machines.len() == n,
        "{} tokens for {n} machines",
        tokens.machines.len()
    );
    let base = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    // One request through the API before the baseline, so what it sets up
    // once is not counted against the agents.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.check_running()?;
        let ok = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the controller did not answer /healthz"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, _) = crate::stats::process_memory(server.pid)?;
    println!(
        "{n} agents: controller ready (setup {:.1} s, RSS {:.1} MiB); connecting",
        tokens.setup,
        rss_before as f64 / 1024.0
    );

    let sim = Arc::new(Sim {
        addr: listen,
        host: listen.to_string(),
        connecting: Semaphore::new(a.connecting.max(1)),
        progress: Progress::default(),
    });
    let start = Instant::now();
    let mut agents = tokio::task::JoinSet::new();
    for (machine, token) in tokens.machines {
        agents.spawn(Agent::new(machine, token).run(sim.clone()));
    }
    let p = &sim.progress;
    let mut connected = None;
    let mut last_report = Instant::now();
    loop {
        server.check_running()?;
        if connected.is_none() && p.connected.load(Ordering::Relaxed) == n {
            connected = Some(start.elapsed());
        }
        if p.idle.load(Ordering::Relaxed) == n {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            println!(
                "  … {:.0} s: {} connected, {} idle, {} commits, {} errors",
                start.elapsed().as_secs_f64(),
                p.connected.load(Ordering::Relaxed),
                p.idle.load(Ordering::Relaxed),
                p.commits.load(Ordering::Relaxed),
                p.errors.load(Ordering::Relaxed)
            );
        }
        ensure!(
            start.elapsed() < Duration::from_secs(a.idle_timeout_secs),
            "{} of {n} agents idle after {} s; last error: {:?}",
            p.idle.load(Ordering::Relaxed),
            a.idle_timeout_secs,
            p.last_error.lock().expect("error lock")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = start.elapsed();
    let connected = connected.unwrap_or(idle);
    let commits = p.commits.load(Ordering::Relaxed);

    // Every agent parked in its long poll, and nothing committed for 2 s.
    let t = Instant::now();
    let mut quiet_since = (Instant::now(), p.commits.load(Ordering::Relaxed));
    loop {
        let c = p.commits.load(Ordering::Relaxed);
        if c != quiet_since.1 {
            quiet_since = (Instant::now(), c);
        }
        if p.parked.load(Ordering::Relaxed) == n
            && quiet_since.0.elapsed() >= Duration::from_secs(2)
        {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "only {} of {n} agents parked 120 s after all were idle",
            p.parked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_parked, hwm) = crate::stats::process_memory(server.pid)?;
    // SAFETY: kill(2) on our own child; it trims its heap on SIGUSR1.
    unsafe { libc::kill(server.pid as libc::pid_t, libc::SIGUSR1) };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_trimmed, _) = crate::stats::process_memory(server.pid)?;

    let url = format!("{base}/api/v1/models/{MODEL}/status");
    let mut samples = Vec::new();
    let mut body = Bytes::new();
    for _ in 0..a.status_calls.max(1) {
        let t = Instant::now();
        let resp = http.get(&url).bearer_auth(&tokens.key).send().await?;
        let status = resp.status();
        body = resp.bytes().await?;
        samples.push(t.elapsed());
        ensure!(
            status.is_success(),
            "status: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let status: serde_json::Value = serde_json::from_slice(&body)?;
    let units_ok = status["units"]
        .as_object()
        .map(|u| {
            u.values()
                .filter(|u| u["workload"] == "active" && u["agent"] == "idle")
                .count()
        })
        .unwrap_or(0);
    let (client_rss, _) = crate::stats::process_memory(std::process::id())?;
    agents.shutdown().await;
    let last_error = p.last_error.lock().expect("error lock").clone();
    Ok(Row {
        agents: n,
        setup: tokens.setup,
        connected,
        idle,
        commits,
        errors: p.errors.load(Ordering::Relaxed),
        last_error,
        rss_before,
        rss_parked,
        rss_trimmed,
        hwm,
        client_rss,
        status: Summary::of(&samples),
        status_bytes: body.len(),
        units_ok,
    })
}
