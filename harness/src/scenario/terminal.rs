//! The Terminal app's host side in scenarios and the interactive boot
//! (`crate::interactive`): an
//! [`avf_terminal::TerminalHost`] wired to a launched [`Vm`] in the TAP mode
//! (its sockets on the guest network made in the VM's namespace), playing
//! the scenario's [`HostProfile`], and the bodies of the app-side steps
//! ([`super::model::Side::App`]).
//!
//! The host starts while the guest is still paused, so `ca.crt` is in the
//! internal share before ttyd first starts, as on the phone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use avf_terminal::aidl::{AidlHost, AidlHostConfig, BridgeConfig, TtydBridge};
use avf_terminal::events::{Cursor, Event, Queue};
use avf_terminal::host::{TerminalHostConfig, VsockEndpoint};
use avf_terminal::profile::AppStop;
use avf_terminal::{
    ClientCert, GuestNet, Handshake, HostPorts, HostProfile, MdnsTransport, TerminalHost,
    TtydClient,
};
use regex::Regex;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guest::{guest_mem_total, guest_sh, wait_balloon};
use super::model::{
    AgentsConnected, AppError, AppShutdown, BridgeToken, Clipboard, Expect, ForwardRoundtrip,
    GuestPort, Identity, MemoryPolicy, QueueName, StorageBalloon, TerminalOptions, TtydBridgeProbe,
    TtydDiscover, TtydProbe, TtydRun,
};
use crate::qmp::Qmp;
use crate::spec::ShareTag;
use crate::timeouts::{wait_until, Check, Scaled, Timeout};
use crate::vm::Vm;

const MIB: u64 = 1 << 20;

impl QueueName {
    fn queue(self) -> Queue {
        match self {
            QueueName::Forwarding => Queue::Forwarding,
            QueueName::Shutdown => Queue::Shutdown,
            QueueName::StorageBalloon => Queue::StorageBalloon,
        }
    }
}

/// [`avf_terminal::MemoryBalloon`] over QMP: the app says how much to take
/// back, QMP's `balloon` wants what the guest keeps.
#[derive(Clone)]
pub struct QmpBalloon {
    qmp: Arc<Qmp>,
    guest_ram: u64,
}

impl QmpBalloon {
    /// The balloon of `vm`, whose RAM the policy takes shares of.
    pub fn of(vm: &Vm) -> QmpBalloon {
        QmpBalloon {
            qmp: vm.qmp_handle(),
            guest_ram: vm.guest_ram(),
        }
    }
}

impl avf_terminal::MemoryBalloon for QmpBalloon {
    async fn set_balloon(
        &self,
        balloon_bytes: u64,
    ) -> Result<(), avf_terminal::balloon::BalloonError> {
        let keep = self.guest_ram.saturating_sub(balloon_bytes);
        self.qmp.balloon(keep).await.map_err(Into::into)
    }
}

/// The waits for the app's deadlines run this long × the deadline before
/// the measured factor decides (a TCG guest on a busy 2-core host).
const MAX_TCG_FACTOR: u32 = 40;

/// The app's host side in the profile's mode: the gRPC DebianService, or
/// the AIDL mode's virtmgr service, `IDebianService` session and bridge.
enum AppHost {
    Grpc(Box<TerminalHost>),
    Aidl(Arc<AidlHost>),
}

impl AppHost {
    fn events(&self) -> &avf_terminal::EventLog {
        match self {
            AppHost::Grpc(h) => h.events(),
            AppHost::Aidl(h) => h.events(),
        }
    }

    fn forwarded(&self, guest_port: u16) -> Option<Vec<SocketAddr>> {
        match self {
            AppHost::Grpc(h) => h.forwarded(guest_port),
            AppHost::Aidl(h) => h.forwarded(guest_port),
        }
    }

    fn grpc(&self) -> Result<&TerminalHost> {
        match self {
            AppHost::Grpc(h) => Ok(h),
            AppHost::Aidl(_) => {
                bail!("this step is the gRPC modes' (the profile is in the AIDL mode)")
            }
        }
    }

    async fn stop(self) {
        match self {
            AppHost::Grpc(h) => (*h).stop().await,
            AppHost::Aidl(h) => match Arc::try_unwrap(h) {
                Ok(h) => h.stop().await,
                Err(h) => drop(h),
            },
        }
    }
}

fn tracing_note(msg: &str) {
    eprintln!("[avf] app: {msg}");
}

/// The AIDL-mode start that never reaches `Running` (`canUseTtydOverVsock()`
/// false: the flag off, or the image's build id below 5106): the app's
/// `boot_timeout_secs` timer shows its error ("Timed out waiting for
/// terminal service"), even if the guest agent registered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the {release} Terminal app would show its error screen (\"Timed out waiting for terminal service\"): canUseTtydOverVsock() is false (build_id {build_id:?} reads as {read_as}, needs >= {min}), so nothing sets Running; its deadline boot_timeout_secs {app_deadline:?} × {factor:.1} (TCG) = {deadline:?} passed{registered}")]
pub struct StartTimeout {
    pub release: &'static str,
    pub build_id: String,
    pub read_as: i32,
    pub min: i32,
    pub app_deadline: Duration,
    pub factor: f64,
    pub deadline: Duration,
    /// ", although the guest agent registered" when it did.
    pub registered: String,
}

