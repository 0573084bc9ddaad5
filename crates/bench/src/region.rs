//! The region benchmark: for each store engine and machine count, a fresh
//! data directory and database, the real `kumo init` and `kumo region
//! serve`, N seeded machines, then list/show/allocate latency over
//! loopback HTTP and the region's resident memory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use kumo_model::api::Tag;
use kumo_model::inventory::{Cpu, Disk, Dmi, Nic};
use kumo_model::{
    EraseMode, Inventory, MacAddress, Machine, MachineStatus, Millis, Name, PowerState, SystemId,
};
use kumo_store::Store;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::process::{Child, Command};

use crate::stats::{ms, Budget, Summary};

/// The manual tag a quarter of the machines carry, so allocation filters.
const TAG: &str = "bench";
const CONSTRAINTS: &str = "tags=bench cores=2";
/// Cores cycle through these, so `cores=2` rules some tagged machines out.
const CPUS: [u32; 5] = [1, 2, 4, 8, 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    sizes: Vec<usize>,
    /// Store engines, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    engines: Vec<Engine>,
    /// Base URL of a PostgreSQL server whose user may create databases,
    /// e.g. what `scripts/pg-test-server.sh start` prints.
    #[arg(long, env = "KUMO_TEST_PG_URL")]
    pg_url: Option<String>,
    /// The kumo binary [default: `kumo` beside this one, i.e. target/release/kumo].
    #[arg(long)]
    kumo: Option<PathBuf>,
    /// Samples per operation, at most.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Seconds per operation, at most; a slow operation stops sooner.
    #[arg(long, default_value_t = 20)]
    max_secs: u64,
    /// Concurrent seeding tasks (SQLite serialises them on its one connection).
    #[arg(long, default_value_t = 8)]
    seed_tasks: usize,
}

/// One (engine, size) result.
struct Row {
    engine: Engine,
    size: usize,
    seed: Duration,
    startup: Duration,
    list: Summary,
    show: Summary,
    allocate: Summary,
    rss_kib: u64,
    hwm_kib: u64,
}

pub async fn run(a: Args) -> Result<()> {
    let kumo = match a.kumo.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("locating this binary's directory")?
            .join("kumo"),
    };
    ensure!(
        kumo.is_file(),
        "no kumo binary at {}: run `cargo build --release -p kumo` (scripts/bench-region.sh does) or pass --kumo",
        kumo.display()
    );
    if a.engines.contains(&Engine::Postgres) && a.pg_url.is_none() {
        bail!(
            "PostgreSQL needs a server: pass --pg-url (or set KUMO_TEST_PG_URL) to what \
             `scripts/pg-test-server.sh start` prints, or use --engines sqlite"
        );
    }
    println!(
        "kumo region benchmark: {} machines on {}; seeding writes machines straight into the store \
         (kumo-store, region stopped) with {} tasks; each operation runs up to {} times or {} s",
        a.sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        a.engines
            .iter()
            .map(Engine::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        a.seed_tasks,
        a.iterations,
        a.max_secs
    );
    let mut rows = Vec::new();
    for &engine in &a.engines {
        for &size in &a.sizes {
            let row = bench_one(&a, &kumo, engine, size)
                .await
                .with_context(|| format!("{engine} with {size} machines"))?;
            println!(
                "{engine:>8} {size:>6}: seeded in {:.1} s, region up in {:.2} s; \
                 list p50 {:.2} ms (n={}), show p50 {:.2} ms (n={}), allocate p50 {:.2} ms (n={}), RSS {:.1} MiB",
                row.seed.as_secs_f64(),
                row.startup.as_secs_f64(),
                ms(row.list.p50),
                row.list.n,
                ms(row.show.p50),
                row.show.n,
                ms(row.allocate.p50),
                row.allocate.n,
                row.rss_kib as f64 / 1024.0
            );
            rows.push(row);
        }
    }
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "kumo region only: no peer tool was measured (MAAS is not installable here). \
         Latency in ms over loopback (p50/p95, max); RSS of the region process after the measurements."
    );
    println!(
        "allocate = POST /machines/allocate {CONSTRAINTS:?} (each followed by an unmeasured release)."
    );
    let header = format!(
        "{:<9} {:>8} | {:>22} | {:>22} | {:>22} | {:>8} {:>9}",
        "engine",
        "machines",
        "list p50/p95 (max)",
        "show p50/p95 (max)",
        "allocate p50/p95 (max)",
        "RSS MiB",
        "peak MiB"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let cell = |s: &Summary| format!("{:.2}/{:.2} ({:.1})", ms(s.p50), ms(s.p95), ms(s.max));
    for r in rows {
        println!(
            "{:<9} {:>8} | {:>22} | {:>22} | {:>22} | {:>8.1} {:>9.1}",
            r.engine.to_string(),
            r.size,
            cell(&r.list),
            cell(&r.show),
            cell(&r.allocate),
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0
        );
    }
}

