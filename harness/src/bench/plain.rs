//! The plain-QEMU side of the overhead comparison: the same kernel,
//! command line and partitions the harness would boot (after the app's
//! pre-boot disk steps), one raw GPT file per composite disk instead of
//! our NBD server, and none of the harness's own machinery (console
//! processing, guest agent, app host side). Two device sets:
//! [`Devices::Minimal`] — `virt`, the same CPU/SMP/memory/accelerator,
//! virtio-blk, ttyS0 on a 16550 for the marker, QMP only to start and stop
//! it — and [`Devices::App`], the harness's own QEMU line and sidecars
//! with only the disks swapped, so that what the harness adds and what the
//! app's device set costs the guest are measured apart.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regex::bytes::Regex;
use serde::Serialize;

use crate::console::Console;
use crate::disk::Layout;
use crate::payload::Instance;
use crate::plan::{self, Options};
use crate::procs::{self, ProcessGroup};
use crate::qmp::Qmp;
use crate::spec::{Disk, VmSpec};
use crate::timeouts::{wait_until, Check, Timeout};

/// Which devices the plain VM has besides its disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Devices {
    /// Only a 16550 for the marker: no network, no vhost-user device, no
    /// shared memory backend.
    Minimal,
    /// Every device the harness gives the guest (the app's set: consoles,
    /// virtio-fs and vsock with their sidecars, balloon, GPU, input, sound,
    /// network), from the harness's own QEMU line.
    App,
}

/// A raw disk for the plain run: the file and whether the guest may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDisk {
    pub file: PathBuf,
    pub writable: bool,
}

/// The harness argv's options the plain run takes over unchanged.
const KEPT: [&str; 7] = [
    "-cpu", "-accel", "-smp", "-m", "-kernel", "-initrd", "-append",
];

/// The value after `flag` in `args`.
fn value_of<'a>(args: &'a [OsString], flag: &str) -> Option<&'a OsStr> {
    args.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].as_os_str())
}

/// The plain argv from the harness's planned argv: its machine (less the
/// shared memory backend vhost-user needs), CPU, SMP, memory, accelerator,
/// kernel, initrd and command line; `disks` as raw virtio-blk; ttyS0 on
/// `console` (a socket, with `console_log` as transcript); QMP on `qmp`.
pub fn plain_args(
    harness: &[OsString],
    disks: &[RawDisk],
    qmp: &Path,
    console: &Path,
    console_log: &Path,
) -> Result<Vec<OsString>> {
    if value_of(harness, "-kernel").is_none() {
        bail!("the plain-QEMU comparison needs a payload with a kernel in vm_config.json (the direct layout)");
    }
    let esc = |p: &Path| p.to_string_lossy().replace(',', ",,");
    let machine = value_of(harness, "-machine")
        .context("the harness's QEMU argv has no -machine")?
        .to_string_lossy()
        .split(',')
        .filter(|o| !o.starts_with("memory-backend="))
        .collect::<Vec<_>>()
        .join(",");
    let mut a: Vec<OsString> = [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-S",
    ]
    .map(OsString::from)
    .to_vec();
    a.extend(["-machine".into(), machine.into()]);
    for flag in KEPT {
        if let Some(v) = value_of(harness, flag) {
            a.extend([flag.into(), v.to_owned()]);
        }
    }
    a.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", esc(qmp)).into(),
        "-chardev".into(),
        format!(
            "socket,id=con,path={},server=on,wait=off,logfile={}",
            esc(console),
            esc(console_log)
        )
        .into(),
        "-device".into(),
        "pci-serial,chardev=con".into(),
        "-nic".into(),
        "none".into(),
    ]);
    for (i, d) in disks.iter().enumerate() {
        let ro = if d.writable { "" } else { ",readonly=on" };
        a.extend([
            "-drive".into(),
            format!("if=none,id=hd{i},format=raw,file={}{ro}", esc(&d.file)).into(),
            "-device".into(),
            format!("virtio-blk-pci,drive=hd{i}").into(),
        ]);
    }
    Ok(a)
}

