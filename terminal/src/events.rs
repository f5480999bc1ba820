//! A shared, timestamped record of everything the guest asked of the host,
//! that tests can inspect and await on.

use std::collections::VecDeque;
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
    /// AIDL mode: the guest's `registerGuestAgent` reached virtmgr (the
    /// app's `onGuestAgentRegistered`).
    GuestAgentRegistered,
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

/// Position in the log, to wait only for what comes after an action. It
/// counts every event ever pushed, kept or not; the default is the log's
/// start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(usize);

/// How many records the log keeps by default: the newest, the oldest go.
pub const EVENT_LOG_CAPACITY: usize = 10_000;
/// How many `Refused` records are kept apart from the ring (the first
/// ones), so a flood cannot hide a refused call.
pub const REFUSED_KEPT: usize = 64;

/// The wait ended before a matching event arrived.
#[derive(Debug, thiserror::Error)]
#[error("no matching event within {timeout:?} (log holds {seen} events, {dropped} of them dropped as the log is bounded; last: {last:?})")]
pub struct WaitTimeout {
    /// How long was waited.
    pub timeout: Duration,
    /// How many events the log had seen then (kept or dropped).
    pub seen: usize,
    /// How many of those were dropped (the oldest), so a wait from an
    /// older cursor may have missed a match among them.
    pub dropped: usize,
    /// The newest event, to help read a failure.
    pub last: Option<Event>,
}

/// The bounded store behind an [`EventLog`].
#[derive(Debug)]
struct Ring {
    records: VecDeque<Record>,
    capacity: usize,
    /// How many records were dropped: the cursor of `records[0]`.
    first: usize,
    /// The newest `ReportVmActivePorts`, even once its record is dropped.
    latest_ports: Option<Vec<ActivePort>>,
    /// The first [`REFUSED_KEPT`] `Refused` records, and how many in all.
    refused: Vec<Record>,
    refused_total: usize,
}

impl Ring {
    fn end(&self) -> usize {
        self.first + self.records.len()
    }
}

/// Cloneable handle on the shared log: a ring of the newest
/// [`EVENT_LOG_CAPACITY`] records (memory stays bounded however long the
/// guest talks), with cursors that count every event.
#[derive(Clone, Debug)]
pub struct EventLog {
    ring: Arc<Mutex<Ring>>,
    // Carries the cursor of the end; receivers wake on every push.
    count: Arc<watch::Sender<usize>>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    /// An empty log keeping [`EVENT_LOG_CAPACITY`] records.
    pub fn new() -> Self {
        Self::with_capacity(EVENT_LOG_CAPACITY)
    }