/// The app's side for one scenario run.
pub struct Session {
    host: AppHost,
    /// AIDL mode: the app's `onGuestAgentRegistered` work, running since
    /// the start (its result once taken).
    registration: Option<tokio::task::JoinHandle<Result<(), avf_terminal::aidl::AidlError>>>,
    /// The `boot_timeout_secs` the app reads: `[terminal]
    /// boot_timeout_secs`, else the config's (Android 17 only).
    boot_timeout: Option<Duration>,
    tty: Option<TtydClient>,
    other: Option<ClientCert>,
    /// `df /` available (bytes) and cluster size before the first storage
    /// request.
    storage_base: Option<(u64, u64)>,
    /// `[terminal] time_scale`, which the host's policies run at.
    time_scale: f64,
    profile: HostProfile,
    /// When discovery found ttyd (the app then accepts the VM's calls).
    discovered_at: Option<Instant>,
    /// Android 17's gRPC mode: virtmgr's per-VM service beside the app's
    /// gRPC server, where the guest may register an agent for the stop.
    virtmgr: Option<avf_terminal::aidl::VmService>,
    /// Android 17's gRPC mode where `canUseTtydOverVsock()`: the app's
    /// terminal goes through this bridge, not TLS (the AIDL mode's bridge
    /// is its host's).
    grpc_bridge: Option<TtydBridge>,
}

impl Session {
    /// Starts the host against a VM that is still paused.
    pub async fn start(opts: &TerminalOptions, vm: &Vm) -> Result<Session> {
        if vm.plan().profile.transport.is_rpc_binder() {
            return Session::start_aidl(opts, vm).await;
        }
        let Some(netns) = vm.netns() else {
            // Measured: slirp's UDP hostfwd to guest 5353 puts frames on the
            // guest's NIC, but its IP layer delivers none of them, so the
            // app could never find ttyd.
            bail!(
                "{}: the Terminal app's host side needs the TAP network (scenario: net = \"tap\"; avf-harness boot: --net tap): mDNS does not work over QEMU user-mode networking",
                vm.spec().source.display()
            );
        };
        let guest_net = GuestNet::Namespace(netns);
        let profile = vm.plan().profile.clone();
        // The app's files dir: shared as `internal` where the profile
        // shares it, else the app's alone (it still writes ca.crt there).
        let internal = match vm.share_dir(ShareTag::Internal) {
            Some(d) => d.to_owned(),
            None if !profile.shares.internal => vm.instance().app_data_dir.join("files"),
            None => bail!(
                "{}: no internal share (sharedPath other than /storage/emulated)",
                vm.spec().source.display()
            ),
        };
        let mut cfg = TerminalHostConfig::new(
            profile.clone(),
            &internal,
            VsockEndpoint {
                uds: vm.vsock_uds(),
                guest_cid: vm.guest_cid(),
            },
            vm.host_bind(vm.plan().debian_server_port.unwrap_or(0)),
            MdnsTransport::Multicast {
                interface: vm.gateway(),
            },
        );
        cfg.guest_net = guest_net.clone();
        cfg.host_ports = HostPorts::Ephemeral;
        cfg.time_scale = opts.time_scale;
        if opts.stale_port_file {
            // A port that was free a moment ago: nothing answers there.
            let stale = guest_net.tcp_listen(vm.host_bind(0))?.local_addr()?.port();
            avf_terminal::service::write_port_file(&internal, stale)?;
        }
        let host = TerminalHost::start(cfg)
            .await
            .context("starting the Terminal app's host side")?;
        // virtmgr serves every "debian" VM, whatever the app's mode; only
        // Android 17's stop goes through it (the app ignores the agent).
        let virtmgr = match profile.stop {
            AppStop::Virtmgr { .. } => avf_terminal::aidl::VmService::start(
                &vm.spec().name,
                &vm.vsock_uds(),
                vm.guest_cid(),
                host.events().clone(),
            )
            .context("starting virtmgr's IVirtualMachineService")?,
            AppStop::ShutdownRequest { .. } => None,
        };
        let build_id = installed_build_id(vm)?;
        let grpc_bridge = match profile
            .transport
            .can_use_ttyd_over_vsock(build_id.as_deref())
        {
            true => Some(
                TtydBridge::start(BridgeConfig::new(vm.vsock_uds()))
                    .await
                    .context("starting the app's ttyd bridge")?,
            ),
            false => None,
        };
        Ok(Session {
            virtmgr,
            grpc_bridge,
            host: AppHost::Grpc(Box::new(host)),
            registration: None,
            boot_timeout: boot_timeout(opts, vm),
            tty: None,
            other: None,
            storage_base: None,
            time_scale: opts.time_scale,
            profile,
            discovered_at: None,
        })
    }

    /// The AIDL mode: virtmgr's service before the guest runs, the bridge
    /// where `canUseTtydOverVsock()`, and the app's reaction to the
    /// registration in the background (as its callback runs).
    async fn start_aidl(opts: &TerminalOptions, vm: &Vm) -> Result<Session> {
        let profile = vm.plan().profile.clone();
        let build_id = installed_build_id(vm)?;
        let vm_name = vm.spec().name.clone();
        let host = AidlHost::start(AidlHostConfig {
            vm_name,
            vsock: VsockEndpoint {
                uds: vm.vsock_uds(),
                guest_cid: vm.guest_cid(),
            },
            host_ports: HostPorts::Ephemeral,
            enabled_ports: None,
            ttyd_over_vsock: profile
                .transport
                .can_use_ttyd_over_vsock(build_id.as_deref()),
            time_scale: opts.time_scale,
        })
        .await
        .context("starting the Terminal app's host side (AIDL mode)")?;
        let host = Arc::new(host);
        // As long as any app wait: the steps bound their own waits.
        let limit = Scaled::from_duration(profile.discovery_deadline_emulated).get();
        let registration = {
            let host = host.clone();
            tokio::spawn(async move { host.on_registered(limit).await })
        };
        Ok(Session {
            virtmgr: None,
            grpc_bridge: None,
            host: AppHost::Aidl(host),
            registration: Some(registration),
            boot_timeout: boot_timeout(opts, vm),
            tty: None,
            other: None,
            storage_base: None,
            time_scale: opts.time_scale,
            profile,
            discovered_at: None,
        })
    }

