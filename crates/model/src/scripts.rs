//! User-supplied commissioning and testing scripts: what the region keeps,
//! which ones a task runs, what a machine reports of each run, and how a
//! task's runs decide its outcome. Pure: the region stores these and the
//! agent runs them, and both judge a task with [`failure_summary`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lifecycle::MachineStatus;
use crate::{Millis, ModelError, Name};

/// A script's body may hold at most this many bytes.
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
/// Each of a run's stdout and stderr is kept up to this many bytes.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
pub const DEFAULT_TIMEOUT_SECS: u32 = 600;
/// A day: long burn-in tests fit, a typo of extra zeros does not.
pub const MAX_TIMEOUT_SECS: u32 = 86_400;
const MAX_DESCRIPTION_BYTES: usize = 1024;

/// When a script runs: while commissioning (after the inventory) or
/// while testing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptType {
    Commissioning,
    Testing,
}

impl ScriptType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptType::Commissioning => "commissioning",
            ScriptType::Testing => "testing",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "commissioning" => Ok(ScriptType::Commissioning),
            "testing" => Ok(ScriptType::Testing),
            other => Err(ModelError::field(
                "type",
                other,
                "expected commissioning or testing",
            )),
        }
    }

    /// The scripts a machine in `status` runs, if any.
    pub fn for_status(status: MachineStatus) -> Option<ScriptType> {
        match status {
            MachineStatus::Commissioning => Some(ScriptType::Commissioning),
            MachineStatus::Testing => Some(ScriptType::Testing),
            _ => None,
        }
    }
}

impl std::fmt::Display for ScriptType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored script without its body: what lists show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub script_type: ScriptType,
    #[serde(default)]
    pub description: String,
    pub timeout_secs: u32,
    /// Of the body, in bytes.
    pub size: u64,
    /// Of the body; results say which version ran.
    pub sha256: String,
    pub created_at: Millis,
}

/// A stored script with its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    #[serde(flatten)]
    pub info: ScriptInfo,
    pub body: String,
}

/// Body of `POST /api/v1/scripts`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewScript {
    pub name: String,
    #[serde(rename = "type")]
    pub script_type: ScriptType,
    #[serde(default)]
    pub description: String,
    /// [default: 600]
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// The script itself, starting with `#!`.
    pub body: String,
}