async fn bench_one(a: &Args, kumo: &Path, engine: Engine, size: usize) -> Result<Row> {
    // Dropping the guard removes the data directory and the region log.
    let dir = tempfile::Builder::new()
        .prefix("kumo-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let data = dir.path().join("data");
    let (database, pg) = match engine {
        Engine::Sqlite => (format!("sqlite:{}", data.join("kumo.db").display()), None),
        Engine::Postgres => {
            let base = a
                .pg_url
                .as_deref()
                .expect("checked in run")
                .trim_end_matches('/');
            let name = format!("kumo_bench_{size}_{:08x}", rand::thread_rng().gen::<u32>());
            admin_sql(base, &format!("CREATE DATABASE {name}")).await?;
            (format!("{base}/{name}"), Some((base.to_owned(), name)))
        }
    };
    let result = bench_on(a, kumo, dir.path(), &data, &database, engine, size).await;
    if let Some((base, name)) = pg {
        // The region has stopped by now; FORCE ends any connection it leaked.
        if let Err(e) = admin_sql(
            &base,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await
        {
            eprintln!("kumo-bench: could not drop database {name}: {e:#}");
        }
    }
    result
}

/// Runs one statement on the server's `postgres` database.
async fn admin_sql(base: &str, sql: &str) -> Result<()> {
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&format!("{base}/postgres"))
        .await
        .with_context(|| format!("connecting to PostgreSQL at {base}"))?;
    let r = sqlx::query(sql).execute(&admin).await;
    admin.close().await;
    r.with_context(|| format!("running {sql:?}"))?;
    Ok(())
}

async fn bench_on(
    a: &Args,
    kumo: &Path,
    tmp: &Path,
    data: &Path,
    database: &str,
    engine: Engine,
    size: usize,
) -> Result<Row> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let key = kumo_init(kumo, data, database, &listen).await?;

    let t = Instant::now();
    let ids = seed(database, size, a.seed_tasks)
        .await
        .context("seeding")?;
    let seed = t.elapsed();

    let log = tmp.join("region.log");
    let t = Instant::now();
    let mut region = RegionProcess::start(kumo, data, &log)?;
    let base = format!("http://{listen}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let measured = async {
        region.wait_healthy(&client, &base).await?;
        let startup = t.elapsed();
        let api = Api {
            client: &client,
            base: &base,
            key: &key,
        };
        let budget = || Budget::new(a.iterations, Duration::from_secs(a.max_secs));
        let list = measure_list(&api, size, budget()).await.context("list")?;
        let show = measure_show(&api, &ids, budget()).await.context("show")?;
        let allocate = measure_allocate(&api, budget()).await.context("allocate")?;
        let (rss_kib, hwm_kib) = region.memory()?;
        Ok::<_, anyhow::Error>(Row {
            engine,
            size,
            seed,
            startup,
            list,
            show,
            allocate,
            rss_kib,
            hwm_kib,
        })
    }
    .await;
    let stopped = region.stop().await;
    let row = measured.map_err(|e| e.context(log_tail(&log)))?;
    stopped?;
    Ok(row)
}

