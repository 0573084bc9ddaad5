//! Running a peer program (ipmitool, virsh) with a timeout.

use std::time::Duration;

use tokio::process::Command;

use crate::PowerError;

pub(crate) struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion; a missing program is fatal (naming the Debian
/// package), a timeout transient. The child is killed if we stop waiting.
pub(crate) async fn run(
    mut cmd: Command,
    target: &str,
    program: &str,
    package: &str,
    timeout: Duration,
) -> Result<Output, PowerError> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(PowerError::transient(
                target,
                format!("{program} timed out after {}s", timeout.as_secs()),
            ))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PowerError::fatal(
                target,
                format!("{program} not found (install the Debian package {package})"),
            ))
        }
        Ok(Err(e)) => {
            return Err(PowerError::transient(
                target,
                format!("cannot run {program}: {e}"),
            ))
        }
        Ok(Ok(out)) => out,
    };
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The last non-empty line of a program's error output, for error messages.
pub(crate) fn last_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no output")
}
