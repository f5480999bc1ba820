//! Memory- and storage-balloon policies (contract §5), with a time scale so a
//! scenario can run an hour of policy in seconds.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const GIB: u64 = 1 << 30;

/// Error type a balloon backend returns.
pub type BalloonError = Box<dyn std::error::Error + Send + Sync>;

/// A VM's memory balloon. The harness implements it over QMP.
pub trait MemoryBalloon: Send + Sync + 'static {
    /// Inflates the balloon to `balloon_bytes`: that much guest RAM is taken
    /// back by the host. (QMP's `balloon` takes the guest's remaining size,
    /// i.e. `guest_ram - balloon_bytes`.)
    fn set_balloon(
        &self,
        balloon_bytes: u64,
    ) -> impl Future<Output = Result<(), BalloonError>> + Send;
}

/// Whether the Terminal app is visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppState {
    /// The app is on screen: the guest gets all its memory.
    Foreground,
    /// The app is in the background: the balloon grows.
    Background,
}

/// Share of guest RAM ballooned on entering the background.
pub const BACKGROUND_START_PERCENT: u64 = 10;
/// Growth per step while in the background.
pub const BACKGROUND_STEP_PERCENT: u64 = 5;
/// Ceiling while in the background.
pub const BACKGROUND_MAX_PERCENT: u64 = 50;
/// Time between growth steps (at time scale 1).
pub const BACKGROUND_STEP: Duration = Duration::from_secs(60);

/// Divides a real-time interval by `scale` (e.g. 60 turns 60 s into 1 s).
pub fn scaled(d: Duration, scale: f64) -> Duration {
    if scale > 0.0 && scale.is_finite() {
        d.div_f64(scale)
    } else {
        d
    }
}

/// One balloon change the policy made.
#[derive(Clone, Debug, PartialEq)]
pub struct BalloonStep {
    /// When (tokio's clock, so paused-time tests read it exactly).
    pub at: Instant,
    /// The target set.
    pub balloon_bytes: u64,
    /// The backend's error, if it failed.
    pub error: Option<String>,
}

/// The running memory-balloon policy.
pub struct MemoryBalloonPolicy {
    state: watch::Sender<AppState>,
    history: Arc<Mutex<Vec<BalloonStep>>>,
    task: JoinHandle<()>,
}

