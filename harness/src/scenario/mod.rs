//! Scenarios: steps as data (see [`model`]), run against one launched VM,
//! golden outputs compared with insta, artefacts kept per scenario. The
//! runner's dispatch is the one place a step kind meets its body.

pub mod faults;
pub mod filters;
pub mod guest;
pub mod lifecycle;
pub mod model;
pub mod repo;
pub mod steps;
pub mod terminal;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub use model::{Scenario, Side, Step};

use crate::vm::{LaunchRequest, Vm};

/// Where a run's artefacts go: `<target>/avf-artefacts/<scenario>/`.
pub fn artefacts_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(|r| r.join("target"))
                .unwrap_or_else(|| PathBuf::from("target"))
        });
    target.join("avf-artefacts").join(name)
}

#[derive(Debug, Clone)]
pub struct StepTiming {
    pub step: String,
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
pub struct RunReport {
    pub boot_to_marker: Option<Duration>,
    pub boot_to_agent: Option<Duration>,
    pub steps: Vec<StepTiming>,
    pub total: Duration,
    pub pgid: Option<i32>,
    /// What steps measured, for the record (latencies, RSS, ...).
    pub notes: Vec<String>,
}

pub struct Runner {
    /// Directory holding `<scenario>__<name>.snap`.
    pub snapshot_dir: PathBuf,
    /// Print progress to stderr.
    pub progress: bool,
}

/// Golden snapshots of one scenario (`<scenario>__<name>.snap`).
pub struct Snapshotter<'a> {
    dir: &'a Path,
    scenario: &'a str,
    pub norm: filters::Normaliser,
}

impl Snapshotter<'_> {
    pub fn check(&self, name: &str, value: &str) -> Result<()> {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(self.dir);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.set_description(format!("{}: {}", self.scenario, name));
        let snap = format!("{}__{}", self.scenario, name);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_snapshot!(snap.as_str(), value));
        }));
        r.map_err(|_| anyhow!("snapshot {snap} does not match (diff above); if the change is intended, rerun with INSTA_UPDATE=always"))
    }
}

impl Runner {
    /// Launches the scenario's VM, runs every step, stops the VM, and checks
    /// no process of the VM's group is left.
    pub async fn run(&self, scenario: &Scenario) -> Result<RunReport> {
        let payload = scenario.payload_dir()?;
        let artefacts = artefacts_dir(&scenario.name);
        let options = scenario.options();
        let t0 = Instant::now();
        self.progress(&format!(
            "{}: launching {}",
            scenario.name,
            payload.display()
        ));
        let mut vm = Box::pin(Vm::launch_paused(LaunchRequest {
            payload: payload.clone(),
            in_place: false,
            options,
            artefacts: artefacts.clone(),
            keep_instance: false,
        }))
        .await?;
        // The app's side exists before the guest runs (ca.crt for ttyd).
        let mut term = match scenario.app_options() {
            Some(opts) => Some(Box::pin(terminal::Session::start(&opts, &vm)).await?),
            None => None,
        };
        vm.resume().await?;
        let mut report = RunReport {
            pgid: vm.pgid(),
            ..RunReport::default()
        };
        let result = Box::pin(self.steps(scenario, &mut vm, &mut term, &mut report)).await;
        let repro = vm.repro_command(&payload, scenario.needs_app());
        let pgid = vm.pgid();
        vm.stop().await;
        let result = match term {
            Some(t) => result.and(t.finish().await),
            None => result,
        };
        if let Some(pg) = pgid {
            // Reaped synchronously in Drop: nothing may remain.
            crate::vm::group_is_empty(pg)?;
        }
        report.total = t0.elapsed();
        result.map_err(|e| {
            e.context(format!(
                "scenario {} failed; artefacts (console, firmware, QMP, sidecar logs, commands) in {}\nreproduce interactively: {repro}",
                scenario.name,
                artefacts.display()
            ))
        })?;
        Ok(report)
    }

    fn progress(&self, msg: &str) {
        if self.progress {
            eprintln!("[avf] {msg}");
        }
    }

