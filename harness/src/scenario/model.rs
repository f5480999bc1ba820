//! A scenario file (TOML): which payload, under which host profile, launch
//! knobs, and steps as data. This module only describes; the bodies live in
//! [`super::steps`] (steps on the VM) and [`super::terminal`] (steps that
//! need the app's host side).
//!
//! To add a step kind: its struct here, one line in the `steps!` list (which
//! side runs it, how it describes itself), and one arm in the runner's
//! dispatch. The compiler checks all three.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use avf_terminal::profile::OnTerminalClosed;
use avf_terminal::HostProfile;
use serde::Deserialize;

use crate::plan::{Firmware, NetMode, Options, VcpuModel};
use crate::timeouts::{self, Scaled};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub file: PathBuf,
    pub description: String,
    /// `<base>-<layout>` under `$AVF_OUT`, e.g. `debian-direct`.
    pub payload: String,
    /// The Android release (and mode) whose app and crosvm to play.
    #[serde(deserialize_with = "profile")]
    pub profile: HostProfile,
    /// `uboot` (default) or `edk2`, when the payload names no kernel.
    #[serde(default)]
    pub firmware: Firmware,
    /// `user` (default) or `tap` (the faithful mode, see [`crate::net`]).
    #[serde(default)]
    pub net: NetMode,
    /// `phone` (default) or `no-pauth` ([`crate::plan::VcpuModel`]).
    #[serde(default)]
    pub vcpu: VcpuModel,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The user refuses the app's all-files-access request.
    #[serde(default)]
    pub deny_all_files_access: bool,
    /// The phone's `/data` size in GiB (the app's pre-boot disk steps).
    #[serde(default)]
    pub phone_storage_gib: Option<u64>,
    /// The phone is an emulator (the app's longer deadlines).
    #[serde(default)]
    pub emulated_device: bool,
    /// A debuggable phone's `/sdcard/linux/cidata.iso` (Android 17: the
    /// AIDL mode whatever the payload carries).
    #[serde(default)]
    pub cidata_override: bool,
    /// The installed `build_id` replaced by this (an older image's).
    #[serde(default)]
    pub installed_build_id: Option<String>,
    /// How the app behaves around the boot (only with app-side steps).
    #[serde(default)]
    pub terminal: Option<TerminalOptions>,
    pub steps: Vec<Step>,
}

fn profile<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HostProfile, D::Error> {
    let name = String::deserialize(d)?;
    HostProfile::by_name(&name).map_err(serde::de::Error::custom)
}

/// Who runs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The harness, on the VM (console, QMP, guest agent, host files).
    Vm,
    /// The Terminal app's host side (started for the scenario when any
    /// step is of this side).
    App,
}

