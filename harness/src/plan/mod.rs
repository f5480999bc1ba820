//! VmSpec → what to run: QEMU's argv and the sidecars (virtiofsd per share,
//! vhost-device-vsock), mirroring how crosvm builds the VM on the phone.
//! Pure: no process is started here.

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::spec::{ConsoleDevice, CpuTopology, Disk, ShareTag, VmSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// U-Boot when there is no kernel (the phone's fallback).
    #[default]
    Uboot,
    /// EDK2 / AAVMF.
    Edk2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// QEMU user-mode networking (slirp).
    #[default]
    User,
    /// TAP in a network namespace with a DHCP server (host = gateway).
    Tap,
}

pub const U_BOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// User-mode networking: the guest reaches the host at this address; a host
/// service listening on [`HOST_BIND_ADDR`] is reachable there.
pub const USER_NET_GATEWAY: &str = "10.0.2.2";
pub const USER_NET_GUEST: &str = "10.0.2.15";
pub const HOST_BIND_ADDR: &str = "127.0.0.1";
/// The guest's virtio-net MAC address (fixed, so DHCP leases can be found).
pub const GUEST_MAC: &str = "52:54:00:a7:f0:01";

/// A host→guest forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    pub host_port: u16,
    pub guest_port: u16,
}

/// Knobs a scenario or the CLI can vary; the spec itself is never edited.
#[derive(Debug, Clone)]
pub struct Options {
    pub firmware: Firmware,
    pub net: NetMode,
    pub cid: u32,
    /// The host uid/gid standing in for the Terminal app's uid.
    pub app_uid: u32,
    pub app_gid: u32,
    pub forwards: Vec<Forward>,
    /// Override `cpu_topology` (e.g. to keep a 2-core CI host responsive).
    pub vcpus: Option<u32>,
    /// Override `memory_mib`.
    pub memory_mib: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            firmware: Firmware::default(),
            net: NetMode::default(),
            cid: 2048,
            app_uid: 10123,
            app_gid: 10123,
            forwards: Vec::new(),
            vcpus: None,
            memory_mib: None,
        }
    }
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
    pub fn hvc_log(&self) -> PathBuf {
        self.artefacts.join("hvc.log")
    }
    pub fn edk2_vars(&self) -> PathBuf {
        self.run.join("AAVMF_VARS.fd")
    }
}

#[derive(Debug, Clone)]
pub struct Sidecar {
    pub name: String,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Appears once the sidecar is ready for QEMU.
    pub socket: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub qemu: Vec<OsString>,
    pub sidecars: Vec<Sidecar>,
    /// Composite disks to serve: (index into spec.disks, socket).
    pub nbd: Vec<(usize, PathBuf)>,
    pub firmware: BootPath,
    pub vcpus: u32,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    Direct,
    Uboot,
    Edk2,
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
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

/// virtiofsd's id mapping for a share, after crosvm's ugid maps: `android`
/// maps guest 1000/100 ↔ the app uid/gid, `internal` guest 0/0 ↔ app.
pub fn virtiofsd_maps(tag: ShareTag, app_uid: u32, app_gid: u32) -> Vec<OsString> {
    let (gu, gg) = match tag {
        ShareTag::Android => (1000, 100),
        ShareTag::Internal => (0, 0),
    };
    vec![
        os("--translate-uid"),
        os(format!("map:{gu}:{app_uid}:1")),
        os("--translate-gid"),
        os(format!("map:{gg}:{app_gid}:1")),
    ]
}

pub fn plan(spec: &VmSpec, opts: &Options, paths: &Paths) -> Plan {
    let vcpus = opts.vcpus.unwrap_or(match spec.cpu_topology {
        CpuTopology::MatchHost => host_cpus(),
        CpuTopology::OneCpu => 1,
    });
    let memory_mib = opts.memory_mib.unwrap_or(spec.memory_mib);
    let mut q: Vec<OsString> = Vec::new();
    let mut a = |s: &str| q.push(os(s));
    a("-nodefaults");
    a("-no-user-config");
    a("-nographic");
    // crosvm stops the VM on guest reboot; so does QEMU with -no-reboot.
    a("-no-reboot");
    a("-S");
    a("-machine");
    a("virt,memory-backend=mem");
    // pauth-impdef: same CPU features, far cheaper pointer auth under TCG.
    a("-cpu");
    a("max,pauth-impdef=on");
    a("-accel");
    a("tcg,thread=multi");
    let mut push = |v: String| q.push(os(v));
    push("-smp".into());
    push(vcpus.to_string());
    push("-m".into());
    push(format!("{memory_mib}M"));
    // memfd + share=on: vhost-user (virtiofsd, vsock) needs shared memory.
    push("-object".into());
    push(format!(
        "memory-backend-memfd,id=mem,size={memory_mib}M,share=on"
    ));
    push("-chardev".into());
    push(format!(
        "socket,id=qmp,path={},server=on,wait=off",
        esc(&paths.qmp())
    ));
    push("-mon".into());
    push("chardev=qmp,mode=control".into());

    // The PL011 carries firmware output (U-Boot, EDK2).
    push("-chardev".into());
    push(format!("file,id=fw,path={}", esc(&paths.firmware_log())));
    push("-serial".into());
    push("chardev:fw".into());

    // The input console: socket for expect(), with QEMU's own transcript.
    let console = format!(
        "socket,id=con,path={},server=on,wait=off,logfile={}",
        esc(&paths.console()),
        esc(&paths.console_log())
    );
    push("-device".into());
    push("virtio-serial-pci,id=vser0".into());
    match spec.console_input {
        ConsoleDevice::TtyS0 => {
            push("-chardev".into());
            push(console);
            push("-device".into());
            push("pci-serial,chardev=con".into());
            push("-chardev".into());
            push(format!("file,id=hvc,path={}", esc(&paths.hvc_log())));
            push("-device".into());
            push("virtconsole,chardev=hvc,bus=vser0.0".into());
        }
        ConsoleDevice::Hvc0 => {
            push("-chardev".into());
            push(console);
            push("-device".into());
            push("virtconsole,chardev=con,bus=vser0.0".into());
        }
    }
    // Harness-only command channel (the phone has none).
    push("-chardev".into());
    push(format!(
        "socket,id=qga,path={},server=on,wait=off",
        esc(&paths.qga())
    ));
    push("-device".into());
    push("virtserialport,chardev=qga,name=org.qemu.guest_agent.0,bus=vser0.0".into());

    let mut nbd = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        let id = format!("disk{i}");
        match d {
            Disk::Composite { .. } => {
                let sock = paths.disk(i);
                let bd = serde_json::json!({
                    "driver": "raw",
                    "node-name": id,
                    "file": {
                        "driver": "nbd",
                        "server": {"type": "unix", "path": sock},
                    },
                });
                push("-blockdev".into());
                push(bd.to_string());
                nbd.push((i, sock));
            }
            Disk::Image { path, writable } => {
                let bd = serde_json::json!({
                    "driver": "raw",
                    "node-name": id,
                    "read-only": !writable,
                    "file": {"driver": "file", "filename": path},
                });
                push("-blockdev".into());
                push(bd.to_string());
            }
        }
        push("-device".into());
        push(format!("virtio-blk-pci,drive={id}"));
    }