impl MemoryBalloonPolicy {
    /// Starts the policy for a guest with `guest_ram` bytes; the app starts
    /// in the foreground.
    pub fn spawn<B: MemoryBalloon>(balloon: B, guest_ram: u64, time_scale: f64) -> Self {
        let (state, rx) = watch::channel(AppState::Foreground);
        let history = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run_memory(
            balloon,
            guest_ram,
            scaled(BACKGROUND_STEP, time_scale),
            rx,
            history.clone(),
        ));
        Self {
            state,
            history,
            task,
        }
    }

    /// Moves the app to the foreground or background.
    pub fn set_app_state(&self, state: AppState) {
        self.state.send_replace(state);
    }

    /// The changes made so far.
    pub fn history(&self) -> Vec<BalloonStep> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for MemoryBalloonPolicy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_memory<B: MemoryBalloon>(
    balloon: B,
    guest_ram: u64,
    step: Duration,
    mut rx: watch::Receiver<AppState>,
    history: Arc<Mutex<Vec<BalloonStep>>>,
) {
    let mut current = 0u64;
    let set = |bytes: u64| {
        let balloon = &balloon;
        let history = history.clone();
        async move {
            let result = balloon.set_balloon(bytes).await;
            if let Err(e) = &result {
                tracing::warn!("memory balloon to {bytes} bytes failed: {e}");
            }
            history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(BalloonStep {
                    at: Instant::now(),
                    balloon_bytes: bytes,
                    error: result.err().map(|e| e.to_string()),
                });
        }
    };
    let mut state = *rx.borrow_and_update();
    loop {
        match state {
            AppState::Foreground => {
                if current != 0 {
                    current = 0;
                    set(0).await;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
            AppState::Background => {
                let mut percent = BACKGROUND_START_PERCENT;
                loop {
                    current = guest_ram / 100 * percent;
                    set(current).await;
                    if percent >= BACKGROUND_MAX_PERCENT {
                        if rx.changed().await.is_err() {
                            return;
                        }
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(step) => {
                            percent = (percent + BACKGROUND_STEP_PERCENT).min(BACKGROUND_MAX_PERCENT);
                        }
                        changed = rx.changed() => {
                            if changed.is_err() { return; }
                            break;
                        }
                    }
                }
            }
        }
        state = *rx.borrow_and_update();
    }
}

/// What the app reports to the guest for a host with `allocatable` bytes.
pub fn storage_report(allocatable: u64) -> u64 {
    allocatable.saturating_sub(GIB)
}

/// How long until the next report, at time scale 1.
pub fn storage_interval(allocatable: u64) -> Duration {
    match allocatable {
        a if a < GIB => Duration::from_secs(5),
        a if a < 5 * GIB => Duration::from_secs(60),
        a if a < 10 * GIB => Duration::from_secs(15 * 60),
        _ => Duration::from_secs(60 * 60),
    }
}

/// Where storage reports go. The service's `StorageBalloonQueue` implements it.
pub trait StorageSink: Send + Sync + 'static {
    /// Sends `available_bytes` to the guest.
    fn send(&self, available_bytes: u64) -> impl Future<Output = ()> + Send;
}

/// One storage report the policy made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageStep {
    /// When (tokio's clock).
    pub at: Instant,
    /// Host allocatable bytes measured.
    pub allocatable: u64,
    /// `available_bytes` sent.
    pub reported: u64,
}

/// The running storage-balloon policy.
pub struct StorageBalloonPolicy {
    history: Arc<Mutex<Vec<StorageStep>>>,
    task: JoinHandle<()>,
}

impl StorageBalloonPolicy {
    /// Starts reporting at once, then at the contract's intervals divided by
    /// `time_scale`. `allocatable` measures the host (see
    /// [`allocatable_bytes`]); a failed measurement is retried after 5 s.
    pub fn spawn<S: StorageSink>(
        sink: S,
        allocatable: impl Fn() -> std::io::Result<u64> + Send + 'static,
        time_scale: f64,
    ) -> Self {
        let history = Arc::new(Mutex::new(Vec::new()));
        let h = history.clone();
        let task = tokio::spawn(async move {
            loop {
                let wait = match allocatable() {
                    Ok(a) => {
                        let reported = storage_report(a);
                        sink.send(reported).await;
                        h.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(StorageStep {
                                at: Instant::now(),
                                allocatable: a,
                                reported,
                            });
                        storage_interval(a)
                    }
                    Err(e) => {
                        tracing::warn!("storage balloon: cannot measure the host: {e}");
                        Duration::from_secs(5)
                    }
                };
                tokio::time::sleep(scaled(wait, time_scale)).await;
            }
        });
        Self { history, task }
    }

    /// The reports made so far.
    pub fn history(&self) -> Vec<StorageStep> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for StorageBalloonPolicy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes an unprivileged writer can still allocate on the filesystem holding
/// `path` (the host's stand-in for Android's `getAllocatableBytes`).
pub fn allocatable_bytes(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| std::io::Error::other(format!("statvfs {}: {e}", path.display())))?;
    // fsblkcnt_t and c_ulong are u64 here but narrower on 32-bit hosts.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.blocks_available()) * u64::from(st.fragment_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<u64>>>);

    impl MemoryBalloon for Recorder {
        async fn set_balloon(&self, balloon_bytes: u64) -> Result<(), BalloonError> {
            self.0.lock().unwrap().push(balloon_bytes);
            Ok(())
        }
    }

