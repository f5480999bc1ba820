//! A launched VM: executes a [`Plan`] — the payload installed into an
//! instance dir, the composite disks served, sidecars and QEMU in one owned
//! process group, QMP and the console connected. Decides nothing itself;
//! exposes, as plain values, what the app's host side needs (shares, vsock
//! socket + CID, gateway, network namespace).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use regex::bytes::Regex;
use tokio::sync::OnceCell;

use crate::console::qga::Qga;
use crate::console::Console;
use crate::disk::{Layout, NbdServer};
use crate::net::TapNet;
use crate::payload::Instance;
use crate::plan::{self, Launch, Options, Paths, Plan, Process, Ready};
use crate::procs::{self, ProcessGroup};
use crate::qmp::{Qmp, QmpEvent};
use crate::spec::{ShareTag, VmSpec};
use crate::tcg::TcgFactor;
use crate::timeouts::{wait_until, Check, Timeout};

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

/// How a run ends when the instance is kept for another start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// QMP `quit`: the app's `vm.stop()` (crosvm killed; the guest is not
    /// asked).
    Quit,
    /// QEMU SIGKILLed: a crash or a power cut.
    Kill,
}

static VM_INDEX: AtomicU32 = AtomicU32::new(0);

/// The boot marker `avf-boot-marker.service` prints on ttyS0, as a
/// regex over the console's bytes. Whole line: the id may arrive in
/// several chunks.
pub const BOOT_MARKER: &str = r"AVF-BOOT-OK (\S+)[\r\n]";

pub struct Vm {
    spec: VmSpec,
    plan: Plan,
    paths: Paths,
    instance: Instance,
    keep_instance: bool,
    procs: ProcessGroup,
    _nbd: Vec<NbdServer>,
    qmp: Arc<Qmp>,
    console: Console,
    qga: OnceCell<Qga>,
    tcg: OnceCell<TcgFactor>,
    /// The knobs this run was started with (a restart reuses them).
    options: Options,
    started_by_app: crate::app::Started,
    /// The app's starts of this instance, this one included.
    starts: u32,
    started: Instant,
    exited: bool,
    /// Dropped after the processes (it deletes their namespace).
    tap: Option<TapNet>,
}

/// The plan's host files: each share's dir, owned by the app, and the
/// files copied in before the guest runs (`ca.crt`).
pub(crate) fn prepare_files(plan: &Plan) -> Result<()> {
    for dir in &plan.share_dirs {
        std::fs::create_dir_all(dir)?;
        chown(dir, plan.app_owner)?;
    }
    for f in &plan.prepare {
        std::fs::copy(&f.from, &f.to)
            .with_context(|| format!("copying {} to {}", f.from.display(), f.to.display()))?;
    }
    Ok(())
}

/// Starts the plan's sidecars into `procs`, each ready before the next.
pub(crate) async fn start_sidecars(plan: &Plan, procs: &mut ProcessGroup) -> Result<()> {
    for sc in &plan.sidecars {
        spawn(procs, &sc.process)?;
        wait_ready(procs, &sc.process, &sc.ready).await?;
    }
    Ok(())
}

/// Starts `p` into the group (in its namespace, if any).
pub(crate) fn spawn(procs: &mut ProcessGroup, p: &Process) -> Result<()> {
    let mut c = Command::new(&p.program);
    c.args(&p.args);
    let _ns = match &p.netns {
        Some(ns) => Some(crate::net::enter_on_spawn(ns, &mut c)?),
        None => None,
    };
    procs.spawn(&p.name, c, &p.log)?;
    Ok(())
}

/// Waits until `ready` holds for process `name`; fails at once if it
/// exits first.
async fn wait_ready(procs: &mut ProcessGroup, p: &Process, ready: &Ready) -> Result<()> {
    let what = match ready {
        Ready::Socket(s) => format!("{} creating {}", p.name, s.display()),
        Ready::LogLine(l) => format!("{} logging {l:?} (see {})", p.name, p.log.display()),
    };
    wait_until(
        &what,
        Timeout::SidecarReady.get(),
        Duration::from_millis(20),
        || {
            let r = match ready {
                Ready::Socket(s) => s.exists(),
                Ready::LogLine(l) => std::fs::read_to_string(&p.log).is_ok_and(|t| t.contains(l)),
            };
            let exited = procs.try_wait(&p.name);
            async move {
                if let Some(st) = exited? {
                    bail!("{} exited ({st}) before it was ready", p.name);
                }
                Ok(if r {
                    Check::Done(())
                } else {
                    Check::NotYet("not yet".into())
                })
            }
        },
    )
    .await
}

