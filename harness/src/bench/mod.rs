//! `avf-harness bench-boot`: the boot benchmark. Boots each configuration
//! N times, interleaved (round 1: A B C …, round 2: A B C …, so load that
//! drifts hits every side), and reports medians side by side: the harness
//! against the same kernel and partitions on plain QEMU, direct against
//! efi, first against second boot, the stock kernel against linux-avf,
//! with `systemd-analyze` and the idle memory from the guest. It prints
//! figures and asserts nothing about time; a boot that fails is a sample
//! with its error (and a non-zero exit once everything is written).

pub mod build;
pub mod guest;
pub mod plain;
pub mod report;
pub mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::plan::{Options, VcpuModel};
use crate::timeouts::Timeout;
use crate::vm::{Halt, LaunchRequest, Vm};
use guest::GuestFigures;

/// Which machine boots the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The harness's VM, as every scenario boots it.
    Harness,
    /// [`plain::boot`] with [`plain::Devices::Minimal`]: minimal QEMU,
    /// same kernel and partitions.
    Plain,
    /// [`plain::boot`] with [`plain::Devices::App`]: the harness's QEMU
    /// line and sidecars, raw disk files, no harness.
    #[serde(rename = "plain-app-devices")]
    PlainAppDevices,
}

/// One configuration of the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Short name, the key of its samples (`harness-direct`).
    pub key: String,
    /// What a reader sees in the table.
    pub label: String,
    pub side: Side,
    pub payload: PathBuf,
    /// Boot the same disk copy a second time (after a clean power-off).
    pub second_boot: bool,
    /// Runs every round; otherwise only the first `secondary_runs`.
    pub primary: bool,
    /// The vCPU for this configuration, if not the run's.
    pub vcpu: Option<VcpuModel>,
}

/// The knobs of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub configs: Vec<Config>,
    /// Rounds of the primary comparisons.
    pub runs: u32,
    /// Rounds of second boots and non-primary configurations.
    pub secondary_runs: u32,
    /// The launch knobs every harness boot gets (and the plain side
    /// copies its CPU, memory and command line from).
    pub launch: Options,
    /// Time after the boot finished before `free -m`.
    pub settle: Duration,
    /// Per-boot artefacts go to `<artefacts>/<key>-<round>[-2nd]`.
    pub artefacts: PathBuf,
    /// Configurations left out, and why (printed with the report).
    pub skipped: Vec<String>,
}

/// One boot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub config: String,
    /// 1-based round.
    pub round: u32,
    /// 1: first boot of a fresh install; 2: the same disk again.
    pub boot: u32,
    /// From asking for the VM (install, app steps, sidecars, QEMU) to the
    /// boot marker.
    pub launch_to_marker_s: Option<f64>,
    /// From `cont` (the guest's first instruction) to the boot marker.
    pub to_marker_s: Option<f64>,
    /// From `cont` to the guest agent answering.
    pub to_agent_s: Option<f64>,
    pub guest: Option<GuestFigures>,
    /// For a second boot: whether the first one powered off cleanly on
    /// `system_powerdown` (otherwise it was stopped with QMP `quit`).
    pub clean_poweroff_before: Option<bool>,
    pub error: Option<String>,
}

impl Sample {
    fn new(config: &Config, round: u32, boot: u32) -> Sample {
        Sample {
            config: config.key.clone(),
            round,
            boot,
            ..Sample::default()
        }
    }

    fn failed(mut self, what: &str, e: &anyhow::Error) -> Sample {
        self.error = Some(format!("{what}: {e:#}"));
        self
    }
}

/// The load average (1, 5, 15 min) now, from /proc/loadavg.
pub fn loadavg() -> Option<[f64; 3]> {
    let t = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = t
        .split_whitespace()
        .take(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    v.try_into().ok()
}

/// Everything a run measured, as written to the JSON file.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    pub started_unix: u64,
    pub wall_s: f64,
    pub host_cpus: u32,
    pub loadavg_before: Option<[f64; 3]>,
    pub loadavg_after: Option<[f64; 3]>,
    pub runs: u32,
    pub secondary_runs: u32,
    pub settle_s: u64,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub configs: Vec<Config>,
    pub skipped: Vec<String>,
    pub samples: Vec<Sample>,
}

impl BenchRun {
    pub fn failures(&self) -> usize {
        self.samples.iter().filter(|s| s.error.is_some()).count()
    }
}

/// Boot to the marker, then the guest's figures.
async fn boot_figures(vm: &Vm, launch: Duration, settle: Duration, s: &mut Sample) -> Result<()> {
    let b = vm.wait_boot().await?;
    s.to_marker_s = Some(b.to_marker.as_secs_f64());
    s.to_agent_s = Some(b.to_agent.as_secs_f64());
    s.launch_to_marker_s = Some((launch + b.to_marker).as_secs_f64());
    s.guest = Some(guest::measure(vm, settle).await?);
    Ok(())
}

