//! Scenarios: steps as data (see [`model`]), run against one launched VM,
//! golden outputs compared with insta, artefacts kept per scenario.

pub mod filters;
pub mod guest;
pub mod model;
pub mod network;
pub mod terminal;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;

pub use model::{Scenario, Step};

use crate::plan::Options;
use crate::timeouts::Timeout;
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

fn step_name(s: &Step) -> String {
    match s {
        Step::Boot { .. } => "boot".into(),
        Step::Exec { sh, .. } => format!("exec `{}`", sh.lines().next().unwrap_or_default()),
        Step::ConsoleSnapshot { name, .. } => format!("console_snapshot {name}"),
        Step::Balloon { fraction, .. } => format!("balloon {fraction}"),
        Step::Powerdown { .. } => "powerdown".into(),
        Step::HostFsck { label } => format!("host_fsck {label}"),
        Step::TapNetwork(n) => format!("tap_network resolve {}", n.resolve),
        Step::TtydDiscover(_) => "ttyd_discover".into(),
        Step::TtydProbe(p) => format!("ttyd_probe {:?} {:?}", p.identity, p.expect),
        Step::TtydRun(r) => format!("ttyd_run `{}`", r.cmd),
        Step::AgentsConnected(a) => format!("agents_connected {:?}", a.queues),
        Step::GuestPort(p) => format!("guest_port {} present={}", p.port, p.present),
        Step::ForwardRoundtrip(f) => format!("forward_roundtrip {} bytes", f.bytes),
        Step::AppShutdown(_) => "app_shutdown".into(),
        Step::StorageBalloon(b) => format!("storage_balloon hold {} MiB", b.hold_mib),
        Step::GuestNote(n) => format!("guest_note {}", n.name),
        Step::MemoryPolicy(_) => "memory_policy".into(),
    }
}