/// Removes its dirs on drop (a launch that failed half-way). The dirs are
/// registered with [`procs::register_dir`], so a SIGTERM/SIGINT/SIGHUP
/// removes them too; whoever takes them over (clearing the guard) keeps
/// them registered.
struct DirGuard(Vec<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        for d in &self.0 {
            procs::remove_dir(d);
        }
    }
}

fn chown(p: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .with_context(|| format!("chown {uid}:{gid} {}", p.display()))
}

/// A private (0700, unpredictable name) dir `<parent>/<prefix>XXXXXX`,
/// left for the caller to remove.
pub(crate) fn private_dir(parent: &Path, prefix: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    Ok(tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .with_context(|| format!("creating a private dir in {}", parent.display()))?
        .keep())
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
        let pid = std::process::id();
        sweep_stale_dirs();
        let index = VM_INDEX.load(Ordering::SeqCst);
        let instance_root = private_dir(&instance_base(), &format!("{pid}-{index}-"))?;
        // A kept instance survives a signal as it survives the Vm's drop.
        if !req.keep_instance {
            procs::register_dir(&instance_root);
        }
        // Until a Vm owns it, a failed start removes the dir itself.
        let mut guard = DirGuard(vec![instance_root.clone()]);
        let instance = if req.in_place {
            Instance::in_place(&req.payload, &instance_root)?
        } else {
            Instance::install(&req.payload, &instance_root)?
        };
        let vm = Box::pin(Vm::start(
            instance,
            req.options,
            &req.artefacts,
            req.keep_instance,
            None,
        ))
        .await?;
        guard.0.clear();
        Ok(vm)
    }

    /// The app's start of an installed instance (see [`crate::app`]): its
    /// checks and disk steps, its config, then the plan carried out, paused.
    async fn start(
        instance: Instance,
        options: Options,
        artefacts: &Path,
        keep_instance: bool,
        disk_size: Option<u64>,
    ) -> Result<Vm> {
        let index = VM_INDEX.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // `avf-<pid>-<n>-…`: the sweep knows the owner by the pid.
        let run = private_dir(Path::new("/tmp"), &format!("avf-{pid}-{index}-"))?;
        procs::register_dir(&run);
        let mut guard = DirGuard(vec![run.clone()]);
        let _ = std::fs::remove_dir_all(artefacts);
        std::fs::create_dir_all(artefacts)
            .with_context(|| format!("creating {}", artefacts.display()))?;
        let paths = Paths {
            run: run.clone(),
            artefacts: artefacts.to_owned(),
        };
        let started = crate::app::before_launch(
            &instance,
            &options,
            disk_size,
            &artefacts.join("pre-boot.log"),
        )?;
        let launch = Launch {
            index,
            paths: paths.clone(),
            netns: format!("{}{pid}-{index}", crate::net::NETNS_PREFIX),
            // 192.168.X.0/24, X random: tethering picks its subnet per run.
            subnet: 1 + uuid::Uuid::new_v4().as_bytes()[0] % 254,
        };
        let mut spec = VmSpec::load(&instance.vm_config(), &instance.expansion())?;
        crate::app::override_config(&mut spec, &instance, &options);
        let plan = plan::plan(&spec, &options, &launch).context("planning the VM")?;
        let mut vm = Box::pin(Vm::execute(spec, plan, paths, instance, keep_instance)).await?;
        vm.options = options;
        vm.started_by_app = started;
        guard.0.clear(); // the Vm owns it now
        Ok(vm)
    }

    /// Ends this run as `how` says but keeps the installed instance, as
    /// the phone keeps `files/linux` between runs.
    pub async fn halt(&mut self, how: Halt) {
        match how {
            Halt::Quit => {
                if !self.qemu_exited() {
                    let _ = tokio::time::timeout(Timeout::QemuExit.get(), self.qmp.quit()).await;
                    let _ = self
                        .wait_qemu_exit("QEMU quitting", Timeout::QemuExit.get())
                        .await;
                }
            }
            Halt::Kill => {
                let _ = self.procs.kill("qemu");
            }
        }
        self.procs.kill_all();
        self._nbd.clear();
        self.exited = true;
    }

    /// Starts the same installed instance again, paused: the app's next
    /// start (gate, pre-boot disk steps, config). Call after [`Vm::halt`];
    /// this run's artefacts go to `artefacts`.
    /// `disk_size` is a new size the user chose in the settings (the
    /// next start's disk steps apply it).
    pub async fn relaunch_paused(
        &mut self,
        artefacts: &Path,
        disk_size: Option<u64>,
    ) -> Result<()> {
        let instance = self.instance.clone();
        let mut next = Box::pin(Vm::start(
            instance,
            self.options.clone(),
            artefacts,
            self.keep_instance,
            disk_size,
        ))
        .await?;
        next.starts = self.starts + 1;
        // The instance moves to the next run; dropping this one keeps it.
        self.instance.owned = false;
        *self = next;
        Ok(())
    }

    /// SIGKILLs one sidecar of this run (`virtiofsd-<tag>`,
    /// `vhost-device-vsock`, `dnsmasq`): an injected fault. QEMU itself
    /// goes through [`Vm::halt`].
    pub fn kill_sidecar(&mut self, name: &str) -> Result<std::process::ExitStatus> {
        if name == self.plan.qemu.name {
            bail!("{name} is not a sidecar (a power cut is Vm::halt(Halt::Kill))");
        }
        Ok(self.procs.kill_running(name)?)
    }

    /// The guest kernel's panic line, once the console has shown one, and
    /// when the harness saw it.
    pub fn guest_panic(&self) -> Option<(String, Instant)> {
        self.console.panic()
    }

    /// How many times the app has started this instance.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// What the app did before this run's launch.
    pub fn started_by_app(&self) -> &crate::app::Started {
        &self.started_by_app
    }

    /// The TCG factor of this run (measured on first use; the guest must
    /// be up): the app's deadlines × it are this VM's deadlines.
    pub async fn tcg_factor(&self) -> Result<TcgFactor> {
        self.tcg
            .get_or_try_init(|| crate::tcg::measure(self))
            .await
            .copied()
    }

    /// Carries out `plan`: network, files, disks, sidecars, QEMU; then
    /// connects QMP and the console.
    async fn execute(
        spec: VmSpec,
        plan: Plan,
        paths: Paths,
        instance: Instance,
        keep_instance: bool,
    ) -> Result<Vm> {
        let tap = plan.tap.as_ref().map(TapNet::create).transpose()?;
        prepare_files(&plan)?;
        let mut nbd = Vec::new();
        for d in &plan.disks {
            let layout = Layout::build(&d.partitions, d.writable)
                .with_context(|| format!("{}: disks[{}]", spec.source.display(), d.index))?;
            nbd.push(NbdServer::start(Arc::new(layout), &d.socket)?);
        }
        std::fs::write(paths.artefacts.join("commands.txt"), plan.commands())?;
        let mut procs = ProcessGroup::new();
        start_sidecars(&plan, &mut procs).await?;
        spawn(&mut procs, &plan.qemu)?;
        let qmp_ready = Ready::Socket(paths.qmp());
        let connected = async {
            wait_ready(&mut procs, &plan.qemu, &qmp_ready).await?;
            // The socket file exists from bind(), before QEMU listens: a
            // refused connection (seen under load) means "not yet".
            let qmp_log = paths.artefacts.join("qmp.log");
            let qmp = wait_until(
                "QEMU accepting QMP",
                Timeout::QemuSockets.get(),
                Duration::from_millis(20),
                || async {
                    match Qmp::connect(&paths.qmp(), &qmp_log).await {
                        Ok(q) => Ok(Check::Done(q)),
                        Err(crate::qmp::QmpError::Io(e))
                            if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                        {
                            Ok(Check::NotYet(e.to_string()))
                        }
                        Err(e) => Err(e.into()),
                    }
                },
            )
            .await?;
            let console = Console::connect(&paths.console()).await?;
            anyhow::Ok((Arc::new(qmp), console))
        }
        .await;
        let (qmp, console) = connected.map_err(|e| {
            let log = std::fs::read_to_string(&plan.qemu.log).unwrap_or_default();
            e.context(format!(
                "starting QEMU ({}):\n{}",
                plan.qemu.log.display(),
                log.trim()
            ))
        })?;
        Ok(Vm {
            spec,
            plan,
            paths,
            instance,
            keep_instance,
            procs,
            _nbd: nbd,
            qmp,
            console,
            qga: OnceCell::new(),
            tcg: OnceCell::new(),
            options: Options::default(),
            started_by_app: crate::app::Started::default(),
            starts: 1,
            started: Instant::now(),
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
    /// The knobs this run was started with.
    pub fn options(&self) -> &Options {
        &self.options
    }
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }
    /// A shared handle on QMP (for drivers living beside the VM, e.g. the
    /// app's balloon policy).
    pub fn qmp_handle(&self) -> Arc<Qmp> {
        self.qmp.clone()
    }
    /// The guest's RAM in bytes, as planned.
    pub fn guest_ram(&self) -> u64 {
        self.plan.memory_mib << 20
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
        self.plan.cid
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
    /// The network namespace the guest network lives in (TAP mode).
    pub fn netns(&self) -> Option<PathBuf> {
        self.tap.as_ref().map(|t| t.path())
    }
    /// Where a host service must bind (port 0 = any), in [`Vm::guest_net`],
    /// so the guest reaches it at [`Vm::gateway`] on the same port.
    pub fn host_bind(&self, port: u16) -> SocketAddr {
        match &self.tap {
            Some(t) => SocketAddr::new(t.host.into(), port),
            None => SocketAddr::new(plan::HOST_BIND_ADDR.parse().expect("constant"), port),
        }
    }
    /// The host address reaching guest TCP `guest_port`, if forwarded
    /// (user-mode networking).
    pub fn forwarded(&self, guest_port: u16) -> Option<SocketAddr> {
        self.plan
            .forwards
            .iter()
            .find(|f| f.guest_port == guest_port)
            .map(|f| self.host_bind(f.host_port))
    }
    /// The host file behind a partition label.
    pub fn partition_file(&self, label: &str) -> Option<&Path> {
        self.spec.partition(label).map(|p| p.path.as_path())
    }

    /// Waits for `AVF-BOOT-OK <build_id>` on the console, then for the guest
    /// agent.
    pub async fn wait_boot(&self) -> Result<BootReport> {
        let re = Regex::new(BOOT_MARKER).expect("static regex");
        let m = self
            .console
            .expect(&re, Timeout::BootMarker.get())
            .await
            .context("waiting for the boot marker")?;
        let to_marker = self.started.elapsed();
        let build_id = m.trim().trim_start_matches("AVF-BOOT-OK ").to_string();
        // A build_id the scenario replaced (an older image's) is not the
        // one the guest was built with.
        let replaced = self.options.installed_build_id.is_some();
        if let (false, Ok(expected)) = (
            replaced,
            std::fs::read_to_string(self.instance.payload_dir.join("build_id")),
        ) {
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
        self.wait_qemu_exit("QEMU exiting after SHUTDOWN", left)
            .await?;
        Ok(PowerdownReport {
            reason,
            guest,
            elapsed: t0.elapsed(),
        })
    }

    /// Waits up to `within` (already scaled) for QEMU to exit.
    async fn wait_qemu_exit(&mut self, what: &str, within: Duration) -> Result<()> {
        let procs = &mut self.procs;
        let every = Duration::from_millis(50);
        wait_until(what, within, every, || {
            let st = procs.try_wait("qemu");
            async move {
                Ok(match st? {
                    Some(_) => Check::Done(()),
                    None => Check::NotYet("still running".into()),
                })
            }
        })
        .await?;
        self.exited = true;
        Ok(())
    }

    /// Whether QEMU has exited.
    pub fn qemu_exited(&mut self) -> bool {
        self.exited || matches!(self.procs.try_wait("qemu"), Ok(Some(_)))
    }

    /// Stops everything now (QMP quit, then SIGKILL to the group).
    pub async fn stop(mut self) {
        if !self.qemu_exited() {
            let _ = tokio::time::timeout(Timeout::QemuExit.get(), self.qmp.quit()).await;
            let _ = self
                .wait_qemu_exit("QEMU quitting", Timeout::QemuExit.get())
                .await;
        }
        // Drop does the rest.
    }

    /// A command line that reproduces this run interactively: every
    /// launch knob of the plan (see [`plan::Options::to_args`]), and the
    /// app's host side where the run had one (`--app`).
    pub fn repro_command(&self, payload: &Path, app: bool) -> String {
        let mut args: Vec<std::ffi::OsString> = vec!["boot".into(), payload.into()];
        if app {
            args.push("--app".into());
        }
        args.extend(self.plan.repro_args.iter().cloned());
        plan::shell_line("cargo run -p avf-harness --", &args)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.procs.kill_all();
        self._nbd.clear();
        procs::remove_dir(&self.paths.run);
        if self.instance.owned && !self.keep_instance {
            procs::remove_dir(&self.instance.root);
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

#[cfg(test)]
mod tests {
    use super::*;
    use avf_terminal::profile::UpgradeScreen;
    use avf_terminal::HostProfile;

    #[test]
    fn the_app_gate_refuses_what_android16_would_send_to_its_upgrade_screen() {
        let d = tempfile::tempdir().unwrap();
        let payload = d.path().join("payload");
        std::fs::create_dir_all(&payload).unwrap();
        std::fs::write(payload.join("vm_config.json"), b"{}").unwrap();
        let inst = Instance::in_place(&payload, &d.path().join("scratch")).unwrap();
        let p = HostProfile::android16();
        let gate = |id: Option<&str>| {
            match id {
                Some(t) => std::fs::write(payload.join("build_id"), t).unwrap(),
                None => {
                    let _ = std::fs::remove_file(payload.join("build_id"));
                }
            }
            crate::app::gate(&inst, &p)
        };
        gate(Some("2064\n")).unwrap();
        for old in [Some("debian/aarch64/0.1.0-25-20261126\n"), None] {
            let e = gate(old).unwrap_err();
            let screen = e.downcast_ref::<UpgradeScreen>().expect("typed outcome");
            assert_eq!(screen.read_as, 0);
        }
    }

    /// A launch refused before QEMU starts (here by the app's gate) leaves
    /// neither its run dir nor its instance dir behind.
    #[tokio::test]
    async fn a_refused_launch_leaves_no_dir_behind() {
        let d = tempfile::tempdir().unwrap();
        let payload = d.path().join("payload");
        std::fs::create_dir_all(&payload).unwrap();
        std::fs::write(payload.join("vm_config.json"), b"{}").unwrap();
        std::fs::write(
            payload.join("build_id"),
            b"debian/aarch64/0.1.0-25-20261126\n",
        )
        .unwrap();
        let instances = d.path().join("instances");
        // Only this test launches in the harness's unit tests.
        std::env::set_var("AVF_INSTANCE_ROOT", &instances);
        let err = Vm::launch(LaunchRequest {
            payload,
            in_place: false,
            options: Options::default(),
            artefacts: d.path().join("art"),
            keep_instance: false,
        })
        .await
        .err()
        .expect("refused");
        assert!(err.downcast_ref::<UpgradeScreen>().is_some(), "{err:#}");
        let left: Vec<_> = std::fs::read_dir(&instances).unwrap().collect();
        assert!(left.is_empty(), "instance dirs left: {left:?}");
        let mine = format!("avf-{}-", std::process::id());
        let runs: Vec<_> = std::fs::read_dir("/tmp")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&mine))
            .collect();
        assert!(runs.is_empty(), "run dirs left: {runs:?}");
    }
}
