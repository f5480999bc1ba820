//! [`HostProfile`]: what the phone does for one Android release (and mode),
//! as data. Everything release-specific that the host side or the harness's
//! plan does reads it from here; nothing else knows a release. Each field
//! names the app class it follows.
//!
//! Filled: `android16` (the Google build's app) and `android15-qpr2` (the
//! late Java app), from docs/terminal-app.md; Android 17's two modes,
//! `android17-grpc` and `android17-aidl` (issue 13), from
//! docs/android-releases.md. Which mode the Android 17 app picks for a
//! payload is [`android17_mode`].

use std::net::Ipv4Addr;
use std::time::Duration;

pub use crate::wire::PortReportForm;

/// How the app reaches the guest's services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The guest's agents call a gRPC DebianService on the host whose port
    /// they read from a file in the internal share; the app finds ttyd over
    /// mDNS and opens it with TLS and a client certificate whose public
    /// half it leaves in the internal share (`MainActivity`,
    /// `DebianServiceImpl`, `CertificateUtils`).
    GrpcPortFile {
        /// The port file's name in the internal share.
        port_file: &'static str,
        /// When the app writes it.
        port_file_written: PortFileWritten,
        /// How the app finds ttyd (and the one gRPC peer it accepts).
        ttyd: TtydLocator,
        /// ttyd's TCP port in the guest.
        ttyd_port: u16,
    },
    /// The app starts the gRPC DebianService before the VM and puts its
    /// port on the kernel command line (`<param>=<port>`); no share
    /// carries it. ttyd is still found over mDNS and loaded over TLS with
    /// the client certificate, whose `ca.crt` the guest cannot see
    /// (`VmLauncherService`/`VmController`, after-16 and the Android 17
    /// gRPC mode; docs/android-releases.md).
    GrpcKernelParam {
        param: &'static str,
        ttyd: TtydLocator,
        ttyd_port: u16,
        /// The flag `terminalVmCommunicationRefactoring`: with it, and an
        /// image whose build id is at least the minimum, the app's terminal
        /// goes through its vsock bridge in this mode too (mDNS still has to
        /// find the VM, for the gRPC peer check, or the start fails).
        ttyd_vsock_flag: bool,
        ttyd_vsock_min_build_id: i32,
    },
    /// Android 17's AIDL mode (docs/android-releases.md §2, §3.3): no
    /// gRPC, no mDNS. virtmgr serves `IVirtualMachineService` per VM; the
    /// guest registers its agent there, the app then connects the guest's
    /// `IDebianService` (vsock 4000). ttyd is reached only through the
    /// app's vsock bridge, and only when `canUseTtydOverVsock()`; else the
    /// start times out. `<param>=0` goes on the kernel command line.
    RpcBinder {
        param: &'static str,
        /// The flag `terminalVmCommunicationRefactoring`.
        ttyd_vsock_flag: bool,
        /// `FIRST_VERSION_SUPPORTS_TTYD_VSOCK`.
        ttyd_vsock_min_build_id: i32,
    },
}

/// `FIRST_VERSION_SUPPORTS_TTYD_VSOCK` (`VmController`).
pub const FIRST_VERSION_SUPPORTS_TTYD_VSOCK: i32 = 5106;

