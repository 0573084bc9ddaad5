//! `kumo agent machine`: a model machine's agent.
//!
//! It long-polls the controller for its machine's `MachineView` and runs,
//! per unit, whatever hook `kumo_uniter::next` says is owed, one hook at a
//! time on this machine. Each hook's changes (relation settings, status,
//! ports, logs) are buffered in its `HookContext`, served to the hook's
//! tools over a Unix socket, and sent as one `HookCommit` when it ends.
//! The unit's state lives in the controller: an agent killed mid-hook
//! reruns that hook when it comes back, and one whose commit was lost
//! resends it (the controller applies it once). A lost controller is
//! waited out with back-off.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kumo_client::{Client, ClientError};
use kumo_uniter::tools::{self, HookContext, ToolOutput};
use kumo_uniter::{
    complete, next, ActionOutcome, AssignedUnit, CommitAck, Hook, HookCommit, HookResult,
    MachineView, Operation, UniterState, WorkloadState, WorkloadStatus,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Mutex};

use crate::AgentError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    pub controller_url: String,
    pub model: String,
    pub machine: String,
    pub token: String,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text)
            .map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))
    }
}

/// Output kept from a hook: the tail is what a failure shows.
const OUTPUT_LIMIT: usize = 64 << 10;

struct Shared {
    client: Client,
    base: String,
    config: AgentConfig,
    data_dir: PathBuf,
    tools_dir: PathBuf,
    /// One hook at a time on this machine, as Juju's machine lock.
    hook_lock: Mutex<()>,
}