/// The harness's QEMU argv with each composite disk (a `-blockdev` over
/// our NBD server, node `disk<i>`) read from `disks[i]` as a raw file;
/// every other option unchanged.
pub fn with_raw_disks(harness: &[OsString], disks: &[RawDisk]) -> Result<Vec<OsString>> {
    let mut out = Vec::with_capacity(harness.len());
    let mut args = harness.iter();
    while let Some(a) = args.next() {
        out.push(a.clone());
        if a != "-blockdev" {
            continue;
        }
        let v = args
            .next()
            .context("the harness's QEMU argv ends in -blockdev")?;
        let mut bd: serde_json::Value = serde_json::from_str(&v.to_string_lossy())
            .with_context(|| format!("the harness's -blockdev {v:?} is not JSON"))?;
        if bd["file"]["driver"] == "nbd" {
            let node = bd["node-name"].as_str().unwrap_or_default();
            let d = node
                .strip_prefix("disk")
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| disks.get(i))
                .with_context(|| format!("no raw file for the harness's NBD disk {node:?}"))?;
            bd["file"] = serde_json::json!({"driver": "file", "filename": d.file});
            bd["read-only"] = (!d.writable).into();
        }
        out.push(bd.to_string().into());
    }
    Ok(out)
}

/// One plain boot's times.
#[derive(Debug, Clone, Copy)]
pub struct PlainBoot {
    /// From the start of the preparation (install, app steps, raw disk).
    pub launch_to_marker: Duration,
    /// `cont` to the marker, as [`crate::vm::Vm::wait_boot`] counts.
    pub to_marker: Duration,
}

/// Removes the run's dirs on drop (they are registered for signals too).
struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in &self.0 {
            procs::remove_dir(d);
        }
    }
}

