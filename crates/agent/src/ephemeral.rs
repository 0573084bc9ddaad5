//! `kumo agent ephemeral`: what a network-booted machine does. The rack's
//! iPXE script puts everything on the kernel command line — the purpose,
//! the metadata URL (the rack, which forwards to the region), the system id
//! and, for known machines, the machine's token — so the agent needs no
//! other configuration.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kumo_client::{Client, ClientError};
use kumo_model::api::{
    CloudInitDocuments, EnlistRequest, InstalledReply, Instructions, ReportEvent, ReportResult,
    StatusReport,
};
use kumo_model::scripts::TaskScripts;
use kumo_model::{Inventory, MacAddress};
use serde_json::Value;

use crate::{disk, inventory, scripts, AgentError};

/// The `kumo.*` and `BOOTIF` parameters of `/proc/cmdline`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootParams {
    pub purpose: Option<String>,
    pub metadata_url: Option<String>,
    pub system_id: Option<String>,
    pub token: Option<String>,
    /// The NIC iPXE booted from (`BOOTIF=01-aa-bb-cc-dd-ee-ff`).
    pub boot_mac: Option<MacAddress>,
}

impl BootParams {
    /// Reads the parameters kumo cares about; others are ignored. Pure.
    pub fn parse(cmdline: &str) -> BootParams {
        let mut p = BootParams::default();
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let value = Some(value.to_owned()).filter(|v| !v.is_empty());
            match key {
                "kumo.purpose" => p.purpose = value,
                "kumo.metadata_url" => p.metadata_url = value,
                "kumo.system_id" => p.system_id = value,
                "kumo.token" => p.token = value,
                "BOOTIF" => {
                    // The leading "01-" is the ARP hardware type (Ethernet).
                    p.boot_mac = value
                        .as_deref()
                        .and_then(|v| v.strip_prefix("01-"))
                        .and_then(|m| m.parse().ok())
                }
                _ => {}
            }
        }
        p
    }
}

/// What the machine does once the agent is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task is over and reported: power off.
    PowerOff,
    /// Nothing (more) to do automatically: stay up for an operator.
    StayUp,
    /// The disk is ready: restart into it.
    Reboot,
}

/// Runs the task `params` name, reading the hardware below `root`.
pub async fn run(params: &BootParams, root: &Path) -> Result<Outcome, AgentError> {
    let url = params
        .metadata_url
        .as_deref()
        .ok_or_else(|| AgentError::Cmdline("no kumo.metadata_url".into()))?;
    let purpose = params.purpose.as_deref().unwrap_or("");
    let client = Client::new(url, params.token.clone());
    match purpose {
        "enlist" => {
            let inv = inventory::collect(root)?;
            tracing::info!(
                cpus = inv.cpu.count,
                memory_mib = inv.memory_mib,
                disks = inv.disks.len(),
                nics = inv.nics.len(),
                "enlisting"
            );
            enlist(&client, inv, params.boot_mac).await?;
            Ok(Outcome::PowerOff)
        }
        "commission" => {
            if params.token.is_none() {
                return Err(AgentError::Cmdline(
                    "commissioning needs kumo.token, which the rack adds for known machines".into(),
                ));
            }
            report(
                &client,
                ReportEvent::Progress,
                None,
                "commissioning: collecting inventory",
            )
            .await?;
            let inv = inventory::collect(root)?;
            retry("inventory upload", || {
                client.post::<_, Value>("/inventory", &inv)
            })
            .await?;
            finish_scripts(&client, "commissioning").await
        }
        "test" => {
            require_token(params)?;
            finish_scripts(&client, "testing").await
        }
        "deploy" => {
            require_token(params)?;
            let url = params.metadata_url.clone().unwrap_or_default();
            match deploy(&client, &url, root).await {
                Ok(outcome) => Ok(outcome),
                Err(e) => fail(&client, &format!("deploy failed: {e}")).await,
            }
        }
        "erase" => {
            require_token(params)?;
            match erase(&client, root).await {
                Ok(outcome) => Ok(outcome),
                Err(e) => fail(&client, &format!("erase failed: {e}")).await,
            }
        }
        "rescue" => {
            require_token(params)?;
            report(
                &client,
                ReportEvent::Finished,
                Some(ReportResult::Success),
                "rescue environment up; log in on the console",
            )
            .await?;
            Ok(Outcome::StayUp)
        }
        // Say so rather than pass, so the task does not hang until the
        // watchdog.
        other => {
            let message = format!("kumo agent: purpose {other:?} is not implemented yet");
            tracing::warn!("{message}");
            if params.token.is_some() {
                report(
                    &client,
                    ReportEvent::Finished,
                    Some(ReportResult::Failure),
                    &message,
                )
                .await?;
            }
            Ok(Outcome::StayUp)
        }
    }
}