/// The image's build id as a number (`InstalledImage.buildInfo?.buildId`,
/// 0 when absent or unparsable). The app's parser was not found
/// (docs/android-releases.md §1 row 9); read here as the upgrade gate
/// reads `build_id`: the first line's last space-separated token.
pub fn build_id_number(file: Option<&str>) -> i32 {
    file.and_then(|t| t.lines().next())
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

impl Transport {
    /// How the app finds ttyd, and ttyd's port in the guest.
    pub fn ttyd(&self) -> (TtydLocator, u16) {
        match *self {
            Transport::GrpcPortFile {
                ttyd, ttyd_port, ..
            }
            | Transport::GrpcKernelParam {
                ttyd, ttyd_port, ..
            } => (ttyd, ttyd_port),
            Transport::RpcBinder { .. } => (TtydLocator::VsockBridge, crate::ttyd::TTYD_PORT),
        }
    }

    /// Whether this is the AIDL mode.
    pub fn is_rpc_binder(&self) -> bool {
        matches!(self, Transport::RpcBinder { .. })
    }

    /// `canUseTtydOverVsock()` for an image with this `build_id` file
    /// (`None`: missing): Android 17's flag on and the number at least
    /// [`FIRST_VERSION_SUPPORTS_TTYD_VSOCK`], in either of its modes (the
    /// app's check looks at no mode). Android 15/16 have no bridge.
    pub fn can_use_ttyd_over_vsock(&self, build_id: Option<&str>) -> bool {
        self.ttyd_vsock()
            .is_some_and(|(flag, min)| flag && build_id_number(build_id) >= min)
    }

    /// The build id below which the app has no bridge (0: no bridge at all).
    pub fn ttyd_vsock_min_build_id(&self) -> i32 {
        self.ttyd_vsock().map_or(0, |(_, min)| min)
    }

    /// Android 17's bridge settings: the flag and the minimum build id.
    fn ttyd_vsock(&self) -> Option<(bool, i32)> {
        match *self {
            Transport::RpcBinder {
                ttyd_vsock_flag,
                ttyd_vsock_min_build_id,
                ..
            }
            | Transport::GrpcKernelParam {
                ttyd_vsock_flag,
                ttyd_vsock_min_build_id,
                ..
            } => Some((ttyd_vsock_flag, ttyd_vsock_min_build_id)),
            Transport::GrpcPortFile { .. } => None,
        }
    }

    /// When the app writes the port file, if it writes one.
    pub fn port_file_written(&self) -> Option<PortFileWritten> {
        match *self {
            Transport::GrpcPortFile {
                port_file_written, ..
            } => Some(port_file_written),
            Transport::GrpcKernelParam { .. } | Transport::RpcBinder { .. } => None,
        }
    }

    /// The kernel parameter that carries the DebianService port, if that
    /// is how the app hands it over (in the AIDL mode it is there, as 0).
    pub fn kernel_param(&self) -> Option<&'static str> {
        match *self {
            Transport::GrpcKernelParam { param, .. } | Transport::RpcBinder { param, .. } => {
                Some(param)
            }
            Transport::GrpcPortFile { .. } => None,
        }
    }

    /// Whether the app runs a gRPC DebianService (not in the AIDL mode).
    pub fn has_grpc_service(&self) -> bool {
        !self.is_rpc_binder()
    }
}

/// When the app writes the DebianService port file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortFileWritten {
    /// When the VM starts (late Java `VmLauncherService`).
    AtStart,
    /// Once mDNS has found ttyd (Android 16 `VmLauncherService.doStart`).
    AfterDiscovery,
}

/// How the app finds the VM's ttyd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtydLocator {
    /// NSD browse for this instance of `_http._tcp`; the first answer's
    /// first address wins, and is the one gRPC peer accepted.
    Mdns { instance: &'static str },
    /// A fixed guest address the app pings (`InetAddress.isReachable`)
    /// until it answers, then loads; the only gRPC peer accepted (late
    /// Java `MainActivity`, `VmLauncherService`).
    Fixed { addr: Ipv4Addr },
    /// No discovery: the app's own loopback bridge to the guest's vsock
    /// 7681 (AIDL mode).
    VsockBridge,
}

/// The guest's address on the phone's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestAddress {
    /// DHCP on a /24 the phone picks per run (tethering).
    Dhcp,
    /// Always this address, the host at `host` (the late Java app
    /// hard-codes 192.168.0.2).
    Fixed { host: Ipv4Addr, guest: Ipv4Addr },
}

/// The virtio-fs shares the app gives the VM (`ConfigJson.SharedPathJson`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    /// The app's files dir as tag `internal` (guest root).
    pub internal: bool,
    /// The user's storage as tag `android` (guest droid).
    pub android: bool,
}

/// The DebianService calls the app serves (`DebianServiceImpl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcSet {
    /// `ReportVmIpAddr` answers (it does nothing with the address).
    pub report_vm_ip_addr: bool,
    /// `OpenStorageBalloonRequestQueue` exists (else UNIMPLEMENTED).
    pub storage_balloon: bool,
    /// How `ReportVmActivePortsRequest.ports` is decoded.
    pub port_report: PortReportForm,
}