    /// An empty log keeping the newest `capacity` (at least 1) records.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            ring: Arc::new(Mutex::new(Ring {
                records: VecDeque::new(),
                capacity,
                first: 0,
                latest_ports: None,
                refused: Vec::new(),
                refused_total: 0,
            })),
            count: Arc::new(watch::channel(0).0),
        }
    }

    /// Appends an event stamped now, dropping the oldest when full.
    pub fn push(&self, peer: Option<SocketAddr>, event: Event) {
        let mut ring = self.lock();
        let record = Record {
            at: Instant::now(),
            peer,
            event,
        };
        match &record.event {
            Event::ActivePorts(p) => ring.latest_ports = Some(p.clone()),
            Event::Refused { .. } => {
                ring.refused_total += 1;
                if ring.refused.len() < REFUSED_KEPT {
                    ring.refused.push(record.clone());
                }
            }
            _ => {}
        }
        if ring.records.len() >= ring.capacity {
            ring.records.pop_front();
            ring.first += 1;
        }
        ring.records.push_back(record);
        self.count.send_replace(ring.end());
    }

    /// The records kept (the newest [`EVENT_LOG_CAPACITY`]).
    pub fn snapshot(&self) -> Vec<Record> {
        self.lock().records.iter().cloned().collect()
    }

    /// How many of the oldest records were dropped to bound the log.
    pub fn dropped(&self) -> usize {
        self.lock().first
    }

    /// The first [`REFUSED_KEPT`] `Refused` records (kept whatever the
    /// ring dropped) and how many calls were refused in all.
    pub fn refused(&self) -> (Vec<Record>, usize) {
        let ring = self.lock();
        (ring.refused.clone(), ring.refused_total)
    }

    /// The current end of the log.
    pub fn cursor(&self) -> Cursor {
        Cursor(self.lock().end())
    }

    /// The records kept from `from` on, and the cursor to read on from
    /// (a reader that fell behind by more than the capacity misses the
    /// dropped ones).
    pub fn since(&self, from: Cursor) -> (Vec<Record>, Cursor) {
        let ring = self.lock();
        let skip = from.0.saturating_sub(ring.first);
        let records = ring.records.iter().skip(skip).cloned().collect();
        (records, Cursor(ring.end()))
    }

    /// The ports of the newest `ReportVmActivePorts`, if any arrived.
    pub fn latest_ports(&self) -> Option<Vec<ActivePort>> {
        self.lock().latest_ports.clone()
    }

    /// Waits for the first record at or after `from` that matches. When
    /// records after `from` were dropped already (more than the capacity
    /// came since), the search starts at the oldest kept one: what it
    /// returns is still at or after `from`, but an earlier match may have
    /// been among the dropped ([`WaitTimeout::dropped`] says so).
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
                    let ring = self.lock();
                    let skip = next.saturating_sub(ring.first);
                    if let Some(found) = ring.records.iter().skip(skip).find(|r| pred(&r.event)) {
                        return found.clone();
                    }
                    next = ring.end();
                    rx.mark_unchanged();
                }
                // The sender lives as long as `self`: changed() cannot fail here.
                let _ = rx.changed().await;
            }
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(record) => Ok(record),
            Err(_) => {
                let ring = self.lock();
                Err(WaitTimeout {
                    timeout,
                    seen: ring.end(),
                    dropped: ring.first,
                    last: ring.records.back().map(|r| r.event.clone()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves a consistent ring: keep going.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
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

    /// 100k events: the log keeps the newest EVENT_LOG_CAPACITY, cursors
    /// keep counting every event, the latest ports survive, and waits
    /// from an old cursor or from now still work.
    #[tokio::test]
    async fn a_flood_of_events_stays_bounded_and_cursors_keep_working() {
        const CAP: usize = 10_000;
        let log = EventLog::new();
        let old = log.cursor();
        log.push(
            None,
            Event::ActivePorts(vec![ActivePort {
                port: 8080,
                comm: "python3".into(),
            }]),
        );
        log.push(
            None,
            Event::Refused {
                method: "ReportVmActivePorts",
                reason: "early".into(),
            },
        );
        for i in 0..100_000 {
            log.push(None, Event::VmIpAddr(format!("10.0.2.{}", i % 250)));
        }
        let kept = log.snapshot();
        assert!(kept.len() <= CAP, "{} records kept", kept.len());
        assert_eq!(
            kept.last().unwrap().event,
            Event::VmIpAddr("10.0.2.249".into())
        );
        assert_eq!(log.latest_ports().unwrap()[0].port, 8080);
        // A cursor counts every event ever pushed.
        let now = log.cursor();
        assert!(now > old);
        // From a cursor whose events were dropped: the kept ones count.
        let r = log
            .wait_for(old, Duration::from_millis(100), |e| {
                *e == Event::VmIpAddr("10.0.2.7".into())
            })
            .await
            .unwrap();
        assert_eq!(r.event, Event::VmIpAddr("10.0.2.7".into()));
        // From now: only what comes next.
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move {
                log.wait_for(
                    now,
                    Duration::from_secs(2),
                    |e| matches!(e, Event::VmIpAddr(a) if a == "new"),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.push(None, Event::VmIpAddr("new".into()));
        assert_eq!(
            waiter.await.unwrap().unwrap().event,
            Event::VmIpAddr("new".into())
        );
        let err = log
            .wait_for(log.cursor(), Duration::from_millis(20), |_| true)
            .await
            .unwrap_err();
        assert_eq!(err.seen, 100_003);
        assert_eq!(err.dropped, 100_003 - CAP);
        assert_eq!(log.dropped(), 100_003 - CAP);
        // The early refusal is not lost with its record.
        let (refused, total) = log.refused();
        assert_eq!(total, 1);
        assert!(matches!(&refused[0].event, Event::Refused { reason, .. } if reason == "early"));
        // Memory: the ring's storage stays near its capacity.
        assert!(log.lock().records.capacity() < 2 * CAP + 64);
    }

    #[test]
    fn a_small_ring_drops_the_oldest_and_counts_on() {
        let log = EventLog::with_capacity(3);
        for i in 0..5 {
            log.push(None, Event::VmIpAddr(i.to_string()));
        }
        let kept: Vec<_> = log.snapshot().into_iter().map(|r| r.event).collect();
        assert_eq!(
            kept,
            ["2", "3", "4"].map(|a| Event::VmIpAddr(a.into())).to_vec()
        );
        assert_eq!((log.cursor(), log.dropped()), (Cursor(5), 2));
    }

    #[test]
    fn since_reads_on_from_a_cursor_and_skips_what_was_dropped() {
        let log = EventLog::with_capacity(3);
        let (none, start) = log.since(Cursor::default());
        assert!(none.is_empty());
        assert_eq!(start, Cursor(0));
        log.push(None, Event::VmIpAddr("a".into()));
        let (one, next) = log.since(start);
        assert_eq!(one.len(), 1);
        for i in 0..4 {
            log.push(None, Event::VmIpAddr(i.to_string()));
        }
        // Five pushed, three kept: the reader at 1 gets the kept ones.
        let (rest, end) = log.since(next);
        let got: Vec<_> = rest.into_iter().map(|r| r.event).collect();
        assert_eq!(
            got,
            ["1", "2", "3"].map(|a| Event::VmIpAddr(a.into())).to_vec()
        );
        assert_eq!(end, Cursor(5));
        assert!(log.since(end).0.is_empty());
    }
}