/// Declares [`Step`] from one list: variant, struct, side, and how the step
/// describes itself (one line for progress and errors).
macro_rules! steps {
    ($($(#[$doc:meta])* $variant:ident($ty:ident) => $side:ident, |$s:ident| $describe:expr;)+) => {
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
        pub enum Step {
            $($(#[$doc])* $variant($ty),)+
        }

        impl Step {
            pub fn side(&self) -> Side {
                match self {
                    $(Step::$variant(_) => Side::$side,)+
                }
            }
            pub fn describe(&self) -> String {
                match self {
                    $(Step::$variant($s) => $describe,)+
                }
            }
        }
    };
}

steps! {
    /// Wait for `AVF-BOOT-OK <build_id>` and the guest agent.
    Boot(Boot) => Vm, |_s| "boot".into();
    /// The guest's package manager installs a package from a repository
    /// the harness serves.
    PackageInstall(PackageInstall) => Vm, |s| format!("package_install {}", s.package);
    /// The guest's package manager upgrades linux-avf to the built one
    /// repackaged under a newer package release, from a repository the
    /// harness serves.
    KernelUpdate(KernelUpdate) => Vm, |s| format!("kernel_update pkgrel {}", s.pkgrel);
    /// `sh -c` in the guest through the agent.
    Exec(Exec) => Vm, |s| format!("exec `{}`", s.sh.lines().next().unwrap_or_default());
    /// Golden snapshot of the console transcript so far.
    ConsoleSnapshot(ConsoleSnapshot) => Vm, |s| format!("console_snapshot {}", s.name);
    /// Balloon the guest down to a fraction of its memory.
    Balloon(Balloon) => Vm, |s| format!("balloon {}", s.fraction);
    /// `system_powerdown`; SHUTDOWN with `reason` and QEMU gone in time.
    Powerdown(Powerdown) => Vm, |_s| "powerdown".into();
    /// `e2fsck -n` on the host on a partition file (VM must be stopped).
    HostFsck(HostFsck) => Vm, |s| format!("host_fsck {}", s.label);
    /// The TAP mode's DHCP lease, route and DNS.
    TapNetwork(TapNetwork) => Vm, |s| format!("tap_network resolve {}", s.resolve);
    /// Runs `sh` in the guest and keeps its output as a note.
    GuestNote(GuestNote) => Vm, |s| format!("guest_note {}", s.name);
    TtydDiscover(TtydDiscover) => App, |_s| "ttyd_discover".into();
    TtydProbe(TtydProbe) => App, |s| format!("ttyd_probe {:?} {:?}", s.identity, s.expect);
    TtydRun(TtydRun) => App, |s| format!("ttyd_run `{}`", s.cmd);
    /// AIDL mode: a page load through the app's ttyd bridge.
    TtydBridgeProbe(TtydBridgeProbe) => App, |s| format!("ttyd_bridge_probe {:?} → {}", s.token, s.status);
    /// AIDL mode: `updateClipboard` then `readClipboard`.
    Clipboard(Clipboard) => App, |s| format!("clipboard {:?}", s.text);
    AgentsConnected(AgentsConnected) => App, |s| format!("agents_connected {:?}", s.queues);
    GuestPort(GuestPort) => App, |s| format!("guest_port {} present={}", s.port, s.present);
    ForwardRoundtrip(ForwardRoundtrip) => App, |s| format!("forward_roundtrip {} bytes", s.bytes);
    AppShutdown(AppShutdown) => App, |_s| "app_shutdown".into();
    StorageBalloon(StorageBalloon) => App, |s| format!("storage_balloon hold {} MiB", s.hold_mib);
    MemoryPolicy(MemoryPolicy) => App, |_s| "memory_policy".into();
    /// The app stops the VM, does what the user asked between runs, and
    /// starts it again through its whole start sequence.
    AppRestart(AppRestart) => App, |s| format!("app_restart stop={:?}{}{}", s.stop,
        s.resize_mib.map(|m| format!(" resize={m}MiB")).unwrap_or_default(),
        if s.upgrade_reset { " upgrade_reset" } else { "" });
    /// Kills one part of the running VM (a sidecar, or a guest unit's
    /// main process) and checks how the rest takes it.
    Fault(Fault) => Vm, |s| format!("fault kill {}", s.kill);
    /// The guest reboots itself (`systemctl reboot`, what `sudo reboot` in
    /// the terminal does); the VM stops as crosvm's does on a reboot, and
    /// the app reacts as its profile says (closes, or starts it again).
    GuestReboot(GuestReboot) => Vm, |_s| "guest_reboot".into();
    /// Makes the guest kernel panic; the harness must see it at once.
    ExpectPanic(ExpectPanic) => Vm, |_s| "expect_panic".into();
    /// Power cuts at random points of a write burst, each followed by the
    /// app's start and a check of every file fsynced before any cut.
    PowerCuts(PowerCuts) => Vm, |s| format!("power_cuts {}", s.cuts);
}

// ---- steps on the VM ----

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Power-on to the marker; the wait itself is the boot timeout.
    #[serde(default, rename = "max_secs", deserialize_with = "timeouts::opt_secs")]
    pub max: Option<Scaled>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub sh: String,
    #[serde(default)]
    pub exit: i32,
    /// Regex the stdout must match.
    #[serde(default)]
    pub stdout_matches: Option<String>,
    /// Golden snapshot of the (filtered) stdout.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageInstall {
    /// With apt: a package the harness builds (`dpkg-deb`); with pacman:
    /// one of ours in `out/repo`.
    pub package: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelUpdate {
    /// The package release of the repackaged linux-avf (`kernel/repack.sh
    /// --pkgrel`): the same kernel build, a newer package.
    pub pkgrel: u32,
    /// What the package manager's output (stdout and stderr: the hook's
    /// message) must match.
    #[serde(default)]
    pub output_matches: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSnapshot {
    pub name: String,
    /// Lines matching any of these are dropped (racy ordering etc.).
    #[serde(default)]
    pub drop: Vec<String>,
    /// When set, only lines matching one of these are kept.
    #[serde(default)]
    pub keep: Vec<String>,
    /// Sort the kept lines and drop repeats: a set, for what races in
    /// order but not in membership (units started at boot).
    #[serde(default)]
    pub sort_unique: bool,
}

/// Set the balloon so the guest has `fraction` of its memory, wait for
/// QEMU to report it and the guest's MemTotal to follow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    pub fraction: f64,
    #[serde(default = "default_tolerance")]
    pub tolerance_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Powerdown {
    pub reason: String,
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
}

/// `within_secs`: from the command to QEMU's exit (the guest's whole
/// shutdown); a restart's boot has the boot timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestReboot {
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFsck {
    pub label: String,
}

/// The guest took a DHCP lease on the run's /24, routes by default via the
/// host, and resolves a name the harness's DNS server serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapNetwork {
    /// A name the harness's DNS server answers with the host's address.
    #[serde(default = "default_host_name")]
    pub resolve: String,
    /// Time for the lease and the route to appear, from this step's start.
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
}

/// Runs `sh` in the guest (guest agent) and keeps its output in the
/// report under `name` (e.g. the agents' idle RSS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNote {
    pub name: String,
    pub sh: String,
}

// ---- steps of the app's host side ----

/// Scenario-level `[terminal]`: how the app behaves around the boot.
#[derive(Debug, Clone, Deserialize)]
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
    /// The `boot_timeout_secs` the app reads from the VM's config, in
    /// place of the profile's (the app's AIDL/mDNS deadline).
    #[serde(default)]
    pub boot_timeout_secs: Option<u64>,
}

/// Which access token a bridge probe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeToken {
    /// The app's.
    App,
    /// A fresh UUID the bridge never made.
    Other,
    /// No cookie at all.
    None,
}

/// Loads the terminal page through the app's vsock bridge with `token`;
/// the answer must be HTTP `status` (403 refused, 200 ttyd's page).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtydBridgeProbe {
    pub token: BridgeToken,
    pub status: u16,
    #[serde(
        default = "default_cmd_time",
        rename = "within_secs",
        deserialize_with = "timeouts::secs"
    )]
    pub within: Scaled,
}