fn require_token(params: &BootParams) -> Result<(), AgentError> {
    match params.token {
        Some(_) => Ok(()),
        None => Err(AgentError::Cmdline(format!(
            "{} needs kumo.token, which the rack adds for known machines",
            params.purpose.as_deref().unwrap_or("this purpose")
        ))),
    }
}

/// Reports a task's failure (the machine goes to its failed status, with
/// the reason in its events) and stays up for an operator to look.
async fn fail(client: &Client, message: &str) -> Result<Outcome, AgentError> {
    tracing::error!("{message}");
    report(
        client,
        ReportEvent::Finished,
        Some(ReportResult::Failure),
        message,
    )
    .await?;
    Ok(Outcome::StayUp)
}

/// How often a long task tells the region it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How often a long script's run is reported: it is one event each time,
/// and well inside the watchdog's 20 minutes.
const SCRIPT_HEARTBEAT: Duration = Duration::from_secs(60);

/// Runs the task's scripts and reports the task's end: finished when all
/// passed, failed naming those that did not (the machine then stays up for
/// an operator to look).
async fn finish_scripts(client: &Client, task: &str) -> Result<Outcome, AgentError> {
    match run_task_scripts(client, task).await {
        Ok((n, None)) => {
            report(
                client,
                ReportEvent::Finished,
                Some(ReportResult::Success),
                &match n {
                    0 => format!("{task} finished"),
                    1 => format!("{task} finished: 1 script passed"),
                    n => format!("{task} finished: {n} scripts passed"),
                },
            )
            .await?;
            Ok(Outcome::PowerOff)
        }
        Ok((_, Some(why))) => fail(client, &why).await,
        Err(e) => fail(client, &format!("{task} scripts: {e}")).await,
    }
}

/// Fetches the task's scripts, runs each in turn and uploads its result.
/// Returns how many ran and why the task failed, if it did.
async fn run_task_scripts(
    client: &Client,
    task: &str,
) -> Result<(usize, Option<String>), AgentError> {
    let ts: TaskScripts = retry("scripts", || client.get("/scripts")).await?;
    let dir = std::env::temp_dir().join("kumo-scripts");
    let mut reports = Vec::new();
    for s in &ts.scripts {
        let what = format!("{} script {}", ts.script_type, s.info.name);
        report(
            client,
            ReportEvent::Progress,
            None,
            &format!("{task}: running {what} (timeout {} s)", s.info.timeout_secs),
        )
        .await?;
        let env = scripts::script_env(&ts, s);
        let started = Instant::now();
        let run = scripts::run_script(&dir, s, &env);
        tokio::pin!(run);
        let run = loop {
            tokio::select! {
                r = &mut run => break r,
                () = tokio::time::sleep(SCRIPT_HEARTBEAT) => {
                    let msg = format!("{task}: {what} running for {} s", started.elapsed().as_secs());
                    report(client, ReportEvent::Progress, None, &msg).await?;
                }
            }
        };
        let r = scripts::report_of(&s.info.name, run);
        tracing::info!(script = %s.info.name, outcome = r.outcome.as_str(), exit_status = ?r.exit_status, "script done");
        retry("script result", || {
            client.post::<_, Value>("/script-results", &r)
        })
        .await?;
        reports.push(r);
    }
    Ok((reports.len(), scripts::verdict(&ts, &reports)))
}

