//! `avf-harness bench-build`: "can rebuild the system", measured. Boots the
//! payload at each memory size, starts the Terminal app's background
//! memory-balloon policy, installs a compiler (Debian arm64 debs fetched on
//! the host by `harness/scripts/guest-toolchain.sh`: the guest has no
//! network) and linux-avf-headers from the build's repo through the
//! `/mnt/shared` share, then builds a kernel module in a transient systemd
//! unit, loads and unloads it. Reports the build's wall time, its cgroup's
//! memory.peak, the guest's MemAvailable floor and the balloon.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use avf_terminal::balloon::MemoryBalloonPolicy;
use avf_terminal::AppState;
use serde::Serialize;

use super::stats::Summary;
use crate::plan::Options;
use crate::scenario::terminal::QmpBalloon;
use crate::spec::ShareTag;
use crate::vm::{LaunchRequest, Vm};

const MIB: u64 = 1 << 20;

/// What goes into the share, under this directory name.
pub const SHARE_SUBDIR: &str = "avf-bench-build";
/// The share's mount point in the guest (contract: `/storage/emulated`).
const GUEST_SHARE: &str = "/mnt/shared";

const MODULE_C: &str = include_str!("hello/avf_bench_hello.c");
const MODULE_KBUILD: &str = include_str!("hello/Kbuild");
const INSTALL_SH: &str = include_str!("hello/install.sh");
const BUILD_SH: &str = include_str!("hello/build.sh");

/// One memory size to build under.
#[derive(Debug, Clone, Serialize)]
pub struct BuildConfig {
    pub key: String,
    pub label: String,
    /// `None`: the payload's own `memory_mib`.
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub payload: PathBuf,
    pub configs: Vec<BuildConfig>,
    pub runs: u32,
    /// The memory policy's time scale (1: the app's real minute steps).
    pub balloon_time_scale: f64,
    /// The directory of .deb files (guest-toolchain.sh's output).
    pub toolchain: PathBuf,
    /// linux-avf-headers-*.pkg.tar.zst from the build's repo.
    pub headers: PathBuf,
    pub vcpus: Option<u32>,
    pub artefacts: PathBuf,
}

/// What the guest's build script printed, parsed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BuildFigures {
    pub exit_code: i32,
    pub build_s: f64,
    pub peak_mib: Option<f64>,
    pub memavail_min_mib: Option<f64>,
    pub memtotal_start_mib: Option<f64>,
    pub memtotal_end_mib: Option<f64>,
    pub vermagic: Option<String>,
    /// The module's own lines from dmesg (loaded, unloaded).
    pub dmesg: Vec<String>,
}

impl BuildFigures {
    /// Built, loaded (its init message) and unloaded.
    pub fn ok(&self) -> bool {
        self.exit_code == 0
            && self.dmesg.iter().any(|l| l.contains("loaded into"))
            && self.dmesg.iter().any(|l| l.contains("unloaded"))
    }
}

/// One boot, install and build.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildSample {
    pub config: String,
    pub round: u32,
    pub guest_ram_mib: u64,
    pub install_s: Option<f64>,
    pub gcc: Option<String>,
    pub build: Option<BuildFigures>,
    /// The policy's largest balloon up to the build's end, and its steps.
    pub balloon_max_mib: Option<u64>,
    pub balloon_steps: usize,
    /// What QEMU's balloon left the guest when the build ended.
    pub qemu_keeps_mib: Option<u64>,
    pub error: Option<String>,
}