/// The client certificate the app makes for ttyd (`CertificateUtils`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertificateShape {
    pub common_name: &'static str,
}

/// What the image's agents and units expect of the host (the guest side of
/// the contract; the agents read these paths and flags, see agents/).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentContract {
    /// The flag the agents' units pass for the DebianService port.
    pub port_flag: &'static str,
    /// Where the guest reads the port.
    pub guest_port_file: &'static str,
}

/// What one virtio-console port (hvc0, hvc1, …) is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsolePort {
    /// Writes into the same file as the first 16550 (ttyS0).
    SharesFirstSerial,
    /// Connected to nothing (crosvm `type=sink`).
    Sink,
    /// A file of its own.
    OwnFile,
}

/// A virtio-input device crosvm gives the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputDevice {
    MultiTouch { width: u32, height: u32 },
    Keyboard,
    Mouse,
    MultiTouchTrackpad { width: u32, height: u32 },
}

/// The display the app configures for the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Display {
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    pub refresh_hz: u32,
}

/// The devices crosvm builds for the Terminal VM, as far as a guest can
/// notice them (`VmLauncherService`, virtualizationservice; measured on a
/// Pixel 10 with Android 16: see docs/device-profile.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSet {
    /// 16550 UARTs (`hardware=serial`): ttyS0 is the console, the others
    /// write files of their own.
    pub serials: u8,
    /// virtio-console ports in order (hvc0, hvc1, …).
    pub consoles: &'static [ConsolePort],
    pub inputs: &'static [InputDevice],
    /// Speaker and microphone (vhost-user sound; the app sets both on every
    /// start).
    pub sound: bool,
    /// The display, when vm_config.json asks for a GPU.
    pub display: Display,
    /// crosvm runs with `--no-pmu`.
    pub pmu: bool,
}

/// The app's check of an installed image's `build_id` before it starts the
/// VM (`InstalledImage.isOlderThanCurrentVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeGate {
    /// The first line's last space-separated token, parsed as a Java int
    /// (unparsable: 0), must be at least this; otherwise the app shows its
    /// Upgrade screen, whose only button replaces `root_part` with
    /// Google's image. A missing file reads as `<no build id>`.
    LastTokenAtLeast(i32),
}

/// What the app does to `root_part` on every start, before it builds the
/// VM's config (`VmLauncherService.doStart` calling into `InstalledImage`;
/// carried out by [`crate::installed_image::InstalledImage::pre_boot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreBootDisk {
    /// Android 16: `VmLauncherService.convertToNonSparseDiskIfNecessary`
    /// (when the apparent size is the "sparse size", roundUp of
    /// `sparse_share_percent` % of the files dir's total bytes, or the
    /// physical size is below `physical_min_percent` % of the apparent
    /// size: `e2fsck -y -f`, `resize2fs -M`, `e2fsck -y -f`), then
    /// `InstalledImage.resize(EXTRA_DISK_SIZE)` (`e2fsck -y -f`, then
    /// `posix_fallocate` when growing, then `resize2fs <img> <MiB>M`).
    Android16 {
        sparse_share_percent: u64,
        physical_min_percent: u64,
    },
    /// The late Java app: nothing on a plain start; a new size from the
    /// settings is applied by `InstalledImage.resize` (nothing when the
    /// size rounded up to 4 MiB is unchanged, else `e2fsck -y -f`,
    /// `posix_fallocate` when growing, `resize2fs <img> <MiB>M`).
    ResizeOnRequest,
    /// Android 17 (`truncateDiskIfNecessary`): when the apparent size is
    /// not roundUp(`sparse_share_percent` % of the files dir's total
    /// bytes, 4 MiB), truncate `root_part` to it (sparse; no e2fsck, no
    /// resize2fs: the guest grows its filesystem online).
    TruncateToShare { sparse_share_percent: u64 },
}

/// What the app shows instead of starting the VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {release} Terminal app would show its Upgrade screen instead of starting the VM: build_id {build_id:?} reads as {read_as}, below {min}")]
pub struct UpgradeScreen {
    pub release: &'static str,
    pub build_id: String,
    pub read_as: i32,
    pub min: i32,
}