    /// How long the app waits for the terminal from the VM's start: Android
    /// 17's `boot_timeout_secs` (× 10 on emulated devices) where there is
    /// one, else the profile's own deadline.
    fn app_deadline(&self, vm: &Vm) -> Duration {
        let emulated = vm.options().emulated_device;
        match self.boot_timeout {
            Some(t) if emulated => t * 10,
            Some(t) => t,
            None if emulated => self.profile.discovery_deadline_emulated,
            None => self.profile.discovery_deadline,
        }
    }

    /// The app's ttyd bridge, in either Android 17 mode, where it runs one.
    fn bridge(&self) -> Option<&TtydBridge> {
        match &self.host {
            AppHost::Aidl(h) => h.bridge(),
            AppHost::Grpc(_) => self.grpc_bridge.as_ref(),
        }
    }

    fn aidl(&self) -> Result<&Arc<AidlHost>> {
        match &self.host {
            AppHost::Aidl(h) => Ok(h),
            AppHost::Grpc(_) => bail!(
                "this step is the AIDL mode's (the profile is {})",
                self.profile.name
            ),
        }
    }

    /// Waits (up to `within`) for the app's `onGuestAgentRegistered` work
    /// to have finished: registered and `IDebianService` connected.
    async fn aidl_connected(&mut self, within: Duration) -> Result<String> {
        let host = self.aidl()?.clone();
        if let Some(task) = self.registration.take() {
            let r = match tokio::time::timeout(within, task).await {
                Ok(r) => r.map_err(|e| anyhow!("the registration task: {e}"))?,
                Err(_) => bail!(
                    "the guest agent did not register (and IDebianService connect) within {within:?}"
                ),
            };
            r?;
        }
        Ok(format!(
            "guest agent registered with virtmgr ({}); IDebianService connected over vsock 4000, RPC wire version {:?}",
            host.vm_service().path().display(),
            host.wire_version()
        ))
    }

    /// `ttyd_discover` in the AIDL mode: `Running` comes only from the
    /// bridge, set at once when `canUseTtydOverVsock()`; otherwise the
    /// app's `boot_timeout_secs` timer (× this VM's TCG factor) ends the
    /// start with [`StartTimeout`].
    async fn aidl_running(&mut self, vm: &Vm, s: &TtydDiscover) -> Result<String> {
        let build_id = installed_build_id(vm)?;
        let transport = self.profile.transport;
        let bridge_port = self.aidl()?.bridge().map(|b| b.addr().port());
        if let Some(port) = bridge_port {
            self.discovered_at = Some(Instant::now());
            return Ok(format!(
                "Running(\"localhost\", {port}) at once: canUseTtydOverVsock() with build_id {}",
                avf_terminal::profile::build_id_number(build_id.as_deref())
            ));
        }
        let app_deadline = self.app_deadline(vm);
        vm.qga().await?.ping().await?;
        let f = vm.tcg_factor().await?;
        let deadline = f.scale(app_deadline);
        if let Some(w) = s.within {
            if w.get() < deadline {
                bail!(
                    "within_secs {:?} ends before the app's deadline {deadline:?}",
                    w.get()
                );
            }
        }
        tracing_note(&format!(
            "AIDL start without Running: the app's deadline {app_deadline:?} × {:.1} = {deadline:?} ({f}); {:?} since the guest started",
            f.factor(),
            vm.since_start()
        ));
        tokio::time::sleep(deadline.saturating_sub(vm.since_start())).await;
        let registered = self
            .host
            .events()
            .snapshot()
            .iter()
            .any(|r| r.event == Event::GuestAgentRegistered);
        let min = transport.ttyd_vsock_min_build_id();
        Err(StartTimeout {
            release: self.profile.release,
            build_id: build_id
                .as_deref()
                .and_then(|t| t.lines().next())
                .unwrap_or("<no build id>")
                .to_string(),
            read_as: avf_terminal::profile::build_id_number(build_id.as_deref()),
            min,
            app_deadline,
            factor: f.factor(),
            deadline,
            registered: match registered {
                true => ", although the guest agent registered".into(),
                false => String::new(),
            },
        }
        .into())
    }

    /// A page load through the app's bridge with the app's token, another
    /// one, or none: the HTTP status must be `status`.
    pub async fn bridge_probe(&self, s: &TtydBridgeProbe) -> Result<String> {
        let bridge = self
            .bridge()
            .ok_or_else(|| anyhow!("no ttyd bridge: canUseTtydOverVsock() is false"))?;
        let token = match s.token {
            BridgeToken::App => Some(bridge.token().to_string()),
            BridgeToken::Other => Some(uuid::Uuid::new_v4().to_string()),
            BridgeToken::None => None,
        };
        let got =
            avf_terminal::ttyd::load_page(bridge.addr(), token.as_deref(), s.within.get()).await?;
        if got.status != s.status {
            bail!(
                "token {:?}: {:?}, expected HTTP {}",
                s.token,
                got.line,
                s.status
            );
        }
        Ok(format!("token {:?}: {}", s.token, got.line))
    }