impl BuildSample {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.build.as_ref().is_some_and(BuildFigures::ok)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildRun {
    pub started_unix: u64,
    pub wall_s: f64,
    pub host_cpus: u32,
    pub loadavg_before: Option<[f64; 3]>,
    pub loadavg_after: Option<[f64; 3]>,
    pub payload: PathBuf,
    pub toolchain: PathBuf,
    pub headers: PathBuf,
    pub balloon_time_scale: f64,
    pub configs: Vec<BuildConfig>,
    pub samples: Vec<BuildSample>,
}

impl BuildRun {
    pub fn failures(&self) -> usize {
        self.samples.iter().filter(|s| !s.ok()).count()
    }
}

/// Splits `@@name` sections: name → body lines.
fn sections(out: &str) -> Vec<(&str, Vec<&str>)> {
    let mut v: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in out.lines() {
        if let Some(name) = line.trim().strip_prefix("@@") {
            v.push((name, Vec::new()));
        } else if let Some((_, body)) = v.last_mut() {
            if !line.trim().is_empty() {
                body.push(line.trim());
            }
        }
    }
    v
}

/// Parses the build script's output (`hello/build.sh`).
pub fn parse_build_output(out: &str) -> Result<BuildFigures> {
    let s = sections(out);
    let first = |name: &str| -> Option<&str> {
        s.iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, b)| b.first().copied())
    };
    let num = |name: &str| -> Result<Option<f64>> {
        first(name)
            .map(|v| {
                v.parse::<f64>().with_context(|| {
                    format!("the guest's build script: @@{name} {v:?} is not a number")
                })
            })
            .transpose()
    };
    let kib = |name: &str| -> Result<Option<f64>> { Ok(num(name)?.map(|k| k / 1024.0)) };
    let exit_code = first("rc")
        .with_context(|| format!("the guest's build script printed no @@rc: {out:?}"))?;
    let exit_code = exit_code
        .parse()
        .with_context(|| format!("the guest's build script: @@rc {exit_code:?} is not a number"))?;
    Ok(BuildFigures {
        exit_code,
        build_s: num("build_s")?.context("the guest's build script printed no @@build_s")?,
        peak_mib: num("peak_bytes")?.map(|b| b / MIB as f64),
        memavail_min_mib: kib("memavail_min_kib")?,
        memtotal_start_mib: kib("memtotal_start_kib")?,
        memtotal_end_mib: kib("memtotal_end_kib")?,
        vermagic: first("vermagic").map(str::to_string),
        dmesg: s
            .iter()
            .find(|(n, _)| *n == "dmesg")
            .map(|(_, b)| b.iter().map(|l| l.to_string()).collect())
            .unwrap_or_default(),
    })
}

/// The toolchain's .deb files.
fn debs(toolchain: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(toolchain)
        .with_context(|| format!("reading the toolchain dir {}", toolchain.display()))?
    {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            v.push(p);
        }
    }
    if v.is_empty() {
        bail!("toolchain dir {}: no .deb files", toolchain.display());
    }
    Ok(v)
}

impl BuildOptions {
    /// The inputs exist: checked before any boot, not after one.
    pub fn check(&self) -> Result<()> {
        debs(&self.toolchain)?;
        if !self.headers.is_file() {
            bail!("headers package {}: no such file", self.headers.display());
        }
        Ok(())
    }
}

/// Fills the share: the toolchain debs, the headers package, the module.
fn fill_share(share: &Path, o: &BuildOptions) -> Result<PathBuf> {
    let dir = share.join(SHARE_SUBDIR);
    let tc = dir.join("toolchain");
    let hello = dir.join("hello");
    for d in [&tc, &hello] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for p in debs(&o.toolchain)? {
        let to = tc.join(p.file_name().unwrap_or_default());
        std::fs::copy(&p, &to)
            .with_context(|| format!("copying {} to {}", p.display(), to.display()))?;
    }
    let h = dir.join("linux-avf-headers.pkg.tar.zst");
    std::fs::copy(&o.headers, &h)
        .with_context(|| format!("copying {} to {}", o.headers.display(), h.display()))?;
    std::fs::write(hello.join("avf_bench_hello.c"), MODULE_C)?;
    std::fs::write(hello.join("Kbuild"), MODULE_KBUILD)?;
    Ok(dir)
}

