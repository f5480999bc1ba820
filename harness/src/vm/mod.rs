//! A launched VM: the payload installed into an instance dir, the composite
//! disk served, sidecars and QEMU in one owned process group, QMP and the
//! console connected. Exposes, as plain values, what the Terminal app's host
//! side needs (shares, vsock socket + CID, gateway, forwards).

pub mod procs;

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use avf_terminal::GuestNet;
use regex::bytes::Regex;
use tokio::sync::OnceCell;

use crate::console::qga::Qga;
use crate::console::Console;
use crate::disk::{Layout, NbdServer, PartitionEntry};
use crate::net::TapNet;
use crate::payload::Instance;
use crate::plan::{self, BootPath, Forward, NetMode, Options, Paths, Plan};
use crate::qmp::{Qmp, QmpEvent};
use crate::spec::{Disk, ShareTag, VmSpec};
use crate::timeouts::Timeout;
use procs::ProcessGroup;

pub const QEMU: &str = "qemu-system-aarch64";

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// Payload dir or images.tar.gz.
    pub payload: PathBuf,
    /// Use the payload dir in place (its root_part gets written).
    pub in_place: bool,
    pub options: Options,
    /// Logs, command line, reproduction script.
    pub artefacts: PathBuf,
    /// Leave the instance dir behind after the VM is gone.
    pub keep_instance: bool,
}

#[derive(Debug, Clone)]
pub struct BootReport {
    pub build_id: String,
    /// `cont` to the boot marker on the console.
    pub to_marker: Duration,
    /// `cont` to the guest agent answering.
    pub to_agent: Duration,
}

#[derive(Debug, Clone)]
pub struct PowerdownReport {
    pub reason: String,
    pub guest: bool,
    /// `system_powerdown` to QEMU's exit.
    pub elapsed: Duration,
}

/// [`avf_terminal::MemoryBalloon`] over QMP: the app says how much to take
/// back, QMP's `balloon` wants what the guest keeps.
#[derive(Clone)]
pub struct QmpBalloon {
    qmp: Arc<Qmp>,
    guest_ram: u64,
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

static VM_INDEX: AtomicU32 = AtomicU32::new(0);

pub struct Vm {
    spec: VmSpec,
    plan: Plan,
    paths: Paths,
    instance: Instance,
    keep_instance: bool,
    layouts: Vec<Arc<Layout>>,
    procs: ProcessGroup,
    _nbd: Vec<NbdServer>,
    qmp: Arc<Qmp>,
    console: Console,
    qga: OnceCell<Qga>,
    started: Instant,
    forwards: Vec<Forward>,
    cid: u32,
    exited: bool,
    /// Dropped after the processes (it deletes their namespace).
    tap: Option<TapNet>,
}

/// A free localhost port (bound then released; QEMU binds it next).
pub fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port()
    })
}

