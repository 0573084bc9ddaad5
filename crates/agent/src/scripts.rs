//! Running a task's commissioning or testing scripts. [`run_script`] is the
//! I/O shell: it writes the script to an executable file, runs it in its
//! own process group with a timeout (the whole group is killed when it
//! expires, and after the script exits, so no stray child keeps its output
//! open) and captures its output. What the run amounts to, what it runs
//! with and what the task concludes are pure functions beside it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kumo_model::scripts::{
    self, Script, ScriptOutcome, ScriptResultReport, ScriptTask, TaskScripts, MAX_OUTPUT_BYTES,
};
use kumo_model::Millis;
use tokio::io::AsyncReadExt;

/// How a script's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    /// It could not be started; why.
    NotStarted(String),
}

/// One run as captured, before it is judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub ended: Ended,
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr: Vec<u8>,
    pub stderr_truncated: bool,
    pub started_at: Millis,
    pub ended_at: Millis,
}

/// What to upload for a run. A run that did not exit by itself says why
/// at the end of its stderr, so the reason travels with the output.
pub fn report_of(name: &str, run: Run) -> ScriptResultReport {
    let (outcome, exit_status, note) = match &run.ended {
        Ended::Exited(0) => (ScriptOutcome::Passed, Some(0), None),
        Ended::Exited(code) => (ScriptOutcome::Failed, Some(*code), None),
        Ended::Signalled(sig) => (
            ScriptOutcome::Failed,
            None,
            Some(format!("kumo: script {name} was killed by signal {sig}")),
        ),
        Ended::TimedOut => (
            ScriptOutcome::TimedOut,
            None,
            Some(format!(
                "kumo: script {name} was still running at its timeout and was killed"
            )),
        ),
        Ended::NotStarted(why) => (
            ScriptOutcome::Failed,
            None,
            Some(format!("kumo: script {name} could not be started: {why}")),
        ),
    };
    let (stdout, cut_out) = scripts::output_text(&run.stdout);
    let (mut stderr, mut cut_err) = scripts::output_text(&run.stderr);
    if let Some(note) = note {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(&note);
        stderr.push('\n');
        let (s, cut) = scripts::clean_output(stderr);
        stderr = s;
        cut_err |= cut;
    }
    ScriptResultReport {
        name: name.to_owned(),
        outcome,
        exit_status,
        stdout,
        stdout_truncated: run.stdout_truncated || cut_out,
        stderr,
        stderr_truncated: run.stderr_truncated || cut_err,
        started_at: run.started_at,
        ended_at: run.ended_at.max(run.started_at),
    }
}

/// The environment a script runs with, besides the agent's own: who it
/// runs on and as what.
pub fn script_env(task: &TaskScripts, script: &Script) -> Vec<(String, String)> {
    vec![
        ("KUMO_MACHINE".into(), task.system_id.clone()),
        ("KUMO_HOSTNAME".into(), task.hostname.clone()),
        ("KUMO_SCRIPT".into(), script.info.name.clone()),
        ("KUMO_SCRIPT_TYPE".into(), task.script_type.as_str().into()),
        (
            "KUMO_TIMEOUT_SECS".into(),
            script.info.timeout_secs.to_string(),
        ),
    ]
}

/// Why the task failed, judged from its uploaded runs as the region will
/// judge them; `None` when every script passed.
pub fn verdict(task: &TaskScripts, reports: &[ScriptResultReport]) -> Option<String> {
    let t = ScriptTask {
        script_type: task.script_type,
        scripts: task.scripts.iter().map(|s| s.info.name.clone()).collect(),
        started_at: 0,
    };
    let runs: Vec<_> = reports
        .iter()
        .map(|r| (r.name.as_str(), r.outcome, r.exit_status))
        .collect();
    scripts::failure_summary(&t, &runs)
}

/// Why a script could not start, in words for its operator: a missing
/// interpreter is the usual cause in a busybox-only environment.
fn why_not_started(script: &Script, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "its interpreter {:?} is not in the ephemeral environment, which has busybox's /bin/sh ({e})",
            script.interpreter()
        )
    } else {
        e.to_string()
    }
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Output read so far, kept up to the bound; the rest is read and dropped
/// so the script never blocks on a full pipe.
#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut from: R, into: Arc<Mutex<Capture>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut c = into.lock().expect("capture");
                let room = MAX_OUTPUT_BYTES.saturating_sub(c.bytes.len());
                c.bytes.extend_from_slice(&buf[..n.min(room)]);
                c.truncated |= n > room;
            }
        }
    }
}