pub async fn run(config: AgentConfig, data_dir: PathBuf) -> Result<(), AgentError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| AgentError::Io { path, source }
    };
    let tools_dir = data_dir.join("tools");
    std::fs::create_dir_all(&tools_dir).map_err(io(&tools_dir))?;
    std::fs::create_dir_all(data_dir.join("charms")).map_err(io(&data_dir))?;
    std::fs::create_dir_all(data_dir.join("run")).map_err(io(&data_dir))?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    for tool in tools::TOOLS {
        let link = tools_dir.join(tool);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(io(&link))?;
    }
    let shared = Arc::new(Shared {
        client: Client::new(&config.controller_url, Some(config.token.clone())),
        base: format!(
            "/agent/v1/models/{}/machines/{}",
            config.model, config.machine
        ),
        config: config.clone(),
        data_dir,
        tools_dir,
        hook_lock: Mutex::new(()),
    });
    tracing::info!(
        model = config.model,
        machine = config.machine,
        controller = config.controller_url,
        "machine agent starting"
    );
    let (tx, rx) = watch::channel::<Option<MachineView>>(None);
    let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tag: Option<String> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        let path = match &tag {
            Some(t) => format!("{}/view?since={t}", shared.base),
            None => format!("{}/view", shared.base),
        };
        match shared.client.get::<MachineView>(&path).await {
            Ok(view) => {
                backoff = Duration::from_millis(500);
                tag = Some(view.tag.clone());
                workers.retain(|_, h| !h.is_finished());
                for u in &view.units {
                    if !workers.contains_key(&u.view.unit) {
                        let name = u.view.unit.clone();
                        tracing::info!(unit = name, "unit assigned");
                        let h = tokio::spawn(unit_worker(shared.clone(), name.clone(), rx.clone()));
                        workers.insert(name, h);
                    }
                }
                let _ = tx.send(Some(view));
            }
            Err(e) => {
                tracing::warn!(
                    "controller poll failed: {}; retrying in {backoff:?}",
                    chain(&e)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}

fn find_unit(view: &Option<MachineView>, unit: &str) -> Option<(AssignedUnit, u64)> {
    let v = view.as_ref()?;
    v.units
        .iter()
        .find(|u| u.view.unit == unit)
        .map(|u| (u.clone(), v.update_status_interval))
}

async fn unit_worker(
    shared: Arc<Shared>,
    unit: String,
    mut rx: watch::Receiver<Option<MachineView>>,
) {
    // The newest state this worker knows: from the view, or from the
    // controller's answer to its last commit (which may be newer).
    let mut acked: Option<(UniterState, u64)> = None;
    let mut last_update = Instant::now();
    loop {
        let current = find_unit(&rx.borrow_and_update(), &unit);
        let Some((assigned, interval)) = current else {
            if acked.as_ref().is_some_and(|(s, _)| s.removed) {
                tracing::info!(unit, "unit removed");
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        // After a commit, wait for a view that includes it: the next hook
        // must see what the last one wrote (its own leader settings, say),
        // not the model as it was before.
        if acked
            .as_ref()
            .is_some_and(|(_, v)| *v > assigned.state_version)
        {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let (state, version) = (assigned.state.clone(), assigned.state_version);
        let op = next(&assigned.view, &state);
        let hook = match op {
            Operation::Run(h) => Some((h, true)),
            Operation::Skip(h) => Some((h, false)),
            Operation::Done => {
                tracing::info!(unit, "unit done");
                return;
            }
            Operation::Idle if last_update.elapsed() >= Duration::from_secs(interval.max(10)) => {
                last_update = Instant::now();
                Some((Hook::UpdateStatus, true))
            }
            Operation::Idle | Operation::Blocked => None,
        };
        let Some((hook, execute)) = hook else {
            let wait = Duration::from_secs(interval.max(10)).saturating_sub(last_update.elapsed());
            tokio::select! {
                r = rx.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        };
        let assigned = AssignedUnit {
            state,
            state_version: version,
            ..assigned
        };
        let commit = if execute {
            match run_hook(&shared, &assigned, &hook).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(
                        unit,
                        hook = hook.name(),
                        "could not run hook: {e}; retrying in 5 s"
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
        } else {
            skipped_commit(&assigned, &hook)
        };
        match send_commit(&shared, &commit).await {
            Some(ack) => acked = Some((ack.state, ack.state_version)),
            // Refused: the controller's state moved on; start from its view.
            None => {
                acked = None;
                let _ = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
            }
        }
    }
}

fn skipped_commit(a: &AssignedUnit, hook: &Hook) -> HookCommit {
    HookCommit {
        unit: a.view.unit.clone(),
        base_version: a.state_version,
        hook: hook.clone(),
        result: HookResult::Succeeded,
        state: complete(&a.state, hook, a.view.resolve.seq),
        unit_settings: BTreeMap::new(),
        app_settings: BTreeMap::new(),
        leader_settings: BTreeMap::new(),
        workload_status: None,
        ports: None,
        logs: vec![kumo_uniter::LogLine {
            level: kumo_uniter::Level::Warning,
            message: format!("{} hook skipped: resolved without retry", hook.name()),
        }],
        output: String::new(),
        action: None,
    }
}

/// Sends a commit until the controller answers; `None` when it refuses
/// it (the state moved on, e.g. after a restart raced a retry).
async fn send_commit(shared: &Shared, commit: &HookCommit) -> Option<CommitAck> {
    let path = format!("{}/commit", shared.base);
    let mut backoff = Duration::from_millis(500);
    loop {
        match shared.client.post::<_, CommitAck>(&path, commit).await {
            Ok(ack) => return Some(ack),
            Err(ClientError::Api {
                status, message, ..
            }) if status == 409 || status == 404 => {
                tracing::warn!(unit = commit.unit, "commit refused: {message}");
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    unit = commit.unit,
                    "commit failed: {}; retrying in {backoff:?}",
                    chain(&e)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Downloads and unpacks a charm once per SHA-256.
async fn ensure_charm(shared: &Shared, sha: &str) -> Result<PathBuf, String> {
    let dir = shared.data_dir.join("charms").join(sha);
    if dir.join("metadata.yaml").exists() {
        return Ok(dir);
    }
    let resp = shared
        .client
        .download(&format!("{}/charms/{sha}", shared.base))
        .await
        .map_err(|e| format!("downloading charm {sha}: {}", chain(&e)))?;
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("downloading charm {sha}: {e}"))?;
    let got = {
        use sha2::Digest;
        crate::disk::hex(&sha2::Sha256::digest(&bytes))
    };
    if got != sha {
        return Err(format!("charm {sha}: downloaded archive has SHA-256 {got}"));
    }
    let tmp = shared.data_dir.join("charms").join(format!(".{sha}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    tar::Archive::new(&bytes[..])
        .unpack(&tmp)
        .map_err(|e| format!("unpacking charm {sha}: {e}"))?;
    std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

#[derive(Serialize, Deserialize)]
struct ToolRequest {
    tool: String,
    args: Vec<String>,
}

/// Answers the hook's tool calls from its context until the hook ends.
async fn serve_tools(
    listener: tokio::net::UnixListener,
    ctx: Arc<std::sync::Mutex<HookContext>>,
    charm_dir: PathBuf,
    client: Client,
    base: String,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let ctx = ctx.clone();
        let charm_dir = charm_dir.clone();
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let out = match serde_json::from_str::<ToolRequest>(&line) {
                Ok(req) if req.tool == "secret-get" => {
                    let unit = ctx.lock().expect("context lock").view.unit.clone();
                    secret_get(&client, &base, &unit, &req.args).await
                }
                Ok(req) => {
                    let read = |p: &str| -> Option<String> {
                        let path = charm_dir.join(p);
                        // Templates come from the charm, never from outside it.
                        if p.split('/').any(|c| c == "..") || p.starts_with('/') {
                            return None;
                        }
                        std::fs::read_to_string(path).ok()
                    };
                    let mut out = {
                        let mut c = ctx.lock().expect("context lock");
                        tools::run(&mut c, &req.tool, &req.args, &read)
                    };
                    // Juju shows status-set at once, not at the hook's end:
                    // an operator watching a long install sees its progress.
                    if req.tool == "status-set" && out.code == 0 {
                        let status = ctx.lock().expect("context lock").status.clone();
                        let unit = ctx.lock().expect("context lock").view.unit.clone();
                        let _ = client
                            .post::<_, ()>(
                                &format!("{base}/status"),
                                &serde_json::json!({"unit": unit, "status": status}),
                            )
                            .await;
                    }
                    if let Some((dest, content)) = out.write.take() {
                        if let Err(e) = write_file(Path::new(&dest), content.as_bytes()) {
                            out.code = 1;
                            out.stderr = format!("{}: writing {dest}: {e}\n", req.tool);
                        }
                    }
                    out
                }
                Err(e) => ToolOutput {
                    stderr: format!("bad hook tool request: {e}\n"),
                    code: 2,
                    ..Default::default()
                },
            };
            let mut text = serde_json::to_string(&out).expect("tool output");
            text.push('\n');
            let _ = w.write_all(text.as_bytes()).await;
        });
    }
}

/// `secret-get NAME|APP/NAME`: asks the controller, which keeps secrets
/// sealed and hands them only to hooks of the owning or a related
/// application.
async fn secret_get(client: &Client, base: &str, unit: &str, args: &[String]) -> ToolOutput {
    let [id] = args else {
        return ToolOutput {
            stderr: "secret-get: usage: secret-get NAME|APP/NAME\n".into(),
            code: 2,
            ..Default::default()
        };
    };
    #[derive(Deserialize)]
    struct Answer {
        value: String,
    }
    match client
        .post::<_, Answer>(
            &format!("{base}/secret"),
            &serde_json::json!({"unit": unit, "id": id}),
        )
        .await
    {
        Ok(a) => ToolOutput {
            stdout: format!("{}\n", a.value),
            ..Default::default()
        },
        Err(e) => ToolOutput {
            stderr: format!("secret-get: {e}\n"),
            code: 1,
            ..Default::default()
        },
    }
}

fn write_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("kumo-new");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// Runs one hook and returns its commit.
async fn run_hook(shared: &Shared, a: &AssignedUnit, hook: &Hook) -> Result<HookCommit, String> {
    let charm_dir = ensure_charm(shared, &a.view.charm.sha256).await?;
    let _machine_lock = shared.hook_lock.lock().await;
    let unit = &a.view.unit;
    let name = hook.name();
    tracing::info!(unit, hook = name, "running hook");
    let _ = shared
        .client
        .post::<_, ()>(
            &format!("{}/running", shared.base),
            &serde_json::json!({"unit": unit, "hook": name}),
        )
        .await;
    let status = WorkloadStatus {
        state: WorkloadState::Unknown,
        message: String::new(),
    };
    let ctx = Arc::new(std::sync::Mutex::new(HookContext::new(
        a.view.clone(),
        a.state.clone(),
        hook.clone(),
        status,
        Default::default(),
    )));
    let socket = shared
        .data_dir
        .join("run")
        .join(format!("{}.sock", unit.replace('/', "-")));
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let server = tokio::spawn(serve_tools(
        listener,
        ctx.clone(),
        charm_dir.clone(),
        shared.client.clone(),
        shared.base.clone(),
    ));

    let action = match hook {
        Hook::Action { id, .. } => a.view.actions.iter().find(|x| x.id == *id).cloned(),
        _ => None,
    };
    let (program, args): (Option<PathBuf>, Vec<String>) = match (&action, hook) {
        (Some(act), _) if act.command.is_some() => (
            Some("/bin/sh".into()),
            vec!["-c".into(), act.command.clone().unwrap_or_default()],
        ),
        (_, Hook::Action { name, .. }) => (
            Some(charm_dir.join("actions").join(name)).filter(|p| p.exists()),
            vec![],
        ),
        _ => (
            Some(charm_dir.join("hooks").join(&name)).filter(|p| p.exists()),
            vec![],
        ),
    };
    let env: Vec<(String, String)> = ctx.lock().expect("ctx").env();
    let (exit_ok, exit_message, output) = match &program {
        // Juju: a charm without this hook has nothing to do.
        None => (
            action.is_none(),
            if action.is_some() {
                format!("charm has no action {name}")
            } else {
                String::new()
            },
            String::new(),
        ),
        Some(p) => {
            let mut cmd = tokio::process::Command::new(p);
            cmd.args(&args)
                .current_dir(&charm_dir)
                .env_clear()
                .env(
                    "PATH",
                    format!(
                        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        shared.tools_dir.display()
                    ),
                )
                .env("HOME", "/root")
                .env("LANG", "C.UTF-8")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("CHARM_DIR", &charm_dir)
                .env("JUJU_CHARM_DIR", &charm_dir)
                .env("KUMO_AGENT_SOCKET", &socket)
                .env("JUJU_MODEL_NAME", &shared.config.model)
                .env("JUJU_MACHINE_ID", &shared.config.machine)
                .env("JUJU_PRINCIPAL_UNIT", unit)
                .envs(env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0);
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("starting {}: {e}", p.display()))?;
            let mut out = child.stdout.take().expect("piped");
            let mut err = child.stderr.take().expect("piped");
            let (mut ob, mut eb) = (Vec::new(), Vec::new());
            let (r1, r2, status) = tokio::join!(
                out.read_to_end(&mut ob),
                err.read_to_end(&mut eb),
                child.wait()
            );
            let _ = (r1, r2);
            // Kill what the hook left behind in its group, so no stray child
            // keeps running into the next hook.
            if let Some(pid) = child.id() {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let status = status.map_err(|e| format!("waiting for {}: {e}", p.display()))?;
            let mut text = String::from_utf8_lossy(&ob).into_owned();
            text.push_str(&String::from_utf8_lossy(&eb));
            if text.len() > OUTPUT_LIMIT {
                let cut = text.len() - OUTPUT_LIMIT;
                let cut = (cut..text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                text = text[cut..].to_string();
            }
            let message = match status.code() {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_string(),
            };
            (status.success(), message, text)
        }
    };
    server.abort();
    let _ = std::fs::remove_file(&socket);
    let ctx = ctx.lock().expect("ctx").clone();
    for line in output.lines().take(200) {
        tracing::info!(unit, hook = name, "{line}");
    }
    let mut commit = HookCommit {
        unit: unit.clone(),
        base_version: a.state_version,
        hook: hook.clone(),
        result: HookResult::Succeeded,
        state: complete(&a.state, hook, a.view.resolve.seq),
        unit_settings: ctx.unit_settings.clone(),
        app_settings: ctx.app_settings.clone(),
        leader_settings: ctx.leader_settings.clone(),
        workload_status: ctx.status_changed.then(|| ctx.status.clone()),
        ports: ctx.ports_changed.then(|| ctx.ports.clone()),
        logs: ctx.logs.clone(),
        output: output.clone(),
        action: None,
    };
    if let Some(act) = &action {
        // A failed action is the action's failure, not the unit's.
        let failed = !exit_ok || ctx.action_failed.is_some();
        commit.action = Some(ActionOutcome {
            id: act.id,
            status: if failed { "failed" } else { "completed" }.into(),
            message: ctx.action_failed.clone().unwrap_or_else(|| {
                if exit_ok {
                    String::new()
                } else {
                    exit_message.clone()
                }
            }),
            results: ctx.action_results.clone(),
            stdout: output,
            stderr: String::new(),
        });
        commit.output = String::new();
    } else if !exit_ok {
        tracing::warn!(unit, hook = name, "hook failed: {exit_message}");
        commit.result = HookResult::Failed {
            message: exit_message.clone(),
        };
        commit.state = kumo_uniter::uniter::fail(&a.state, hook, &exit_message, a.view.resolve.seq);
        commit.unit_settings.clear();
        commit.app_settings.clear();
        commit.leader_settings.clear();
        commit.workload_status = None;
        commit.ports = None;
    }
    Ok(commit)
}

/// The hook tool side: what `relation-get` & co. do when run. Sends the
/// call to the unit's agent and prints its answer.
pub fn hook_tool(tool: &str, args: &[String]) -> i32 {
    use std::io::{BufRead, Write};
    let Some(socket) = std::env::var_os("KUMO_AGENT_SOCKET") else {
        eprintln!("{tool}: not running in a hook (KUMO_AGENT_SOCKET is not set)");
        return 2;
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "{tool}: cannot reach the unit agent at {}: {e}",
                PathBuf::from(&socket).display()
            );
            return 2;
        }
    };
    let mut req = serde_json::to_string(&ToolRequest {
        tool: tool.to_string(),
        args: args.to_vec(),
    })
    .expect("request");
    req.push('\n');
    if let Err(e) = stream.write_all(req.as_bytes()) {
        eprintln!("{tool}: {e}");
        return 2;
    }
    let mut line = String::new();
    if let Err(e) = std::io::BufReader::new(stream).read_line(&mut line) {
        eprintln!("{tool}: {e}");
        return 2;
    }
    match serde_json::from_str::<ToolOutput>(&line) {
        Ok(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            out.code
        }
        Err(e) => {
            eprintln!("{tool}: bad answer from the unit agent: {e}");
            2
        }
    }
}
