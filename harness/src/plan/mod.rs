//! VmSpec + HostProfile + launch knobs → a [`Plan`]: everything about a
//! launch decided here, mirroring how crosvm builds the VM on the phone —
//! QEMU's argv (one builder per device), every sidecar with how to know it
//! is ready, the disks to serve, files to prepare, the CID, the network.
//! Pure apart from picking free host ports: no process is started here;
//! [`crate::vm`] only executes a plan.
//!
//! To add a device: one builder function below, called from [`plan`].

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use avf_terminal::profile::{ConsolePort, DeviceSet, InputDevice};
use avf_terminal::HostProfile;

use crate::net::TapPlan;
use crate::spec::{ConsoleDevice, CpuTopology, Disk, Partition, ShareTag, VmSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// U-Boot when there is no kernel (the phone's fallback).
    #[default]
    Uboot,
    /// EDK2 / AAVMF.
    Edk2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// QEMU user-mode networking (guest 10.0.2.15, host reachable at 10.0.2.2).
    #[default]
    User,
    /// TAP in a network namespace of its own, dnsmasq DHCP/DNS on a random
    /// private /24, the host as gateway (as on the phone; needs root).
    Tap,
}

pub const U_BOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
pub const QEMU: &str = "qemu-system-aarch64";

/// User-mode networking: the guest reaches the host at this address; a host
/// service listening on [`HOST_BIND_ADDR`] is reachable there.
pub const USER_NET_GATEWAY: &str = "10.0.2.2";
pub const USER_NET_GUEST: &str = "10.0.2.15";
pub const HOST_BIND_ADDR: &str = "127.0.0.1";
/// The guest's virtio-net MAC address (fixed, so DHCP leases can be found).
pub const GUEST_MAC: &str = "52:54:00:a7:f0:01";
/// The phone gives guests CIDs from 2048; VM number n of a harness gets
/// `CID_BASE + n`, so VMs side by side never share one.
pub const CID_BASE: u32 = 2048;
/// The host uid/gid standing in for the Terminal app's uid.
pub const APP_UID: u32 = 10123;
pub const APP_GID: u32 = 10123;
/// ttyd's port in the guest; forwarded to the host in user-mode networking
/// so `avf-harness boot` can point a browser at it.
pub const TTYD_GUEST_PORT: u16 = 7681;

/// A host→guest TCP forward (user-mode networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// Knobs a scenario or the CLI can vary; the spec itself is never edited.
/// Every field is also a flag of [`LaunchArgs`], so a printed reproduction
/// line carries every knob.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    pub profile: HostProfile,
    pub firmware: Firmware,
    pub net: NetMode,
    /// Override `cpu_topology` (e.g. to keep a 2-core CI host responsive).
    pub vcpus: Option<u32>,
    /// Override `memory_mib`.
    pub memory_mib: Option<u64>,
}

/// [`Options`] as command-line flags (`avf-harness boot`), both ways.
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// The Android release (and mode) whose app and crosvm to play
    #[arg(long, default_value = "android16", value_parser = parse_profile)]
    pub profile: HostProfile,
    /// Firmware when vm_config.json has no kernel
    #[arg(long, value_enum, default_value = "uboot")]
    pub firmware: Firmware,
    #[arg(long, value_enum, default_value = "user")]
    pub net: NetMode,
    /// Override the vCPU count (default: from cpu_topology)
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Override memory_mib
    #[arg(long)]
    pub memory_mib: Option<u64>,
}

fn parse_profile(s: &str) -> Result<HostProfile, String> {
    HostProfile::by_name(s).map_err(|e| e.to_string())
}

impl From<LaunchArgs> for Options {
    fn from(a: LaunchArgs) -> Options {
        Options {
            profile: a.profile,
            firmware: a.firmware,
            net: a.net,
            vcpus: a.vcpus,
            memory_mib: a.memory_mib,
        }
    }
}