    /// `updateClipboard(text)`, then `readClipboard()` must give it back
    /// (the guest's Wayland clipboard; `""` where it has none).
    pub async fn clipboard(&self, s: &Clipboard) -> Result<String> {
        let host = self.aidl()?;
        let t0 = Instant::now();
        host.update_clipboard(&s.text).await?;
        let within = s.within.get();
        let got = wait_until(
            "readClipboard() giving the text back",
            within,
            Duration::from_millis(200),
            || async {
                let got = host.read_clipboard().await?;
                Ok(match got == s.expect.as_deref().unwrap_or(&s.text) {
                    true => Check::Done(got),
                    false => Check::NotYet(format!("readClipboard() = {got:?}")),
                })
            },
        )
        .await?;
        Ok(format!(
            "clipboard round trip {got:?} in {} s",
            fmt_secs(t0.elapsed())
        ))
    }

    pub async fn memory_policy(&self, vm: &Vm, s: &MemoryPolicy) -> Result<String> {
        use avf_terminal::balloon::{
            BACKGROUND_MAX_PERCENT, BACKGROUND_START_PERCENT, BACKGROUND_STEP,
            BACKGROUND_STEP_PERCENT,
        };
        use avf_terminal::AppState;
        if !self.profile.memory_balloon_policy {
            bail!(
                "the {} app runs no memory-balloon policy (MemBalloonController is Android 16's)",
                self.profile.release
            );
        }
        let ram = vm.guest_ram();
        let tol = s.tolerance_mib * MIB;
        let within = s.within.get();
        let base = (guest_mem_total(vm).await?, vm.qmp().query_balloon().await?);
        if base.1.abs_diff(ram) > tol {
            bail!(
                "balloon already inflated: guest keeps {} of {} MiB",
                base.1 / MIB,
                ram / MIB
            );
        }
        let balloon = QmpBalloon::of(vm);
        let policy =
            avf_terminal::balloon::MemoryBalloonPolicy::spawn(balloon, ram, self.time_scale);
        let t0 = Instant::now();
        policy.set_app_state(AppState::Background);
        let max = ram / 100 * BACKGROUND_MAX_PERCENT;
        let (_, low_total) = wait_balloon(vm, ram - max, base, tol, within).await?;
        let to_max = t0.elapsed();
        let t1 = Instant::now();
        policy.set_app_state(AppState::Foreground);
        let (_, back_total) = wait_balloon(vm, ram, base, tol, within).await?;
        let back = t1.elapsed();

        let history = policy.history();
        drop(policy);
        let percents: Vec<u64> = history
            .iter()
            .map(|h| (h.balloon_bytes * 100 + ram / 2) / ram)
            .collect();
        let mut want: Vec<u64> = (BACKGROUND_START_PERCENT..=BACKGROUND_MAX_PERCENT)
            .step_by(BACKGROUND_STEP_PERCENT as usize)
            .collect();
        want.push(0);
        if percents != want {
            bail!("the policy ballooned {percents:?} % of guest RAM, expected {want:?}");
        }
        if let Some(e) = history.iter().find_map(|h| h.error.as_ref()) {
            bail!("QMP balloon failed: {e}");
        }
        // Growth steps come one scaled minute apart (the clock may run late
        // on a loaded host, never early).
        let step = avf_terminal::balloon::scaled(BACKGROUND_STEP, self.time_scale);
        let background = &history[..history.len() - 1];
        for w in background.windows(2) {
            let gap = w[1].at.duration_since(w[0].at);
            if gap < step.mul_f64(0.9) {
                bail!("balloon steps {gap:?} apart, policy step is {step:?}");
            }
        }
        Ok(format!(
            "memory policy ×{}: {percents:?} % of {} MiB; MemTotal {} → {} → {} MiB; 50 % reached in {} s, returned in {} s",
            self.time_scale,
            ram / MIB,
            base.0 / MIB,
            low_total / MIB,
            back_total / MIB,
            fmt_secs(to_max),
            fmt_secs(back)
        ))
    }