/// One round of a harness configuration: the first boot and, when asked,
/// a second boot of the same instance after a power-off.
async fn harness_round(c: &Config, round: u32, second: bool, o: &BenchOptions) -> Vec<Sample> {
    let art = o.artefacts.join(format!("{}-{round}", c.key));
    let mut first = Sample::new(c, round, 1);
    let t0 = Instant::now();
    let mut options = o.launch.clone();
    if let Some(v) = c.vcpu {
        options.vcpu = v;
    }
    let launched = Vm::launch(LaunchRequest {
        payload: c.payload.clone(),
        in_place: false,
        options,
        artefacts: art.clone(),
        keep_instance: false,
    })
    .await;
    let mut vm = match launched {
        Ok(vm) => vm,
        Err(e) => return vec![first.failed("launch", &e)],
    };
    if let Err(e) = boot_figures(&vm, t0.elapsed(), o.settle, &mut first).await {
        vm.stop().await;
        return vec![first.failed("first boot", &e)];
    }
    if !second {
        vm.stop().await;
        return vec![first];
    }
    let mut again = Sample::new(c, round, 2);
    let clean = vm.powerdown(Timeout::Powerdown.get()).await;
    again.clean_poweroff_before = Some(clean.is_ok());
    vm.halt(Halt::Quit).await;
    let t1 = Instant::now();
    let relaunched = async {
        vm.relaunch_paused(&o.artefacts.join(format!("{}-{round}-2nd", c.key)), None)
            .await?;
        vm.resume().await
    }
    .await;
    if let Err(e) = relaunched {
        vm.stop().await;
        return vec![first, again.failed("second launch", &e)];
    }
    if let Err(e) = boot_figures(&vm, t1.elapsed(), o.settle, &mut again).await {
        again = again.failed("second boot", &e);
    }
    vm.stop().await;
    vec![first, again]
}

async fn plain_round(c: &Config, round: u32, o: &BenchOptions, devices: plain::Devices) -> Sample {
    let art = o.artefacts.join(format!("{}-{round}", c.key));
    let s = Sample::new(c, round, 1);
    match plain::boot(&c.payload, &o.launch, devices, &art).await {
        Ok(b) => Sample {
            to_marker_s: Some(b.to_marker.as_secs_f64()),
            launch_to_marker_s: Some(b.launch_to_marker.as_secs_f64()),
            ..s
        },
        Err(e) => s.failed("plain boot", &e),
    }
}

/// One line of progress for a finished sample.
fn progress_line(s: &Sample) -> String {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} s"));
    let mut line = format!(
        "[bench] round {} {}{}: marker {} (launch→marker {})",
        s.round,
        s.config,
        if s.boot == 2 { " 2nd boot" } else { "" },
        f(s.to_marker_s),
        f(s.launch_to_marker_s)
    );
    if let Some(g) = &s.guest {
        line.push_str(&format!(
            ", kernel {} userspace {}, used {} MiB, {}",
            f(g.time.phase("kernel")),
            f(g.time.phase("userspace")),
            g.memory.used_mib,
            g.state
        ));
    }
    if let Some(e) = &s.error {
        line.push_str(&format!(", FAILED: {e}"));
    }
    line
}

/// Runs the benchmark: `runs` rounds, each booting every configuration
/// once in order (non-primary ones and second boots only in the first
/// `secondary_runs` rounds). Progress goes to stderr.
pub async fn run(o: &BenchOptions) -> BenchRun {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let loadavg_before = loadavg();
    let mut samples = Vec::new();
    for round in 1..=o.runs {
        let secondary = round <= o.secondary_runs;
        for c in &o.configs {
            if !c.primary && !secondary {
                continue;
            }
            let got = match c.side {
                Side::Harness => harness_round(c, round, c.second_boot && secondary, o).await,
                Side::Plain => vec![plain_round(c, round, o, plain::Devices::Minimal).await],
                Side::PlainAppDevices => {
                    vec![plain_round(c, round, o, plain::Devices::App).await]
                }
            };
            for s in got {
                eprintln!("{}", progress_line(&s));
                samples.push(s);
            }
        }
    }
    BenchRun {
        started_unix,
        wall_s: started.elapsed().as_secs_f64(),
        host_cpus: crate::plan::host_cpus(),
        loadavg_before,
        loadavg_after: loadavg(),
        runs: o.runs,
        secondary_runs: o.secondary_runs,
        settle_s: o.settle.as_secs(),
        vcpus: o.launch.vcpus,
        memory_mib: o.launch.memory_mib,
        configs: o.configs.clone(),
        skipped: o.skipped.clone(),
        samples,
    }
}