impl Options {
    /// The flags that give these options back through [`LaunchArgs`].
    pub fn to_args(&self) -> Vec<OsString> {
        // Exhaustive on purpose: a new knob must be printed too.
        let Options {
            profile,
            firmware,
            net,
            vcpus,
            memory_mib,
        } = self;
        let mut v: Vec<OsString> = vec![
            "--profile".into(),
            profile.name.into(),
            "--firmware".into(),
            value_name(firmware).into(),
            "--net".into(),
            value_name(net).into(),
        ];
        if let Some(n) = vcpus {
            v.extend(["--vcpus".into(), n.to_string().into()]);
        }
        if let Some(m) = memory_mib {
            v.extend(["--memory-mib".into(), m.to_string().into()]);
        }
        v
    }
}

/// A `clap::ValueEnum` value as written on the command line.
fn value_name(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// What the launcher fixed before planning: which VM of this harness it is,
/// where its sockets and logs go, and the TAP subnet it drew.
#[derive(Debug, Clone)]
pub struct Launch {
    /// This VM's number within the harness process.
    pub index: u32,
    pub paths: Paths,
    /// The namespace name and the random third octet of its /24, for the
    /// TAP mode.
    pub netns: String,
    pub subnet: u8,
}

/// Where the run's sockets and logs go.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Short path (Unix socket names are limited to 108 bytes).
    pub run: PathBuf,
    pub artefacts: PathBuf,
}

impl Paths {
    pub fn qmp(&self) -> PathBuf {
        self.run.join("qmp.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.run.join("console.sock")
    }
    pub fn qga(&self) -> PathBuf {
        self.run.join("qga.sock")
    }
    pub fn disk(&self, i: usize) -> PathBuf {
        self.run.join(format!("disk{i}.nbd"))
    }
    pub fn fs(&self, tag: ShareTag) -> PathBuf {
        self.run.join(format!("fs-{}.sock", tag.as_str()))
    }
    pub fn vhost_vsock(&self) -> PathBuf {
        self.run.join("vhost-vsock.sock")
    }
    /// vhost-device-vsock's host-side Unix socket (`CONNECT <port>`).
    pub fn vsock_uds(&self) -> PathBuf {
        self.run.join("vsock.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.artefacts.join("console.log")
    }
    pub fn firmware_log(&self) -> PathBuf {
        self.artefacts.join("firmware.log")
    }
    pub fn edk2_vars(&self) -> PathBuf {
        self.run.join("AAVMF_VARS.fd")
    }
    /// A process's stdout and stderr.
    pub fn log(&self, name: &str) -> PathBuf {
        self.artefacts.join(format!("{name}.log"))
    }
}

/// A process of the VM's group: argv, log, and the network namespace it
/// starts in.
#[derive(Debug, Clone)]
pub struct Process {
    pub name: String,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// `/run/netns/<name>` to enter before exec.
    pub netns: Option<PathBuf>,
    pub log: PathBuf,
}

impl Process {
    /// A pasteable shell line that starts this process the same way.
    pub fn shell_line(&self) -> String {
        let line = shell_line(&self.program.to_string_lossy(), &self.args);
        match &self.netns {
            Some(ns) => format!(
                "ip netns exec {} {line}",
                ns.file_name().unwrap_or_default().to_string_lossy()
            ),
            None => line,
        }
    }
}

/// How the launcher knows a sidecar is ready for QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// Its listening socket exists.
    Socket(PathBuf),
    /// Its log has a line containing this.
    LogLine(&'static str),
}

#[derive(Debug, Clone)]
pub struct Sidecar {
    pub process: Process,
    pub ready: Ready,
}

/// A composite disk to serve over NBD, with the data it is built from.
#[derive(Debug, Clone)]
pub struct NbdExport {
    /// Index in vm_config.json's `disks` (for error messages).
    pub index: usize,
    pub socket: PathBuf,
    pub partitions: Vec<Partition>,
    pub writable: bool,
}

/// A file copied into place before QEMU starts (a private copy, e.g. of
/// the EDK2 variable store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub from: PathBuf,
    pub to: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub profile: HostProfile,
    pub qemu: Process,
    /// Started in order, each ready before the next (and QEMU) starts.
    pub sidecars: Vec<Sidecar>,
    pub disks: Vec<NbdExport>,
    pub prepare: Vec<Prepare>,
    /// Share dirs to create, owned by the app uid/gid as on the phone.
    pub share_dirs: Vec<PathBuf>,
    pub app_owner: (u32, u32),
    pub tap: Option<TapPlan>,
    pub forwards: Vec<Forward>,
    pub cid: u32,
    pub firmware: BootPath,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// `avf-harness boot` flags reproducing this launch.
    pub repro_args: Vec<OsString>,
}

impl Plan {
    /// Every process in start order (sidecars, then QEMU), as pasteable
    /// shell lines: what `commands.txt` holds.
    pub fn commands(&self) -> String {
        self.sidecars
            .iter()
            .map(|s| &s.process)
            .chain([&self.qemu])
            .map(|p| p.shell_line() + "\n")
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    Direct,
    Uboot,
    Edk2,
}

/// QEMU's argv, built one device at a time.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, f: &str) {
        self.0.push(f.into());
    }
    fn opt(&mut self, f: &str, v: impl Into<OsString>) {
        self.0.push(f.into());
        self.0.push(v.into());
    }
}

