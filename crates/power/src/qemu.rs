//! Local QEMU machines controlled over their QMP unix socket (lab use).

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::time::{sleep, timeout, Instant};

use crate::params::Params;
use crate::qmp::{Qmp, Reply};
use crate::{PowerDriver, PowerError, PowerState};

const QMP_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Power on resumes a paused/prelaunch (`-S`) machine with `cont`, or, when
/// QMP does not answer and `command` is set, starts `command` with
/// `-daemonize` appended (unless present) so QEMU detaches from us and
/// returns only once its QMP socket is listening. Power off is QMP `quit`:
/// the process exits, like pulling the plug. A socket that is absent or
/// refuses connections means off.
#[derive(Debug, Clone)]
pub struct QemuDriver {
    socket: PathBuf,
    command: Option<Vec<String>>,
}

impl QemuDriver {
    pub(crate) fn from_params(p: &Params) -> Result<Self, PowerError> {
        Ok(QemuDriver {
            socket: p.required("qmp_socket")?.into(),
            command: p.argv("command"),
        })
    }

    fn target(&self) -> String {
        format!("qemu {}", self.socket.display())
    }

    fn transient(&self, reason: impl Into<String>) -> PowerError {
        PowerError::transient(self.target(), reason)
    }

    /// `None` when nothing listens on the socket, i.e. the machine is off.
    async fn connect(&self) -> Result<Option<Qmp<UnixStream>>, PowerError> {
        let stream = match UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(self.transient(format!("cannot connect to qmp: {e}"))),
        };
        match timeout(QMP_TIMEOUT, Qmp::handshake(stream)).await {
            Ok(Ok(q)) => Ok(Some(q)),
            Ok(Err(e)) => Err(self.transient(format!("qmp handshake failed: {e}"))),
            Err(_) => Err(self.transient("qmp handshake timed out")),
        }
    }

    async fn execute(
        &self,
        q: &mut Qmp<UnixStream>,
        cmd: &str,
    ) -> Result<serde_json::Value, PowerError> {
        match timeout(QMP_TIMEOUT, q.execute(cmd, None)).await {
            Ok(Ok(Reply::Return(v))) => Ok(v),
            Ok(Ok(Reply::Error { class, desc })) => Err(PowerError::fatal(
                self.target(),
                format!("qmp {cmd}: {class}: {desc}"),
            )),
            Ok(Err(e)) => Err(self.transient(format!("qmp {cmd}: {e}"))),
            Err(_) => Err(self.transient(format!("qmp {cmd} timed out"))),
        }
    }

    async fn status(&self, q: &mut Qmp<UnixStream>) -> Result<String, PowerError> {
        let v = self.execute(q, "query-status").await?;
        Ok(v["status"].as_str().unwrap_or_default().to_owned())
    }

    /// Brings a live QEMU to running.
    async fn resume(&self, q: &mut Qmp<UnixStream>) -> Result<(), PowerError> {
        match self.status(q).await?.as_str() {
            "running" => Ok(()),
            // Guest shut itself down under -no-shutdown: reset, then run.
            "shutdown" => {
                self.execute(q, "system_reset").await?;
                self.execute(q, "cont").await.map(drop)
            }
            _ => self.execute(q, "cont").await.map(drop),
        }
    }

    async fn start(&self, argv: &[String]) -> Result<(), PowerError> {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        if !argv.iter().any(|a| a == "-daemonize" || a == "--daemonize") {
            c.arg("-daemonize");
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::info!(target = %self.target(), program = %argv[0], "starting qemu");
        let child = c.spawn().map_err(|e| {
            PowerError::fatal(self.target(), format!("cannot run {}: {e}", argv[0]))
        })?;
        // With -daemonize the foreground process exits once QEMU is set up.
        let out = match timeout(START_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(self.transient(format!("waiting for qemu: {e}"))),
            Err(_) => return Err(self.transient("qemu did not finish starting")),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(PowerError::fatal(
                self.target(),
                format!(
                    "qemu failed to start ({}): {}",
                    out.status,
                    crate::cmd::last_line(&stderr)
                ),
            ));
        }
        let deadline = Instant::now() + QMP_TIMEOUT;
        loop {
            if let Some(mut q) = self.connect().await? {
                return self.resume(&mut q).await;
            }
            if Instant::now() > deadline {
                return Err(self.transient("qemu started but its qmp socket does not answer"));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }
}

fn parse_status(s: &str) -> PowerState {
    match s {
        "running" => PowerState::On,
        // Not executing guest code: -S before cont, paused, guest shut down.
        "prelaunch" | "paused" | "shutdown" => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

#[async_trait::async_trait]
impl PowerDriver for QemuDriver {
    fn power_type(&self) -> &'static str {
        "qemu"
    }

    fn confirms_state(&self) -> bool {
        true
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        if let Some(mut q) = self.connect().await? {
            return self.resume(&mut q).await;
        }
        match &self.command {
            Some(argv) => self.start(argv).await,
            None => Err(PowerError::fatal(
                self.target(),
                "qemu is not running and no command is set to start it",
            )),
        }
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        let Some(mut q) = self.connect().await? else {
            return Ok(());
        };
        // QEMU may close the socket before replying to quit; that is success.
        if let Ok(Ok(Reply::Error { class, desc })) =
            timeout(QMP_TIMEOUT, q.execute("quit", None)).await
        {
            return Err(PowerError::fatal(
                self.target(),
                format!("qmp quit: {class}: {desc}"),
            ));
        }
        drop(q);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            // Only a refused/absent socket means gone: while QEMU shuts down
            // it may still accept and then drop a connection.
            if let Ok(None) = self.connect().await {
                return Ok(());
            }
            sleep(Duration::from_millis(100)).await;
        }
        Err(self.transient("qemu still answers after quit"))
    }

    async fn power_query(&self) -> Result<PowerState, PowerError> {
        match self.connect().await? {
            None => Ok(PowerState::Off),
            Some(mut q) => Ok(parse_status(&self.status(&mut q).await?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        assert_eq!(parse_status("running"), PowerState::On);
        assert_eq!(parse_status("prelaunch"), PowerState::Off);
        assert_eq!(parse_status("inmigrate"), PowerState::Unknown);
    }

    #[tokio::test]
    async fn absent_socket_is_off() {
        let m = serde_json::json!({"qmp_socket": "/nonexistent/kumo-qmp.sock"});
        let d = QemuDriver::from_params(&Params(m.as_object().unwrap())).unwrap();
        assert_eq!(d.power_query().await.unwrap(), PowerState::Off);
        d.power_off().await.unwrap();
        let err = d.power_on().await.unwrap_err();
        assert!(matches!(err, PowerError::Fatal { .. }), "{err}");
    }
}