    async fn steps(
        &self,
        sc: &Scenario,
        vm: &mut Vm,
        term: &mut Option<terminal::Session>,
        report: &mut RunReport,
    ) -> Result<()> {
        let snap = Snapshotter {
            dir: &self.snapshot_dir,
            scenario: &sc.name,
            norm: filters::Normaliser::default(),
        };
        for (i, step) in sc.steps.iter().enumerate() {
            let t = Instant::now();
            let name = step.describe();
            self.progress(&format!("{}: step {i}: {name}", sc.name));
            // Boxed: the step futures are large, and debug builds on a
            // test thread's stack overflow otherwise.
            let r = Box::pin(dispatch(sc, vm, term, step, &snap, report)).await;
            if r.is_err() && step.side() == Side::App && !vm.qemu_exited() {
                terminal::save_diagnostics(vm).await;
            }
            // A guest kernel panic is the cause of whatever failed after it.
            let r = match (r, vm.guest_panic()) {
                (Err(e), Some((line, _))) => {
                    Err(e.context(format!("the guest kernel panicked: {line}")))
                }
                (r, _) => r,
            };
            let note = r.with_context(|| format!("step {i} ({name})"))?;
            report.notes.extend(note);
            report.steps.push(StepTiming {
                step: name,
                elapsed: t.elapsed(),
            });
            self.progress(&format!(
                "{}: step {i} done in {:.1}s",
                sc.name,
                t.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// Runs one step: the one place each step kind meets its body. App steps
/// need the app's host side (`app`), which the runner started because the
/// scenario has them.
async fn dispatch(
    sc: &Scenario,
    vm: &mut Vm,
    term: &mut Option<terminal::Session>,
    step: &Step,
    snap: &Snapshotter<'_>,
    report: &mut RunReport,
) -> Result<Option<String>> {
    fn app(term: &mut Option<terminal::Session>) -> Result<&mut terminal::Session> {
        term.as_mut()
            .ok_or_else(|| anyhow!("app step without the app's host side"))
    }
    // What a stopped VM left (its console, its disk), or the app's start.
    let on_a_stopped_vm = matches!(
        step,
        Step::HostFsck(_) | Step::ConsoleSnapshot(_) | Step::AppRestart(_)
    );
    if !on_a_stopped_vm && vm.qemu_exited() {
        bail!(
            "the VM has stopped (a power-off, a guest reboot this app does not follow, or a crash): \
             only host_fsck, console_snapshot and app_restart (the app's next start) can follow"
        );
    }
    Ok(match step {
        Step::Boot(s) => steps::boot(vm, s, report).await.map(|_| None)?,
        Step::Exec(s) => steps::exec(vm, s, snap).await.map(|_| None)?,
        Step::PackageInstall(s) => Some(repo::package_install(vm, s).await?),
        Step::KernelUpdate(s) => Some(repo::kernel_update(vm, s).await?),
        Step::ConsoleSnapshot(s) => steps::console_snapshot(vm, s, snap).map(|_| None)?,
        Step::Balloon(s) => steps::balloon(vm, s).await.map(|_| None)?,
        Step::Powerdown(s) => steps::powerdown(vm, s).await.map(|_| None)?,
        Step::HostFsck(s) => steps::host_fsck(vm, s).await.map(|_| None)?,
        Step::TapNetwork(s) => Some(steps::tap_network(vm, s).await?),
        Step::GuestNote(s) => Some(steps::guest_note(vm, s).await?),
        Step::TtydDiscover(s) => Some(terminal::expect_error(
            app(term)?.discover(vm, s).await,
            s.expect_error,
        )?),
        Step::TtydBridgeProbe(s) => Some(app(term)?.bridge_probe(s).await?),
        Step::Clipboard(s) => Some(app(term)?.clipboard(s).await?),
        Step::TtydProbe(s) => app(term)?.probe(s).await.map(|_| None)?,
        Step::TtydRun(s) => app(term)?.run(s).await.map(|_| None)?,
        Step::AgentsConnected(s) => app(term)?.agents(vm, s).await?,
        Step::GuestPort(s) => Some(app(term)?.guest_port(vm, s).await?),
        Step::ForwardRoundtrip(s) => Some(app(term)?.roundtrip(s).await?),
        Step::AppShutdown(s) => Some(app(term)?.shutdown(vm, s).await?),
        Step::StorageBalloon(s) => Some(app(term)?.storage(vm, s).await?),
        Step::MemoryPolicy(s) => Some(app(term)?.memory_policy(vm, s).await?),
        Step::AppRestart(s) => Some(lifecycle::restart(sc, vm, term, s).await?),
        Step::Fault(s) => Some(faults::fault(vm, term, s).await?),
        Step::GuestReboot(s) => Some(lifecycle::guest_reboot(sc, vm, term, s).await?),
        Step::ExpectPanic(s) => Some(faults::expect_panic(sc, vm, term, s).await?),
        Step::PowerCuts(s) => Some(faults::power_cuts(sc, vm, term, s).await?),
    })
}
