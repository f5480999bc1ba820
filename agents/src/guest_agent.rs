//! The guest agent the AIDL-mode host expects: an `IGuestAgent` object
//! handed to virtmgr's `IVirtualMachineService.registerGuestAgent` over an
//! RPC binder session to vsock CID 2, port = our own CID
//! (docs/android-releases.md §2.1 A). The host calls `shutdownAsync` back
//! on that same session, so it is opened with one incoming connection and
//! kept for the life of the service.
//!
//! Two numberings exist (§2.2): the numbered one (code 2, guest agent
//! descriptor `android.system.virtualizationcommon.IGuestAgent`) is tried
//! first; a host that answers UNKNOWN_TRANSACTION gets the unnumbered one
//! (code 9, an agent under `android.system.virtualmachineservice.IGuestAgent`).
//! `shutdownAsync` is code 2 in both.
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use avf_aidl::android::system::virtualizationcommon::IGuestAgent::{BnGuestAgent, IGuestAgent};
use avf_aidl::android::system::virtualmachineservice::IVirtualMachineService::IVirtualMachineService;
use rsbinder::rpc::{RpcClientConfig, RpcProxy, RpcSession};
use rsbinder::{
    BinderResult, DeathRecipient, FromIBinder, Interface, Parcel, Remotable, SIBinder, Status,
    StatusCode, TransactionCode, WIBinder, FIRST_CALL_TRANSACTION,
};

/// The host's vsock CID.
pub const HOST_CID: u32 = 2;
/// `IVirtualMachineService` (both numberings share the descriptor).
pub const VM_SERVICE_DESCRIPTOR: &str =
    "android.system.virtualmachineservice.IVirtualMachineService";
/// The unnumbered form's `registerGuestAgent`.
pub const UNNUMBERED_REGISTER: TransactionCode = FIRST_CALL_TRANSACTION + 8;
/// The unnumbered form's guest agent interface.
pub const UNNUMBERED_AGENT_DESCRIPTOR: &str = "android.system.virtualmachineservice.IGuestAgent";
/// `shutdownAsync` in every known `IGuestAgent`.
pub const SHUTDOWN_ASYNC: TransactionCode = FIRST_CALL_TRANSACTION + 1;

/// What `shutdownAsync` does (the real one: `poweroff`).
pub type PowerOff = Arc<dyn Fn() + Send + Sync>;

/// The numbered form's agent.
struct GuestAgent(PowerOff);

impl Interface for GuestAgent {}

impl IGuestAgent for GuestAgent {
    fn shutdownAsync(&self) -> BinderResult<()> {
        eprintln!("shutdownAsync: the Terminal app asks for a power-off");
        (self.0)();
        Ok(())
    }
}

/// The unnumbered form's agent: same code, older descriptor.
struct UnnumberedGuestAgent(PowerOff);

impl Remotable for UnnumberedGuestAgent {
    fn descriptor() -> &'static str {
        UNNUMBERED_AGENT_DESCRIPTOR
    }

    fn on_transact(
        &self,
        code: TransactionCode,
        _: &mut Parcel,
        _: &mut Parcel,
    ) -> rsbinder::Result<()> {
        if code != SHUTDOWN_ASYNC {
            return Err(StatusCode::UnknownTransaction);
        }
        eprintln!("shutdownAsync (unnumbered form): the Terminal app asks for a power-off");
        (self.0)();
        Ok(())
    }

    fn on_dump(&self, _: &mut dyn std::io::Write, _: &[String]) -> rsbinder::Result<()> {
        Ok(())
    }
}

/// Which numbering the host accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    Numbered,
    Unnumbered,
}

impl std::fmt::Display for Numbering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Numbering::Numbered => "registerGuestAgent = code 2",
            Numbering::Unnumbered => "registerGuestAgent = code 9 (unnumbered form)",
        })
    }
}

/// A registration that holds: keep it (dropping it closes the session).
pub struct Registration {
    pub session: RpcSession,
    pub numbering: Numbering,
    /// The host's root object: its death notice is the session's end.
    root: SIBinder,
}

impl Registration {
    /// Whether the host ended the session (virtmgr gone).
    pub fn is_ended(&self) -> bool {
        self.session.is_ended()
    }