/// Where the guest's memory size comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemory {
    /// The payload's `vm_config.json` `memory_mib` (`ConfigJson`'s
    /// `setMemoryBytes`; nothing overrides it).
    FromConfig,
    /// The app's own memory setting, which replaces the json's value at
    /// every start: new2 `VmController.start` sets
    /// `getInt(KEY_MEMORY_MIB, DEFAULT_MEMORY_MIB)` after
    /// `toConfigBuilder`; `SettingsViewModel` has `DEFAULT_MEMORY_MIB =
    /// 1024` (the user may pick 200 MiB to 70 % of the phone's RAM).
    AppSetting { default_mib: u64 },
}

impl GuestMemory {
    /// The guest's memory in MiB, given the payload's `memory_mib`.
    pub fn mib(self, config_mib: u64) -> u64 {
        match self {
            GuestMemory::FromConfig => config_mib,
            GuestMemory::AppSetting { default_mib } => default_mib,
        }
    }
}

/// One release's app and crosvm, as the harness plays them.
#[derive(Clone, Debug, PartialEq)]
pub struct HostProfile {
    /// As scenarios and `--profile` name it.
    pub name: &'static str,
    /// Human name of the release.
    pub release: &'static str,
    pub transport: Transport,
    pub shares: Shares,
    pub rpcs: RpcSet,
    pub certificate: CertificateShape,
    pub agents: AgentContract,
    pub guest_address: GuestAddress,
    pub memory: GuestMemory,
    /// The app inflates the memory balloon while it is in the background
    /// (`MemBalloonController`, Android 16); Android 17's app has no such
    /// policy (no `new2` class uses it; virtmgr may still inflate on
    /// `onTrimMemory`, not played here).
    pub memory_balloon_policy: bool,
    /// `None`: the app starts any installed image.
    pub upgrade_gate: Option<UpgradeGate>,
    /// The disk steps before every start (`VmLauncherService`,
    /// `InstalledImage`).
    pub pre_boot: PreBootDisk,
    /// How long the app waits, from the VM's start, to find ttyd before it
    /// shows its error screen, on a phone (`VmLauncherService`'s
    /// `VM_BOOT_TIMEOUT_SECONDS`) …
    pub discovery_deadline: Duration,
    /// … and on an emulated device (`ro.product.vendor.device` starting
    /// with `vsoc_` or `emu64`): the app's own allowance for slow VMs.
    pub discovery_deadline_emulated: Duration,
    /// Android 17: the deadline is the config's `boot_timeout_secs` where
    /// it has one (× 10 on emulated devices), the two above otherwise.
    pub deadline_from_config: bool,
    /// How the app stops the VM.
    pub stop: AppStop,
    /// What the app does when the VM stops by itself with crosvm's reboot
    /// status (the guest rebooted, or panicked under `panic=-1`).
    pub on_guest_reboot: OnGuestReboot,
    /// What the app does when its terminal tab's connection to ttyd ends
    /// (the shell exited, ttyd died or restarted, the bridge dropped).
    pub on_terminal_closed: OnTerminalClosed,
    /// Kernel parameters the host puts before the payload's `params`
    /// (crosvm's own `panic=-1`) …
    pub kernel_params_before: &'static [&'static str],
    /// … and after them (virtualizationservice, the app, the VM's name).
    pub kernel_params_after: &'static [&'static str],
    pub devices: DeviceSet,
}

/// What the app does when ttyd's WebSocket in its terminal tab closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTerminalClosed {
    /// Android 15 QPR2 (the late Java `MainActivity`: a plain
    /// `WebChromeClient`, no script of its own): ttyd's page decides — a
    /// clean close with a code other than 1000 reconnects by itself,
    /// anything else leaves "Press ⏎ to Reconnect".
    TtydPage,
    /// Android 16 and 17: the app's `terminal_disconnect.js` hooks
    /// `console.log`, and ttyd's page logs "[ttyd] websocket connection
    /// closed with code: …" on every close, so the app closes the tab
    /// (`TerminalApp.closeTab()`). The last tab closed stops the VM: 16
    /// `MainActivity.closeTab` → `finish()` → `onDestroy` → the shutdown
    /// intent (`doShutdown`); 17 `TtydView.onSessionDiscard` →
    /// `VmController.requestSessionDiscard` → `MainViewModel.closeTab` →
    /// no sessions left → `stopVm()` → `vm.stop()`.
    CloseTab,
}