/// Waits (up to the sidecar timeout) until `ready()` holds; fails at once
/// if process `name` exits first. `what` completes "… before/within".
async fn wait_ready(
    procs: &mut ProcessGroup,
    name: &str,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let t = Timeout::SidecarSocket.get();
    let deadline = Instant::now() + t;
    while !ready() {
        if let Some(st) = procs.try_wait(name)? {
            bail!("{name} exited ({st}) before {what}");
        }
        if Instant::now() > deadline {
            bail!("{name} did not finish {what} within {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn wait_for_socket(path: &Path, name: &str, procs: &mut ProcessGroup) -> Result<()> {
    let what = format!("creating {}", path.display());
    wait_ready(procs, name, &what, || path.exists()).await
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .with_context(|| format!("chown {uid}:{gid} {}", p.display()))
}

impl Vm {
    /// Installs the payload, starts everything (QEMU paused), connects QMP
    /// and the console, then lets the guest run.
    pub async fn launch(req: LaunchRequest) -> Result<Vm> {
        let mut vm = Vm::launch_paused(req).await?;
        vm.resume().await?;
        Ok(vm)
    }

    /// Like [`Vm::launch`] but leaves the guest paused before its first
    /// instruction, so host services that must exist before the guest looks
    /// for them (the Terminal app's `ca.crt`) can start; then [`Vm::resume`].
    pub async fn launch_paused(req: LaunchRequest) -> Result<Vm> {
        let idx = VM_INDEX.fetch_add(1, Ordering::SeqCst);
        sweep_stale_dirs();
        let run = PathBuf::from(format!("/tmp/avf-{}-{idx}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run)?;
        let _ = std::fs::remove_dir_all(&req.artefacts);
        std::fs::create_dir_all(&req.artefacts)
            .with_context(|| format!("creating {}", req.artefacts.display()))?;
        let paths = Paths {
            run: run.clone(),
            artefacts: req.artefacts.clone(),
        };

        let instance_root = instance_base().join(format!("{}-{idx}", std::process::id()));
        let _ = std::fs::remove_dir_all(&instance_root);
        let instance = if req.in_place {
            Instance::in_place(&req.payload, &instance_root)?
        } else {
            Instance::install(&req.payload, &instance_root)?
        };
        let spec = VmSpec::load(&instance.vm_config(), &instance.expansion())?;

        let mut options = req.options.clone();
        options.cid = options.cid.max(2048) + idx;
        if spec.network && options.net == NetMode::User {
            // ttyd and unicast mDNS are always reachable from the host.
            for (udp, guest_port) in [(false, 7681), (true, 5353)] {
                if !options
                    .forwards
                    .iter()
                    .any(|f| f.udp == udp && f.guest_port == guest_port)
                {
                    options.forwards.push(Forward {
                        udp,
                        host_port: free_port(udp)?,
                        guest_port,
                    });
                }
            }
        }
        let plan = plan::plan(&spec, &options, &paths);
        let tap = if spec.network && options.net == NetMode::Tap {
            let name = format!("{}{}-{idx}", crate::net::NETNS_PREFIX, std::process::id());
            Some(TapNet::create(&name, &run)?)
        } else {
            None
        };

        // Shares: the app's dirs, owned by the app uid as on the phone.
        for s in &spec.shares {
            std::fs::create_dir_all(&s.host_dir)?;
            chown(&s.host_dir, options.app_uid, options.app_gid)?;
        }
        if plan.firmware == BootPath::Edk2 {
            std::fs::copy(plan::AAVMF_VARS, paths.edk2_vars())
                .with_context(|| format!("copying {}", plan::AAVMF_VARS))?;
        }

        let mut layouts = Vec::new();
        let mut nbd = Vec::new();
        for (i, sock) in &plan.nbd {
            let Disk::Composite {
                partitions,
                writable,
            } = &spec.disks[*i]
            else {
                unreachable!("plan serves composite disks only")
            };
            let layout = Arc::new(
                Layout::build(partitions, *writable)
                    .with_context(|| format!("{}: disks[{i}]", spec.source.display()))?,
            );
            nbd.push(NbdServer::start(layout.clone(), sock)?);
            layouts.push(layout);
        }

        let mut procs = ProcessGroup::new();
        let mut cmdlines = String::new();
        for sc in &plan.sidecars {
            let mut c = Command::new(&sc.program);
            c.args(&sc.args);
            cmdlines.push_str(&plan::shell_line(&sc.program.to_string_lossy(), &sc.args));
            cmdlines.push('\n');
            procs.spawn(
                &sc.name,
                c,
                &paths.artefacts.join(format!("{}.log", sc.name)),
            )?;
            wait_for_socket(&sc.socket, &sc.name, &mut procs).await?;
        }
        if let Some(tap) = &tap {
            let mut c = tap.dnsmasq();
            cmdlines.push_str(&format!("ip netns exec {} {c:?}\n", tap.name()));
            let _ns = tap.enter_on_spawn(&mut c)?;
            let log = paths.artefacts.join("dnsmasq.log");
            procs.spawn("dnsmasq", c, &log)?;
            // dnsmasq logs its DHCP range once it serves.
            let what = format!("serving DHCP (see {})", log.display());
            wait_ready(&mut procs, "dnsmasq", &what, || {
                std::fs::read_to_string(&log).is_ok_and(|t| t.contains("DHCP, IP range"))
            })
            .await?;
        }
        let qemu_line = plan::shell_line(QEMU, &plan.qemu);
        if let Some(tap) = &tap {
            cmdlines.push_str(&format!("ip netns exec {} ", tap.name()));
        }
        cmdlines.push_str(&qemu_line);
        cmdlines.push('\n');
        std::fs::write(paths.artefacts.join("commands.txt"), &cmdlines)?;
        let mut c = Command::new(QEMU);
        c.args(&plan.qemu);
        let _ns = match &tap {
            Some(t) => Some(t.enter_on_spawn(&mut c)?),
            None => None,
        };
        let qemu_log = paths.artefacts.join("qemu.log");
        procs.spawn("qemu", c, &qemu_log)?;
        let connected = async {
            wait_for_socket(&paths.qmp(), "qemu", &mut procs).await?;
            let qmp = Qmp::connect(&paths.qmp(), &paths.artefacts.join("qmp.log")).await?;
            let console = Console::connect(&paths.console()).await?;
            let started = Instant::now();
            anyhow::Ok((Arc::new(qmp), console, started))
        }
        .await;
        let (qmp, console, started) = connected.map_err(|e| {
            let log = std::fs::read_to_string(&qemu_log).unwrap_or_default();
            e.context(format!(
                "starting QEMU ({}):\n{}",
                qemu_log.display(),
                log.trim()
            ))
        })?;

        Ok(Vm {
            cid: options.cid,
            forwards: options.forwards.clone(),
            spec,
            plan,
            paths,
            instance,
            keep_instance: req.keep_instance,
            layouts,
            procs,
            _nbd: nbd,
            qmp,
            console,
            qga: OnceCell::new(),
            started,
            exited: false,
            tap,
        })
    }

    /// Lets a paused guest run; boot times count from here.
    pub async fn resume(&mut self) -> Result<()> {
        self.qmp.cont().await.map_err(|e| {
            let log =
                std::fs::read_to_string(self.paths.artefacts.join("qemu.log")).unwrap_or_default();
            anyhow!(
                "starting the guest (QMP cont): {e}\nqemu.log:\n{}",
                log.trim()
            )
        })?;
        self.started = Instant::now();
        Ok(())
    }

    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }
    /// The guest's memory balloon as the Terminal app drives it.
    pub fn memory_balloon(&self) -> QmpBalloon {
        QmpBalloon {
            qmp: self.qmp.clone(),
            guest_ram: self.plan.memory_mib << 20,
        }
    }
    pub fn console(&self) -> &Console {
        &self.console
    }
    pub fn artefacts(&self) -> &Path {
        &self.paths.artefacts
    }
    pub fn instance(&self) -> &Instance {
        &self.instance
    }
    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }
    /// Process group id of QEMU and its sidecars.
    pub fn pgid(&self) -> Option<i32> {
        self.procs.pgid()
    }
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs.pids()
    }

    /// Host dir of a virtio-fs share (`internal`, `android`).
    pub fn share_dir(&self, tag: ShareTag) -> Option<&Path> {
        self.spec.share(tag).map(|s| s.host_dir.as_path())
    }
    /// vhost-device-vsock's host-side Unix socket: `CONNECT <port>\n` to
    /// reach the guest; guest→host port P lands on `<this>_P`.
    pub fn vsock_uds(&self) -> PathBuf {
        self.paths.vsock_uds()
    }
    pub fn guest_cid(&self) -> u32 {
        self.cid
    }
    /// The guest's default gateway, i.e. the host as the guest sees it.
    pub fn gateway(&self) -> Ipv4Addr {
        match &self.tap {
            Some(t) => t.host,
            None => plan::USER_NET_GATEWAY.parse().expect("constant"),
        }
    }
    /// The guest's own address: fixed in user-mode networking, its DHCP
    /// lease in the TAP mode (`None` before it has one).
    pub fn guest_ip(&self) -> Option<Ipv4Addr> {
        match &self.tap {
            Some(t) => t.lease(plan::GUEST_MAC),
            None => Some(plan::USER_NET_GUEST.parse().expect("constant")),
        }
    }
    /// The TAP mode's network, if that is the mode.
    pub fn tap(&self) -> Option<&TapNet> {
        self.tap.as_ref()
    }
    /// Where host sockets on the guest network are made.
    pub fn guest_net(&self) -> GuestNet {
        self.tap.as_ref().map(TapNet::guest_net).unwrap_or_default()
    }
    /// Where a host service must bind (port 0 = any), in [`Vm::guest_net`],
    /// so the guest reaches it at [`Vm::gateway`] on the same port.
    pub fn host_bind(&self, port: u16) -> SocketAddr {
        match &self.tap {
            Some(t) => SocketAddr::new(t.host.into(), port),
            None => SocketAddr::new(plan::HOST_BIND_ADDR.parse().expect("constant"), port),
        }
    }
    /// The host address reaching guest TCP/UDP `guest_port`, if forwarded.
    pub fn forwarded(&self, udp: bool, guest_port: u16) -> Option<SocketAddr> {
        self.forwards
            .iter()
            .find(|f| f.udp == udp && f.guest_port == guest_port)
            .map(|f| self.host_bind(f.host_port))
    }
    /// Adds a host→guest forward at run time (QMP `hostfwd_add`).
    pub async fn forward(&mut self, udp: bool, guest_port: u16) -> Result<SocketAddr> {
        if let Some(a) = self.forwarded(udp, guest_port) {
            return Ok(a);
        }
        if self.tap.is_some() {
            bail!("no port forwards in the TAP mode: reach the guest at its address");
        }
        let host_port = free_port(udp)?;
        let proto = if udp { "udp" } else { "tcp" };
        let out = self
            .qmp
            .human_monitor_command(&format!(
                "hostfwd_add net0 {proto}:{}:{host_port}-:{guest_port}",
                plan::HOST_BIND_ADDR
            ))
            .await?;
        if !out.trim().is_empty() {
            bail!("hostfwd_add {proto} {guest_port}: {}", out.trim());
        }
        self.forwards.push(Forward {
            udp,
            host_port,
            guest_port,
        });
        Ok(self.host_bind(host_port))
    }

    /// The GPT the guest sees, per composite disk.
    pub fn partition_table(&self) -> Vec<&PartitionEntry> {
        self.layouts.iter().flat_map(|l| l.entries.iter()).collect()
    }
    /// The host file behind a partition label.
    pub fn partition_file(&self, label: &str) -> Option<&Path> {
        self.spec.partition(label).map(|p| p.path.as_path())
    }

    /// Waits for `AVF-BOOT-OK <build_id>` on the console, then for the guest
    /// agent.
    pub async fn wait_boot(&self) -> Result<BootReport> {
        // Whole line: the id may arrive in several chunks.
        let re = Regex::new(r"AVF-BOOT-OK (\S+)[\r\n]").expect("static regex");
        let m = self
            .console
            .expect(&re, Timeout::BootMarker.get())
            .await
            .context("waiting for the boot marker")?;
        let to_marker = self.started.elapsed();
        let build_id = m.trim().trim_start_matches("AVF-BOOT-OK ").to_string();
        if let Ok(expected) = std::fs::read_to_string(self.instance.payload_dir.join("build_id")) {
            if expected.trim() != build_id {
                bail!(
                    "guest booted build {build_id:?}, payload is {:?}",
                    expected.trim()
                );
            }
        }
        self.qga().await?.ping().await?;
        Ok(BootReport {
            build_id,
            to_marker,
            to_agent: self.started.elapsed(),
        })
    }

    /// The guest-agent command channel (connected on first use).
    pub async fn qga(&self) -> Result<&Qga> {
        self.qga
            .get_or_try_init(|| async {
                Qga::connect(
                    &self.paths.qga(),
                    Some(&self.paths.artefacts.join("qga.log")),
                    Timeout::GuestAgent.get(),
                )
                .await
                .map_err(anyhow::Error::from)
            })
            .await
    }

    /// `system_powerdown`, then SHUTDOWN and QEMU's exit.
    pub async fn powerdown(&mut self, within: Duration) -> Result<PowerdownReport> {
        let from = self.qmp.event_count();
        let t0 = Instant::now();
        self.qmp.system_powerdown().await?;
        self.wait_shutdown(from, t0, within).await
    }

    /// Waits for a SHUTDOWN event after QMP event `from` (see
    /// [`Qmp::event_count`]) and QEMU's exit, `within` from `t0`: for a
    /// power-off the guest starts itself.
    pub async fn wait_shutdown(
        &mut self,
        from: usize,
        t0: Instant,
        within: Duration,
    ) -> Result<PowerdownReport> {
        let (guest, reason) = self
            .qmp
            .wait_event(
                "SHUTDOWN",
                from,
                within.saturating_sub(t0.elapsed()),
                |e| match e {
                    QmpEvent::Shutdown { guest, reason } => Some((*guest, reason.clone())),
                    _ => None,
                },
            )
            .await?;
        let left = within
            .saturating_sub(t0.elapsed())
            .max(Timeout::QemuExit.get());
        let st = tokio::task::block_in_place(|| self.procs.wait_for("qemu", left))?;
        if st.is_none() {
            bail!("QEMU still running {left:?} after SHUTDOWN");
        }
        self.exited = true;
        Ok(PowerdownReport {
            reason,
            guest,
            elapsed: t0.elapsed(),
        })
    }

    /// Whether QEMU has exited.
    pub fn qemu_exited(&mut self) -> bool {
        self.exited || matches!(self.procs.try_wait("qemu"), Ok(Some(_)))
    }

    /// Stops everything now (QMP quit, then SIGKILL to the group).
    pub async fn stop(mut self) {
        if !self.qemu_exited() {
            let _ = tokio::time::timeout(Timeout::QemuExit.get(), self.qmp.quit()).await;
            let t = Timeout::QemuExit.get();
            let _ = tokio::task::block_in_place(|| self.procs.wait_for("qemu", t));
        }
        // Drop does the rest.
    }

    /// A command line that reproduces this run interactively.
    pub fn repro_command(&self, payload: &Path) -> String {
        let mut args: Vec<OsString> = vec!["boot".into(), payload.into()];
        if self.plan.firmware == BootPath::Edk2 {
            args.push("--firmware".into());
            args.push("edk2".into());
        }
        if self.tap.is_some() {
            args.push("--net".into());
            args.push("tap".into());
        }
        plan::shell_line("cargo run -p avf-harness --", &args)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.procs.kill_all();
        self._nbd.clear();
        let _ = std::fs::remove_dir_all(&self.paths.run);
        if self.instance.owned && !self.keep_instance {
            let _ = std::fs::remove_dir_all(&self.instance.root);
        }
    }
}

/// Per-run instance dirs live here (`AVF_INSTANCE_ROOT`).
pub fn instance_base() -> PathBuf {
    std::env::var_os("AVF_INSTANCE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/avf-instances"))
}

/// Removes run and instance dirs and TAP network namespaces of harness
/// processes that died without cleaning up (SIGKILL); returns what was
/// removed.
pub fn sweep_stale_dirs() -> Vec<PathBuf> {
    let mut v = procs::sweep_stale(Path::new("/tmp"), "avf-");
    v.extend(procs::sweep_stale(&instance_base(), ""));
    v.extend(crate::net::sweep_stale_namespaces());
    v
}

/// Checks nothing of ours survives: no process in `pgid`.
pub fn group_is_empty(pgid: i32) -> Result<()> {
    let left = procs::group_members(pgid);
    if left.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("processes left in group {pgid}: {left:?}"))
    }
}