impl Script {
    /// Checks a new script: a plain name, a bounded timeout and a text body
    /// the kernel can execute (a `#!` line, no NUL, no DOS line ending on
    /// the `#!` line, which would make the interpreter's name end in `\r`).
    pub fn new(req: NewScript, now: Millis) -> Result<Script, ModelError> {
        let name = Name::parse("name", &req.name)?;
        let timeout_secs = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
            return Err(ModelError::field(
                "timeout_secs",
                timeout_secs.to_string(),
                format!("expected 1 to {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        if req.description.len() > MAX_DESCRIPTION_BYTES || req.description.contains('\0') {
            return Err(ModelError::field(
                "description",
                req.description.chars().take(40).collect::<String>(),
                format!("expected text of at most {MAX_DESCRIPTION_BYTES} bytes"),
            ));
        }
        let body = req.body;
        let preview: String = body.chars().take(40).collect();
        let bad = |reason: String| ModelError::field("body", preview.clone(), reason);
        if body.len() > MAX_SCRIPT_BYTES {
            return Err(bad(format!(
                "script {name} is {} bytes, over the limit of {MAX_SCRIPT_BYTES}",
                body.len()
            )));
        }
        if !body.starts_with("#!") {
            return Err(bad(format!(
                "script {name} must start with a #! line naming its interpreter, e.g. #!/bin/sh"
            )));
        }
        if body.contains('\0') {
            return Err(bad(format!(
                "script {name} holds a NUL byte; scripts are text"
            )));
        }
        // `lines()` would drop the `\r` this looks for.
        if body.split('\n').next().is_some_and(|l| l.ends_with('\r')) {
            return Err(bad(format!(
                "the #! line of script {name} ends in a carriage return (DOS line endings)"
            )));
        }
        Ok(Script {
            info: ScriptInfo {
                name: name.to_string(),
                script_type: req.script_type,
                description: req.description,
                timeout_secs,
                size: body.len() as u64,
                sha256: hex(&Sha256::digest(body.as_bytes())),
                created_at: now,
            },
            body,
        })
    }

    /// The interpreter the `#!` line names, e.g. `/bin/sh`.
    pub fn interpreter(&self) -> &str {
        interpreter(&self.body)
    }
}

/// The interpreter a script's `#!` line names (empty if none).
pub fn interpreter(body: &str) -> &str {
    body.strip_prefix("#!")
        .and_then(|rest| rest.lines().next())
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The scripts a commissioning or testing task runs, chosen when it
/// starts and kept on the machine, so that a restarted region (or another
/// region process) still knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptTask {
    #[serde(rename = "type")]
    pub script_type: ScriptType,
    /// In the order they run.
    pub scripts: Vec<String>,
    /// Identifies the task: each result names the task it belongs to.
    pub started_at: Millis,
}

/// The scripts of `script_type` a task runs: all of them by name, or the
/// `requested` ones in the order given (repeats dropped). Every requested
/// name must be a script of that type. A test with nothing to run is
/// refused, since booting a machine to test nothing proves nothing.
pub fn select(
    available: &[ScriptInfo],
    script_type: ScriptType,
    requested: Option<&[String]>,
) -> Result<Vec<String>, ModelError> {
    let chosen: Vec<String> = match requested {
        None => {
            let mut all: Vec<String> = available
                .iter()
                .filter(|s| s.script_type == script_type)
                .map(|s| s.name.clone())
                .collect();
            all.sort();
            all
        }
        Some(names) => {
            let mut chosen: Vec<String> = Vec::new();
            for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                let s = available.iter().find(|s| s.name == n).ok_or_else(|| {
                    ModelError::field(
                        "scripts",
                        n,
                        "no script of that name; `kumo scripts list` shows them",
                    )
                })?;
                if s.script_type != script_type {
                    return Err(ModelError::field(
                        "scripts",
                        n,
                        format!("it is a {} script, not a {script_type} one", s.script_type),
                    ));
                }
                if !chosen.iter().any(|c| c == n) {
                    chosen.push(n.to_owned());
                }
            }
            chosen
        }
    };
    if chosen.is_empty() && script_type == ScriptType::Testing {
        return Err(ModelError::field(
            "scripts",
            "",
            "no testing scripts to run; add one with `kumo scripts add FILE --type testing`",
        ));
    }
    Ok(chosen)
}

/// How one run of a script ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptOutcome {
    /// Exit status 0.
    Passed,
    /// Any other exit status, a signal, or it could not be started.
    Failed,
    /// Still running at its timeout, and killed.
    TimedOut,
}

impl ScriptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptOutcome::Passed => "passed",
            ScriptOutcome::Failed => "failed",
            ScriptOutcome::TimedOut => "timedout",
        }
    }
}

/// What a machine uploads after running one script
/// (`POST /metadata/v1/script-results`). Times are the machine's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptResultReport {
    pub name: String,
    pub outcome: ScriptOutcome,
    /// `None` when the script did not exit by itself (signal, timeout) or
    /// could not be started.
    #[serde(default)]
    pub exit_status: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stderr_truncated: bool,
    pub started_at: Millis,
    pub ended_at: Millis,
}

/// The latest run of one script on one machine, without its output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptResult {
    pub name: String,
    #[serde(rename = "type")]
    pub script_type: ScriptType,
    /// The `started_at` of the task the run belonged to.
    pub task_started_at: Millis,
    /// Of the script body that ran.
    pub script_sha256: String,
    pub outcome: ScriptOutcome,
    #[serde(default)]
    pub exit_status: Option<i32>,
    pub started_at: Millis,
    pub ended_at: Millis,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// When the region received it (region clock).
    pub recorded_at: Millis,
}

impl ScriptResult {
    pub fn duration_ms(&self) -> Millis {
        (self.ended_at - self.started_at).max(0)
    }

    /// The machine event recording this run, one line:
    /// `testing script disk-smart failed: exit status 3`.
    pub fn event_message(&self) -> String {
        let what = format!("{} script {}", self.script_type, self.name);
        let secs = self.duration_ms() as f64 / 1000.0;
        match (self.outcome, self.exit_status) {
            (ScriptOutcome::Passed, _) => format!("{what} passed in {secs:.1} s"),
            (ScriptOutcome::TimedOut, _) => format!("{what} timed out after {secs:.1} s"),
            (ScriptOutcome::Failed, Some(code)) => format!("{what} failed: exit status {code}"),
            (ScriptOutcome::Failed, None) => {
                format!("{what} failed without an exit status (see its stderr)")
            }
        }
    }
}

