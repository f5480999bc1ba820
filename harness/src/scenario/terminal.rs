//! The Terminal app's host side in scenarios (issue 4): an
//! [`avf_terminal::TerminalHost`] wired to a launched [`Vm`] in the TAP mode
//! (its sockets on the guest network made in the VM's namespace), and the
//! steps that drive it.
//!
//! The host starts while the guest is still paused, so `ca.crt` is in the
//! internal share before ttyd first starts, as on the phone.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use avf_terminal::events::{Event, Queue};
use avf_terminal::host::{TerminalHostConfig, VsockEndpoint};
use avf_terminal::{ClientCert, Handshake, HostPorts, MdnsTransport, TerminalHost, TtydClient};
use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guest::{guest_mem_total, guest_sh, wait_balloon};
use super::Step;
use crate::spec::ShareTag;
use crate::timeouts::scale;
use crate::vm::Vm;

const MIB: u64 = 1 << 20;

/// Scenario-level `[terminal]`: how the app behaves around the boot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalOptions {
    /// Plant a `debian_service_port` naming a port nothing listens on
    /// before the guest starts (a stale file from an earlier run).
    #[serde(default)]
    pub stale_port_file: bool,
    /// Speed-up of the app's balloon policies (60: a policy minute per
    /// second; 1: real time).
    #[serde(default = "real_time")]
    pub time_scale: f64,
}

fn real_time() -> f64 {
    1.0
}

/// Which client identity a handshake probe presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// The app's certificate (the one in `ca.crt`).
    App,
    /// A freshly generated certificate the guest never saw.
    Other,
    /// No client certificate.
    None,
}

/// What a probe must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Accepted,
    Refused,
}

/// A DebianService queue, as named in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    Forwarding,
    Shutdown,
    StorageBalloon,
}

impl QueueName {
    fn queue(self) -> Queue {
        match self {
            QueueName::Forwarding => Queue::Forwarding,
            QueueName::Shutdown => Queue::Shutdown,
            QueueName::StorageBalloon => Queue::StorageBalloon,
        }
    }
}

/// Find ttyd over mDNS; the port file is written then.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtydDiscover {
    /// Counted from the guest's start (the app's boot timeout).
    #[serde(default = "default_boot_timeout")]
    pub within_secs: u64,
}

fn default_boot_timeout() -> u64 {
    60
}

/// TLS handshake with ttyd presenting `identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtydProbe {
    pub identity: Identity,
    pub expect: Expect,
}

/// A command typed into the ttyd shell (the user's terminal).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtydRun {
    pub cmd: String,
    #[serde(default)]
    pub exit: i32,
    #[serde(default)]
    pub output_matches: Option<String>,
    #[serde(default = "default_cmd_secs")]
    pub within_secs: u64,
}

fn default_cmd_secs() -> u64 {
    30
}

/// The agents opened these queues (the forwarding one with the VM's CID)
/// and, when `ports_reported`, the launcher sent a port snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConnected {
    pub queues: Vec<QueueName>,
    #[serde(default)]
    pub ports_reported: bool,
    pub within_secs: u64,
}

/// Optionally runs `sh` in the guest (guest agent), then waits for a
/// `ReportVmActivePorts` that has (`present`) or lacks `port`, within
/// `within_ms` of `sh` returning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestPort {
    #[serde(default)]
    pub sh: Option<String>,
    pub port: u16,
    pub present: bool,
    pub within_ms: u64,
    /// With `present`: the reported owner must be this command.
    #[serde(default)]
    pub comm: Option<String>,
}

/// `bytes` of pseudo-random data through the host's forward of guest
/// `port` and back (the guest runs an echo server), compared by SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRoundtrip {
    pub port: u16,
    pub bytes: u64,
    pub within_secs: u64,
}

/// The app's shutdown request; the guest must power itself off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppShutdown {
    pub reason: String,
    pub within_secs: u64,
}

/// Sends `available_bytes = <df / available before any request> - hold_mib`
/// and waits until the guest's `df /` available is that, within a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageBalloon {
    pub hold_mib: u64,
    pub within_secs: u64,
}

