//! One argument builder per device of the VM (see [`super::plan`]), each
//! reading the spec and the profile's [`DeviceSet`].

use std::ffi::OsString;
use std::path::Path;

use avf_terminal::profile::{ConsolePort, DeviceSet, InputDevice};
use avf_terminal::HostProfile;

use super::{
    BootPath, Forward, NbdExport, Paths, Prepare, Process, Ready, Sidecar, VcpuModel, AAVMF_CODE,
    AAVMF_VARS, APP_GID, APP_UID, GUEST_MAC, HOST_BIND_ADDR, USER_NET_GATEWAY, U_BOOT,
};
use crate::net::TapPlan;
use crate::spec::{ConsoleDevice, Disk, ShareTag, VmSpec};

/// QEMU's argv, built one device at a time.
#[derive(Default)]
pub(super) struct Args(pub(super) Vec<OsString>);

impl Args {
    pub(super) fn flag(&mut self, f: &str) {
        self.0.push(f.into());
    }
    pub(super) fn opt(&mut self, f: &str, v: impl Into<OsString>) {
        self.0.push(f.into());
        self.0.push(v.into());
    }
}

/// QEMU's option syntax doubles commas inside values.
pub(super) fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
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

/// TCG aarch64 `virt`, paused at the first instruction, memory shareable
/// with the vhost-user daemons. crosvm gives an arm64 guest a device tree
/// and no ACPI; so do we, except for EDK2 (whose guests are ACPI guests).
/// It matters for the power button: with firmware loaded (`-bios`, pflash)
/// and ACPI on, `virt` swaps the PL061 and its gpio-keys power key for an
/// ACPI GED and leaves both out of the DT, so U-Boot would hand the DT-only
/// kernel no power key and `system_powerdown` would reach nobody.
pub(super) fn machine(
    a: &mut Args,
    cpu: VcpuModel,
    vcpus: u32,
    memory_mib: u64,
    boot: BootPath,
    pmu: bool,
) {
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
    a.opt(
        "-cpu",
        if pmu {
            cpu.qemu_cpu().to_string()
        } else {
            // crosvm runs with --no-pmu.
            format!("{},pmu=off", cpu.qemu_cpu())
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
pub(super) fn control(a: &mut Args, paths: &Paths) {
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
pub(super) fn consoles(a: &mut Args, input: ConsoleDevice, devices: &DeviceSet, paths: &Paths) {
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

/// The memory balloon with free-page reporting (crosvm
/// `--balloon-page-reporting`).
pub(super) fn balloon(a: &mut Args) {
    a.opt(
        "-device",
        "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
    );
}

/// virtio-gpu with the app's display size (QEMU has no gfxstream; the 2D
/// device is what vm_config's "2d" backend gives on the phone).
pub(super) fn gpu(a: &mut Args, devices: &DeviceSet) {
    let d = devices.display;
    a.opt(
        "-device",
        format!("virtio-gpu-pci,edid=on,xres={},yres={}", d.width, d.height),
    );
}

/// The profile's virtio-input devices. QEMU's multi-touch device has fixed
/// axis ranges; crosvm's take the display's (and the trackpad's) size.
pub(super) fn inputs(a: &mut Args, devices: &DeviceSet) {
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
pub(super) fn sound(a: &mut Args) {
    a.opt("-audiodev", "none,id=snd0");
    a.opt("-device", "virtio-sound-pci,audiodev=snd0");
}

/// One virtio-blk per vm_config disk: composite disks over our NBD server,
/// raw images directly.
pub(super) fn disks(a: &mut Args, spec: &VmSpec, paths: &Paths) -> Vec<NbdExport> {
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
pub(super) fn shares(a: &mut Args, spec: &VmSpec, paths: &Paths) -> Vec<Sidecar> {
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
pub(super) fn vsock(a: &mut Args, cid: u32, paths: &Paths) -> Sidecar {
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
pub(super) fn network(a: &mut Args, tap: Option<&TapPlan>, forwards: &[Forward]) {
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
pub(super) fn boot(
    a: &mut Args,
    spec: &VmSpec,
    path: BootPath,
    profile: &HostProfile,
    app_params: &[String],
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
                .chain(app_params.iter().map(String::as_str))
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