/// A run with what it printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptResultOutput {
    #[serde(flatten)]
    pub result: ScriptResult,
    pub stdout: String,
    pub stderr: String,
}

impl ScriptResultOutput {
    /// Checks a machine's report against its task and makes it a stored
    /// result: the script must be one the task runs, the outcome must agree
    /// with the exit status, and the output is cut to its bound (a machine
    /// may send more) with NUL characters replaced, which PostgreSQL text
    /// cannot hold.
    pub fn from_report(
        report: ScriptResultReport,
        task: &ScriptTask,
        script_sha256: &str,
        now: Millis,
    ) -> Result<ScriptResultOutput, ModelError> {
        if !task.scripts.contains(&report.name) {
            return Err(ModelError::field(
                "name",
                report.name,
                format!(
                    "not a script of this {} task (it runs: {})",
                    task.script_type,
                    if task.scripts.is_empty() {
                        "none".to_owned()
                    } else {
                        task.scripts.join(", ")
                    }
                ),
            ));
        }
        if report.ended_at < report.started_at {
            return Err(ModelError::field(
                "ended_at",
                report.ended_at.to_string(),
                format!("before started_at {}", report.started_at),
            ));
        }
        if report.outcome == ScriptOutcome::Passed && report.exit_status != Some(0) {
            return Err(ModelError::field(
                "outcome",
                "passed",
                format!(
                    "a passed script exits with status 0, not {:?}",
                    report.exit_status
                ),
            ));
        }
        let (stdout, cut_out) = clean_output(report.stdout);
        let (stderr, cut_err) = clean_output(report.stderr);
        Ok(ScriptResultOutput {
            result: ScriptResult {
                name: report.name,
                script_type: task.script_type,
                task_started_at: task.started_at,
                script_sha256: script_sha256.to_owned(),
                outcome: report.outcome,
                exit_status: report.exit_status,
                started_at: report.started_at,
                ended_at: report.ended_at,
                stdout_truncated: report.stdout_truncated || cut_out,
                stderr_truncated: report.stderr_truncated || cut_err,
                recorded_at: now,
            },
            stdout,
            stderr,
        })
    }
}

/// Output as text: invalid UTF-8 replaced, NULs replaced, cut at
/// [`MAX_OUTPUT_BYTES`] on a character boundary. Returns whether it was cut.
pub fn clean_output(s: String) -> (String, bool) {
    let mut s = if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    };
    let cut = s.len() > MAX_OUTPUT_BYTES;
    if cut {
        let mut at = MAX_OUTPUT_BYTES;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    (s, cut)
}

/// Captured bytes as text, for the agent: [`clean_output`] after a lossy
/// UTF-8 decoding.
pub fn output_text(bytes: &[u8]) -> (String, bool) {
    clean_output(String::from_utf8_lossy(bytes).into_owned())
}

/// Why a task's scripts failed, or `None` when every one it runs passed.
/// `runs` are (name, outcome, exit status) of this task's runs; a script
/// with no run counts as failed. The message names each failed script.
pub fn failure_summary(
    task: &ScriptTask,
    runs: &[(&str, ScriptOutcome, Option<i32>)],
) -> Option<String> {
    let failed: Vec<String> = task
        .scripts
        .iter()
        .filter_map(|name| {
            let why = match runs.iter().find(|r| r.0 == name) {
                None => "no result".to_owned(),
                Some((_, ScriptOutcome::Passed, _)) => return None,
                Some((_, ScriptOutcome::TimedOut, _)) => "timed out".to_owned(),
                Some((_, ScriptOutcome::Failed, Some(code))) => format!("exit status {code}"),
                Some((_, ScriptOutcome::Failed, None)) => "did not exit".to_owned(),
            };
            Some(format!("{name} ({why})"))
        })
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} {} failed: {}",
            task.script_type,
            if failed.len() == 1 {
                "script"
            } else {
                "scripts"
            },
            failed.join(", ")
        )
    })
}