    let mut sidecars = Vec::new();
    for (i, s) in spec.shares.iter().enumerate() {
        let sock = paths.fs(s.tag);
        let mut args = vec![
            os("--socket-path"),
            sock.clone().into_os_string(),
            os("--shared-dir"),
            s.host_dir.clone().into_os_string(),
            os("--cache"),
            os("auto"),
        ];
        args.extend(virtiofsd_maps(s.tag, opts.app_uid, opts.app_gid));
        sidecars.push(Sidecar {
            name: format!("virtiofsd-{}", s.tag.as_str()),
            program: os("virtiofsd"),
            args,
            socket: sock.clone(),
        });
        push("-chardev".into());
        push(format!("socket,id=fs{i},path={}", esc(&sock)));
        push("-device".into());
        push(format!(
            "vhost-user-fs-pci,chardev=fs{i},tag={}",
            s.tag.as_str()
        ));
    }

    sidecars.push(Sidecar {
        name: "vhost-device-vsock".into(),
        program: os("vhost-device-vsock"),
        args: vec![
            os("--vm"),
            os(format!(
                "guest-cid={},socket={},uds-path={}",
                opts.cid,
                paths.vhost_vsock().display(),
                paths.vsock_uds().display()
            )),
        ],
        socket: paths.vhost_vsock(),
    });
    push("-chardev".into());
    push(format!(
        "socket,id=vsock,path={}",
        esc(&paths.vhost_vsock())
    ));
    push("-device".into());
    push("vhost-user-vsock-pci,chardev=vsock".into());

    if spec.auto_memory_balloon {
        push("-device".into());
        push("virtio-balloon-pci,id=balloon0,free-page-reporting=on".into());
    }
    if spec.gpu_backend.is_some() {
        push("-device".into());
        push("virtio-gpu-pci".into());
    }
    if spec.network {
        match opts.net {
            NetMode::User => {
                let mut nd = "user,id=net0,net=10.0.2.0/24,host=10.0.2.2".to_string();
                for f in &opts.forwards {
                    nd.push_str(&format!(
                        ",hostfwd={}:{HOST_BIND_ADDR}:{}-:{}",
                        if f.udp { "udp" } else { "tcp" },
                        f.host_port,
                        f.guest_port
                    ));
                }
                push("-netdev".into());
                push(nd);
            }
            NetMode::Tap => {
                push("-netdev".into());
                // The TAP exists already, inside the namespace QEMU runs in.
                push(format!(
                    "tap,id=net0,ifname={},script=no,downscript=no",
                    crate::net::TAP_IFNAME
                ));
            }
        }
        push("-device".into());
        // romfile=: no iPXE option ROM (not installed, and crosvm has none).
        push(format!(
            "virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile="
        ));
    }

    let firmware = match (&spec.kernel, opts.firmware) {
        (Some(k), _) => {
            push("-kernel".into());
            q.push(k.kernel.clone().into_os_string());
            if let Some(i) = &k.initrd {
                q.push(os("-initrd"));
                q.push(i.clone().into_os_string());
            }
            q.push(os("-append"));
            q.push(os(&k.params));
            BootPath::Direct
        }
        (None, Firmware::Uboot) => {
            q.push(os("-bios"));
            q.push(os(U_BOOT));
            BootPath::Uboot
        }
        (None, Firmware::Edk2) => {
            q.push(os("-drive"));
            q.push(os(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}"
            )));
            q.push(os("-drive"));
            q.push(os(format!(
                "if=pflash,format=raw,unit=1,file={}",
                esc(&paths.edk2_vars())
            )));
            BootPath::Edk2
        }
    };

    Plan {
        qemu: q,
        sidecars,
        nbd,
        firmware,
        vcpus,
        memory_mib,
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
