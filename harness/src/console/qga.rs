//! The command channel into the guest: qemu-guest-agent over the
//! virtio-serial port `org.qemu.guest_agent.0` (not the kernel's console).
//! `guest-sync-delimited` first (its reply is preceded by 0xFF, which
//! flushes stale bytes), then `guest-exec` + `guest-exec-status`.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::timeouts::Timeout;

#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("guest agent I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("guest agent did not answer guest-sync within {0:?}")]
    NotReady(Duration),
    #[error("guest agent: no reply to {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("guest agent: {command}: {desc}")]
    Command { command: String, desc: String },
    #[error("guest agent: bad reply to {0}: {1}")]
    Decode(String, String),
    #[error("guest agent: connection closed")]
    Closed,
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// `None` when the process was killed by a signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    log: Option<std::fs::File>,
}

pub struct Qga {
    conn: Mutex<Conn>,
}

impl Conn {
    fn log(&mut self, dir: &str, line: &str) {
        use std::io::Write;
        if let Some(f) = &mut self.log {
            let _ = writeln!(f, "{dir} {}", line.trim_end());
        }
    }

    async fn send(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.log("->", &line);
        self.stream.write_all(line.as_bytes()).await
    }

    /// Next complete JSON object from the stream (after an optional 0xFF).
    async fn read_value(&mut self) -> Result<Value, QgaError> {
        loop {
            // Drop everything up to a sync delimiter, and leading whitespace.
            if let Some(p) = self.buf.iter().rposition(|&b| b == 0xFF) {
                self.buf.drain(..=p);
            }
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
            if let Some(s) = start {
                self.buf.drain(..s);
                let mut de = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match de.next() {
                    Some(Ok(v)) => {
                        let used = de.byte_offset();
                        self.buf.drain(..used);
                        // guest-exec output can be large; log its size only.
                        let text = v.to_string();
                        self.log("<-", &text[..text.len().min(400)]);
                        return Ok(v);
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(_)) => {
                        // Not JSON: skip a byte and resynchronise.
                        self.buf.drain(..1);
                        continue;
                    }
                    None => {}
                }
            } else {
                self.buf.clear();
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(QgaError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Qga {
    /// Connects and waits until the agent answers a sync (it may not be
    /// running yet: requests queue in the port until the guest opens it).
    pub async fn connect(
        socket: &Path,
        log: Option<&Path>,
        ready_within: Duration,
    ) -> Result<Qga, QgaError> {
        let stream = UnixStream::connect(socket).await?;
        let log = match log {
            Some(p) => Some(std::fs::File::options().create(true).append(true).open(p)?),
            None => None,
        };
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            next_id: 0x4156_4600,
            log,
        };
        let deadline = tokio::time::Instant::now() + ready_within;
        loop {
            conn.next_id += 1;
            let id = conn.next_id;
            conn.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))
                .await?;
            let attempt_end = (tokio::time::Instant::now() + Duration::from_secs(3)).min(deadline);
            loop {
                match tokio::time::timeout_at(attempt_end, conn.read_value()).await {
                    Ok(Ok(v)) if v.get("return").and_then(Value::as_u64) == Some(id) => {
                        return Ok(Qga {
                            conn: Mutex::new(conn),
                        })
                    }
                    Ok(Ok(_)) => continue, // a stale sync reply
                    Ok(Err(e)) => return Err(e),
                    Err(_) => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QgaError::NotReady(ready_within));
            }
        }
    }

    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QgaError> {
        let mut c = self.conn.lock().await;
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        c.send(&msg).await?;
        let t = Timeout::QmpCommand.get();
        let v = tokio::time::timeout(t, c.read_value())
            .await
            .map_err(|_| QgaError::Timeout(command.into(), t))??;
        if let Some(e) = v.get("error") {
            return Err(QgaError::Command {
                command: command.into(),
                desc: e["desc"].as_str().unwrap_or("?").into(),
            });
        }
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }

    pub async fn ping(&self) -> Result<(), QgaError> {
        self.execute("guest-ping", None).await.map(drop)
    }

    /// Starts `argv` in the guest and returns its pid without waiting: for
    /// a command that takes the agent down with it (a reboot).
    pub async fn spawn<S: AsRef<str>>(&self, argv: &[S]) -> Result<i64, QgaError> {
        self.start(argv, false).await
    }

    /// `guest-exec`: starts `argv`, its output kept for
    /// `guest-exec-status` when `capture`; returns its pid.
    async fn start<S: AsRef<str>>(&self, argv: &[S], capture: bool) -> Result<i64, QgaError> {
        let (path, args) = argv
            .split_first()
            .ok_or_else(|| QgaError::Decode("guest-exec".into(), "empty argv".into()))?;
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let r = self
            .execute(
                "guest-exec",
                Some(json!({"path": path.as_ref(), "arg": args, "capture-output": capture})),
            )
            .await?;
        r.get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| QgaError::Decode("guest-exec".into(), r.to_string()))
    }

    /// Runs `argv` in the guest and waits for it; output captured.
    pub async fn exec(&self, argv: &[String], timeout: Duration) -> Result<ExecOutput, QgaError> {
        let pid = self.start(argv, true).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let s = self
                .execute("guest-exec-status", Some(json!({ "pid": pid })))
                .await?;
            if s.get("exited").and_then(Value::as_bool) == Some(true) {
                let b64 = |k: &str| -> Result<Vec<u8>, QgaError> {
                    match s.get(k).and_then(Value::as_str) {
                        None => Ok(Vec::new()),
                        Some(d) => {
                            base64::engine::general_purpose::STANDARD
                                .decode(d)
                                .map_err(|e| {
                                    QgaError::Decode(
                                        format!("guest-exec-status {k}"),
                                        e.to_string(),
                                    )
                                })
                        }
                    }
                };
                return Ok(ExecOutput {
                    exit_code: s.get("exitcode").and_then(Value::as_i64).map(|c| c as i32),
                    signal: s.get("signal").and_then(Value::as_i64).map(|c| c as i32),
                    stdout: b64("out-data")?,
                    stderr: b64("err-data")?,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QgaError::Timeout(format!("guest-exec {argv:?}"), timeout));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// `sh -c script` in the guest.
    pub async fn sh(&self, script: &str) -> Result<ExecOutput, QgaError> {
        self.exec(
            &["/bin/sh".into(), "-c".into(), script.into()],
            Timeout::GuestExec.get(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A fake agent: ignores the first sync (as if not yet running), answers
    /// later ones with the 0xFF delimiter, runs one guest-exec.
    #[tokio::test]
    async fn sync_then_exec() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qga.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut lines = BufReader::new(rd).lines();
            let mut first = true;
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).unwrap();
                let reply = match v["execute"].as_str().unwrap() {
                    "guest-sync-delimited" if first => {
                        first = false;
                        continue;
                    }
                    "guest-sync-delimited" => {
                        wr.write_all(&[0xFF]).await.unwrap();
                        json!({"return": v["arguments"]["id"]})
                    }
                    "guest-ping" => json!({"return": {}}),
                    "guest-exec" => json!({"return": {"pid": 42}}),
                    "guest-exec-status" => json!({"return": {"exited": true, "exitcode": 3,
                        "out-data": "aGVsbG8K", "err-data": ""}}),
                    _ => json!({"error": {"class": "CommandNotFound", "desc": "nope"}}),
                };
                wr.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
        });
        let q = Qga::connect(&sock, None, Duration::from_secs(10))
            .await
            .unwrap();
        q.ping().await.unwrap();
        let out = q.sh("echo hello; exit 3").await.unwrap();
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout_str(), "hello\n");
        let e = q.execute("guest-bogus", None).await.unwrap_err();
        assert!(e.to_string().contains("nope"));
    }
}