    /// Checks that hold for every run, then stops the host (after the VM).
    pub async fn finish(self) -> Result<()> {
        // Kept apart from the bounded log: a flood cannot hide them.
        let (kept, total) = self.host.events().refused();
        // Where the app hands the port over before it has found the VM
        // (the kernel parameter), it refuses the agents' calls until then,
        // and they retry: only later refusals are faults.
        let early = |at: Instant| {
            self.profile.transport.kernel_param().is_some()
                && self.discovered_at.is_none_or(|d| at < d)
        };
        // Beyond the first kept ones the times are unknown: all count.
        let unseen = total - kept.len();
        let kept: Vec<_> = kept.into_iter().filter(|r| !early(r.at)).collect();
        let mut refused: Vec<String> = kept
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Refused { method, reason } => {
                    Some(format!("{method} from {:?}: {reason}", r.peer))
                }
                _ => None,
            })
            .collect();
        if unseen > 0 {
            refused.push(format!("and {unseen} more"));
        }
        if let Some(t) = self.tty {
            t.close().await;
        }
        // The app's registration callback holds the host: end it first.
        if let Some(task) = self.registration {
            task.abort();
            let _ = task.await;
        }
        self.host.stop().await;
        if !refused.is_empty() {
            bail!("the host refused calls from the VM: {}", refused.join("; "));
        }
        Ok(())
    }

    pub async fn discover(&mut self, vm: &Vm, s: &TtydDiscover) -> Result<String> {
        // The deadline counts from the guest's start, as the app's does:
        // the app's own value × this VM's TCG factor, unless the scenario
        // names one. The factor needs the guest up, so the wait runs to
        // the longest plausible factor and the check comes after.
        let app_deadline = self.app_deadline(vm);
        let limit = match s.within {
            Some(w) => w.get(),
            None => Scaled::from_duration(app_deadline * MAX_TCG_FACTOR).get(),
        };
        let left = limit.saturating_sub(vm.since_start());
        if self.profile.transport.is_rpc_binder() {
            return self.aidl_running(vm, s).await;
        }
        let found = self.host.grpc()?.discover_ttyd(left).await?;
        self.discovered_at = Some(Instant::now());
        let since = vm.since_start();
        if since > limit {
            bail!("ttyd found {since:?} after the guest started, more than {limit:?}");
        }
        let deadline_note = match s.within {
            Some(_) => format!("scenario limit {} s", fmt_secs(limit)),
            None => {
                vm.qga().await?.ping().await?;
                let f = vm.tcg_factor().await?;
                let deadline = f.scale(app_deadline);
                if since > deadline {
                    return Err(crate::app::DiscoveryTimeout {
                        release: self.profile.release,
                        after: since,
                        app_deadline,
                        factor: f.factor(),
                        deadline,
                    }
                    .into());
                }
                format!(
                    "the app's deadline {} s × {:.1} = {} s ({f})",
                    app_deadline.as_secs(),
                    f.factor(),
                    fmt_secs(deadline)
                )
            }
        };
        let guest = vm
            .guest_ip()
            .ok_or_else(|| anyhow!("mDNS answered, but the guest has no DHCP lease"))?;
        if found.port != 7681 || found.addr != guest {
            bail!(
                "mDNS found ttyd at {}:{} ({}), expected {guest}:7681",
                found.addr,
                found.port,
                found.host,
            );
        }
        let how = match self.profile.transport.ttyd().0 {
            avf_terminal::profile::TtydLocator::Mdns { .. } => "by mDNS",
            avf_terminal::profile::TtydLocator::Fixed { .. } => "answering ping",
            avf_terminal::profile::TtydLocator::VsockBridge => "through the vsock bridge",
        };
        // With the bridge the app is Running from the start; mDNS must
        // still find the VM in time (the gRPC peer check, or Error).
        let bridge = match &self.grpc_bridge {
            Some(b) => format!(
                "; the terminal through the app's vsock bridge (Running(\"localhost\", {}) at once)",
                b.addr().port()
            ),
            None => String::new(),
        };
        Ok(format!(
            "ttyd found {how} at {} s: {} {}:{}; {deadline_note}{bridge}",
            fmt_secs(since),
            found.host,
            found.addr,
            found.port
        ))
    }

    pub async fn probe(&mut self, s: &TtydProbe) -> Result<()> {
        let id = match s.identity {
            Identity::App => Some(self.host.grpc()?.client_cert()),
            Identity::Other => {
                if self.other.is_none() {
                    self.other = Some(ClientCert::generate("not-the-app")?);
                }
                self.other.as_ref()
            }
            Identity::None => None,
        };
        let got = self.host.grpc()?.probe_ttyd(id).await?;
        match (s.expect, &got) {
            (Expect::Accepted, Handshake::Accepted) => Ok(()),
            (Expect::Refused, Handshake::TlsRefused(_)) => Ok(()),
            _ => bail!(
                "handshake with {:?}: {got:?}, expected {:?}",
                s.identity,
                s.expect
            ),
        }
    }

    pub async fn run(&mut self, s: &TtydRun) -> Result<()> {
        let timeout = s.within.get();
        self.open_terminal(timeout).await?;
        let tty = self.tty.as_mut().expect("just opened");
        let out = tty.run(&s.cmd, timeout).await?;
        if out.exit_code != s.exit {
            bail!(
                "exit {}, expected {}; output:\n{}",
                out.exit_code,
                s.exit,
                out.output
            );
        }
        if let Some(re) = &s.output_matches {
            if !Regex::new(re)?.is_match(&out.output) {
                bail!("output does not match /{re}/:\n{}", out.output);
            }
        }
        Ok(())
    }

    /// Opens the app's terminal tab (ttyd, through TLS or the bridge),
    /// unless it is open.
    pub async fn open_terminal(&mut self, timeout: Duration) -> Result<()> {
        if self.tty.is_none() {
            // The app's WebView reloads at once on ERROR_CONNECT (Android 16
            // `TerminalTabFragment`): nothing listening yet (ttyd starting
            // or restarting) is "not yet" until the step's limit.
            let host = &self.host;
            let bridge = self.bridge();
            let tty = wait_until(
                "ttyd accepting the app's connection",
                timeout,
                Duration::from_millis(200),
                || async move {
                    let opened = match (host, bridge) {
                        (_, Some(b)) => open_bridge_terminal(b, timeout).await,
                        (AppHost::Grpc(h), None) => h.open_terminal(timeout).await,
                        (AppHost::Aidl(_), None) => Err(avf_terminal::HostError::Unsupported {
                            profile: "android17-aidl",
                            why: "no ttyd bridge: canUseTtydOverVsock() is false for this image",
                        }),
                    };
                    match opened {
                        Ok(t) => Ok(Check::Done(t)),
                        Err(avf_terminal::HostError::Ttyd(
                            e @ avf_terminal::ttyd::TtydError::Connect { .. },
                        )) => Ok(Check::NotYet(e.to_string())),
                        Err(e) => Err(e.into()),
                    }
                },
            )
            .await?;
            self.tty = Some(tty);
        }
        Ok(())
    }

    pub async fn agents(&mut self, vm: &Vm, s: &AgentsConnected) -> Result<Option<String>> {
        let timeout = s.within.get();
        let mut note = None;
        if self.profile.transport.is_rpc_binder() {
            if !s.queues.is_empty() {
                bail!("the AIDL mode has no gRPC queues: give queues = [] (the step then waits for the registration and the IDebianService connection)");
            }
            note = Some(self.aidl_connected(timeout).await?);
        }
        for q in &s.queues {
            let want = q.queue();
            let ev = self
                .seen_or_wait(
                    timeout,
                    |e| matches!(e, Event::QueueOpened { queue, .. } if *queue == want),
                )
                .await
                .with_context(|| format!("{q:?} queue never opened"))?;
            if let Event::QueueOpened { cid: Some(cid), .. } = ev {
                if i64::from(cid) != i64::from(vm.guest_cid()) {
                    bail!(
                        "forwarding queue opened with CID {cid}, VM is {}",
                        vm.guest_cid()
                    );
                }
            }
        }
        if s.ports_reported {
            self.seen_or_wait(timeout, |e| matches!(e, Event::ActivePorts(_)))
                .await
                .context("no ReportVmActivePorts")?;
        }
        Ok(note)
    }

    /// The first event so far matching `pred`, or the next one to come.
    async fn seen_or_wait(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let log = self.host.events();
        let from = log.cursor();
        if let Some(r) = log.snapshot().into_iter().find(|r| pred(&r.event)) {
            return Ok(r.event);
        }
        Ok(log.wait_for(from, timeout, pred).await?.event)
    }

    pub async fn guest_port(&self, vm: &Vm, s: &GuestPort) -> Result<String> {
        let log = self.host.events();
        let from = log.cursor();
        let started = Instant::now();
        if let Some(sh) = &s.sh {
            guest_sh(vm, sh).await?;
        }
        // `sh` returns once the guest sees the change (e.g. listening).
        let seen = Instant::now();
        // A requirement (issue 4: "within 2 s"), scaled like every wait.
        let within = s.within.get();
        let wanted =
            |p: &[avf_terminal::ActivePort]| p.iter().any(|a| a.port == s.port) == s.present;
        let record = log
            .wait_for(
                from,
                within,
                |e| matches!(e, Event::ActivePorts(p) if wanted(p)),
            )
            .await
            .with_context(|| {
                format!(
                    "port {} {} in ReportVmActivePorts within {within:?} (latest report: {:?})",
                    s.port,
                    if s.present {
                        "never appeared"
                    } else {
                        "never left"
                    },
                    log.latest_ports()
                )
            })?;
        let Event::ActivePorts(ports) = record.event else {
            unreachable!("the predicate matches ActivePorts only")
        };
        if let (true, Some(want)) = (s.present, &s.comm) {
            let got = ports.iter().find(|a| a.port == s.port).map(|a| &a.comm);
            if got != Some(want) {
                bail!("port {} reported for {got:?}, expected {want:?}", s.port);
            }
        }
        let after_seen = match record.at.checked_duration_since(seen) {
            Some(d) => format!("{} ms after", d.as_millis()),
            None => format!("{} ms before", (seen - record.at).as_millis()),
        };
        Ok(format!(
            "port {} {} reported {} ms after the command started, {after_seen} the guest agent saw it",
            s.port,
            if s.present { "listening" } else { "closed" },
            record.at.duration_since(started).as_millis(),
        ))
    }

    /// The host's 127.0.0.1 listener forwarding guest `port`, once the
    /// app has published it.
    pub async fn forward_addr(&self, port: u16, timeout: Duration) -> Result<SocketAddr> {
        let what = format!("guest port {port} forwarded");
        let addrs = wait_until(&what, timeout, Duration::from_millis(20), || {
            let addrs = self.host.forwarded(port);
            async move {
                Ok(match addrs {
                    Some(a) => Check::Done(a),
                    None => Check::NotYet("not published".into()),
                })
            }
        })
        .await?;
        addrs
            .iter()
            .find(|a| a.ip() == IpAddr::from([127, 0, 0, 1]))
            .copied()
            .ok_or_else(|| anyhow!("guest port {port} has no 127.0.0.1 listener: {addrs:?}"))
    }

    /// What the app does after the VM starts until its terminal shows:
    /// finds ttyd inside its deadline (mDNS, the fixed address, or the
    /// bridge) and, in the AIDL mode, takes the guest agent's registration
    /// and connects `IDebianService`. The note says what it found and where
    /// a person reaches the terminal.
    pub async fn bring_up(&mut self, vm: &Vm) -> Result<String> {
        let any_time = TtydDiscover {
            within: None,
            expect_error: None,
        };
        let found = self.discover(vm, &any_time).await?;
        let mut notes = vec![found];
        if self.profile.transport.is_rpc_binder() {
            let within = Scaled::from_duration(self.app_deadline(vm) * MAX_TCG_FACTOR).get();
            notes.push(self.aidl_connected(within).await?);
        }
        notes.push(match (self.bridge(), vm.guest_ip(), vm.tap()) {
            (Some(b), _, _) => format!(
                "the terminal: http://{}/ with the app's cookie access_token={}",
                b.addr(),
                b.token()
            ),
            (None, Some(ip), Some(tap)) => format!(
                "the terminal: https://{ip}:{} in network namespace {} (ttyd takes only the app's client certificate)",
                self.profile.transport.ttyd().1,
                tap.name()
            ),
            _ => "the terminal: not reachable from this host".into(),
        });
        Ok(notes.join("; "))
    }

    /// A handle on the app's event log (what the guest asked of it).
    pub fn events(&self) -> avf_terminal::EventLog {
        self.host.events().clone()
    }

    /// The host's listeners forwarding guest `port`, once published.
    pub fn forwarded(&self, port: u16) -> Option<Vec<SocketAddr>> {
        self.host.forwarded(port)
    }

    /// Where the app's event log stands (to wait only for what follows).
    pub fn event_cursor(&self) -> Cursor {
        self.host.events().cursor()
    }

    /// Waits until `queue`'s stream closed and then opened again after
    /// `from`; returns when it opened.
    pub async fn wait_reopened(
        &self,
        queue: QueueName,
        from: Cursor,
        timeout: Duration,
    ) -> Result<Instant> {
        let want = queue.queue();
        let mut closed = false;
        let r = self
            .host
            .events()
            .wait_for(from, timeout, |e| match e {
                Event::QueueClosed { queue } if *queue == want => {
                    closed = true;
                    false
                }
                Event::QueueOpened { queue, .. } => closed && *queue == want,
                _ => false,
            })
            .await;
        match r {
            Ok(rec) => Ok(rec.at),
            Err(e) if closed => Err(anyhow!("{queue:?} queue closed, never opened again: {e}")),
            Err(e) => Err(anyhow!("{queue:?} queue never closed: {e}")),
        }
    }

    /// Takes the app's open ttyd session, if it has one.
    pub fn take_terminal(&mut self) -> Option<TtydClient> {
        self.tty.take()
    }

    pub async fn roundtrip(&self, s: &ForwardRoundtrip) -> Result<String> {
        let timeout = s.within.get();
        let addr = self.forward_addr(s.port, timeout).await?;
        let data = pseudo_random(s.bytes as usize);
        let sent_hash = Sha256::digest(&data);
        let t0 = Instant::now();
        let echoed = tokio::time::timeout(timeout, async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut rd, mut wr) = stream.into_split();
            // Write and read at once: the echo server cannot buffer 1 MiB.
            let writer = async {
                wr.write_all(&data).await?;
                wr.flush().await?;
                std::io::Result::Ok(wr)
            };
            let reader = async {
                let mut back = vec![0u8; data.len()];
                rd.read_exact(&mut back).await?;
                std::io::Result::Ok(back)
            };
            let (wr, back) = tokio::try_join!(writer, reader)?;
            drop(wr);
            std::io::Result::Ok(back)
        })
        .await
        .map_err(|_| {
            anyhow!(
                "round trip of {} bytes through {addr} took over {timeout:?}",
                s.bytes
            )
        })?
        .with_context(|| format!("round trip through {addr} (guest port {})", s.port))?;
        let elapsed = t0.elapsed();
        let back_hash = Sha256::digest(&echoed);
        if back_hash != sent_hash {
            bail!(
                "echoed bytes differ: sent sha256 {:x}, got {:x}",
                sent_hash,
                back_hash
            );
        }
        Ok(format!(
            "{} bytes round trip via {addr} → guest {}: sha256 {:x} in {} s",
            s.bytes,
            s.port,
            sent_hash,
            fmt_secs(elapsed)
        ))
    }

    /// The app's shutdown request to the guest, the profile's way (its
    /// stream, if open; or virtmgr's registered agent).
    pub async fn request_shutdown(&self) -> avf_terminal::ShutdownOutcome {
        let asked = match (&self.host, self.profile.stop) {
            // Android 15/16: the gRPC shutdown stream.
            (AppHost::Grpc(h), AppStop::ShutdownRequest { .. }) => {
                return h.request_shutdown().await
            }
            // Android 17: `vm.stop()`, and virtmgr asks the agent
            // registered with it (the gRPC stream is never used).
            (AppHost::Aidl(h), _) => h.shutdown_async().await,
            (AppHost::Grpc(_), AppStop::Virtmgr { .. }) => match &self.virtmgr {
                Some(v) => v.shutdown_async().await,
                None => return avf_terminal::ShutdownOutcome::NoStream,
            },
        };
        // virtmgr kills at once when there is no agent to ask.
        match asked {
            Ok(()) => avf_terminal::ShutdownOutcome::Requested,
            Err(e) => {
                tracing_note(&format!("shutdownAsync: {e}"));
                avf_terminal::ShutdownOutcome::NoStream
            }
        }
    }

    pub async fn shutdown(&self, vm: &mut Vm, s: &AppShutdown) -> Result<String> {
        let from = vm.qmp().event_count();
        let t0 = Instant::now();
        match self.request_shutdown().await {
            avf_terminal::ShutdownOutcome::Requested => {}
            avf_terminal::ShutdownOutcome::NoStream => match self.profile.stop {
                AppStop::ShutdownRequest { .. } => {
                    bail!("no shutdown stream open: the app would stop the VM hard")
                }
                AppStop::Virtmgr { .. } => bail!(
                    "no guest agent registered with virtmgr: {} would kill the VM at once",
                    self.profile.release
                ),
            },
        }
        let r = vm.wait_shutdown(from, t0, s.within.get()).await?;
        if r.reason != s.reason {
            bail!("SHUTDOWN reason {:?}, expected {:?}", r.reason, s.reason);
        }
        Ok(format!(
            "shutdown request → QEMU exit in {} s ({})",
            fmt_secs(r.elapsed),
            r.reason
        ))
    }

    pub async fn storage(&mut self, vm: &Vm, s: &StorageBalloon) -> Result<String> {
        let (base, cluster) = match self.storage_base {
            Some(b) => b,
            None => {
                let b = df_root(vm).await?;
                self.storage_base = Some(b);
                b
            }
        };
        let hold = s.hold_mib * MIB;
        if hold >= base {
            bail!(
                "hold_mib {} is more than the {} MiB available",
                s.hold_mib,
                base / MIB
            );
        }
        let want = base - hold;
        match &self.host {
            AppHost::Grpc(h) => {
                if h.server().send_storage_balloon(want).await == 0 {
                    bail!("no storage-balloon stream open");
                }
            }
            AppHost::Aidl(h) => h.request_storage_balloon(want).await?,
        }
        let what =
            format!("df / available reaching {want} (±{cluster}; before any request {base})");
        wait_until(&what, s.within.get(), Duration::from_millis(300), || async move {
            let (avail, _) = df_root(vm).await?;
            Ok(if avail.abs_diff(want) <= cluster {
                Check::Done(format!(
                    "available_bytes {want}: df / available {avail} (base {base}, cluster {cluster})"
                ))
            } else {
                Check::NotYet(format!("available {avail}"))
            })
        })
        .await
    }
}
/// A step's result where it may expect the app's error: that error (by
/// type) passes, with its message as the note; anything else fails.
pub fn expect_error(r: Result<String>, want: Option<AppError>) -> Result<String> {
    let Some(want) = want else { return r };
    match r {
        Ok(note) => bail!("expected the app's {want:?}, but the step succeeded: {note}"),
        Err(e) => {
            let matches = match want {
                AppError::StartTimeout => e.downcast_ref::<StartTimeout>().is_some(),
                AppError::DiscoveryTimeout => {
                    e.downcast_ref::<crate::app::DiscoveryTimeout>().is_some()
                }
            };
            match matches {
                true => Ok(format!("as expected: {e}")),
                false => Err(e.context(format!("expected the app's {want:?}"))),
            }
        }
    }
}