/// `sh -c script sh <arg>` in the guest, with its own deadline.
async fn guest_script(vm: &Vm, script: &str, arg: &str, within: Duration) -> Result<String> {
    let argv = ["/bin/sh", "-c", script, "sh", arg].map(String::from);
    let out = vm.qga().await?.exec(&argv, within).await?;
    if out.exit_code != Some(0) {
        bail!(
            "exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.exit_code,
            out.stdout_str(),
            out.stderr_str()
        );
    }
    Ok(out.stdout_str())
}

/// Boot, policy, install, build on a launched VM (stopped by the caller).
async fn measure(vm: &Vm, o: &BuildOptions, s: &mut BuildSample) -> Result<()> {
    vm.wait_boot().await.context("boot")?;
    let share = vm
        .share_dir(ShareTag::Android)
        .context("the payload has no /storage/emulated share (/mnt/shared)")?;
    fill_share(share, o)?;
    let guest_dir = format!("{GUEST_SHARE}/{SHARE_SUBDIR}");

    // The app went to the background as the user started the build.
    let policy =
        MemoryBalloonPolicy::spawn(QmpBalloon::of(vm), vm.guest_ram(), o.balloon_time_scale);
    policy.set_app_state(AppState::Background);

    let t0 = Instant::now();
    let gcc = guest_script(vm, INSTALL_SH, &guest_dir, Duration::from_secs(1200))
        .await
        .context("installing the toolchain and linux-avf-headers in the guest")?;
    s.install_s = Some(t0.elapsed().as_secs_f64());
    s.gcc = gcc.lines().last().map(str::to_string);

    let out = guest_script(vm, BUILD_SH, &guest_dir, Duration::from_secs(1800))
        .await
        .context("the module build in the guest")?;
    s.qemu_keeps_mib = vm.qmp().query_balloon().await.ok().map(|b| b / MIB);
    let history = policy.history();
    drop(policy);
    s.balloon_steps = history.len();
    s.balloon_max_mib = history.iter().map(|h| h.balloon_bytes / MIB).max();
    if let Some(e) = history.iter().find_map(|h| h.error.as_ref()) {
        bail!("QMP balloon failed: {e}");
    }
    let f = parse_build_output(&out)?;
    let ok = f.ok();
    let rc = f.exit_code;
    s.build = Some(f);
    if !ok {
        bail!("the module did not build, load and unload (make exit {rc}):\n{out}");
    }
    Ok(())
}

async fn one(c: &BuildConfig, round: u32, o: &BuildOptions) -> BuildSample {
    let mut s = BuildSample {
        config: c.key.clone(),
        round,
        ..BuildSample::default()
    };
    let launched = Vm::launch(LaunchRequest {
        payload: o.payload.clone(),
        in_place: false,
        options: Options {
            vcpus: o.vcpus,
            memory_mib: c.memory_mib,
            ..Default::default()
        },
        artefacts: o.artefacts.join(format!("{}-{round}", c.key)),
        keep_instance: false,
    })
    .await;
    let vm = match launched {
        Ok(vm) => vm,
        Err(e) => {
            s.error = Some(format!("launch: {e:#}"));
            return s;
        }
    };
    s.guest_ram_mib = vm.guest_ram() / MIB;
    if let Err(e) = measure(&vm, o, &mut s).await {
        s.error = Some(format!("{e:#}"));
    }
    vm.stop().await;
    s
}

fn progress_line(s: &BuildSample) -> String {
    let f = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.1} {unit}"));
    let b = s.build.as_ref();
    let mut line = format!(
        "[bench-build] round {} {} ({} MiB): install {}, build {}, peak {}, MemAvailable min {}, balloon max {} MiB",
        s.round,
        s.config,
        s.guest_ram_mib,
        f(s.install_s, "s"),
        f(b.map(|b| b.build_s), "s"),
        f(b.and_then(|b| b.peak_mib), "MiB"),
        f(b.and_then(|b| b.memavail_min_mib), "MiB"),
        s.balloon_max_mib.map_or("-".into(), |m| m.to_string())
    );
    if let Some(e) = &s.error {
        line.push_str(&format!(", FAILED: {e}"));
    }
    line
}