/// QEMU's option syntax doubles commas inside values.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// A free localhost TCP port (bound then released; QEMU binds it next).
pub fn free_port() -> std::io::Result<u16> {
    Ok(
        std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port(),
    )
}

/// virtiofsd's id mapping for a share, after crosvm's ugid maps: `android`
/// maps guest 1000/100 ↔ the app uid/gid, `internal` guest 0/0 ↔ app.
pub fn virtiofsd_maps(tag: ShareTag, app_uid: u32, app_gid: u32) -> Vec<OsString> {
    let (gu, gg) = match tag {
        ShareTag::Android => (1000, 100),
        ShareTag::Internal => (0, 0),
    };
    vec![
        "--translate-uid".into(),
        format!("map:{gu}:{app_uid}:1").into(),
        "--translate-gid".into(),
        format!("map:{gg}:{app_gid}:1").into(),
    ]
}

pub fn plan(spec: &VmSpec, opts: &Options, launch: &Launch) -> std::io::Result<Plan> {
    let paths = &launch.paths;
    let vcpus = opts.vcpus.unwrap_or(match spec.cpu_topology {
        CpuTopology::MatchHost => host_cpus(),
        CpuTopology::OneCpu => 1,
    });
    let memory_mib = opts.memory_mib.unwrap_or(spec.memory_mib);
    let cid = CID_BASE + launch.index;
    let tap = (spec.network && opts.net == NetMode::Tap)
        .then(|| TapPlan::new(&launch.netns, launch.subnet, &paths.run));

    let boot_path = match (&spec.kernel, opts.firmware) {
        (Some(_), _) => BootPath::Direct,
        (None, Firmware::Uboot) => BootPath::Uboot,
        (None, Firmware::Edk2) => BootPath::Edk2,
    };
    let devices = &opts.profile.devices;
    let mut a = Args::default();
    machine(&mut a, vcpus, memory_mib, boot_path, devices.pmu);
    control(&mut a, paths);
    consoles(&mut a, spec.console_input, devices, paths);
    let disks = disks(&mut a, spec, paths);
    let mut sidecars = shares(&mut a, spec, paths);
    sidecars.push(vsock(&mut a, cid, paths));
    if spec.auto_memory_balloon {
        a.opt(
            "-device",
            "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
        );
    }
    if spec.gpu_backend.is_some() {
        gpu(&mut a, devices);
    }
    inputs(&mut a, devices);
    if devices.sound {
        sound(&mut a);
    }
    let mut forwards = Vec::new();
    if spec.network {
        if opts.net == NetMode::User {
            forwards.push(Forward {
                host_port: free_port()?,
                guest_port: TTYD_GUEST_PORT,
            });
        }
        network(&mut a, tap.as_ref(), &forwards);
    }
    if let Some(t) = &tap {
        sidecars.push(Sidecar {
            process: Process {
                name: "dnsmasq".into(),
                program: "dnsmasq".into(),
                args: t.dnsmasq_args(),
                netns: Some(t.path()),
                log: paths.log("dnsmasq"),
            },
            ready: Ready::LogLine(crate::net::DNSMASQ_READY),
        });
    }
    let prepare = boot(&mut a, spec, boot_path, &opts.profile, paths);

    Ok(Plan {
        qemu: Process {
            name: "qemu".into(),
            program: QEMU.into(),
            args: a.0,
            netns: tap.as_ref().map(TapPlan::path),
            log: paths.log("qemu"),
        },
        sidecars,
        disks,
        prepare,
        share_dirs: spec.shares.iter().map(|s| s.host_dir.clone()).collect(),
        app_owner: (APP_UID, APP_GID),
        tap,
        forwards,
        cid,
        firmware: boot_path,
        vcpus,
        memory_mib,
        repro_args: opts.to_args(),
        profile: opts.profile.clone(),
    })
}