/// How the app stops the VM (the notification's close, the settings'
/// restart, uninstall).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppStop {
    /// Android 15 QPR2 and 16 (`VmLauncherService.doShutdown`): one item
    /// on the guest's gRPC shutdown stream, then `grace` for the VM to exit
    /// before `vm.stop()`; `None`: the app lets the VM go in its own time.
    ShutdownRequest { grace: Option<Duration> },
    /// Android 17 (`VmController.stop`): `vm.stop()` straight away, and
    /// virtmgr (`crosvm.rs` `kill`) asks the guest agent registered with
    /// it (`IGuestAgent.shutdownAsync`) and gives the VM `grace` to exit,
    /// or, with no agent registered, kills crosvm at once ("Data might be
    /// corrupted"). The gRPC shutdown stream is never used.
    Virtmgr { grace: Duration },
}

/// What the app does when virtmgr reports `STOP_REASON_REBOOT` (crosvm's
/// reboot exit status: the guest rebooted, or its kernel panicked under
/// crosvm's `panic=-1`; crosvm has no pvpanic device on the phone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnGuestReboot {
    /// Android 15 QPR2 and 16: `Runner.onStopped` completes `exitStatus`
    /// with `true` whatever the reason → `RESULT_STOP` →
    /// `MainActivity.onVmStop` → `finish()`. The app closes; the VM stays
    /// stopped until the user opens the app again.
    CloseApp,
    /// Android 17: `VmController.onStopped(REBOOT)` → `VmState.Rebooting`
    /// → `MainViewModel.restartVm` → `VmController.reset` (Ready) →
    /// `startVm()`: the app's whole start again (disk steps, a new host
    /// server, a new VM), with fresh terminal tabs.
    RestartVm,
}

/// The names [`HostProfile::by_name`] knows, filled or not.
pub const PROFILE_NAMES: &[&str] = &[
    "android16",
    "android15-qpr2",
    "android17-grpc",
    "android17-aidl",
];

/// The profile asked for does not exist, or is not filled in yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("host profile {0:?} is not filled in yet")]
    NotYet(String),
    #[error("unknown host profile {0:?} (known: {known})", known = PROFILE_NAMES.join(", "))]
    Unknown(String),
}