/// `http://rack:5248/metadata/v1/` → `http://rack:5248`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Writes the image to the first big-enough disk, checks it, seeds the
/// first boot and asks to be restarted from that disk.
async fn deploy(client: &Client, metadata_url: &str, root: &Path) -> Result<Outcome, AgentError> {
    let ins: Instructions = retry("instructions", || client.get("/instructions")).await?;
    let d = ins.deploy.ok_or_else(|| {
        AgentError::Image(format!(
            "the region has no image for this machine (it is {})",
            ins.status
        ))
    })?;
    let inv = inventory::collect(root)?;
    let disk = disk::choose_disk(&inv.disks, d.raw_size)
        .ok_or_else(|| {
            AgentError::Image(format!(
                "no disk holds image {} ({} MiB); disks: {}",
                d.image,
                d.raw_size >> 20,
                inv.disks
                    .iter()
                    .map(|d| format!("{} {} MiB", d.name, d.size_bytes >> 20))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?
        .clone();
    let dev = root.join("dev").join(&disk.name);
    let url = format!("{}{}", origin(metadata_url), d.path);
    report(
        client,
        ReportEvent::Progress,
        None,
        &format!(
            "downloading image {} ({} MiB) from {url}",
            d.image,
            d.size >> 20
        ),
    )
    .await?;
    let started = Instant::now();
    let mut resp = download_when_ready(client, &url).await?;

    // The network side is async, the decompress-and-write side blocking:
    // a bounded channel between them keeps memory flat.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (dev, written) = (dev.clone(), written.clone());
        tokio::task::spawn_blocking(move || -> Result<disk::Written, AgentError> {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .map_err(|source| AgentError::Io {
                    path: format!("opening {}", dev.display()),
                    source,
                })?;
            let w = disk::write_image(ChannelReader::new(rx), &mut f, &dev, |n| {
                written.store(n, Ordering::Relaxed)
            })?;
            disk::reread_partitions(&f);
            Ok(w)
        })
    };
    let mut last = Instant::now();
    let mut sent = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(AgentError::Image(format!("downloading {url}: {e}"))),
        };
        sent += chunk.len() as u64;
        if tx.send(chunk.to_vec()).await.is_err() {
            break; // The writer stopped; its error says why.
        }
        if last.elapsed() >= HEARTBEAT {
            last = Instant::now();
            let msg = format!(
                "writing image to {}: {} of {} MiB downloaded, {} MiB written",
                disk.name,
                sent >> 20,
                d.size >> 20,
                written.load(Ordering::Relaxed) >> 20
            );
            report(client, ReportEvent::Progress, None, &msg).await?;
        }
    }
    drop(tx);
    let w = writer
        .await
        .map_err(|e| AgentError::Image(format!("the disk writer stopped: {e}")))??;
    if w.sha256 != d.sha256 {
        return Err(AgentError::Image(format!(
            "image {} arrived with sha256 {} ({} bytes), expected {}",
            d.image, w.sha256, w.compressed, d.sha256
        )));
    }
    if d.raw_size != 0 && w.raw != d.raw_size {
        return Err(AgentError::Image(format!(
            "image {} unpacked to {} bytes, expected {}",
            d.image, w.raw, d.raw_size
        )));
    }
    let took = started.elapsed().as_secs_f64();
    report(
        client,
        ReportEvent::Progress,
        None,
        &format!(
            "image {} written to {} and verified: {} MiB in {took:.1} s ({} MiB as zero ranges; {})",
            d.image,
            disk.name,
            w.raw >> 20,
            w.zeroed >> 20,
            w.time
        ),
    )
    .await?;

    let docs_path = format!(
        "/cloud-init?metadata_url={}",
        kumo_client::enc(metadata_url)
    );
    let docs: CloudInitDocuments = retry("cloud-init documents", || client.get(&docs_path)).await?;
    let part = root.join("dev").join(disk::partition_name(&disk.name, 1));
    seed_first_boot(&part, &docs).await?;
    report(
        client,
        ReportEvent::Progress,
        None,
        "first boot configured; rebooting from local disk",
    )
    .await?;
    let empty = serde_json::json!({});
    let reply: InstalledReply = retry("installed", || client.post("/installed", &empty)).await?;
    if reply.reboot == "power" {
        // The power driver restarts the machine; restart ourselves only
        // if it has not done so in a minute.
        tokio::time::sleep(Duration::from_secs(60)).await;
        tracing::warn!("the power driver did not restart this machine; rebooting");
    }
    Ok(Outcome::Reboot)
}

/// The rack may still be mirroring a freshly built image: wait for it.
async fn download_when_ready(client: &Client, url: &str) -> Result<reqwest::Response, AgentError> {
    let mut waited = Duration::ZERO;
    loop {
        match client.download(url).await {
            Ok(r) => return Ok(r),
            Err(ClientError::Api { status: 404, .. } | ClientError::Decode { status: 404, .. })
                if waited < Duration::from_secs(600) =>
            {
                if waited.as_secs().is_multiple_of(30) {
                    report(
                        client,
                        ReportEvent::Progress,
                        None,
                        "waiting for the rack to mirror the image",
                    )
                    .await?;
                }
                tokio::time::sleep(HEARTBEAT).await;
                waited += HEARTBEAT;
            }
            Err(ClientError::Transport { .. }) if waited < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                waited += Duration::from_secs(1);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Mounts the written root partition and drops the NoCloud seed in it.
async fn seed_first_boot(part: &Path, docs: &CloudInitDocuments) -> Result<(), AgentError> {
    // The kernel creates the partition's node once it has re-read the table.
    for _ in 0..100 {
        if part.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mnt = Path::new("/run/kumo-target");
    std::fs::create_dir_all(mnt).map_err(|source| AgentError::Io {
        path: format!("creating {}", mnt.display()),
        source,
    })?;
    run_cmd(
        "mount",
        &[
            "-t",
            "ext4",
            &part.to_string_lossy(),
            &mnt.to_string_lossy(),
        ],
    )?;
    let written = disk::write_seed(mnt, docs);
    let unmounted = run_cmd("umount", &[&mnt.to_string_lossy()]);
    written?;
    unmounted
}

fn run_cmd(cmd: &str, args: &[&str]) -> Result<(), AgentError> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|source| AgentError::Io {
            path: format!("running {cmd}"),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AgentError::Image(format!(
            "{cmd} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Erases every disk as the release asked (quick or full), then reports.
async fn erase(client: &Client, root: &Path) -> Result<Outcome, AgentError> {
    let ins: Instructions = retry("instructions", || client.get("/instructions")).await?;
    let mode = ins.erase;
    let inv = inventory::collect(root)?;
    for d in &inv.disks {
        let dev = root.join("dev").join(&d.name);
        report(
            client,
            ReportEvent::Progress,
            None,
            &format!(
                "erasing {} ({} MiB, {})",
                d.name,
                d.size_bytes >> 20,
                mode.as_str()
            ),
        )
        .await?;
        let done = Arc::new(AtomicU64::new(0));
        let job = {
            let (dev, done) = (dev.clone(), done.clone());
            tokio::task::spawn_blocking(move || {
                disk::erase(&dev, mode, |at, _| done.store(at, Ordering::Relaxed))
            })
        };
        tokio::pin!(job);
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                () = tokio::time::sleep(HEARTBEAT) => {
                    let msg = format!("erasing {}: {} of {} MiB", d.name, done.load(Ordering::Relaxed) >> 20, d.size_bytes >> 20);
                    report(client, ReportEvent::Progress, None, &msg).await?;
                }
            }
        };
        result.map_err(|e| AgentError::Image(format!("the eraser stopped: {e}")))??;
    }
    report(
        client,
        ReportEvent::Finished,
        Some(ReportResult::Success),
        &format!(
            "{} erase of {} disks finished",
            mode.as_str(),
            inv.disks.len()
        ),
    )
    .await?;
    Ok(Outcome::PowerOff)
}

/// Reads what the download side sends, for the blocking writer.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        ChannelReader {
            rx,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.blocking_recv() {
                Some(next) => {
                    self.current = next;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Registers this machine as New. A machine the region already knows by
/// one of these MACs is left alone (`already_enlisted`), which is success:
/// it was enlisted before.
async fn enlist(
    client: &Client,
    inventory: Inventory,
    boot_mac: Option<MacAddress>,
) -> Result<(), AgentError> {
    let req = EnlistRequest {
        inventory,
        boot_mac: boot_mac.map(|m| m.to_string()),
    };
    match retry("enlistment", || client.post::<_, Value>("/enlist", &req)).await {
        Ok(m) => {
            tracing::info!(system_id = %m["system_id"], hostname = %m["hostname"], "enlisted as new");
            Ok(())
        }
        Err(ClientError::Api { code, message, .. }) if code == "already_enlisted" => {
            tracing::info!("{message}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn report(
    client: &Client,
    event: ReportEvent,
    result: Option<ReportResult>,
    message: &str,
) -> Result<(), AgentError> {
    let body = StatusReport {
        event,
        result,
        message: message.to_owned(),
    };
    retry("status report", || {
        client.post::<_, Value>("/status", &body)
    })
    .await?;
    Ok(())
}

/// Retries what failed to reach the region (the network may still be
/// settling right after DHCP); the region's own answers are final.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut wait = Duration::from_millis(250);
    for _ in 0..8 {
        match f().await {
            Err(e @ ClientError::Transport { .. }) => {
                tracing::warn!(error = %e, retry_in = ?wait, "{what} not delivered");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
    f().await
}

/// Powers the machine off or restarts it at once (`poweroff -f`,
/// `reboot -f`): everything is in RAM and the disks are synced, so there
/// is nothing to unmount.
pub fn halt(how: &str) -> Result<(), AgentError> {
    let status = std::process::Command::new(how)
        .arg("-f")
        .status()
        .map_err(|e| AgentError::PowerOff(format!("running {how} -f: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(AgentError::PowerOff(format!(
            "{how} -f exited with {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rack_s_command_line_parses() {
        let p = BootParams::parse(
            "initrd=initrd.img console=tty0 console=ttyS0,115200n8 BOOTIF=01-52-54-00-aa-00-01 \
             kumo.purpose=commission kumo.metadata_url=http://10.0.0.2:5248/metadata/v1/ \
             kumo.system_id=abc123 kumo.token=s3cret quiet\n",
        );
        assert_eq!(p.purpose.as_deref(), Some("commission"));
        assert_eq!(
            p.metadata_url.as_deref(),
            Some("http://10.0.0.2:5248/metadata/v1/")
        );
        assert_eq!(p.system_id.as_deref(), Some("abc123"));
        assert_eq!(p.token.as_deref(), Some("s3cret"));
        assert_eq!(p.boot_mac.unwrap().to_string(), "52:54:00:aa:00:01");
    }

    #[test]
    fn missing_and_malformed_parameters_are_none() {
        let p = BootParams::parse("BOOTIF=52-54-00-aa-00-01 kumo.token= kumo.purpose=enlist");
        assert_eq!(p.boot_mac, None, "no hardware type prefix");
        assert_eq!(p.token, None);
        assert_eq!(p.purpose.as_deref(), Some("enlist"));
        assert_eq!(BootParams::parse(""), BootParams::default());
    }

    #[tokio::test]
    async fn without_a_metadata_url_nothing_runs() {
        let err = run(&BootParams::default(), Path::new("/nonexistent"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("kumo.metadata_url"), "{err}");
    }

    #[tokio::test]
    async fn commissioning_without_a_token_is_refused() {
        let p = BootParams::parse("kumo.purpose=commission kumo.metadata_url=http://127.0.0.1:9/");
        let err = run(&p, Path::new("/nonexistent")).await.unwrap_err();
        assert!(err.to_string().contains("kumo.token"), "{err}");
    }

    #[tokio::test]
    async fn unknown_purposes_stay_up() {
        let p = BootParams::parse("kumo.purpose=dance kumo.metadata_url=http://127.0.0.1:9/");
        assert_eq!(
            run(&p, Path::new("/nonexistent")).await.unwrap(),
            Outcome::StayUp
        );
    }

    #[tokio::test]
    async fn testing_without_a_token_is_refused() {
        let p = BootParams::parse("kumo.purpose=test kumo.metadata_url=http://127.0.0.1:9/");
        let err = run(&p, Path::new("/nonexistent")).await.unwrap_err();
        assert!(err.to_string().contains("kumo.token"), "{err}");
    }

    #[tokio::test]
    async fn deploying_without_a_token_is_refused() {
        let p = BootParams::parse("kumo.purpose=deploy kumo.metadata_url=http://127.0.0.1:9/");
        let err = run(&p, Path::new("/nonexistent")).await.unwrap_err();
        assert!(err.to_string().contains("kumo.token"), "{err}");
    }

    #[test]
    fn the_rack_origin_is_cut_from_the_metadata_url() {
        assert_eq!(
            origin("http://10.0.0.2:5248/metadata/v1/"),
            "http://10.0.0.2:5248"
        );
        assert_eq!(origin("http://rack"), "http://rack");
    }
}