/// TCG aarch64 `virt`, paused at the first instruction, memory shareable
/// with the vhost-user daemons. crosvm gives an arm64 guest a device tree
/// and no ACPI; so do we, except for EDK2 (whose guests are ACPI guests).
/// It matters for the power button: with firmware loaded (`-bios`, pflash)
/// and ACPI on, `virt` swaps the PL061 and its gpio-keys power key for an
/// ACPI GED and leaves both out of the DT, so U-Boot would hand the DT-only
/// kernel no power key and `system_powerdown` would reach nobody.
fn machine(a: &mut Args, vcpus: u32, memory_mib: u64, boot: BootPath, pmu: bool) {
    a.flag("-nodefaults");
    a.flag("-no-user-config");
    a.flag("-nographic");
    // crosvm stops the VM on guest reboot; so does QEMU with -no-reboot.
    a.flag("-no-reboot");
    a.flag("-S");
    a.opt(
        "-machine",
        match boot {
            BootPath::Direct | BootPath::Uboot => "virt,acpi=off,memory-backend=mem",
            BootPath::Edk2 => "virt,memory-backend=mem",
        },
    );
    // pauth-impdef: same CPU features, far cheaper pointer auth under TCG.
    // pmu=off where crosvm runs with --no-pmu.
    a.opt(
        "-cpu",
        if pmu {
            "max,pauth-impdef=on"
        } else {
            "max,pauth-impdef=on,pmu=off"
        },
    );
    a.opt("-accel", "tcg,thread=multi");
    a.opt("-smp", vcpus.to_string());
    a.opt("-m", format!("{memory_mib}M"));
    // memfd + share=on: vhost-user (virtiofsd, vsock) needs shared memory.
    a.opt(
        "-object",
        format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
    );
}

/// QMP, the harness's control socket.
fn control(a: &mut Args, paths: &Paths) {
    a.opt(
        "-chardev",
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            esc(&paths.qmp())
        ),
    );
    a.opt("-mon", "chardev=qmp,mode=control");
}

/// The PL011 for firmware output (QEMU's; the phone has none), the
/// profile's 16550s and virtio-console ports, the input console (ttyS0 or
/// hvc0) on a socket with a transcript, and the harness-only guest-agent
/// port. crosvm's 16550s are MMIO; `virt` has none to add, so they are one
/// `pci-serial-2x` (ttyS0, ttyS1 in the same order).
fn consoles(a: &mut Args, input: ConsoleDevice, devices: &DeviceSet, paths: &Paths) {
    a.opt(
        "-chardev",
        format!("file,id=fw,path={}", esc(&paths.firmware_log())),
    );
    a.opt("-serial", "chardev:fw");
    // console.log is written by ttyS0 and, as on the phone, hvc0: append.
    let log = esc(&paths.console_log());
    let sock = esc(&paths.console());
    a.opt(
        "-chardev",
        format!("socket,id=con,path={sock},server=on,wait=off,logfile={log},logappend=on"),
    );
    // The 16550s: the input console's chardev on ttyS0 (or its own file
    // when hvc0 is the input console), the rest a file each.
    let mut uarts = Vec::new();
    for n in 0..devices.serials.max(1) {
        let id = format!("ser{n}");
        if n == 0 && input == ConsoleDevice::TtyS0 {
            uarts.push("con".to_string());
            continue;
        }
        let file = esc(&paths.artefacts.join(format!("ttyS{n}.log")));
        a.opt("-chardev", format!("file,id={id},path={file}"));
        uarts.push(id);
    }
    for chunk in uarts.chunks(2) {
        match chunk {
            [one] => a.opt("-device", format!("pci-serial,chardev={one}")),
            [c1, c2] => a.opt(
                "-device",
                format!("pci-serial-2x,chardev1={c1},chardev2={c2}"),
            ),
            _ => unreachable!("chunks of two"),
        }
    }
    a.opt("-device", "virtio-serial-pci,id=vser0");
    for (n, port) in devices.consoles.iter().enumerate() {
        let id = format!("hvc{n}");
        if n == 0 && input == ConsoleDevice::Hvc0 {
            a.opt("-device", "virtconsole,chardev=con,bus=vser0.0");
            continue;
        }
        let backend = match port {
            ConsolePort::SharesFirstSerial => format!("file,id={id},path={log},append=on"),
            ConsolePort::Sink => format!("null,id={id}"),
            ConsolePort::OwnFile => {
                let file = esc(&paths.artefacts.join(format!("{id}.log")));
                format!("file,id={id},path={file}")
            }
        };
        a.opt("-chardev", backend);
        a.opt("-device", format!("virtconsole,chardev={id},bus=vser0.0"));
    }
    // Harness-only command channel (the phone has none).
    a.opt(
        "-chardev",
        format!(
            "socket,id=qga,path={},server=on,wait=off",
            esc(&paths.qga())
        ),
    );
    a.opt(
        "-device",
        "virtserialport,chardev=qga,name=org.qemu.guest_agent.0,bus=vser0.0",
    );
}