impl HostProfile {
    /// Android 16's Terminal app.
    pub fn android16() -> HostProfile {
        HostProfile {
            name: "android16",
            release: "Android 16",
            transport: Transport::GrpcPortFile {
                port_file: crate::service::PORT_FILE,
                port_file_written: PortFileWritten::AfterDiscovery,
                ttyd: TtydLocator::Mdns {
                    instance: crate::mdns::TTYD_INSTANCE,
                },
                ttyd_port: crate::ttyd::TTYD_PORT,
            },
            shares: Shares {
                internal: true,
                android: true,
            },
            // ReportVmIpAddr is unimplemented in 16's DebianServiceImpl; the
            // storage-balloon queue is served (active where the app's flag
            // is on; the Google build's flag-off body never sends).
            rpcs: RpcSet {
                report_vm_ip_addr: false,
                storage_balloon: true,
                port_report: PortReportForm::ActivePort,
            },
            certificate: CertificateShape {
                common_name: "avf-terminal",
            },
            agents: AgentContract {
                port_flag: "--grpc-port-file",
                guest_port_file: "/mnt/internal/debian_service_port",
            },
            memory: GuestMemory::FromConfig,
            memory_balloon_policy: true,
            guest_address: GuestAddress::Dhcp,
            upgrade_gate: Some(UpgradeGate::LastTokenAtLeast(2025)),
            pre_boot: PreBootDisk::Android16 {
                sparse_share_percent: 95,
                physical_min_percent: 90,
            },
            discovery_deadline: Duration::from_secs(30),
            discovery_deadline_emulated: Duration::from_secs(180),
            deadline_from_config: false,
            stop: AppStop::ShutdownRequest {
                grace: Some(Duration::from_secs(3)),
            },
            on_guest_reboot: OnGuestReboot::CloseApp,
            on_terminal_closed: OnTerminalClosed::CloseTab,
            // The Pixel 10's guest command line (Android 16) is
            // `panic=-1 <params> ds=nocloud arm64.nompam 8250.nr_uarts=4
            // console=ttyS0 debian_server_port=0 gfxstream_enabled
            // hostname=debian coherent_pool=4096`, with `ds=nocloud` and
            // `debian_server_port` only in the cidata/AIDL mode and
            // `gfxstream_enabled` only with the gfxstream GPU backend.
            kernel_params_before: &["panic=-1"],
            kernel_params_after: &[
                "arm64.nompam",
                "8250.nr_uarts=4",
                "console=ttyS0",
                "hostname=debian",
                "coherent_pool=4096",
            ],
            devices: DeviceSet {
                serials: 2,
                consoles: &[
                    ConsolePort::SharesFirstSerial,
                    ConsolePort::Sink,
                    ConsolePort::OwnFile,
                ],
                inputs: &[
                    InputDevice::MultiTouch {
                        width: 1280,
                        height: 720,
                    },
                    InputDevice::Keyboard,
                    InputDevice::Mouse,
                    InputDevice::MultiTouchTrackpad {
                        width: 3000,
                        height: 3000,
                    },
                ],
                sound: true,
                display: Display {
                    width: 1280,
                    height: 720,
                    dpi: 160,
                    refresh_hz: 60,
                },
                pmu: false,
            },
        }
    }

    /// Android 15 QPR2's Terminal app, the late Java era
    /// (docs/terminal-app.md §12): the VM at 192.168.0.2, found by ping,
    /// not mDNS; the port file written at start; ports as `repeated
    /// int32`; `ReportVmIpAddr` answered; no storage-balloon queue; no
    /// upgrade gate; the shutdown request without a hard-stop timer. The
    /// crosvm device set is Android 16's (measured there, unverified for
    /// 15), less the sound device the later apps force on.
    pub fn android15_qpr2() -> HostProfile {
        let a16 = HostProfile::android16();
        HostProfile {
            name: "android15-qpr2",
            release: "Android 15 QPR2",
            transport: Transport::GrpcPortFile {
                port_file: crate::service::PORT_FILE,
                port_file_written: PortFileWritten::AtStart,
                ttyd: TtydLocator::Fixed {
                    addr: Ipv4Addr::new(192, 168, 0, 2),
                },
                ttyd_port: crate::ttyd::TTYD_PORT,
            },
            rpcs: RpcSet {
                report_vm_ip_addr: true,
                storage_balloon: false,
                port_report: PortReportForm::Int32,
            },
            guest_address: GuestAddress::Fixed {
                host: Ipv4Addr::new(192, 168, 0, 1),
                guest: Ipv4Addr::new(192, 168, 0, 2),
            },
            upgrade_gate: None,
            pre_boot: PreBootDisk::ResizeOnRequest,
            // MainActivity's isReachable loop: at most 10 s.
            discovery_deadline: Duration::from_secs(10),
            discovery_deadline_emulated: Duration::from_secs(10),
            stop: AppStop::ShutdownRequest { grace: None },
            on_terminal_closed: OnTerminalClosed::TtydPage,
            devices: DeviceSet {
                sound: false,
                ..a16.devices
            },
            ..a16
        }
    }