    /// Has `wakeup` notified when the host ends the session; false where
    /// the session cannot tell (then only [`Registration::is_ended`] can).
    pub fn notify_end(&self, wakeup: &Arc<Wakeup>) -> bool {
        self.root.link_to_death_arc(wakeup).is_ok()
    }
}

/// What wakes the registration thread: a stop, or the host ending the
/// session (a death notice on its root object). Waiting on it costs no
/// wakeups; a loop that checks a flag every few hundred milliseconds
/// wakes the VM's vCPU as often, for the VM's whole life.
#[derive(Default)]
pub struct Wakeup {
    /// (stopped, a notice not yet seen by `wait`)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Wakeup {
    pub fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        self.cv.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn notify(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_all();
    }

    /// Waits up to `limit` (`None`: for ever) for a stop or a notice. A
    /// notice that came before the call ends it at once.
    fn wait(&self, limit: Option<Duration>) {
        let end = limit.map(|d| std::time::Instant::now() + d);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !st.0 && !st.1 {
            st = match end {
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(end) => {
                    let left = end.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        st.1 = false;
    }
}

impl DeathRecipient for Wakeup {
    fn binder_died(&self, _who: &WIBinder) {
        self.notify();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.session.close_session();
    }
}

/// The session to the host's `IVirtualMachineService`: vsock CID 2, port =
/// `cid` (ours), one incoming connection for the host's calls back.
pub fn vsock_config(cid: u32) -> RpcClientConfig<'static> {
    RpcClientConfig::vsock(HOST_CID, cid, crate::debian_service::WIRE_VERSION)
        .incoming_connections(1)
        .timeout(Duration::from_secs(10))
}

/// Connects with `config` and registers an agent whose `shutdownAsync`
/// runs `poweroff`.
pub fn register(config: RpcClientConfig<'_>, poweroff: PowerOff) -> anyhow::Result<Registration> {
    let session = RpcSession::setup_client_android13plus_with_config(config)
        .map_err(|e| anyhow::anyhow!("connecting to the host's IVirtualMachineService: {e:?}"))?;
    match register_on(&session, poweroff) {
        Ok((numbering, root)) => Ok(Registration {
            session,
            numbering,
            root,
        }),
        Err(e) => {
            session.close_session();
            Err(e)
        }
    }
}

fn register_on(session: &RpcSession, poweroff: PowerOff) -> anyhow::Result<(Numbering, SIBinder)> {
    let root = session
        .get_root()
        .map_err(|e| anyhow::anyhow!("getting the host's root object: {e:?}"))?;
    let vm_service = <dyn IVirtualMachineService>::try_from(root.clone()).map_err(|e| {
        anyhow::anyhow!("the host's root object is no IVirtualMachineService: {e:?}")
    })?;
    let agent = BnGuestAgent::new_binder(GuestAgent(poweroff.clone()));
    match vm_service.registerGuestAgent(&agent) {
        Ok(()) => Ok((Numbering::Numbered, root)),
        Err(s) if is_unknown_transaction(&s) => {
            eprintln!("registerGuestAgent (code 2): UNKNOWN_TRANSACTION; trying the unnumbered form (code 9)");
            register_unnumbered(&root, poweroff)?;
            Ok((Numbering::Unnumbered, root))
        }
        Err(s) => anyhow::bail!("registerGuestAgent: {s}"),
    }
}

fn is_unknown_transaction(s: &Status) -> bool {
    s.transaction_error() == StatusCode::UnknownTransaction
}

/// `registerGuestAgent` as code 9: the same descriptor, a strong binder
/// argument, a status reply.
fn register_unnumbered(root: &SIBinder, poweroff: PowerOff) -> anyhow::Result<()> {
    let proxy = root
        .as_any()
        .downcast_ref::<RpcProxy>()
        .ok_or_else(|| anyhow::anyhow!("the host's root object is not an RPC proxy"))?;
    let agent: SIBinder =
        Interface::as_binder(&rsbinder::Binder::new(UnnumberedGuestAgent(poweroff)));
    let mut data = proxy
        .build_request(VM_SERVICE_DESCRIPTOR)
        .map_err(|e| anyhow::anyhow!("building the code-9 request: {e:?}"))?;
    data.write(&agent)
        .map_err(|e| anyhow::anyhow!("writing the guest agent: {e:?}"))?;
    let mut reply = proxy
        .transact(UNNUMBERED_REGISTER, &data, 0)
        .map_err(|e| anyhow::anyhow!("registerGuestAgent (code 9): {e:?}"))?
        .ok_or_else(|| anyhow::anyhow!("registerGuestAgent (code 9): no reply"))?;
    let status: Status = reply
        .read()
        .map_err(|e| anyhow::anyhow!("registerGuestAgent (code 9): reading the status: {e:?}"))?;
    anyhow::ensure!(status.is_ok(), "registerGuestAgent (code 9): {status}");
    Ok(())
}

/// Which mode the kernel command line at `cmdline` says, for the log: we
/// register in every one. `debian_server_port=0` is the AIDL mode, where
/// the app needs the agent. `=<N>` is Android 17's gRPC mode: the app
/// ignores the AIDL setup, but its stop (`vm.stop()`) reaches virtmgr's
/// `kill`, which asks a registered agent to shut down and waits 5 s, and
/// kills crosvm at once when none is registered. No parameter: Android
/// 15/16 (virtmgr's stop asks a registered agent there too), or an app we
/// do not know.
pub fn mode_for_registration(cmdline: &std::path::Path) -> String {
    match crate::port_file::cmdline_port(cmdline) {
        Err(crate::port_file::PortFileError::NoGrpcServer(_)) => {
            "debian_server_port=0: the AIDL mode".into()
        }
        Ok(Some(port)) => format!(
            "debian_server_port={port}: Android 17's gRPC mode, registering for virtmgr's graceful stop"
        ),
        Ok(None) => "no debian_server_port: Android 15/16's mode".into(),
        Err(e) => format!("{}: {e}", cmdline.display()),
    }
}

/// Retry delays: 1 s doubling to a cap, so a guest that is not in AIDL
/// mode (no host service on our CID's port) costs one attempt a few
/// minutes apart, and a host that comes late is found soon enough.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(120))
    }
}