/// virtio-gpu with the app's display size (QEMU has no gfxstream; the 2D
/// device is what vm_config's "2d" backend gives on the phone).
fn gpu(a: &mut Args, devices: &DeviceSet) {
    let d = devices.display;
    a.opt(
        "-device",
        format!("virtio-gpu-pci,edid=on,xres={},yres={}", d.width, d.height),
    );
}

/// The profile's virtio-input devices. QEMU's multi-touch device has fixed
/// axis ranges; crosvm's take the display's (and the trackpad's) size.
fn inputs(a: &mut Args, devices: &DeviceSet) {
    for dev in devices.inputs {
        a.opt(
            "-device",
            match dev {
                InputDevice::MultiTouch { .. } | InputDevice::MultiTouchTrackpad { .. } => {
                    "virtio-multitouch-pci"
                }
                InputDevice::Keyboard => "virtio-keyboard-pci",
                InputDevice::Mouse => "virtio-mouse-pci",
            },
        );
    }
}

/// virtio-sound with a speaker and a microphone (QEMU's default streams:
/// one output, one input), on a silent host backend.
fn sound(a: &mut Args) {
    a.opt("-audiodev", "none,id=snd0");
    a.opt("-device", "virtio-sound-pci,audiodev=snd0");
}

/// One virtio-blk per vm_config disk: composite disks over our NBD server,
/// raw images directly.
fn disks(a: &mut Args, spec: &VmSpec, paths: &Paths) -> Vec<NbdExport> {
    let mut exports = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let id = format!("disk{i}");
        let bd = match d {
            Disk::Composite {
                partitions,
                writable,
            } => {
                let socket = paths.disk(i);
                let bd = serde_json::json!({
                    "driver": "raw",
                    "node-name": id,
                    "file": {"driver": "nbd", "server": {"type": "unix", "path": socket}},
                });
                exports.push(NbdExport {
                    index: i,
                    socket,
                    partitions: partitions.clone(),
                    writable: *writable,
                });
                bd
            }
            Disk::Image { path, writable } => serde_json::json!({
                "driver": "raw",
                "node-name": id,
                "read-only": !writable,
                "file": {"driver": "file", "filename": path},
            }),
        };
        a.opt("-blockdev", bd.to_string());
        a.opt("-device", format!("virtio-blk-pci,drive={id}"));
    }
    exports
}