/// The installed image's `build_id` text (`None`: no file).
fn installed_build_id(vm: &Vm) -> Result<Option<String>> {
    let f = vm.instance().payload_dir.join("build_id");
    match std::fs::read_to_string(&f) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("reading {}: {e}", f.display())),
    }
}

/// The `boot_timeout_secs` the app reads, where its app reads one
/// (Android 17): the scenario's stand-in, else the VM config's.
fn boot_timeout(opts: &TerminalOptions, vm: &Vm) -> Option<Duration> {
    if !vm.plan().profile.deadline_from_config {
        return None;
    }
    opts.boot_timeout_secs
        .or(vm.spec().boot_timeout_secs)
        .map(Duration::from_secs)
}

/// The app's terminal view through its bridge (Android 17): the page and
/// the WebSocket, with the token cookie.
async fn open_bridge_terminal(
    bridge: &TtydBridge,
    timeout: Duration,
) -> Result<TtydClient, avf_terminal::HostError> {
    let mut client = TtydClient::connect_bridge(
        bridge.addr(),
        bridge.token(),
        avf_terminal::ttyd::CONNECT_TIMEOUT,
    )
    .await?;
    client.wait_ready(timeout).await?;
    Ok(client)
}

/// What the guest says about the units the app depends on.
const DIAGNOSTICS: &str = "\
systemctl --no-pager status avahi-daemon avf-ttyd forwarder_guest_launcher shutdown_runner storage_balloon_agent nftables debian_service avf-ttyd-uds avf-ttyd-vsock.socket 2>&1
echo; ip -4 addr; ip -4 route; ss -tulpn
echo; ls -la /mnt/internal; cat /mnt/internal/debian_service_port; echo
echo; journalctl -b --no-pager -n 150 -u avahi-daemon -u avf-ttyd -u forwarder_guest_launcher -u shutdown_runner -u storage_balloon_agent -u nftables -u debian_service -u avf-ttyd-uds -u avf-ttyd-vsock 2>&1";