/// The app's memory-balloon policy (contract §5) against the real balloon,
/// with time sped up by `[terminal] time_scale`: in the background it takes 10 % of
/// guest RAM, then 5 % more per (scaled) minute up to 50 %; QEMU's balloon
/// and the guest's MemTotal must follow each step; back in the foreground
/// everything is returned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryPolicy {
    /// For reaching 50 %, and again for returning to 0 %.
    pub within_secs: u64,
    #[serde(default = "default_mem_tolerance")]
    pub tolerance_mib: u64,
}

fn default_mem_tolerance() -> u64 {
    64
}

/// Runs `sh` in the guest (guest agent) and keeps its output in the
/// report under `name` (e.g. the agents' idle RSS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNote {
    pub name: String,
    pub sh: String,
}

/// The app's side for one scenario run.
pub struct Session {
    host: TerminalHost,
    tty: Option<TtydClient>,
    other: Option<ClientCert>,
    /// `df /` available (bytes) and cluster size before the first storage
    /// request.
    storage_base: Option<(u64, u64)>,
    /// `[terminal] time_scale`, which the host's policies run at.
    time_scale: f64,
}

impl Session {
    /// Starts the host against a VM that is still paused.
    pub async fn start(opts: &TerminalOptions, vm: &Vm) -> Result<Session> {
        if vm.tap().is_none() {
            // Measured: slirp's UDP hostfwd to guest 5353 puts frames on the
            // guest's NIC, but its IP layer delivers none of them, so the
            // app could never find ttyd.
            bail!(
                "{}: the Terminal app's host side needs net = \"tap\" (mDNS does not work over QEMU user-mode networking)",
                vm.spec().source.display()
            );
        }
        let internal = vm
            .share_dir(ShareTag::Internal)
            .ok_or_else(|| {
                anyhow!(
                    "{}: no internal share (sharedPath other than /storage/emulated)",
                    vm.spec().source.display()
                )
            })?
            .to_owned();
        let mut cfg = TerminalHostConfig::android16(
            &internal,
            VsockEndpoint {
                uds: vm.vsock_uds(),
                guest_cid: vm.guest_cid(),
            },
            vm.host_bind(0),
            MdnsTransport::Multicast {
                interface: vm.gateway(),
            },
        );
        cfg.guest_net = vm.guest_net();
        cfg.host_ports = HostPorts::Ephemeral;
        cfg.boot_timeout = Duration::from_secs(default_boot_timeout()).mul_f64(scale());
        cfg.time_scale = opts.time_scale;
        if opts.stale_port_file {
            // A port that was free a moment ago: nothing answers there.
            let stale = vm
                .guest_net()
                .tcp_listen(vm.host_bind(0))?
                .local_addr()?
                .port();
            avf_terminal::service::write_port_file(&internal, stale)?;
        }
        let host = TerminalHost::start(cfg)
            .await
            .context("starting the Terminal app's host side")?;
        Ok(Session {
            host,
            tty: None,
            other: None,
            storage_base: None,
            time_scale: opts.time_scale,
        })
    }

    /// Runs one terminal step; returns what it measured, if anything. On
    /// failure the guest's view (units, journal, sockets) is saved to
    /// `guest-diagnostics.txt` in the artefacts.
    pub async fn step(&mut self, vm: &mut Vm, step: &Step) -> Result<Option<String>> {
        let r = self.step_inner(vm, step).await;
        if r.is_err() && !vm.qemu_exited() {
            save_diagnostics(vm).await;
        }
        r
    }

    async fn step_inner(&mut self, vm: &mut Vm, step: &Step) -> Result<Option<String>> {
        Ok(match step {
            Step::TtydDiscover(s) => Some(self.discover(vm, s).await?),
            Step::TtydProbe(s) => self.probe(s).await.map(|_| None)?,
            Step::TtydRun(s) => self.run(s).await.map(|_| None)?,
            Step::AgentsConnected(s) => self.agents(vm, s).await.map(|_| None)?,
            Step::GuestPort(s) => Some(self.guest_port(vm, s).await?),
            Step::ForwardRoundtrip(s) => Some(self.roundtrip(s).await?),
            Step::AppShutdown(s) => Some(self.shutdown(vm, s).await?),
            Step::StorageBalloon(s) => Some(self.storage(vm, s).await?),
            Step::GuestNote(s) => Some(self.note(vm, s).await?),
            Step::MemoryPolicy(s) => Some(self.memory_policy(vm, s).await?),
            other => bail!("not a terminal step: {other:?}"),
        })
    }

