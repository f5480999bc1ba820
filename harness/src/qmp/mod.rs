//! A small async QMP client: typed commands, events decoded leniently (an
//! event we do not model becomes `QmpEvent::Other`, never an error), every
//! message logged to a file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Mutex as AsyncMutex, Notify};

use crate::timeouts::Timeout;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: connection closed")]
    Closed,
    #[error("QMP: no reply to {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("QMP: {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: unexpected reply to {0}: {1}")]
    Decode(String, String),
    #[error("QMP: no {0} event within {1:?}")]
    EventTimeout(String, Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub enum QmpEvent {
    Shutdown { guest: bool, reason: String },
    BalloonChange { actual: u64 },
    Stop,
    Resume,
    Other { name: String, data: Value },
}

impl QmpEvent {
    fn decode(v: &Value) -> Option<QmpEvent> {
        let name = v.get("event")?.as_str()?.to_string();
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        Some(match name.as_str() {
            "SHUTDOWN" => QmpEvent::Shutdown {
                guest: data.get("guest").and_then(Value::as_bool).unwrap_or(false),
                reason: data
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string(),
            },
            "BALLOON_CHANGE" => match data.get("actual").and_then(Value::as_u64) {
                Some(actual) => QmpEvent::BalloonChange { actual },
                None => QmpEvent::Other { name, data },
            },
            "STOP" => QmpEvent::Stop,
            "RESUME" => QmpEvent::Resume,
            _ => QmpEvent::Other { name, data },
        })
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

struct Shared {
    events: Mutex<Vec<QmpEvent>>,
    notify: Notify,
    closed: Mutex<bool>,
    log: Mutex<std::fs::File>,
}

impl Shared {
    fn log(&self, dir: &str, line: &str) {
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "{dir} {line}");
        }
    }
}

pub struct Qmp {
    writer: AsyncMutex<OwnedWriteHalf>,
    pending: Pending,
    shared: Arc<Shared>,
    next_id: Mutex<u64>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves negotiation mode.
    pub async fn connect(socket: &Path, log: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(socket).await?;
        let (rd, wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        let logf = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        let shared = Arc::new(Shared {
            events: Mutex::new(Vec::new()),
            notify: Notify::new(),
            closed: Mutex::new(false),
            log: Mutex::new(logf),
        });
        let greeting = tokio::time::timeout(Timeout::QmpCommand.get(), lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout("greeting".into(), Timeout::QmpCommand.get()))??
            .ok_or(QmpError::Closed)?;
        shared.log("<-", &greeting);
        let pending: Pending = Arc::default();
        let (p2, s2) = (pending.clone(), shared.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                s2.log("<-", &line);
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue; // garbage never kills the connection
                };
                if let Some(ev) = QmpEvent::decode(&v) {
                    s2.events.lock().unwrap().push(ev);
                    s2.notify.notify_waiters();
                } else if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = p2.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                }
            }
            *s2.closed.lock().unwrap() = true;
            s2.notify.notify_waiters();
            p2.lock().unwrap().clear();
        });
        let qmp = Qmp {
            writer: AsyncMutex::new(wr),
            pending,
            shared,
            next_id: Mutex::new(1),
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command; returns its `return` value.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            *n
        };
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let line = msg.to_string();
        self.shared.log("->", &line);
        {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes()).await?;
            w.write_all(b"\n").await?;
        }
        let t = Timeout::QmpCommand.get();
        let reply = tokio::time::timeout(t, rx)
            .await
            .map_err(|_| QmpError::Timeout(command.into(), t))?
            .map_err(|_| QmpError::Closed)?;
        if let Some(e) = reply.get("error") {
            return Err(QmpError::Command {
                command: command.into(),
                class: e["class"].as_str().unwrap_or("?").into(),
                desc: e["desc"].as_str().unwrap_or("?").into(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// Sets the guest's target memory size in bytes.
    pub async fn balloon(&self, bytes: u64) -> Result<(), QmpError> {
        self.execute("balloon", Some(json!({ "value": bytes })))
            .await
            .map(drop)
    }

    /// The guest's current memory size (bytes) as the balloon reports it.
    pub async fn query_balloon(&self) -> Result<u64, QmpError> {
        let v = self.execute("query-balloon", None).await?;
        v.get("actual")
            .and_then(Value::as_u64)
            .ok_or_else(|| QmpError::Decode("query-balloon".into(), v.to_string()))
    }

    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Asks QEMU to exit; the connection closing before the reply is fine.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every event seen so far.
    pub fn events(&self) -> Vec<QmpEvent> {
        self.shared.events.lock().unwrap().clone()
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.closed.lock().unwrap()
    }

    /// Waits for an event (seen at index `from` or later) matching `pred`.
    pub async fn wait_event<T>(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&QmpEvent) -> Option<T>,
    ) -> Result<T, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let evs = self.shared.events.lock().unwrap();
                if let Some(t) = evs.iter().skip(from).find_map(&mut pred) {
                    return Ok(t);
                }
            }
            if self.is_closed() {
                return Err(QmpError::Closed);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(QmpError::EventTimeout(what.into(), timeout));
            }
        }
    }

    pub fn event_count(&self) -> usize {
        self.shared.events.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_odd_events_decode_leniently() {
        let e = QmpEvent::decode(&json!({"event": "NEW_THING_2030", "data": {"x": 1}})).unwrap();
        assert!(matches!(e, QmpEvent::Other { ref name, .. } if name == "NEW_THING_2030"));
        let e = QmpEvent::decode(
            &json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}),
        )
        .unwrap();
        assert_eq!(
            e,
            QmpEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        // A BALLOON_CHANGE without `actual` is kept, not fatal.
        let e = QmpEvent::decode(&json!({"event": "BALLOON_CHANGE"})).unwrap();
        assert!(matches!(e, QmpEvent::Other { .. }));
        assert!(QmpEvent::decode(&json!({"return": {}})).is_none());
    }

    /// A fake QMP server: greeting, replies by id, an unknown event and a
    /// garbage line in between; the client must survive both.
    #[tokio::test]
    async fn client_survives_unknown_events_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = s.into_split();
            let mut lines = BufReader::new(rd).lines();
            wr.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).unwrap();
                let id = v["id"].clone();
                wr.write_all(
                    b"{\"event\": \"SOMETHING_NEW\", \"data\": {\"a\": [1]}}\nnot json at all\n",
                )
                .await
                .unwrap();
                let reply = match v["execute"].as_str().unwrap() {
                    "query-balloon" => json!({"return": {"actual": 1073741824u64}, "id": id}),
                    "balloon" => {
                        json!({"error": {"class": "DeviceNotActive", "desc": "No balloon device has been activated"}, "id": id})
                    }
                    _ => json!({"return": {}, "id": id}),
                };
                wr.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                wr.write_all(b"{\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": 5}}\n")
                    .await
                    .unwrap();
            }
        });
        let q = Qmp::connect(&sock, &dir.path().join("qmp.log"))
            .await
            .unwrap();
        assert_eq!(q.query_balloon().await.unwrap(), 1 << 30);
        let e = q.balloon(1).await.unwrap_err();
        assert!(e.to_string().contains("DeviceNotActive"), "{e}");
        let a = q
            .wait_event("BALLOON_CHANGE", 0, Duration::from_secs(5), |e| match e {
                QmpEvent::BalloonChange { actual } => Some(*actual),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(a, 5);
        assert!(q
            .events()
            .iter()
            .any(|e| matches!(e, QmpEvent::Other { name, .. } if name == "SOMETHING_NEW")));
        let log = std::fs::read_to_string(dir.path().join("qmp.log")).unwrap();
        assert!(
            log.contains("-> {\"execute\":\"qmp_capabilities\""),
            "{log}"
        );
    }
}