/// `updateClipboard(text)`, then `readClipboard()` until it gives `expect`
/// (default: `text`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clipboard {
    pub text: String,
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(
        default = "default_cmd_time",
        rename = "within_secs",
        deserialize_with = "timeouts::secs"
    )]
    pub within: Scaled,
}

/// An outcome the app shows instead of a terminal, as a step may expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppError {
    /// [`crate::scenario::terminal::StartTimeout`] (AIDL mode, no
    /// `Running`).
    StartTimeout,
    /// [`crate::app::DiscoveryTimeout`] (mDNS modes).
    DiscoveryTimeout,
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

/// Find ttyd over mDNS; the port file is written then.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtydDiscover {
    /// Counted from the guest's start; the discovery gives up then.
    /// Default: the profile's discovery deadline.
    #[serde(
        default,
        rename = "within_secs",
        deserialize_with = "timeouts::opt_secs"
    )]
    pub within: Option<Scaled>,
    /// The step passes only if the app fails this way.
    #[serde(default)]
    pub expect_error: Option<AppError>,
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
    #[serde(
        default = "default_cmd_time",
        rename = "within_secs",
        deserialize_with = "timeouts::secs"
    )]
    pub within: Scaled,
}

/// The agents opened these queues (the forwarding one with the VM's CID)
/// and, when `ports_reported`, the launcher sent a port snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConnected {
    pub queues: Vec<QueueName>,
    #[serde(default)]
    pub ports_reported: bool,
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
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
    #[serde(rename = "within_ms", deserialize_with = "timeouts::millis")]
    pub within: Scaled,
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
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
}