/// Runs every configuration `runs` times, interleaved.
pub async fn run(o: &BuildOptions) -> BuildRun {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let loadavg_before = super::loadavg();
    let mut samples = Vec::new();
    for round in 1..=o.runs {
        for c in &o.configs {
            let s = one(c, round, o).await;
            eprintln!("{}", progress_line(&s));
            samples.push(s);
        }
    }
    BuildRun {
        started_unix,
        wall_s: started.elapsed().as_secs_f64(),
        host_cpus: crate::plan::host_cpus(),
        loadavg_before,
        loadavg_after: super::loadavg(),
        payload: o.payload.clone(),
        toolchain: o.toolchain.clone(),
        headers: o.headers.clone(),
        balloon_time_scale: o.balloon_time_scale,
        configs: o.configs.clone(),
        samples,
    }
}

/// The table of medians [min–max] per configuration (successful samples).
pub fn render(run: &BuildRun) -> String {
    let mut out = format!(
        "in-guest build benchmark: a kernel module against linux-avf-headers, {} round(s), background balloon policy ×{}; medians [min–max] of the successful builds; host {} CPU(s), load {} → {}; {:.0} s wall\n",
        run.samples.iter().map(|s| s.round).max().unwrap_or(0),
        run.balloon_time_scale,
        run.host_cpus,
        super::report::load(run.loadavg_before),
        super::report::load(run.loadavg_after),
        run.wall_s
    );
    let header = [
        "configuration",
        "ok",
        "guest MiB",
        "install s",
        "build s",
        "peak MiB",
        "MemAvailable min MiB",
        "balloon max MiB",
        "MemTotal start→end MiB",
    ];
    let mut rows = Vec::new();
    for c in &run.configs {
        let all: Vec<&BuildSample> = run.samples.iter().filter(|s| s.config == c.key).collect();
        let good: Vec<&BuildSample> = all.iter().copied().filter(|s| s.ok()).collect();
        let sum = |f: &dyn Fn(&BuildSample) -> Option<f64>| {
            let v: Vec<f64> = good.iter().filter_map(|s| f(s)).collect();
            Summary::of(&v).map_or("-".into(), |s| {
                if s.n == 1 {
                    format!("{:.1}", s.median)
                } else {
                    format!("{:.1} [{:.1}–{:.1}]", s.median, s.min, s.max)
                }
            })
        };
        let b = |s: &BuildSample| s.build.clone().unwrap_or_default();
        rows.push(vec![
            c.label.clone(),
            format!("{}/{}", good.len(), all.len()),
            sum(&|s| Some(s.guest_ram_mib as f64)),
            sum(&|s| s.install_s),
            sum(&|s| Some(b(s).build_s)),
            sum(&|s| b(s).peak_mib),
            sum(&|s| b(s).memavail_min_mib),
            sum(&|s| s.balloon_max_mib.map(|m| m as f64)),
            format!(
                "{} → {}",
                sum(&|s| b(s).memtotal_start_mib),
                sum(&|s| b(s).memtotal_end_mib)
            ),
        ]);
    }
    out.push_str(&super::report::render_table(&header, &rows));
    if let Some(s) = run.samples.iter().find(|s| s.ok()) {
        let b = s.build.clone().unwrap_or_default();
        out.push_str(&format!(
            "\ncompiler: {}\nvermagic: {}\ndmesg: {}\n",
            s.gcc.as_deref().unwrap_or("?"),
            b.vermagic.as_deref().unwrap_or("?"),
            b.dmesg.join(" | ")
        ));
    }
    for s in run.samples.iter().filter(|s| !s.ok()) {
        out.push_str(&format!(
            "\nround {} {} FAILED: {}\n",
            s.round,
            s.config,
            s.error.as_deref().unwrap_or("no load/unload message")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "@@memtotal_start_kib\n1003520\n@@peak_bytes\n73400320\n@@rc\n0\n@@build_s\n41.250\n\
        @@memavail_min_kib\n512000\n@@memtotal_end_kib\n901120\n@@vermagic\n6.1.192-avf SMP mod_unload modversions aarch64\n\
        @@dmesg\n[  80.1] avf_bench_hello: built in the guest, loaded into 6.1.192-avf\n[  80.2] avf_bench_hello: unloaded\n";

    #[test]
    fn a_build_that_loaded_and_unloaded() {
        let f = parse_build_output(OUT).unwrap();
        assert_eq!(f.exit_code, 0);
        assert_eq!(f.build_s, 41.25);
        assert_eq!(f.peak_mib, Some(70.0));
        assert_eq!(f.memavail_min_mib, Some(500.0));
        assert_eq!(f.memtotal_start_mib, Some(980.0));
        assert_eq!(f.memtotal_end_mib, Some(880.0));
        assert_eq!(f.dmesg.len(), 2);
        assert!(f.ok());
    }

    #[test]
    fn a_failed_make_is_not_ok_and_bad_numbers_are_named() {
        let f = parse_build_output("@@rc\n2\n@@build_s\n3.0\n").unwrap();
        assert!(!f.ok());
        assert_eq!(f.peak_mib, None);
        let e = parse_build_output("@@rc\n0\n@@build_s\nsoon\n").unwrap_err();
        assert!(e.to_string().contains("@@build_s"), "{e}");
        let e = parse_build_output("make: ***\n").unwrap_err();
        assert!(e.to_string().contains("@@rc"), "{e}");
        // Loaded but never unloaded: not ok.
        let f =
            parse_build_output(&OUT.replace("[  80.2] avf_bench_hello: unloaded\n", "")).unwrap();
        assert!(!f.ok());
    }

    #[test]
    fn missing_inputs_are_named_before_any_boot() {
        let dir = tempfile::tempdir().unwrap();
        let o = BuildOptions {
            payload: "p".into(),
            configs: Vec::new(),
            runs: 1,
            balloon_time_scale: 1.0,
            toolchain: dir.path().into(),
            headers: dir.path().join("h.pkg.tar.zst"),
            vcpus: None,
            artefacts: dir.path().into(),
        };
        let e = o.check().unwrap_err().to_string();
        assert!(e.contains("no .deb files"), "{e}");
        std::fs::write(dir.path().join("gcc.deb"), "").unwrap();
        let e = o.check().unwrap_err().to_string();
        assert!(e.contains("h.pkg.tar.zst"), "{e}");
        std::fs::write(&o.headers, "").unwrap();
        o.check().unwrap();
    }

    #[test]
    fn the_table_has_one_row_per_memory_size() {
        let f = parse_build_output(OUT).unwrap();
        let sample = |config: &str, ram| BuildSample {
            config: config.into(),
            round: 1,
            guest_ram_mib: ram,
            install_s: Some(90.0),
            build: Some(f.clone()),
            balloon_max_mib: Some(ram / 5),
            balloon_steps: 3,
            ..BuildSample::default()
        };
        let run = BuildRun {
            started_unix: 0,
            wall_s: 300.0,
            host_cpus: 2,
            loadavg_before: None,
            loadavg_after: None,
            payload: "p".into(),
            toolchain: "t".into(),
            headers: "h".into(),
            balloon_time_scale: 1.0,
            configs: vec![
                BuildConfig {
                    key: "payload".into(),
                    label: "payload memory".into(),
                    memory_mib: None,
                },
                BuildConfig {
                    key: "1024".into(),
                    label: "1024 MiB".into(),
                    memory_mib: Some(1024),
                },
            ],
            samples: vec![sample("payload", 4096), sample("1024", 1024)],
        };
        let t = render(&run);
        assert!(t.contains("payload memory"), "{t}");
        assert!(t.contains("1/1"), "{t}");
        assert!(t.contains("4096.0"), "{t}");
        assert!(t.contains("70.0"), "{t}");
        assert!(t.contains("loaded into 6.1.192-avf"), "{t}");
        assert_eq!(run.failures(), 0);
    }
}