/// What the machine-facing API gives a commissioning or testing machine:
/// the scripts of its task, in order (`GET /metadata/v1/scripts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskScripts {
    pub system_id: String,
    pub hostname: String,
    #[serde(rename = "type")]
    pub script_type: ScriptType,
    pub scripts: Vec<Script>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, body: &str) -> NewScript {
        NewScript {
            name: name.into(),
            script_type: ScriptType::Testing,
            description: String::new(),
            timeout_secs: None,
            body: body.into(),
        }
    }

    fn info(name: &str, t: ScriptType) -> ScriptInfo {
        Script::new(
            NewScript {
                script_type: t,
                ..new(name, "#!/bin/sh\ntrue\n")
            },
            0,
        )
        .unwrap()
        .info
    }

    #[test]
    fn a_script_is_checked_and_summarised() {
        let s = Script::new(new("cpu-count", "#!/bin/sh\nnproc\n"), 7).unwrap();
        assert_eq!(s.info.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(s.info.size, 16);
        assert_eq!(s.info.created_at, 7);
        assert_eq!(s.info.sha256.len(), 64);
        assert_eq!(s.interpreter(), "/bin/sh");
        assert_eq!(interpreter("#! /usr/bin/env python3\n"), "/usr/bin/env");
        assert_eq!(interpreter("echo hi"), "");
    }

    #[test]
    fn bad_scripts_name_the_field_and_say_why() {
        let big = format!("#!/bin/sh\n{}", "#".repeat(MAX_SCRIPT_BYTES));
        for (req, field, why) in [
            (new("bad name", "#!/bin/sh\n"), "name", "letters"),
            (new("x.sh", "#!/bin/sh\n"), "name", "letters"),
            (new("x", "echo hi\n"), "body", "#! line"),
            (new("x", ""), "body", "#! line"),
            (new("x", &big), "body", "over the limit"),
            (new("x", "#!/bin/sh\r\necho\r\n"), "body", "carriage return"),
            (new("x", "#!/bin/sh\n\0"), "body", "NUL"),
            (
                NewScript {
                    timeout_secs: Some(0),
                    ..new("x", "#!/bin/sh\n")
                },
                "timeout_secs",
                "1 to 86400",
            ),
            (
                NewScript {
                    timeout_secs: Some(MAX_TIMEOUT_SECS + 1),
                    ..new("x", "#!/bin/sh\n")
                },
                "timeout_secs",
                "1 to 86400",
            ),
        ] {
            match Script::new(req, 0).unwrap_err() {
                ModelError::InvalidField {
                    field: f, reason, ..
                } => {
                    assert_eq!(f, field, "{reason}");
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn selection_takes_all_of_a_type_or_the_named_ones() {
        let all = [
            info("zz-last", ScriptType::Commissioning),
            info("lshw", ScriptType::Commissioning),
            info("smart", ScriptType::Testing),
        ];
        assert_eq!(
            select(&all, ScriptType::Commissioning, None).unwrap(),
            ["lshw", "zz-last"]
        );
        let named = ["zz-last".to_owned(), "lshw".into(), "zz-last".into()];
        assert_eq!(
            select(&all, ScriptType::Commissioning, Some(&named)).unwrap(),
            ["zz-last", "lshw"],
            "in the order given, once each"
        );
        assert_eq!(
            select(&all, ScriptType::Commissioning, Some(&[])).unwrap(),
            Vec::<String>::new(),
            "commissioning may run the inventory alone"
        );
        let e = select(&all, ScriptType::Testing, Some(&["nope".to_owned()])).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let e = select(&all, ScriptType::Testing, Some(&["lshw".to_owned()])).unwrap_err();
        assert!(e.to_string().contains("commissioning script"), "{e}");
        let e = select(&all[..2], ScriptType::Testing, None).unwrap_err();
        assert!(e.to_string().contains("no testing scripts"), "{e}");
    }

    fn task() -> ScriptTask {
        ScriptTask {
            script_type: ScriptType::Testing,
            scripts: vec!["a".into(), "b".into()],
            started_at: 100,
        }
    }

    fn report(name: &str, outcome: ScriptOutcome, exit: Option<i32>) -> ScriptResultReport {
        ScriptResultReport {
            name: name.into(),
            outcome,
            exit_status: exit,
            stdout: "out".into(),
            stdout_truncated: false,
            stderr: String::new(),
            stderr_truncated: false,
            started_at: 1_000,
            ended_at: 2_250,
        }
    }

    #[test]
    fn a_report_becomes_a_result_of_its_task_with_one_event_line() {
        let r = ScriptResultOutput::from_report(
            report("a", ScriptOutcome::Passed, Some(0)),
            &task(),
            "abc",
            9,
        )
        .unwrap();
        assert_eq!(r.result.task_started_at, 100);
        assert_eq!(r.result.recorded_at, 9);
        assert_eq!(r.stdout, "out");
        assert_eq!(r.result.event_message(), "testing script a passed in 1.2 s");
        let failed = ScriptResultOutput::from_report(
            report("b", ScriptOutcome::Failed, Some(3)),
            &task(),
            "abc",
            9,
        )
        .unwrap();
        assert_eq!(
            failed.result.event_message(),
            "testing script b failed: exit status 3"
        );
        let slow = ScriptResultOutput::from_report(
            report("b", ScriptOutcome::TimedOut, None),
            &task(),
            "abc",
            9,
        )
        .unwrap();
        assert_eq!(
            slow.result.event_message(),
            "testing script b timed out after 1.2 s"
        );
    }

    #[test]
    fn reports_that_do_not_fit_the_task_are_refused() {
        let t = task();
        let other =
            ScriptResultOutput::from_report(report("c", ScriptOutcome::Passed, Some(0)), &t, "", 0);
        assert!(other.unwrap_err().to_string().contains("runs: a, b"));
        let liar =
            ScriptResultOutput::from_report(report("a", ScriptOutcome::Passed, Some(1)), &t, "", 0);
        assert!(liar.unwrap_err().to_string().contains("status 0"));
        let backwards = ScriptResultReport {
            ended_at: 0,
            ..report("a", ScriptOutcome::Failed, Some(1))
        };
        assert!(ScriptResultOutput::from_report(backwards, &t, "", 0).is_err());
    }

    #[test]
    fn output_is_cut_at_its_bound_on_a_character_boundary() {
        let (s, cut) = clean_output("é".repeat(MAX_OUTPUT_BYTES));
        assert!(cut);
        assert!(s.len() <= MAX_OUTPUT_BYTES && s.len() > MAX_OUTPUT_BYTES - 2);
        let (s, cut) = clean_output("a\0b".into());
        assert_eq!((s.as_str(), cut), ("a\u{fffd}b", false));
        let (s, cut) = output_text(b"ok \xff");
        assert_eq!((s.as_str(), cut), ("ok \u{fffd}", false));
        let r = ScriptResultOutput::from_report(
            ScriptResultReport {
                stdout: "x".repeat(MAX_OUTPUT_BYTES + 1),
                ..report("a", ScriptOutcome::Passed, Some(0))
            },
            &task(),
            "",
            0,
        )
        .unwrap();
        assert!(r.result.stdout_truncated && !r.result.stderr_truncated);
    }

    #[test]
    fn a_task_fails_naming_each_failed_or_missing_script() {
        let t = task();
        assert_eq!(
            failure_summary(
                &t,
                &[
                    ("a", ScriptOutcome::Passed, Some(0)),
                    ("b", ScriptOutcome::Passed, Some(0))
                ]
            ),
            None
        );
        assert_eq!(
            failure_summary(&t, &[("a", ScriptOutcome::Failed, Some(3))]).unwrap(),
            "testing scripts failed: a (exit status 3), b (no result)"
        );
        assert_eq!(
            failure_summary(
                &t,
                &[
                    ("a", ScriptOutcome::Passed, Some(0)),
                    ("b", ScriptOutcome::TimedOut, None)
                ]
            )
            .unwrap(),
            "testing script failed: b (timed out)"
        );
        let none = ScriptTask {
            scripts: vec![],
            ..t
        };
        assert_eq!(failure_summary(&none, &[]), None);
    }

    #[test]
    fn wire_names_are_stable() {
        assert_eq!(
            serde_json::to_value(ScriptOutcome::TimedOut).unwrap(),
            "timedout"
        );
        let v = serde_json::to_value(info("a", ScriptType::Testing)).unwrap();
        assert_eq!(v["type"], "testing");
        let s = Script::new(new("a", "#!/bin/sh\n"), 0).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            (v["name"].as_str(), v["body"].as_str()),
            (Some("a"), Some("#!/bin/sh\n"))
        );
        assert_eq!(serde_json::from_value::<Script>(v).unwrap(), s);
    }
}