    /// Android 17's app in its gRPC mode (a payload that carries its own
    /// `cidata.iso`; docs/android-releases.md): the DebianService port as
    /// `debian_server_port=` on the kernel command line, no `internal`
    /// share (so no port file and no `ca.crt` in the guest), the whole
    /// user storage as `android`, mDNS discovery against the config's
    /// `boot_timeout_secs` (default 60 s; × 10 on emulators), the port
    /// report as `ActivePort`, `root_part` truncated (sparse) to 95 % of
    /// the phone's storage before every start for the guest to grow
    /// online. The upgrade gate is a third party's reading (build year ≥
    /// 2026, unconfirmed in the sources); our `build_id` passes it.
    pub fn android17_grpc() -> HostProfile {
        let a16 = HostProfile::android16();
        HostProfile {
            name: "android17-grpc",
            release: "Android 17 (gRPC mode)",
            transport: Transport::GrpcKernelParam {
                param: "debian_server_port",
                ttyd: TtydLocator::Mdns {
                    instance: crate::mdns::TTYD_INSTANCE,
                },
                ttyd_port: crate::ttyd::TTYD_PORT,
                ttyd_vsock_flag: true,
                ttyd_vsock_min_build_id: FIRST_VERSION_SUPPORTS_TTYD_VSOCK,
            },
            shares: Shares {
                internal: false,
                android: true,
            },
            memory: GuestMemory::AppSetting { default_mib: 1024 },
            memory_balloon_policy: false,
            upgrade_gate: Some(UpgradeGate::LastTokenAtLeast(2026)),
            pre_boot: PreBootDisk::TruncateToShare {
                sparse_share_percent: 95,
            },
            discovery_deadline: Duration::from_secs(60),
            discovery_deadline_emulated: Duration::from_secs(600),
            deadline_from_config: true,
            stop: AppStop::Virtmgr {
                grace: Duration::from_secs(5),
            },
            on_guest_reboot: OnGuestReboot::RestartVm,
            ..a16
        }
    }

    /// Android 17's app in its AIDL mode (a payload without its own
    /// `cidata.iso`, or a debuggable phone's `/sdcard/linux/cidata.iso`;
    /// docs/android-releases.md §3.3): `debian_server_port=0`, the
    /// payload's own `vm_config.json` as it is (the app adds no cidata disk
    /// and no parameter of its own: `ds=nocloud` and the cidata vdb are in
    /// Google's AIDL-mode config, not in the app), only the `android`
    /// share; registration with virtmgr's `IVirtualMachineService`, then
    /// `IDebianService` on vsock 4000; ttyd only through the vsock bridge
    /// when `canUseTtydOverVsock()`, else the start times out after
    /// `boot_timeout_secs` (60 unless the config says; × 10 on emulators);
    /// stop by `vm.stop()`: virtmgr's `shutdownAsync` and 5 s.
    pub fn android17_aidl() -> HostProfile {
        let grpc = HostProfile::android17_grpc();
        HostProfile {
            name: "android17-aidl",
            release: "Android 17 (AIDL mode)",
            transport: Transport::RpcBinder {
                param: "debian_server_port",
                ttyd_vsock_flag: true,
                ttyd_vsock_min_build_id: FIRST_VERSION_SUPPORTS_TTYD_VSOCK,
            },
            ..grpc
        }
    }

    /// The profile named `name` (as in a scenario or on the command line).
    pub fn by_name(name: &str) -> Result<HostProfile, ProfileError> {
        match name {
            "android16" => Ok(HostProfile::android16()),
            "android15-qpr2" => Ok(HostProfile::android15_qpr2()),
            "android17-grpc" => Ok(HostProfile::android17_grpc()),
            "android17-aidl" => Ok(HostProfile::android17_aidl()),
            n if PROFILE_NAMES.contains(&n) => Err(ProfileError::NotYet(n.to_string())),
            n => Err(ProfileError::Unknown(n.to_string())),
        }
    }
}

impl HostProfile {
    /// The app's upgrade gate on the installed `build_id` file's text
    /// (`None`: no such file).
    pub fn check_build_id(&self, file: Option<&str>) -> Result<(), UpgradeScreen> {
        let first = file.map_or("<no build id>", |t| t.lines().next().unwrap_or(""));
        match self.upgrade_gate {
            None => Ok(()),
            Some(UpgradeGate::LastTokenAtLeast(min)) => {
                // Kotlin's split(" ") then last(); Integer.parseInt or 0.
                let last = first.rsplit(' ').next().unwrap_or("");
                let read_as = last.parse::<i32>().unwrap_or(0);
                if read_as < min {
                    return Err(UpgradeScreen {
                        release: self.release,
                        build_id: first.to_string(),
                        read_as,
                        min,
                    });
                }
                Ok(())
            }
        }
    }
}