/// The app's shutdown request; the guest must power itself off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppShutdown {
    pub reason: String,
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
}

/// Sends `available_bytes = <df / available before any request> - hold_mib`
/// and waits until the guest's `df /` available is that, within a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageBalloon {
    pub hold_mib: u64,
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
}

/// The app's memory-balloon policy (contract §5) against the real balloon,
/// with time sped up by `[terminal] time_scale`: in the background it takes
/// 10 % of guest RAM, then 5 % more per (scaled) minute up to 50 %; QEMU's
/// balloon and the guest's MemTotal must follow each step; back in the
/// foreground everything is returned.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryPolicy {
    /// For reaching 50 %, and again for returning to 0 %.
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
    #[serde(default = "default_tolerance")]
    pub tolerance_mib: u64,
}

/// How a run ends before the app's next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    /// The app's own stop (the profile's: shutdown request, the grace ×
    /// the TCG factor, then a hard stop).
    App,
    /// QEMU SIGKILLed mid-run: a crash or a power cut.
    Kill,
    /// The VM has already gone (e.g. after `app_shutdown`).
    Exited,
}

/// How the app's own stop must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// The guest powered off inside the grace.
    InGrace,
    /// The grace ran out (or no shutdown stream was open): stopped hard.
    Hard,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRestart {
    pub stop: StopKind,
    /// With `stop = "app"`: how the stop must end.
    #[serde(default)]
    pub expect: Option<StopOutcome>,
    /// Before the next start, ROOT's ext4 must have no journal to replay
    /// and be marked clean (a shutdown that completed).
    #[serde(default)]
    pub expect_clean_fs: bool,
    /// The settings' disk size, applied by the next start's disk steps.
    #[serde(default)]
    pub resize_mib: Option<u64>,
    /// The Upgrade screen's button: `root_part` becomes
    /// `root_part_backup`, the image is installed again.
    #[serde(default)]
    pub upgrade_reset: bool,
}

// ---- faults ----

/// What a `fault` step kills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultTarget {
    /// A process of the VM's group by its name (`virtiofsd-android`,
    /// `virtiofsd-internal`, `vhost-device-vsock`), SIGKILLed by the host.
    Sidecar(String),
    /// A guest systemd unit's main process, SIGKILLed through the guest
    /// agent (`guest-agent:<unit>`).
    GuestUnit(String),
}

impl std::fmt::Display for FaultTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultTarget::Sidecar(n) => f.write_str(n),
            FaultTarget::GuestUnit(u) => write!(f, "guest-agent:{u}"),
        }
    }
}