    impl StorageSink for Recorder {
        async fn send(&self, available_bytes: u64) {
            self.0.lock().unwrap().push(available_bytes);
        }
    }

    async fn settle() {
        // Let the policy task run up to its next sleep.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_background_grows_to_half_then_foreground_releases() {
        let ram = 4096u64 << 20;
        let rec = Recorder::default();
        // Scale 60: a 60 s step takes 1 s.
        let policy = MemoryBalloonPolicy::spawn(rec.clone(), ram, 60.0);
        settle().await;
        assert!(
            rec.0.lock().unwrap().is_empty(),
            "foreground at start: nothing"
        );

        let t0 = Instant::now();
        policy.set_app_state(AppState::Background);
        settle().await;
        assert_eq!(*rec.0.lock().unwrap(), vec![ram / 100 * 10]);
        tokio::time::sleep(Duration::from_millis(8500)).await;
        let expect: Vec<u64> = [10, 15, 20, 25, 30, 35, 40, 45, 50]
            .iter()
            .map(|p| ram / 100 * p)
            .collect();
        assert_eq!(*rec.0.lock().unwrap(), expect);
        // Steps are one scaled minute apart.
        let h = policy.history();
        assert_eq!(h[1].at - h[0].at, Duration::from_secs(1));
        assert_eq!(h[0].at, t0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(rec.0.lock().unwrap().len(), 9, "capped at 50 %");

        policy.set_app_state(AppState::Foreground);
        settle().await;
        assert_eq!(rec.0.lock().unwrap().last(), Some(&0));

        // Back to the background restarts at 10 %.
        policy.set_app_state(AppState::Background);
        settle().await;
        assert_eq!(rec.0.lock().unwrap().last(), Some(&(ram / 100 * 10)));
        policy.set_app_state(AppState::Foreground);
        settle().await;
        assert_eq!(rec.0.lock().unwrap().last(), Some(&0));
        assert_eq!(policy.history().len(), 12);
    }

    #[test]
    fn storage_intervals_follow_the_contract() {
        assert_eq!(storage_interval(GIB - 1), Duration::from_secs(5));
        assert_eq!(storage_interval(GIB), Duration::from_secs(60));
        assert_eq!(storage_interval(5 * GIB - 1), Duration::from_secs(60));
        assert_eq!(storage_interval(5 * GIB), Duration::from_secs(900));
        assert_eq!(storage_interval(10 * GIB - 1), Duration::from_secs(900));
        assert_eq!(storage_interval(10 * GIB), Duration::from_secs(3600));
        assert_eq!(storage_report(3 * GIB), 2 * GIB);
        assert_eq!(storage_report(GIB / 2), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn storage_reports_at_scaled_intervals() {
        let rec = Recorder::default();
        let free = Arc::new(Mutex::new(3 * GIB));
        let f = free.clone();
        // Scale 60: 60 s → 1 s, 5 s → 83 ms, 15 min → 15 s.
        let policy = StorageBalloonPolicy::spawn(rec.clone(), move || Ok(*f.lock().unwrap()), 60.0);
        settle().await;
        assert_eq!(*rec.0.lock().unwrap(), vec![2 * GIB]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rec.0.lock().unwrap().len(), 2);

        *free.lock().unwrap() = 6 * GIB;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(rec.0.lock().unwrap().last(), Some(&(5 * GIB)));
        let n = rec.0.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert_eq!(rec.0.lock().unwrap().len(), n, "15 scaled minutes not over");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rec.0.lock().unwrap().len(), n + 1);
        let h = policy.history();
        assert_eq!(h.last().unwrap().allocatable, 6 * GIB);
    }

    #[test]
    fn measures_a_real_filesystem() {
        let a = allocatable_bytes(Path::new("/")).unwrap();
        assert!(a > 0);
        let err = allocatable_bytes(Path::new("/nonexistent/x")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"));
    }
}