impl Runner {
    fn snapshot(&self, scenario: &Scenario, name: &str, value: &str) -> Result<()> {
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(&self.snapshot_dir);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.set_description(format!("{}: {}", scenario.name, name));
        let snap = format!("{}__{}", scenario.name, name);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_snapshot!(snap.as_str(), value));
        }));
        r.map_err(|_| anyhow!("snapshot {snap} does not match (diff above); if the change is intended, rerun with INSTA_UPDATE=always"))
    }

    /// Launches the scenario's VM, runs every step, stops the VM, and checks
    /// no process of the VM's group is left.
    pub async fn run(&self, scenario: &Scenario) -> Result<RunReport> {
        let payload = scenario.payload_dir()?;
        let artefacts = artefacts_dir(&scenario.name);
        let options = Options {
            firmware: scenario.firmware,
            net: scenario.net,
            vcpus: scenario.vcpus,
            memory_mib: scenario.memory_mib,
            ..Options::default()
        };
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
        let term_opts = scenario.terminal.clone().or_else(|| {
            scenario
                .steps
                .iter()
                .any(Step::is_terminal)
                .then(terminal::TerminalOptions::default)
        });
        let mut term = match term_opts {
            Some(o) => Some(Box::pin(terminal::Session::start(&o, &vm)).await?),
            None => None,
        };
        vm.resume().await?;
        let mut report = RunReport {
            pgid: vm.pgid(),
            ..RunReport::default()
        };
        let result = Box::pin(self.steps(scenario, &mut vm, &mut term, &mut report)).await;
        let repro = vm.repro_command(&payload);
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
        let norm = filters::Normaliser::default();
        for (i, step) in sc.steps.iter().enumerate() {
            let t = Instant::now();
            let name = step_name(step);
            self.progress(&format!("{}: step {i}: {name}", sc.name));
            // Boxed: the step futures are large, and debug builds on a
            // test thread's stack overflow otherwise.
            Box::pin(self.step(sc, vm, term, step, &norm, report))
                .await
                .with_context(|| format!("step {i} ({name})"))?;
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

    async fn step(
        &self,
        sc: &Scenario,
        vm: &mut Vm,
        term: &mut Option<terminal::Session>,
        step: &Step,
        norm: &filters::Normaliser,
        report: &mut RunReport,
    ) -> Result<()> {
        match step {
            Step::Boot { max_secs } => {
                let b = vm.wait_boot().await?;
                report.boot_to_marker = Some(b.to_marker);
                report.boot_to_agent = Some(b.to_agent);
                if let Some(m) = max_secs {
                    let limit = Duration::from_secs(*m).mul_f64(crate::timeouts::scale());
                    if b.to_marker > limit {
                        bail!("boot took {:?}, more than {limit:?}", b.to_marker);
                    }
                }
            }
            Step::Exec {
                sh,
                exit,
                stdout_matches,
                snapshot,
            } => {
                let out = vm.qga().await?.sh(sh).await?;
                let stdout = out.stdout_str();
                if out.exit_code != Some(*exit) {
                    bail!(
                        "exit {:?} (signal {:?}), expected {exit}\nstdout:\n{stdout}\nstderr:\n{}",
                        out.exit_code,
                        out.signal,
                        out.stderr_str()
                    );
                }
                if let Some(re) = stdout_matches {
                    if !Regex::new(re)?.is_match(&stdout) {
                        bail!("stdout does not match /{re}/:\n{stdout}");
                    }
                }
                if let Some(snap) = snapshot {
                    self.snapshot(sc, snap, &norm.text(&stdout, &[], &[]))?;
                }
            }
            Step::ConsoleSnapshot { name, drop, keep } => {
                let keep: Vec<Regex> = keep
                    .iter()
                    .map(|r| Regex::new(r))
                    .collect::<Result<_, _>>()?;
                let drop: Vec<Regex> = drop
                    .iter()
                    .map(|r| Regex::new(r))
                    .collect::<Result<_, _>>()?;
                let text = String::from_utf8_lossy(&vm.console().transcript()).into_owned();
                self.snapshot(sc, name, &norm.text(&text, &keep, &drop))?;
            }
            Step::Balloon {
                fraction,
                tolerance_mib,
            } => Box::pin(self.balloon(vm, *fraction, *tolerance_mib)).await?,
            Step::Powerdown {
                reason,
                within_secs,
            } => {
                let within = Duration::from_secs(*within_secs).mul_f64(crate::timeouts::scale());
                let r = vm.powerdown(within).await?;
                if &r.reason != reason {
                    bail!("SHUTDOWN reason {:?}, expected {reason:?}", r.reason);
                }
            }
            Step::TapNetwork(s) => report.notes.push(network::check(vm, s).await?),
            terminal_step @ (Step::TtydDiscover(_)
            | Step::TtydProbe(_)
            | Step::TtydRun(_)
            | Step::AgentsConnected(_)
            | Step::GuestPort(_)
            | Step::ForwardRoundtrip(_)
            | Step::AppShutdown(_)
            | Step::StorageBalloon(_)
            | Step::GuestNote(_)
            | Step::MemoryPolicy(_)) => {
                let t = term
                    .as_mut()
                    .ok_or_else(|| anyhow!("terminal step without the terminal host"))?;
                report.notes.extend(t.step(vm, terminal_step).await?);
            }
            Step::HostFsck { label } => {
                if !vm.qemu_exited() {
                    bail!("host_fsck needs the VM stopped (add a powerdown step first)");
                }
                let file = vm
                    .partition_file(label)
                    .ok_or_else(|| anyhow!("no partition labelled {label:?}"))?
                    .to_owned();
                let out = tokio::process::Command::new("e2fsck")
                    .args(["-n", "-f"])
                    .arg(&file)
                    .output()
                    .await
                    .context("running e2fsck")?;
                if !out.status.success() {
                    bail!(
                        "e2fsck -n -f {} exited {}:\n{}{}",
                        file.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        Ok(())
    }

    async fn balloon(&self, vm: &Vm, fraction: f64, tol_mib: u64) -> Result<()> {
        const MIB: u64 = 1 << 20;
        let total = vm.plan().memory_mib * MIB;
        let target = ((total as f64 * fraction) as u64) / MIB * MIB;
        let base = (
            guest::guest_mem_total(vm).await?,
            vm.qmp().query_balloon().await?,
        );
        vm.qmp().balloon(target).await?;
        let deadline = Instant::now() + Timeout::BalloonSettle.get();
        guest::wait_balloon(vm, target, base, tol_mib * MIB, deadline)
            .await
            .with_context(|| format!("within {:?}", Timeout::BalloonSettle.get()))?;
        Ok(())
    }
}