impl std::str::FromStr for FaultTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        };
        match s.strip_prefix("guest-agent:") {
            Some(u) if name_ok(u) => Ok(FaultTarget::GuestUnit(u.to_string())),
            Some(u) => Err(format!("bad unit name {u:?}")),
            None if name_ok(s) && s != "qemu" => Ok(FaultTarget::Sidecar(s.to_string())),
            None => Err(format!(
                "kill = {s:?}: expected a sidecar (virtiofsd-android, virtiofsd-internal, vhost-device-vsock) or guest-agent:<unit>"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for FaultTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Kills `kill`, then checks each expectation given, each within
/// `within_secs` of the kill. The guest agent must answer afterwards (the
/// VM itself keeps running) unless `vm_survives = false`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub kill: FaultTarget,
    /// `guest-agent:` faults: systemd runs the unit again, under a new
    /// main PID.
    #[serde(default)]
    pub restarted: bool,
    /// DebianService queues whose stream must close and open again.
    #[serde(default)]
    pub reconnects: Vec<QueueName>,
    /// A connection through the host's forward of this guest port, opened
    /// (and echoing) before the kill, must end with an error or EOF after
    /// it, not hang.
    #[serde(default)]
    pub open_forward_fails: Option<u16>,
    /// The app's open ttyd session must end (not hang). Then the app
    /// answers as its release does (`HostProfile::on_terminal_closed`):
    /// Android 15 QPR2's page connects again on the next `ttyd_run`;
    /// Android 16 and 17 close that tab, their last, and stop the VM
    /// (`vm_survives = false`; `expect_stop` says how the stop must end).
    #[serde(default)]
    pub ttyd_session_ends: bool,
    /// When the fault makes the app stop the VM: how that stop must end.
    #[serde(default)]
    pub expect_stop: Option<StopOutcome>,
    /// Guest `sh` run after the kill (and the checks above); must exit 0.
    #[serde(default)]
    pub then_sh: Option<String>,
    #[serde(default = "yes")]
    pub vm_survives: bool,
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
}

impl Fault {
    /// Under a profile whose app closes its last tab when the terminal's
    /// connection ends (Android 16, 17), a fault that ends the session
    /// stops the VM: the checks that need it running cannot follow, and
    /// `expect_stop` only means something there. The error starts with
    /// the field at fault.
    pub fn check_terminal_closed(&self, profile: &HostProfile) -> Result<(), String> {
        let closes = profile.on_terminal_closed == OnTerminalClosed::CloseTab;
        let release = profile.release;
        if self.expect_stop.is_some() && !(self.ttyd_session_ends && closes) {
            return Err(format!(
                "expect_stop: this fault does not make the {release} app stop the VM \
                 (only its terminal's connection closing does, under Android 16 and 17: ttyd_session_ends)"
            ));
        }
        let needs_vm = self.vm_survives
            || self.restarted
            || !self.reconnects.is_empty()
            || self.then_sh.is_some();
        if self.ttyd_session_ends && closes && needs_vm {
            return Err(format!(
                "ttyd_session_ends: the {release} app closes the tab whose connection ended, its last one, \
                 and stops the VM; set vm_survives = false (and expect_stop), without restarted, \
                 reconnects or then_sh"
            ));
        }
        Ok(())
    }
}

/// Runs `sh` (which must make the guest kernel panic, e.g.
/// `echo c > /proc/sysrq-trigger` in the background) while a console wait
/// that would otherwise run to the boot timeout is pending: the wait must
/// fail naming the panic within `within_secs`; then QEMU must stop with a
/// SHUTDOWN of `reason` within `exit_within_secs` of the trigger (the
/// guest's panic reboot, which `-no-reboot` turns into QEMU's exit).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectPanic {
    pub sh: String,
    pub reason: String,
    #[serde(rename = "within_secs", deserialize_with = "timeouts::secs")]
    pub within: Scaled,
    #[serde(rename = "exit_within_secs", deserialize_with = "timeouts::secs")]
    pub exit_within: Scaled,
}

/// `cuts` times: a write burst in the guest (64 KiB files, each fsynced,
/// then its checksum appended to a fsynced manifest), a random wait of
/// `min_ms`..`max_ms`, QEMU SIGKILLed, the app's start (its pre-boot disk
/// steps), the boot; then every file in every manifest so far must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerCuts {
    pub cuts: u32,
    #[serde(default = "default_cut_min")]
    pub min_ms: u64,
    #[serde(default = "default_cut_max")]
    pub max_ms: u64,
    /// Random seed of the cut points (default: from the clock; the note
    /// names the one used).
    #[serde(default)]
    pub seed: Option<u64>,
}