/// Saves the guest's view (units, journal, sockets) to
/// `guest-diagnostics.txt` in the artefacts (after a failed app step).
pub async fn save_diagnostics(vm: &Vm) {
    let limit = Timeout::Diagnostics.get();
    let text = match tokio::time::timeout(limit, guest_sh_any(vm, DIAGNOSTICS)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => format!("diagnostics failed: {e:#}"),
        Err(_) => "diagnostics timed out".into(),
    };
    let _ = std::fs::write(vm.artefacts().join("guest-diagnostics.txt"), text);
}

async fn guest_sh_any(vm: &Vm, sh: &str) -> Result<String> {
    let out = vm.qga().await?.sh(sh).await?;
    Ok(format!("{}{}", out.stdout_str(), out.stderr_str()))
}

/// `df /` in the guest: (available bytes, fragment size).
async fn df_root(vm: &Vm) -> Result<(u64, u64)> {
    let out = guest_sh(vm, "stat -f -c '%a %S' /").await?;
    let mut it = out.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(f))) if f > 0 => Ok((a * f, f)),
        _ => bail!("guest `stat -f /` printed {out:?}"),
    }
}

/// Deterministic bytes (xorshift64*): incompressible enough that a splice
/// dropping or repeating a chunk changes the hash.
fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(n);
    v
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_sized() {
        let a = pseudo_random(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a, pseudo_random(1 << 20));
        assert_ne!(a[..4096], a[4096..8192]);
    }
}