/// Which mode Android 17's per-image app picks (`ImageArchive`,
/// docs/android-releases.md §1 row 6, §4): a debuggable phone's
/// `/sdcard/linux/cidata.iso` forces AIDL; otherwise a payload that
/// carries its own `cidata.iso` is the gRPC kind, and one without gets the
/// app's bundled cidata and AIDL.
pub fn android17_mode(payload_has_cidata: bool, sdcard_cidata: bool) -> HostProfile {
    if sdcard_cidata || !payload_has_cidata {
        HostProfile::android17_aidl()
    } else {
        HostProfile::android17_grpc()
    }
}

impl Default for HostProfile {
    fn default() -> Self {
        HostProfile::android16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn android16_upgrade_gate_reads_the_last_token_as_an_int() {
        let p = HostProfile::android16();
        for ok in [
            "2026\n",
            "2099",
            "arch-avf aarch64 0.1.0-3 20261129\nmore",
            "+2025",
        ] {
            assert_eq!(p.check_build_id(Some(ok)), Ok(()), "{ok:?}");
        }
        for (bad, read_as) in [
            ("debian/aarch64/0.1.0-25-20261126\n", 0),
            ("eng-kokoro 2024", 2024),
            ("2026 ", 0),
            ("", 0),
            ("99999999999", 0),
        ] {
            let e = p.check_build_id(Some(bad)).unwrap_err();
            assert_eq!(e.read_as, read_as, "{bad:?}");
            assert!(e.to_string().contains("Upgrade screen"), "{e}");
        }
        let e = p.check_build_id(None).unwrap_err();
        assert_eq!(e.build_id, "<no build id>");
    }

    #[test]
    fn names_resolve_or_say_why_not() {
        assert_eq!(HostProfile::by_name("android16").unwrap().name, "android16");
        assert_eq!(
            HostProfile::by_name("android15-qpr2").unwrap().release,
            "Android 15 QPR2"
        );
        assert_eq!(
            HostProfile::by_name("android17-aidl").unwrap().name,
            "android17-aidl"
        );
        let e = HostProfile::by_name("android99").unwrap_err().to_string();
        assert!(e.contains("android99") && e.contains("android16"), "{e}");
    }

    #[test]
    fn only_the_java_app_leaves_a_closed_terminal_to_ttyds_page() {
        let of = |n| HostProfile::by_name(n).unwrap().on_terminal_closed;
        assert_eq!(of("android15-qpr2"), OnTerminalClosed::TtydPage);
        for n in ["android16", "android17-grpc", "android17-aidl"] {
            assert_eq!(of(n), OnTerminalClosed::CloseTab, "{n}");
        }
    }

    #[test]
    fn android17_mode_and_ttyd_over_vsock() {
        assert_eq!(android17_mode(true, false).name, "android17-grpc");
        assert_eq!(android17_mode(false, false).name, "android17-aidl");
        assert_eq!(android17_mode(true, true).name, "android17-aidl");
        let t = HostProfile::android17_aidl().transport;
        assert!(t.can_use_ttyd_over_vsock(Some("5106\n")));
        assert!(t.can_use_ttyd_over_vsock(Some("arch-avf 7133")));
        assert!(!t.can_use_ttyd_over_vsock(Some("5105")));
        assert!(!t.can_use_ttyd_over_vsock(Some("x")));
        assert!(!t.can_use_ttyd_over_vsock(None));
        // The app's check looks at no mode; Android 16 has no bridge.
        let grpc = HostProfile::android17_grpc().transport;
        assert!(grpc.can_use_ttyd_over_vsock(Some("9999")));
        assert!(!grpc.can_use_ttyd_over_vsock(Some("5105")));
        let a16 = HostProfile::android16().transport;
        assert!(!a16.can_use_ttyd_over_vsock(Some("9999")));
        assert_eq!(a16.ttyd_vsock_min_build_id(), 0);
        assert_eq!(t.kernel_param(), Some("debian_server_port"));
    }
}