fn yes() -> bool {
    true
}
fn default_cut_min() -> u64 {
    500
}
fn default_cut_max() -> u64 {
    3000
}
fn default_tolerance() -> u64 {
    64
}
fn default_host_name() -> String {
    crate::net::HOST_DNS_NAME.to_string()
}
/// As with no `[terminal]` table: the app as it is, in real time.
impl Default for TerminalOptions {
    fn default() -> Self {
        TerminalOptions {
            stale_port_file: false,
            time_scale: real_time(),
            boot_timeout_secs: None,
        }
    }
}

fn real_time() -> f64 {
    1.0
}
fn default_cmd_time() -> Scaled {
    Scaled::secs(30)
}

impl Scenario {
    pub fn load(file: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut s: Scenario = toml::from_str(&text)
            .with_context(|| format!("{}: invalid scenario", file.display()))?;
        s.name = file
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        s.file = file.to_owned();
        for (i, st) in s.steps.iter().enumerate() {
            let bad_re = |re: &str, what: &str| {
                regex::Regex::new(re)
                    .map(drop)
                    .with_context(|| format!("{}: steps[{i}].{what}: bad regex", file.display()))
            };
            match st {
                Step::Exec(Exec {
                    stdout_matches: Some(r),
                    ..
                }) => bad_re(r, "stdout_matches")?,
                Step::TtydRun(TtydRun {
                    output_matches: Some(r),
                    ..
                }) => bad_re(r, "output_matches")?,
                Step::KernelUpdate(KernelUpdate {
                    output_matches: Some(r),
                    ..
                }) => bad_re(r, "output_matches")?,
                Step::KernelUpdate(KernelUpdate { pkgrel: 0, .. }) => {
                    anyhow::bail!("{}: steps[{i}].pkgrel: must be >= 1", file.display())
                }
                Step::ConsoleSnapshot(c) => {
                    for r in &c.drop {
                        bad_re(r, "drop")?;
                    }
                    for r in &c.keep {
                        bad_re(r, "keep")?;
                    }
                }
                Step::PowerCuts(p) if p.cuts == 0 || p.min_ms > p.max_ms => {
                    anyhow::bail!(
                        "{}: steps[{i}]: power_cuts needs cuts >= 1 and min_ms <= max_ms",
                        file.display()
                    )
                }
                Step::Fault(f) if f.restarted && !matches!(f.kill, FaultTarget::GuestUnit(_)) => {
                    anyhow::bail!(
                        "{}: steps[{i}].restarted: only for guest-agent:<unit> faults",
                        file.display()
                    )
                }
                Step::Balloon(b) if !(0.05..=1.0).contains(&b.fraction) => {
                    anyhow::bail!(
                        "{}: steps[{i}].fraction: {} (expected 0.05 ..= 1.0)",
                        file.display(),
                        b.fraction
                    )
                }
                _ => {}
            }
            if let Step::Fault(f) = st {
                f.check_terminal_closed(&s.profile)
                    .map_err(|e| anyhow::anyhow!("{}: steps[{i}].{e}", file.display()))?;
            }
        }
        Ok(s)
    }

    /// Whether any step needs the app's host side.
    pub fn needs_app(&self) -> bool {
        self.terminal.is_some() || self.steps.iter().any(|s| s.side() == Side::App)
    }

    /// How the app's host side runs for this scenario, if it needs one.
    pub fn app_options(&self) -> Option<TerminalOptions> {
        self.needs_app()
            .then(|| self.terminal.clone().unwrap_or_default())
    }

    /// The launch knobs this scenario sets.
    pub fn options(&self) -> Options {
        Options {
            profile: self.profile.clone(),
            firmware: self.firmware,
            net: self.net,
            vcpu: self.vcpu,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            deny_all_files_access: self.deny_all_files_access,
            phone_storage_gib: self.phone_storage_gib,
            emulated_device: self.emulated_device,
            cidata_override: self.cidata_override,
            installed_build_id: self.installed_build_id.clone(),
        }
    }