/// Kills every process of the script's group.
fn kill_group(pgid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // names a process group, which may already be gone (ESRCH, ignored).
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

/// Runs `script` from a 0700 file in `dir` with its timeout; `env` is added
/// to the agent's environment. The script's stdin is empty and its working
/// directory is `dir`.
pub async fn run_script(dir: &Path, script: &Script, env: &[(String, String)]) -> Run {
    let started_at = now_ms();
    let not_started = |why: String| Run {
        ended: Ended::NotStarted(why),
        stdout: Vec::new(),
        stdout_truncated: false,
        stderr: Vec::new(),
        stderr_truncated: false,
        started_at,
        ended_at: now_ms(),
    };
    let path = dir.join(&script.info.name);
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, &script.body))
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)));
    if let Err(e) = written {
        return not_started(format!("writing {}: {e}", path.display()));
    }
    let mut cmd = tokio::process::Command::new(&path);
    cmd.current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(c) => break c,
            // A fork elsewhere in this process may briefly hold the file
            // just written open for writing; exec then says "text file busy".
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return not_started(why_not_started(script, &e)),
        }
    };
    let pgid = child.id().unwrap_or(0);
    let out = Arc::new(Mutex::new(Capture::default()));
    let err = Arc::new(Mutex::new(Capture::default()));
    let readers = [
        tokio::spawn(read_capped(
            child.stdout.take().expect("piped"),
            out.clone(),
        )),
        tokio::spawn(read_capped(
            child.stderr.take().expect("piped"),
            err.clone(),
        )),
    ];
    let timeout = Duration::from_secs(script.info.timeout_secs.into());
    let ended = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Exited(code),
                (None, Some(sig)) => Ended::Signalled(sig),
                (None, None) => Ended::Exited(-1),
            }
        }
        Ok(Err(e)) => Ended::NotStarted(format!("waiting for it: {e}")),
        Err(_) => Ended::TimedOut,
    };
    let ended_at = now_ms();
    if pgid != 0 {
        kill_group(pgid);
    }
    let _ = child.wait().await;
    // A process that left the group may still hold the pipes open: give
    // the readers a moment, then keep what they have.
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let take = |c: &Arc<Mutex<Capture>>| {
        let mut c = c.lock().expect("capture");
        (std::mem::take(&mut c.bytes), c.truncated)
    };
    let (stdout, stdout_truncated) = take(&out);
    let (stderr, stderr_truncated) = take(&err);
    let _ = std::fs::remove_file(&path);
    Run {
        ended,
        stdout,
        stdout_truncated,
        stderr,
        stderr_truncated,
        started_at,
        ended_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kumo_model::scripts::{NewScript, ScriptType};

    fn script(name: &str, body: &str, timeout: u32) -> Script {
        Script::new(
            NewScript {
                name: name.into(),
                script_type: ScriptType::Testing,
                description: String::new(),
                timeout_secs: Some(timeout),
                body: body.into(),
            },
            0,
        )
        .unwrap()
    }

    fn task(scripts: Vec<Script>) -> TaskScripts {
        TaskScripts {
            system_id: "abc123".into(),
            hostname: "node1".into(),
            script_type: ScriptType::Testing,
            scripts,
        }
    }

    fn run(ended: Ended) -> Run {
        Run {
            ended,
            stdout: b"hello\n".to_vec(),
            stdout_truncated: false,
            stderr: b"oops".to_vec(),
            stderr_truncated: false,
            started_at: 10,
            ended_at: 20,
        }
    }

    #[test]
    fn runs_become_reports_that_say_why_they_failed() {
        let r = report_of("a", run(Ended::Exited(0)));
        assert_eq!((r.outcome, r.exit_status), (ScriptOutcome::Passed, Some(0)));
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("hello\n", "oops"));
        let r = report_of("a", run(Ended::Exited(3)));
        assert_eq!((r.outcome, r.exit_status), (ScriptOutcome::Failed, Some(3)));
        let r = report_of("a", run(Ended::TimedOut));
        assert_eq!((r.outcome, r.exit_status), (ScriptOutcome::TimedOut, None));
        assert!(
            r.stderr
                .starts_with("oops\nkumo: script a was still running"),
            "{}",
            r.stderr
        );
        let r = report_of("a", run(Ended::Signalled(9)));
        assert!(r.stderr.contains("signal 9"), "{}", r.stderr);
        let r = report_of("a", run(Ended::NotStarted("no /bin/bash".into())));
        assert_eq!((r.outcome, r.exit_status), (ScriptOutcome::Failed, None));
        assert!(r.stderr.contains("no /bin/bash"), "{}", r.stderr);
    }

    #[test]
    fn the_verdict_names_the_failed_scripts() {
        let t = task(vec![
            script("a", "#!/bin/sh\n", 5),
            script("b", "#!/bin/sh\n", 5),
        ]);
        let pass = report_of("a", run(Ended::Exited(0)));
        let fail = report_of("b", run(Ended::Exited(2)));
        assert_eq!(
            verdict(&t, &[pass.clone(), fail]).unwrap(),
            "testing script failed: b (exit status 2)"
        );
        let b_pass = report_of("b", run(Ended::Exited(0)));
        assert_eq!(verdict(&t, &[pass, b_pass]), None);
        let env = script_env(&t, &t.scripts[1]);
        assert!(env.contains(&("KUMO_MACHINE".into(), "abc123".into())));
        assert!(env.contains(&("KUMO_SCRIPT".into(), "b".into())));
    }

    // The shell, with the host's /bin/sh.

    #[tokio::test]
    async fn a_script_runs_with_its_environment_and_its_output_is_captured() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            "hello",
            "#!/bin/sh\necho \"kumo-script-ok $KUMO_MACHINE $KUMO_SCRIPT_TYPE $(pwd)\"\necho err >&2\nexit 3\n",
            30,
        );
        let t = task(vec![s.clone()]);
        let r = run_script(dir.path(), &s, &script_env(&t, &s)).await;
        assert_eq!(r.ended, Ended::Exited(3));
        let out = String::from_utf8(r.stdout).unwrap();
        assert_eq!(
            out.trim(),
            format!("kumo-script-ok abc123 testing {}", dir.path().display())
        );
        assert_eq!(r.stderr, b"err\n");
        assert!(r.ended_at >= r.started_at);
        assert!(!dir.path().join("hello").exists(), "the file is removed");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_script_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let s = script(
            "slow",
            &format!(
                "#!/bin/sh\necho started\nsleep 600 &\necho $! > {}\nwait\n",
                pidfile.display()
            ),
            1,
        );
        let r = run_script(dir.path(), &s, &[]).await;
        assert_eq!(r.ended, Ended::TimedOut);
        assert_eq!(r.stdout, b"started\n");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed, it is gone or a zombie until init reaps it. SIGKILL is
        // delivered when the process next runs, so allow it a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
            if matches!(state, None | Some("Z") | Some("X")) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the background sleep was killed with the group: {stat}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_background_child_does_not_hold_the_run_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = script("bg", "#!/bin/sh\nsleep 600 &\necho done\n", 30);
        let r = run_script(dir.path(), &s, &[]).await;
        assert_eq!(r.ended, Ended::Exited(0));
        assert_eq!(r.stdout, b"done\n");
    }

    #[tokio::test]
    async fn output_is_bounded_and_a_missing_interpreter_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            "loud",
            "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x\n",
            30,
        );
        let r = run_script(dir.path(), &s, &[]).await;
        assert_eq!(r.ended, Ended::Exited(0));
        assert_eq!(r.stdout.len(), MAX_OUTPUT_BYTES);
        assert!(r.stdout_truncated && !r.stderr_truncated);

        let s = script("bash", "#!/nonexistent/bash\necho hi\n", 30);
        let r = run_script(dir.path(), &s, &[]).await;
        match &r.ended {
            Ended::NotStarted(why) => assert!(why.contains("/nonexistent/bash"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