/// Registers and keeps the registration, re-registering (with backoff) if
/// the host ends it. The first failure is logged in full; later ones only
/// when the error changes. Runs until `wakeup` is stopped, asleep in
/// between: it wakes for the host's end of the session, the next retry, or
/// the stop.
pub fn keep_registered<'a>(
    mut config: impl FnMut() -> RpcClientConfig<'a>,
    poweroff: PowerOff,
    mut backoff: Backoff,
    wakeup: Arc<Wakeup>,
) {
    let mut last_error = String::new();
    let mut held: Option<Registration> = None;
    // Whether the held session's end wakes us (else: look every 500 ms).
    let mut notified = false;
    while !wakeup.is_stopped() {
        if held.as_ref().is_some_and(|r| !r.is_ended()) {
            wakeup.wait((!notified).then_some(Duration::from_millis(500)));
            continue;
        }
        if held.take().is_some() {
            eprintln!("the host ended the guest agent's session; registering again");
            backoff = Backoff::new(Duration::from_secs(1), backoff.max);
        }
        match register(config(), poweroff.clone()) {
            Ok(r) => {
                eprintln!("guest agent registered ({})", r.numbering);
                notified = r.notify_end(&wakeup);
                if !notified {
                    eprintln!("the host's session gives no death notice: checking it every 500 ms");
                }
                held = Some(r);
                last_error.clear();
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let delay = backoff.next_delay();
                if msg != last_error {
                    eprintln!(
                        "guest agent not registered: {msg} (not in AIDL mode, or the host is not ready); \
                         serving IDebianService anyway, retrying every {:?} at most",
                        backoff.max
                    );
                    last_error = msg;
                }
                // A notice from an earlier session may end this early: one more try.
                wakeup.wait(Some(delay));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_mode_it_registers_in() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cmdline");
        for (line, mode) in [
            (
                "root=/dev/vda1 debian_server_port=0 hostname=debian\n",
                "AIDL mode",
            ),
            ("root=/dev/vda1 console=ttyS0\n", "Android 15/16"),
            ("root=/dev/vda1 debian_server_port=40123\n", "gRPC mode"),
        ] {
            std::fs::write(&f, line).unwrap();
            let got = mode_for_registration(&f);
            assert!(got.contains(mode), "{line}: {got}");
        }
        assert!(mode_for_registration(&d.path().join("missing")).contains("missing"));
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5]);
    }
}