fn free_port() -> Result<u16> {
    // The kernel picks a free port; the region binds it a moment later.
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Runs the real `kumo init` and returns the admin API key it prints.
async fn kumo_init(kumo: &Path, data: &Path, database: &str, listen: &str) -> Result<String> {
    let out = Command::new(kumo)
        .arg("init")
        .arg("--data-dir")
        .arg(data)
        .args(["--database", database, "--listen", listen])
        .args(["--password", "kumo-bench-password", "--no-login"])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} init", kumo.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "kumo init failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("API key:"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("kumo init printed no API key line:\n{stdout}"))
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A Ready, commissioned machine with manual power and a small inventory,
/// as commissioning would leave it. Ids, hostnames and MACs derive from
/// `i`, so they are unique without a collision check.
fn machine(i: usize, now: Millis) -> Result<Machine> {
    let digits: [u8; 6] = std::array::from_fn(|k| ((i >> (5 * (5 - k))) & 31) as u8);
    let mac = MacAddress::new([0x02, 0x6b, 0x62, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let cpus = CPUS[i % CPUS.len()];
    let memory_mib = 4096 * u64::from(cpus);
    let disks: Vec<Disk> = (0..2)
        .map(|d| Disk {
            name: format!("sd{}", (b'a' + d) as char),
            size_bytes: 480_000_000_000,
            model: "BENCH SSD 480G".into(),
            serial: format!("BS{i:08}{d}"),
        })
        .collect();
    let storage_bytes = disks.iter().map(|d| d.size_bytes).sum();
    let inventory = Inventory {
        cpu: Cpu {
            model: "Bench CPU @ 2.40GHz".into(),
            count: cpus,
        },
        memory_mib,
        disks,
        nics: vec![Nic {
            name: "eno1".into(),
            mac,
            driver: "ixgbe".into(),
            link_up: true,
        }],
        dmi: Dmi {
            vendor: "Bench".into(),
            product: "B-1".into(),
            serial: format!("SN{i:08}"),
        },
        bmc: None,
    };
    Ok(Machine {
        system_id: SystemId::from_random(digits),
        hostname: format!("bench-{i:06}").parse()?,
        arch: "amd64".into(),
        status: MachineStatus::Ready,
        previous_status: None,
        status_message: String::new(),
        owner: None,
        agent_name: None,
        commissioned: true,
        erase: EraseMode::None,
        macs: vec![mac],
        power_type: "manual".into(),
        power_parameters: Map::new(),
        power_state: PowerState::Off,
        zone: Name::parse("zone", "default")?,
        pool: Name::parse("pool", "default")?,
        tags: if i.is_multiple_of(4) {
            vec![TAG.into()]
        } else {
            vec![]
        },
        cpu_count: cpus,
        memory_mib,
        storage_bytes,
        inventory: Some(inventory),
        deadline: None,
        deployment: None,
        script_task: None,
        version: 1,
        created_at: now,
        updated_at: now,
    })
}

/// Inserts `size` machines with kumo-store while the region is stopped:
/// setup, not measurement, and far quicker than the API for 10,000.
/// Returns their system ids.
async fn seed(database: &str, size: usize, tasks: usize) -> Result<Vec<String>> {
    let store = Store::open(database).await?;
    // Created up front so concurrent inserts never race to create it.
    store
        .create_tag(&Tag {
            name: TAG.into(),
            definition: String::new(),
            comment: "kumo-bench".into(),
        })
        .await?;
    let now = now_millis();
    let machines = (0..size)
        .map(|i| machine(i, now))
        .collect::<Result<Vec<_>>>()?;
    let ids = machines.iter().map(|m| m.system_id.to_string()).collect();
    let tasks = tasks.max(1);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let stripe: Vec<Machine> = machines.iter().skip(t).step_by(tasks).cloned().collect();
        let store = store.clone();
        set.spawn(async move {
            for m in &stripe {
                // Manual power has no secrets: the empty string is the
                // sealed form of none, under any key.
                store.insert_machine(m, "", None).await?;
            }
            Ok::<_, kumo_store::StoreError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let count = store.count_machines().await?;
    store.close().await;
    ensure!(
        count == size as i64,
        "seeded {count} machines, wanted {size}"
    );
    Ok(ids)
}

/// The `kumo region serve` child process.
struct RegionProcess {
    child: Child,
    pid: u32,
}

impl RegionProcess {
    fn start(kumo: &Path, data: &Path, log: &Path) -> Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = Command::new(kumo)
            .args(["region", "serve", "--data-dir"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A benchmark that fails midway must not leave a region behind.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} region serve", kumo.display()))?;
        let pid = child.id().context("region process id")?;
        Ok(RegionProcess { child, pid })
    }

    async fn wait_healthy(&mut self, client: &reqwest::Client, base: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the region exited during start-up ({status})");
            }
            let ok = client
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the region did not answer /healthz within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// VmRSS and VmHWM (peak RSS) in KiB, from /proc.
    fn memory(&self) -> Result<(u64, u64)> {
        crate::stats::process_memory(self.pid)
    }

    /// SIGTERM, as an operator's service manager would, then wait for the
    /// graceful shutdown; kill only if it hangs.
    async fn stop(mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            bail!("the region had already exited");
        }
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        ensure!(
            rc == 0,
            "SIGTERM to region: {}",
            std::io::Error::last_os_error()
        );
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                ensure!(
                    status.success(),
                    "the region exited with {status} after SIGTERM"
                );
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the region did not stop within 30 s of SIGTERM; killed it")
            }
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("region log (last lines):\n{tail}")
}

/// An authenticated client of one region.
struct Api<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    key: &'a str,
}

impl Api<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Sends a request and reads the whole body; the duration covers both,
    /// as a client sees it, but not decoding the JSON.
    async fn timed(&self, req: reqwest::RequestBuilder) -> Result<(Duration, Vec<u8>)> {
        let t = Instant::now();
        let resp = req.bearer_auth(self.key).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let took = t.elapsed();
        ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok((took, body.to_vec()))
    }

    async fn get(&self, path: &str) -> Result<(Duration, Vec<u8>)> {
        self.timed(self.client.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<(Duration, Vec<u8>)> {
        self.timed(self.client.post(self.url(path)).json(&body))
            .await
    }
}

async fn measure_list(api: &Api<'_>, size: usize, budget: Budget) -> Result<Summary> {
    // One unmeasured call opens the connection and checks the seeding.
    let (_, body) = api.get("/machines").await?;
    let all: Vec<Value> = serde_json::from_slice(&body)?;
    ensure!(
        all.len() == size,
        "listed {} machines, seeded {size}",
        all.len()
    );
    let mut samples = Vec::new();
    while budget.more(samples.len()) {
        samples.push(api.get("/machines").await?.0);
    }
    Ok(Summary::of(&samples))
}

async fn measure_show(api: &Api<'_>, ids: &[String], budget: Budget) -> Result<Summary> {
    api.get(&format!("/machines/{}", ids[0])).await?;
    let mut samples = Vec::new();
    while budget.more(samples.len()) {
        let id = &ids[rand::thread_rng().gen_range(0..ids.len())];
        samples.push(api.get(&format!("/machines/{id}")).await?.0);
    }
    Ok(Summary::of(&samples))
}

async fn measure_allocate(api: &Api<'_>, budget: Budget) -> Result<Summary> {
    let mut samples = Vec::new();
    // The first round is unmeasured warm-up.
    let mut warm = true;
    while warm || budget.more(samples.len()) {
        let (took, body) = api
            .post("/machines/allocate", json!({ "constraints": CONSTRAINTS }))
            .await?;
        let m: Value = serde_json::from_slice(&body)?;
        let id = m["system_id"]
            .as_str()
            .ok_or_else(|| anyhow!("allocate answered without a system_id: {m}"))?
            .to_owned();
        if !warm {
            samples.push(took);
        }
        warm = false;
        api.post(&format!("/machines/{id}/actions/release"), Value::Null)
            .await?;
        wait_ready(api, &id).await?;
    }
    Ok(Summary::of(&samples))
}

/// Waits for the power worker to finish a release (manual power completes
/// at once), so every allocation sees the same pool.
async fn wait_ready(api: &Api<'_>, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = api.get(&format!("/machines/{id}")).await?;
        let m: Value = serde_json::from_slice(&body)?;
        if m["status"] == "ready" {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "machine {id} still {} 60 s after release",
            m["status"]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