/// A vhost-user-fs device and its virtiofsd per share.
fn shares(a: &mut Args, spec: &VmSpec, paths: &Paths) -> Vec<Sidecar> {
    let mut sidecars = Vec::new();
    for (i, s) in spec.shares.iter().enumerate() {
        let sock = paths.fs(s.tag);
        let name = format!("virtiofsd-{}", s.tag.as_str());
        let mut args: Vec<OsString> = vec![
            "--socket-path".into(),
            sock.clone().into(),
            "--shared-dir".into(),
            s.host_dir.clone().into(),
            "--cache".into(),
            "auto".into(),
        ];
        args.extend(virtiofsd_maps(s.tag, APP_UID, APP_GID));
        sidecars.push(Sidecar {
            process: Process {
                log: paths.log(&name),
                name,
                program: "virtiofsd".into(),
                args,
                netns: None,
            },
            ready: Ready::Socket(sock.clone()),
        });
        a.opt("-chardev", format!("socket,id=fs{i},path={}", esc(&sock)));
        a.opt(
            "-device",
            format!("vhost-user-fs-pci,chardev=fs{i},tag={}", s.tag.as_str()),
        );
    }
    sidecars
}

/// vhost-user-vsock and vhost-device-vsock (the host has no vhost-vsock).
fn vsock(a: &mut Args, cid: u32, paths: &Paths) -> Sidecar {
    a.opt(
        "-chardev",
        format!("socket,id=vsock,path={}", esc(&paths.vhost_vsock())),
    );
    a.opt("-device", "vhost-user-vsock-pci,chardev=vsock");
    Sidecar {
        process: Process {
            name: "vhost-device-vsock".into(),
            program: "vhost-device-vsock".into(),
            args: vec![
                "--vm".into(),
                format!(
                    "guest-cid={cid},socket={},uds-path={}",
                    paths.vhost_vsock().display(),
                    paths.vsock_uds().display()
                )
                .into(),
            ],
            netns: None,
            log: paths.log("vhost-device-vsock"),
        },
        ready: Ready::Socket(paths.vhost_vsock()),
    }
}

/// virtio-net on slirp (with the forwards) or on the namespace's TAP.
fn network(a: &mut Args, tap: Option<&TapPlan>, forwards: &[Forward]) {
    let netdev = match tap {
        None => {
            let mut nd = format!("user,id=net0,net=10.0.2.0/24,host={USER_NET_GATEWAY}");
            for f in forwards {
                nd.push_str(&format!(
                    ",hostfwd=tcp:{HOST_BIND_ADDR}:{}-:{}",
                    f.host_port, f.guest_port
                ));
            }
            nd
        }
        // The TAP exists already, inside the namespace QEMU runs in.
        Some(_) => format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            crate::net::TAP_IFNAME
        ),
    };
    a.opt("-netdev", netdev);
    // romfile=: no iPXE option ROM (not installed, and crosvm has none).
    a.opt(
        "-device",
        format!("virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile="),
    );
}

/// The payload's kernel (between the profile's parameters, as crosvm and
/// the app's launcher put them), or firmware that finds the ESP; returns the files
/// to prepare.
fn boot(
    a: &mut Args,
    spec: &VmSpec,
    path: BootPath,
    profile: &HostProfile,
    paths: &Paths,
) -> Vec<Prepare> {
    match (&spec.kernel, path) {
        (Some(k), _) => {
            a.opt("-kernel", k.kernel.clone());
            if let Some(i) = &k.initrd {
                a.opt("-initrd", i.clone());
            }
            let params: Vec<&str> = (profile.kernel_params_before.iter().copied())
                .chain(std::iter::once(k.params.as_str()))
                .chain(profile.kernel_params_after.iter().copied())
                .filter(|p| !p.is_empty())
                .collect();
            a.opt("-append", params.join(" "));
            Vec::new()
        }
        (None, BootPath::Uboot | BootPath::Direct) => {
            a.opt("-bios", U_BOOT);
            Vec::new()
        }
        (None, BootPath::Edk2) => {
            a.opt(
                "-drive",
                format!("if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}"),
            );
            a.opt(
                "-drive",
                format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    esc(&paths.edk2_vars())
                ),
            );
            vec![Prepare {
                from: AAVMF_VARS.into(),
                to: paths.edk2_vars(),
            }]
        }
    }
}

/// Shell-quotes an argv for logs and reproduction commands.
pub fn shell_line(program: &str, args: &[OsString]) -> String {
    let mut s = program.to_string();
    for a in args {
        let a = a.to_string_lossy();
        s.push(' ');
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
        {
            s.push_str(&a);
        } else {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        }
    }
    s
}
