//! A shared, timestamped record of everything the guest asked of the host,
//! that tests can inspect and await on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One port the guest reported as listening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivePort {
    /// TCP port in the guest.
    pub port: u16,
    /// Name of the owning command, as the guest reported it.
    pub comm: String,
}

/// Which server-streaming queue an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// `OpenForwardingRequestQueue`
    Forwarding,
    /// `OpenShutdownRequestQueue`
    Shutdown,
    /// `OpenStorageBalloonRequestQueue`
    StorageBalloon,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `ReportVmActivePorts` with the full snapshot the guest sent.
    ActivePorts(Vec<ActivePort>),
    /// A queue was opened; `cid` is set for the forwarding queue.
    QueueOpened { queue: Queue, cid: Option<i32> },
    /// The guest's side of a queue went away (agent exited or disconnected).
    QueueClosed { queue: Queue },
    /// The host sent an item on a queue.
    ItemSent { queue: Queue, detail: String },
    /// `ReportVmIpAddr` (Android 15 QPR2).
    VmIpAddr(String),
    /// A call was refused; `method` names the RPC.
    Refused {
        method: &'static str,
        reason: String,
    },
}

/// An event with its time and the caller's address.
#[derive(Clone, Debug)]
pub struct Record {
    /// When the host saw it.
    pub at: Instant,
    /// The gRPC peer, when there was one.
    pub peer: Option<SocketAddr>,
    /// What happened.
    pub event: Event,
}

/// Position in the log, to wait only for what comes after an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(usize);

/// The wait ended before a matching event arrived.
#[derive(Debug, thiserror::Error)]
#[error("no matching event within {timeout:?} (log holds {seen} events; last: {last:?})")]
pub struct WaitTimeout {
    /// How long was waited.
    pub timeout: Duration,
    /// How many events the log held then.
    pub seen: usize,
    /// The newest event, to help read a failure.
    pub last: Option<Event>,
}

/// Cloneable handle on the shared log.
#[derive(Clone, Debug)]
pub struct EventLog {
    records: Arc<Mutex<Vec<Record>>>,
    // Carries the record count; receivers wake on every push.
    count: Arc<watch::Sender<usize>>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        Self {
            records: Arc::new(Mutex::new(Vec::new())),
            count: Arc::new(watch::channel(0).0),
        }
    }

    /// Appends an event stamped now.
    pub fn push(&self, peer: Option<SocketAddr>, event: Event) {
        let mut records = self.lock();
        records.push(Record {
            at: Instant::now(),
            peer,
            event,
        });
        self.count.send_replace(records.len());
    }

    /// All records so far.
    pub fn snapshot(&self) -> Vec<Record> {
        self.lock().clone()
    }

    /// The current end of the log.
    pub fn cursor(&self) -> Cursor {
        Cursor(self.lock().len())
    }

    /// The ports of the newest `ReportVmActivePorts`, if any arrived.
    pub fn latest_ports(&self) -> Option<Vec<ActivePort>> {
        self.lock().iter().rev().find_map(|r| match &r.event {
            Event::ActivePorts(p) => Some(p.clone()),
            _ => None,
        })
    }

    /// Waits for the first record at or after `from` that matches.
    pub async fn wait_for(
        &self,
        from: Cursor,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Record, WaitTimeout> {
        let mut rx = self.count.subscribe();
        let mut next = from.0;
        let search = async {
            loop {
                {
                    let records = self.lock();
                    if let Some(found) = records[next.min(records.len())..]
                        .iter()
                        .find(|r| pred(&r.event))
                    {
                        return found.clone();
                    }
                    next = records.len();
                    rx.mark_unchanged();
                }
                // The sender lives as long as `self`: changed() cannot fail here.
                let _ = rx.changed().await;
            }
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(record) => Ok(record),
            Err(_) => {
                let records = self.lock();
                Err(WaitTimeout {
                    timeout,
                    seen: records.len(),
                    last: records.last().map(|r| r.event.clone()),
                })
            }
        }
    }

    /// Waits until a `ReportVmActivePorts` at or after `from` satisfies `pred`
    /// (e.g. "contains 8080", "no longer contains 8080").
    pub async fn wait_for_ports(
        &self,
        from: Cursor,
        timeout: Duration,
        mut pred: impl FnMut(&[ActivePort]) -> bool,
    ) -> Result<Vec<ActivePort>, WaitTimeout> {
        let record = self
            .wait_for(
                from,
                timeout,
                |e| matches!(e, Event::ActivePorts(p) if pred(p)),
            )
            .await?;
        match record.event {
            Event::ActivePorts(p) => Ok(p),
            _ => unreachable!("predicate only matches ActivePorts"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        // A panic while holding the lock leaves a consistent Vec: keep going.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_future_event_and_times_out_otherwise() {
        let log = EventLog::new();
        log.push(None, Event::VmIpAddr("10.0.2.15".into()));
        let from = log.cursor();
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move {
                log.wait_for_ports(from, Duration::from_secs(2), |p| {
                    p.iter().any(|a| a.port == 8080)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.push(None, Event::ActivePorts(vec![]));
        log.push(
            None,
            Event::ActivePorts(vec![ActivePort {
                port: 8080,
                comm: "python3".into(),
            }]),
        );
        let ports = waiter.await.unwrap().unwrap();
        assert_eq!(ports[0].port, 8080);
        assert_eq!(log.latest_ports().unwrap()[0].comm, "python3");

        // An event before the cursor does not count.
        let err = log
            .wait_for(log.cursor(), Duration::from_millis(50), |e| {
                matches!(e, Event::VmIpAddr(_))
            })
            .await
            .unwrap_err();
        assert_eq!(err.seen, 3);
    }
}
