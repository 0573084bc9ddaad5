//! Minimal QEMU Machine Protocol client: newline-delimited JSON over a
//! stream. Greeting, `qmp_capabilities`, then `execute` commands; async
//! events interleaved with replies are skipped.

use std::io;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The answer to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Return(Value),
    Error { class: String, desc: String },
}

pub struct Qmp<S> {
    stream: BufReader<S>,
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Qmp<S> {
    /// Reads the greeting and leaves capabilities negotiation mode.
    pub async fn handshake(stream: S) -> io::Result<Self> {
        let mut qmp = Qmp {
            stream: BufReader::new(stream),
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(bad_data(format!("expected a QMP greeting, got {greeting}")));
        }
        match qmp.execute("qmp_capabilities", None).await? {
            Reply::Return(_) => Ok(qmp),
            Reply::Error { desc, .. } => Err(bad_data(format!("qmp_capabilities: {desc}"))),
        }
    }

    /// Sends one command and waits for its reply.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> io::Result<Reply> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.flush().await?;
        loop {
            let mut m = self.read_message().await?;
            if let Some(ret) = m.get_mut("return") {
                return Ok(Reply::Return(ret.take()));
            }
            if let Some(err) = m.get("error") {
                let s = |k: &str| err[k].as_str().unwrap_or_default().to_owned();
                return Ok(Reply::Error {
                    class: s("class"),
                    desc: s("desc"),
                });
            }
            // {"event": ...} lines arrive whenever QEMU likes; not our reply.
        }
    }

    async fn read_message(&mut self) -> io::Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if !line.trim().is_empty() {
                break;
            }
        }
        serde_json::from_str(&line).map_err(|e| bad_data(format!("bad qmp message: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;

    /// A scripted peer: sends the greeting, then for each expected command
    /// checks the request line and writes the canned answer lines.
    async fn peer(stream: UnixStream, script: Vec<(&'static str, Vec<&'static str>)>) {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n",
        )
        .await
        .unwrap();
        for (expect, answers) in script {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let got: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(got, serde_json::from_str::<Value>(expect).unwrap());
            assert!(line.ends_with('\n'), "requests are newline-terminated");
            for a in answers {
                w.write_all(a.as_bytes()).await.unwrap();
                w.write_all(b"\r\n").await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn handshake_execute_and_skip_events() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(peer(
            b,
            vec![
                (
                    r#"{"execute":"qmp_capabilities"}"#,
                    vec![r#"{"return": {}}"#],
                ),
                (
                    r#"{"execute":"query-status"}"#,
                    vec![
                        r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#,
                        r#"{"return": {"status": "running", "running": true}}"#,
                    ],
                ),
                (
                    r#"{"execute":"human-monitor-command","arguments":{"command-line":"x"}}"#,
                    vec![r#"{"error": {"class": "GenericError", "desc": "nope"}}"#],
                ),
            ],
        ));
        let mut q = Qmp::handshake(a).await.unwrap();
        let r = q.execute("query-status", None).await.unwrap();
        assert_eq!(
            r,
            Reply::Return(json!({"status": "running", "running": true}))
        );
        let r = q
            .execute("human-monitor-command", Some(json!({"command-line": "x"})))
            .await
            .unwrap();
        assert_eq!(
            r,
            Reply::Error {
                class: "GenericError".into(),
                desc: "nope".into()
            }
        );
        server.await.unwrap();
        // The peer hung up: the next command sees EOF, not a hang.
        let err = q.execute("query-status", None).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn rejects_non_qmp_greeting() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"{\"hello\": 1}\n").await.unwrap();
        let err = Qmp::handshake(a).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