/// Installs `payload` privately, runs the app's pre-boot steps on it as
/// the harness would, writes each composite disk as a raw GPT file, boots
/// that on plain QEMU to the marker and stops it. Everything it started
/// is one owned process group; its dirs go when it returns.
pub async fn boot(
    payload: &Path,
    options: &Options,
    devices: Devices,
    artefacts: &Path,
) -> Result<PlainBoot> {
    let t0 = Instant::now();
    let pid = std::process::id();
    crate::vm::sweep_stale_dirs();
    let work = crate::vm::private_dir(&crate::vm::instance_base(), &format!("{pid}-bench-"))?;
    procs::register_dir(&work);
    // `avf-<pid>-…` under /tmp: short socket paths, and check-leaks and the
    // sweep know its QEMU as the harness's.
    let run = crate::vm::private_dir(Path::new("/tmp"), &format!("avf-{pid}-bench-"))?;
    procs::register_dir(&run);
    let _dirs = Dirs(vec![run.clone(), work.clone()]);
    let _ = std::fs::remove_dir_all(artefacts);
    std::fs::create_dir_all(artefacts)
        .with_context(|| format!("creating {}", artefacts.display()))?;

    let instance = Instance::install(payload, &work.join("instance"))?;
    crate::app::before_launch(&instance, options, None, &artefacts.join("pre-boot.log"))?;
    let spec = VmSpec::load(&instance.vm_config(), &instance.expansion())?;
    let paths = plan::Paths {
        run: run.clone(),
        artefacts: artefacts.to_owned(),
    };
    let launch = plan::Launch {
        index: 0,
        paths: paths.clone(),
        netns: String::new(),
        subnet: 1,
    };
    let harness = plan::plan(&spec, options, &launch).context("planning the harness's VM")?;
    let mut disks = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        disks.push(match d {
            Disk::Composite {
                partitions,
                writable,
            } => {
                let file = work.join(format!("disk{i}.raw"));
                let what = || format!("{}: disks[{i}] as a raw file", spec.source.display());
                let layout = Layout::build(partitions, *writable).with_context(what)?;
                layout
                    .write_image(&file)
                    .with_context(|| format!("{}: writing {}", what(), file.display()))?;
                RawDisk {
                    file,
                    writable: *writable,
                }
            }
            Disk::Image { path, writable } => RawDisk {
                file: path.clone(),
                writable: *writable,
            },
        });
    }
    let mut group = ProcessGroup::new();
    let mut qemu = harness.qemu.clone();
    match devices {
        Devices::Minimal => {
            qemu.program = plan::QEMU.into();
            qemu.netns = None;
            qemu.args = plain_args(
                &harness.qemu.args,
                &disks,
                &paths.qmp(),
                &paths.console(),
                &paths.console_log(),
            )?;
            std::fs::write(artefacts.join("commands.txt"), qemu.shell_line() + "\n")?;
        }
        Devices::App => {
            if harness.tap.is_some() {
                bail!("the plain comparison with the app's devices runs on QEMU's user network, not TAP");
            }
            qemu.args = with_raw_disks(&harness.qemu.args, &disks)?;
            let mut p = harness.clone();
            p.qemu = qemu.clone();
            std::fs::write(artefacts.join("commands.txt"), p.commands())?;
            crate::vm::prepare_files(&harness)?;
            crate::vm::start_sidecars(&harness, &mut group).await?;
        }
    }
    let log = qemu.log.clone();
    crate::vm::spawn(&mut group, &qemu)?;
    let qemu_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let qmp = wait_until(
        "plain QEMU accepting QMP",
        Timeout::QemuSockets.get(),
        Duration::from_millis(20),
        || {
            let exited = group.try_wait("qemu");
            let qmp_sock = paths.qmp();
            let qmp_log = artefacts.join("qmp.log");
            async move {
                if let Some(st) = exited? {
                    bail!("plain QEMU exited ({st})");
                }
                if !qmp_sock.exists() {
                    return Ok(Check::NotYet("no socket yet".into()));
                }
                match Qmp::connect(&qmp_sock, &qmp_log).await {
                    Ok(q) => Ok(Check::Done(q)),
                    Err(e) => Ok(Check::NotYet(e.to_string())),
                }
            }
        },
    )
    .await
    .with_context(|| format!("starting plain QEMU ({}):\n{}", log.display(), qemu_log()))?;
    let console = Console::connect(&paths.console()).await?;
    qmp.cont().await?;
    let started = Instant::now();
    let re = Regex::new(crate::vm::BOOT_MARKER).expect("static regex");
    console
        .expect(&re, Timeout::BootMarker.get())
        .await
        .with_context(|| {
            format!(
                "plain QEMU: waiting for the boot marker ({})",
                artefacts.display()
            )
        })?;
    let booted = PlainBoot {
        launch_to_marker: t0.elapsed(),
        to_marker: started.elapsed(),
    };
    let _ = tokio::time::timeout(Timeout::QemuExit.get(), qmp.quit()).await;
    group.kill_all();
    Ok(booted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writable composite disk's raw file, then a read-only image.
    fn two_disks(image: &str) -> [RawDisk; 2] {
        [
            RawDisk {
                file: "/w/disk0.raw".into(),
                writable: true,
            },
            RawDisk {
                file: image.into(),
                writable: false,
            },
        ]
    }

    #[test]
    fn the_plain_line_keeps_cpu_memory_kernel_and_drops_every_device() {
        let harness: Vec<OsString> = [
            "-nodefaults",
            "-S",
            "-machine",
            "virt,acpi=off,memory-backend=mem",
            "-cpu",
            "max,pauth-impdef=on,pmu=off",
            "-accel",
            "tcg,thread=multi",
            "-smp",
            "2",
            "-m",
            "4096M",
            "-object",
            "memory-backend-memfd,id=mem,size=4096M,share=on",
            "-chardev",
            "socket,id=vsock,path=/tmp/x/vhost-vsock.sock",
            "-device",
            "vhost-user-vsock-pci,chardev=vsock",
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0",
            "-kernel",
            "/i/vmlinuz",
            "-append",
            "root=PARTUUID=x rw console=ttyS0",
        ]
        .map(OsString::from)
        .to_vec();
        let disks = two_disks("/w/a,b.img");
        let a = plain_args(
            &harness,
            &disks,
            Path::new("/r/qmp.sock"),
            Path::new("/r/con.sock"),
            Path::new("/a/console.log"),
        )
        .unwrap();
        let line = plan::shell_line("qemu", &a);
        assert_eq!(
            line,
            "qemu -nodefaults -no-user-config -nographic -no-reboot -S -machine virt,acpi=off \
             -cpu max,pauth-impdef=on,pmu=off -accel tcg,thread=multi -smp 2 -m 4096M \
             -kernel /i/vmlinuz -append 'root=PARTUUID=x rw console=ttyS0' \
             -qmp unix:/r/qmp.sock,server=on,wait=off \
             -chardev socket,id=con,path=/r/con.sock,server=on,wait=off,logfile=/a/console.log \
             -device pci-serial,chardev=con -nic none \
             -drive if=none,id=hd0,format=raw,file=/w/disk0.raw -device virtio-blk-pci,drive=hd0 \
             -drive if=none,id=hd1,format=raw,file=/w/a,,b.img,readonly=on -device virtio-blk-pci,drive=hd1"
        );
        for gone in ["vhost", "memfd", "netdev", "memory-backend"] {
            assert!(!line.contains(gone), "{gone} in {line}");
        }
        let no_kernel: Vec<OsString> = ["-machine", "virt", "-bios", "u-boot.bin"]
            .map(OsString::from)
            .to_vec();
        let e = plain_args(
            &no_kernel,
            &disks,
            Path::new("q"),
            Path::new("c"),
            Path::new("l"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("direct layout"), "{e}");
    }

    #[test]
    fn the_app_devices_line_swaps_only_the_nbd_disks_for_raw_files() {
        let nbd = r#"{"driver":"raw","file":{"driver":"nbd","server":{"path":"/r/disk0.nbd","type":"unix"}},"node-name":"disk0"}"#;
        let image = r#"{"driver":"raw","file":{"driver":"file","filename":"/p/extra.img"},"node-name":"disk1","read-only":true}"#;
        let harness: Vec<OsString> = [
            "-machine",
            "virt,memory-backend=mem",
            "-blockdev",
            nbd,
            "-device",
            "virtio-blk-pci,drive=disk0",
            "-blockdev",
            image,
            "-device",
            "vhost-user-fs-pci,chardev=fs0,tag=internal",
        ]
        .map(OsString::from)
        .to_vec();
        let disks = two_disks("/p/extra.img");
        let a = with_raw_disks(&harness, &disks).unwrap();
        assert_eq!(a.len(), harness.len());
        let bd: serde_json::Value = serde_json::from_str(&a[3].to_string_lossy()).unwrap();
        assert_eq!(
            bd,
            serde_json::json!({"driver": "raw", "node-name": "disk0", "read-only": false,
                "file": {"driver": "file", "filename": "/w/disk0.raw"}})
        );
        let img: serde_json::Value = serde_json::from_str(&a[7].to_string_lossy()).unwrap();
        assert_eq!(
            img,
            serde_json::from_str::<serde_json::Value>(image).unwrap()
        );
        for (x, y) in a
            .iter()
            .zip(&harness)
            .filter(|(_, y)| !y.to_string_lossy().contains("nbd"))
        {
            if !y.to_string_lossy().starts_with('{') {
                assert_eq!(x, y);
            }
        }
        let no_file = with_raw_disks(&harness, &disks[..0]).unwrap_err();
        assert!(no_file.to_string().contains("disk0"), "{no_file}");
    }
}