    async fn memory_policy(&self, vm: &Vm, s: &MemoryPolicy) -> Result<String> {
        use avf_terminal::balloon::{
            BACKGROUND_MAX_PERCENT, BACKGROUND_START_PERCENT, BACKGROUND_STEP,
            BACKGROUND_STEP_PERCENT,
        };
        use avf_terminal::AppState;
        let ram = vm.plan().memory_mib * MIB;
        let tol = s.tolerance_mib * MIB;
        let within = Duration::from_secs(s.within_secs).mul_f64(scale());
        let base = (guest_mem_total(vm).await?, vm.qmp().query_balloon().await?);
        if base.1.abs_diff(ram) > tol {
            bail!(
                "balloon already inflated: guest keeps {} of {} MiB",
                base.1 / MIB,
                ram / MIB
            );
        }
        let policy = self.host.memory_policy(vm.memory_balloon(), ram);
        let t0 = Instant::now();
        policy.set_app_state(AppState::Background);
        let max = ram / 100 * BACKGROUND_MAX_PERCENT;
        let (_, low_total) = wait_balloon(vm, ram - max, base, tol, t0 + within).await?;
        let to_max = t0.elapsed();
        let t1 = Instant::now();
        policy.set_app_state(AppState::Foreground);
        let (_, back_total) = wait_balloon(vm, ram, base, tol, t1 + within).await?;
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
        let refused: Vec<String> = self
            .host
            .events()
            .snapshot()
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Refused { method, reason } => {
                    Some(format!("{method} from {:?}: {reason}", r.peer))
                }
                _ => None,
            })
            .collect();
        if let Some(t) = self.tty {
            t.close().await;
        }
        self.host.stop().await;
        if !refused.is_empty() {
            bail!("the host refused calls from the VM: {}", refused.join("; "));
        }
        Ok(())
    }

    pub async fn discover(&mut self, vm: &Vm, s: &TtydDiscover) -> Result<String> {
        let found = self.host.discover_ttyd().await?;
        let since = vm.since_start();
        let limit = Duration::from_secs(s.within_secs).mul_f64(scale());
        if since > limit {
            bail!("ttyd found {since:?} after the guest started, more than {limit:?}");
        }
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
        Ok(format!(
            "ttyd found by mDNS at {} s: {} {}:{}",
            fmt_secs(since),
            found.host,
            found.addr,
            found.port
        ))
    }

    pub async fn probe(&mut self, s: &TtydProbe) -> Result<()> {
        let id = match s.identity {
            Identity::App => Some(self.host.client_cert()),
            Identity::Other => {
                if self.other.is_none() {
                    self.other = Some(ClientCert::generate("not-the-app")?);
                }
                self.other.as_ref()
            }
            Identity::None => None,
        };
        let got = self.host.probe_ttyd(id).await?;
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
        let timeout = Duration::from_secs(s.within_secs).mul_f64(scale());
        if self.tty.is_none() {
            self.tty = Some(self.host.open_terminal(timeout).await?);
        }
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

    pub async fn agents(&self, vm: &Vm, s: &AgentsConnected) -> Result<()> {
        let timeout = Duration::from_secs(s.within_secs).mul_f64(scale());
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
        Ok(())
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
        // A requirement (issue 4: "within 2 s"), not a timeout: not scaled.
        let within = Duration::from_millis(s.within_ms);
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

    pub async fn roundtrip(&self, s: &ForwardRoundtrip) -> Result<String> {
        let timeout = Duration::from_secs(s.within_secs).mul_f64(scale());
        let addrs = self
            .host
            .wait_forwarded(s.port, timeout)
            .await
            .ok_or_else(|| anyhow!("guest port {} not forwarded within {timeout:?}", s.port))?;
        let addr = *addrs
            .iter()
            .find(|a| a.ip() == IpAddr::from([127, 0, 0, 1]))
            .ok_or_else(|| anyhow!("guest port {} has no 127.0.0.1 listener: {addrs:?}", s.port))?;
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

    pub async fn shutdown(&self, vm: &mut Vm, s: &AppShutdown) -> Result<String> {
        let from = vm.qmp().event_count();
        let t0 = Instant::now();
        match self.host.request_shutdown().await {
            avf_terminal::ShutdownOutcome::Requested => {}
            avf_terminal::ShutdownOutcome::NoStream => {
                bail!("no shutdown stream open: the app would stop the VM hard")
            }
        }
        let within = Duration::from_secs(s.within_secs).mul_f64(scale());
        let r = vm.wait_shutdown(from, t0, within).await?;
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
        let took = self.host.server().send_storage_balloon(want).await;
        if took == 0 {
            bail!("no storage-balloon stream open");
        }
        let deadline = Instant::now() + Duration::from_secs(s.within_secs).mul_f64(scale());
        loop {
            let (avail, _) = df_root(vm).await?;
            if avail.abs_diff(want) <= cluster {
                return Ok(format!(
                    "available_bytes {want}: df / available {avail} (base {base}, cluster {cluster})"
                ));
            }
            if Instant::now() > deadline {
                bail!(
                    "after available_bytes = {want}, df / available is {avail} (off by {} bytes, cluster {cluster}; before any request {base})",
                    avail.abs_diff(want)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn note(&self, vm: &Vm, s: &GuestNote) -> Result<String> {
        let out = guest_sh(vm, &s.sh).await?;
        Ok(format!("{}:\n{}", s.name, out.trim_end()))
    }
}

/// What the guest says about the units the app depends on.
const DIAGNOSTICS: &str = "\
systemctl --no-pager status avahi-daemon avf-ttyd forwarder_guest_launcher shutdown_runner storage_balloon_agent nftables 2>&1
echo; ip -4 addr; ip -4 route; ss -tulpn
echo; ls -la /mnt/internal; cat /mnt/internal/debian_service_port; echo
echo; journalctl -b --no-pager -n 150 -u avahi-daemon -u avf-ttyd -u forwarder_guest_launcher -u shutdown_runner -u storage_balloon_agent -u nftables 2>&1";

async fn save_diagnostics(vm: &Vm) {
    let text =
        match tokio::time::timeout(Duration::from_secs(60), guest_sh_any(vm, DIAGNOSTICS)).await {
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
    use crate::scenario::Scenario;

    fn load(steps: &str) -> Result<Scenario> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            format!("description = \"d\"\npayload = \"debian-direct\"\n{steps}"),
        )?;
        Scenario::load(&f)
    }

    #[test]
    fn terminal_steps_parse_and_imply_the_host() {
        let sc = load(
            "[[steps]]\nkind = \"ttyd_probe\"\nidentity = \"other\"\nexpect = \"refused\"\n\
             [[steps]]\nkind = \"guest_port\"\nport = 8080\npresent = true\nwithin_ms = 2000\n",
        )
        .unwrap();
        assert!(sc.terminal.is_none());
        assert!(sc.steps.iter().all(Step::is_terminal));
        assert!(!load("[[steps]]\nkind = \"boot\"\n").unwrap().steps[0].is_terminal());
    }

    #[test]
    fn bad_terminal_steps_name_the_file_and_field() {
        let e = format!(
            "{:#}",
            load("[[steps]]\nkind = \"ttyd_probe\"\nidentity = \"bogus\"\nexpect = \"refused\"\n")
                .unwrap_err()
        );
        assert!(e.contains("t.toml") && e.contains("bogus"), "{e}");
        let e = format!(
            "{:#}",
            load(
                "[[steps]]\nkind = \"storage_balloon\"\nhold_mib = 1\nwithin_secs = 1\nextra = 2\n"
            )
            .unwrap_err()
        );
        assert!(e.contains("extra"), "{e}");
        let e = format!(
            "{:#}",
            load("[[steps]]\nkind = \"ttyd_run\"\ncmd = \"id\"\noutput_matches = \"(\"\n")
                .unwrap_err()
        );
        assert!(e.contains("output_matches"), "{e}");
    }

    #[test]
    fn pseudo_random_is_deterministic_and_sized() {
        let a = pseudo_random(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a, pseudo_random(1 << 20));
        assert_ne!(a[..4096], a[4096..8192]);
    }
}