    /// The payload dir (or the error naming the command that builds it).
    pub fn payload_dir(&self) -> Result<PathBuf> {
        let (base, layout) = self.payload.split_once('-').with_context(|| {
            format!(
                "{}: payload {:?} (expected <base>-<layout>)",
                self.file.display(),
                self.payload
            )
        })?;
        crate::payload::built_payload(base, layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rest: &str) -> Result<Scenario> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            format!(
                "description = \"d\"\npayload = \"debian-direct\"\nprofile = \"android16\"\n{rest}"
            ),
        )?;
        Scenario::load(&f)
    }

    #[test]
    fn a_closed_terminal_fault_says_what_the_profiles_app_does() {
        let ttyd = "[[steps]]\nkind = \"fault\"\nkill = \"guest-agent:avf-ttyd\"\nttyd_session_ends = true\nwithin_secs = 30\n";
        // Android 16 stops the VM: the VM cannot be checked afterwards.
        let e = format!("{:#}", load(ttyd).unwrap_err());
        assert!(
            e.contains("steps[0].ttyd_session_ends") && e.contains("vm_survives = false"),
            "{e}"
        );
        load(&format!(
            "{ttyd}vm_survives = false\nexpect_stop = \"in_grace\"\n"
        ))
        .unwrap();
        // 15 QPR2's page reconnects: no stop to expect.
        let a15 = |rest: &str| {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("t.toml");
            std::fs::write(&f, format!("description = \"d\"\npayload = \"debian-direct\"\nprofile = \"android15-qpr2\"\n{rest}")).unwrap();
            Scenario::load(&f)
        };
        a15(&format!("{ttyd}restarted = true\n")).unwrap();
        let e = format!(
            "{:#}",
            a15(&format!("{ttyd}expect_stop = \"in_grace\"\n")).unwrap_err()
        );
        assert!(
            e.contains("steps[0].expect_stop") && e.contains("Android 15 QPR2"),
            "{e}"
        );
    }

    #[test]
    fn app_steps_parse_and_imply_the_host() {
        let sc = load(
            "[[steps]]\nkind = \"ttyd_probe\"\nidentity = \"other\"\nexpect = \"refused\"\n\
             [[steps]]\nkind = \"guest_port\"\nport = 8080\npresent = true\nwithin_ms = 2000\n",
        )
        .unwrap();
        assert!(sc.terminal.is_none());
        assert!(sc.steps.iter().all(|s| s.side() == Side::App));
        assert!(sc.needs_app());
        let plain = load("[[steps]]\nkind = \"boot\"\n[[steps]]\nkind = \"guest_note\"\nname = \"n\"\nsh = \"true\"\n").unwrap();
        assert!(!plain.needs_app(), "plain steps start no app host");
        let Step::GuestPort(p) = &sc.steps[1] else {
            panic!("{:?}", sc.steps[1])
        };
        assert_eq!(p.within.base(), std::time::Duration::from_millis(2000));
    }

    #[test]
    fn bad_steps_and_profiles_name_the_file_and_field() {
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
        let e = format!(
            "{:#}",
            load("[[steps]]\nkind = \"kernel_update\"\npkgrel = 0\n").unwrap_err()
        );
        assert!(e.contains("t.toml") && e.contains("steps[0].pkgrel"), "{e}");
        let e = format!(
            "{:#}",
            load("[[steps]]\nkind = \"kernel_update\"\npkgrel = 2\noutput_matches = \"[\"\n")
                .unwrap_err()
        );
        assert!(e.contains("steps[0].output_matches"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "description = \"d\"\npayload = \"debian-direct\"\nprofile = \"android99\"\nsteps = []\n",
        )
        .unwrap();
        let e = format!("{:#}", Scenario::load(&f).unwrap_err());
        assert!(e.contains("p.toml") && e.contains("android99"), "{e}");
    }
}
