//! VmSpec + HostProfile + launch knobs → a [`Plan`]: everything about a
//! launch decided here, mirroring how crosvm builds the VM on the phone —
//! QEMU's argv (one builder per device), every sidecar with how to know it
//! is ready, the disks to serve, files to prepare, the CID, the network.
//! Pure apart from picking free host ports: no process is started here;
//! [`crate::vm`] only executes a plan.
//!
//! To add a device: one builder function in `devices.rs`, called from
//! [`plan`].

mod devices;
mod options;
#[cfg(test)]
mod tests;

pub use devices::virtiofsd_maps;
use devices::{
    balloon, boot, consoles, control, disks, gpu, inputs, machine, network, shares, sound, vsock,
    Args,
};
pub use options::{Firmware, LaunchArgs, NetMode, Options, VcpuModel};

use std::ffi::OsString;
use std::path::PathBuf;

use avf_terminal::profile::GuestAddress;
use avf_terminal::HostProfile;

use crate::net::TapPlan;
use crate::spec::{CpuTopology, Partition, ShareTag, VmSpec};

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
    /// The DebianService port the app put on the kernel command line
    /// (profiles whose transport hands it over that way).
    pub debian_server_port: Option<u16>,
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

pub fn plan(spec: &VmSpec, opts: &Options, launch: &Launch) -> std::io::Result<Plan> {
    let paths = &launch.paths;
    let vcpus = opts.vcpus.unwrap_or(match spec.cpu_topology {
        CpuTopology::MatchHost => host_cpus(),
        CpuTopology::OneCpu => 1,
    });
    // The app of the release may replace the json's value (its setting).
    let memory_mib = opts
        .memory_mib
        .unwrap_or_else(|| opts.profile.memory.mib(spec.memory_mib));
    let cid = CID_BASE + launch.index;
    let tap =
        (spec.network && opts.net == NetMode::Tap).then(|| match opts.profile.guest_address {
            GuestAddress::Dhcp => TapPlan::new(&launch.netns, launch.subnet, &paths.run),
            GuestAddress::Fixed { host, guest } => {
                TapPlan::fixed(&launch.netns, host, guest, &paths.run)
            }
        });

    let boot_path = match (&spec.kernel, opts.firmware) {
        (Some(_), _) => BootPath::Direct,
        (None, Firmware::Uboot) => BootPath::Uboot,
        (None, Firmware::Edk2) => BootPath::Edk2,
    };
    let devices = &opts.profile.devices;
    let mut a = Args::default();
    machine(&mut a, opts.vcpu, vcpus, memory_mib, boot_path, devices.pmu);
    control(&mut a, paths);
    consoles(&mut a, spec.console_input, devices, paths);
    let disks = disks(&mut a, spec, paths);
    let mut sidecars = shares(&mut a, spec, paths);
    sidecars.push(vsock(&mut a, cid, paths));
    if spec.auto_memory_balloon {
        balloon(&mut a);
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
        let (program, args) = t.dnsmasq_command();
        sidecars.push(Sidecar {
            process: Process {
                name: "dnsmasq".into(),
                program,
                args,
                netns: Some(t.path()),
                log: paths.log("dnsmasq"),
            },
            ready: Ready::LogLine(crate::net::DNSMASQ_READY),
        });
    }
    // The app's own parameters: the DebianService port, where the
    // profile hands it over on the command line (the server then binds
    // it in the VM's own network namespace, where any port is free).
    // In the AIDL mode the parameter is there as 0 (no gRPC server).
    let transport = &opts.profile.transport;
    let debian_server_port = match transport {
        avf_terminal::profile::Transport::RpcBinder { .. } => Some(0),
        _ => transport.kernel_param().map(|_| {
            let r = uuid::Uuid::new_v4();
            20000 + u16::from_be_bytes([r.as_bytes()[0], r.as_bytes()[1]]) % 40000
        }),
    };
    let app_params: Vec<String> = transport
        .kernel_param()
        .zip(debian_server_port)
        .map(|(k, v)| format!("{k}={v}"))
        .into_iter()
        .collect();
    let prepare = boot(&mut a, spec, boot_path, &opts.profile, &app_params, paths);

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
        debian_server_port,
        firmware: boot_path,
        vcpus,
        memory_mib,
        repro_args: opts.to_args(),
        profile: opts.profile.clone(),
    })
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
