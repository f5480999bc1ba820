//! avf-harness: boot an AVF Terminal payload in QEMU as the phone's crosvm
//! would, or run a scenario against it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use avf_harness::bench;
use avf_harness::interactive::{self, BootRequest, Person, RawMode};
use avf_harness::plan::{LaunchArgs, VcpuModel};
use avf_harness::scenario::{Runner, Scenario};
use avf_harness::vm::{LaunchRequest, Vm};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "avf-harness",
    about = "Boot an AVF Terminal payload (dir or images.tar.gz with vm_config.json) in QEMU the way the phone's crosvm does",
    after_help = "Payloads are built by image-build/build-all.sh into $AVF_OUT/<base>-<layout>/payload.\nTimeouts scale with AVF_TIMEOUT_SCALE (e.g. 2 on a slow host)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a payload and attach its input console (Ctrl-] detaches)
    Boot {
        /// Payload directory or images.tar.gz
        payload: PathBuf,
        /// After detaching, keep the VM running (this process serves its disk) until it powers off, or Ctrl-] or Ctrl-C stops it (with --app: the app's stop)
        #[arg(long)]
        keep: bool,
        #[command(flatten)]
        launch: Box<LaunchArgs>,
        /// Use the payload dir as is (root_part is written in place) instead of a per-run copy
        #[arg(long)]
        in_place: bool,
        /// Where logs and the QEMU command line go
        #[arg(long, default_value = "target/avf-artefacts/boot")]
        artefacts: PathBuf,
        /// Don't attach: wait for the boot marker and the guest agent, then
        /// power off through system_powerdown and report the times
        #[arg(long, conflicts_with_all = ["keep", "app"])]
        smoke: bool,
        /// Play the profile's Terminal app on the host: its host side, the
        /// terminal's bring-up, port forwarding, its stop when you leave,
        /// and its answer to a guest reboot (Android 17 starts the VM
        /// again); what the app sees goes to stderr as [app] lines
        #[arg(long)]
        app: bool,
    },
    /// Run one scenario file (scenarios/cases/<name>.toml)
    Run {
        scenario: PathBuf,
        /// Snapshot directory (default: ../snapshots next to the scenario file)
        #[arg(long)]
        snapshots: Option<PathBuf>,
    },
    /// Parse and validate a payload: a directory, or an images.tar.gz read
    /// to its end as the app's installer reads it (exit 1 naming the file
    /// and the field on error)
    Check {
        /// Payload directory or images.tar.gz
        payload: PathBuf,
    },
    /// Boot benchmark: medians of interleaved boots, side by side — the
    /// harness vs the same kernel and partitions on plain QEMU, direct vs
    /// efi, first vs second boot, the stock Debian kernel vs linux-avf,
    /// systemd-analyze and idle memory from the guest. Prints figures,
    /// asserts nothing about time; every sample goes to a JSON file.
    BenchBoot(Box<BenchBootArgs>),
    /// In-guest build benchmark: at the payload's memory and at 1024 MiB
    /// (Android 17's default), with the app's background balloon policy,
    /// install gcc (Debian arm64 debs fetched on the host) and
    /// linux-avf-headers through /mnt/shared, build a kernel module in a
    /// transient unit, insmod/rmmod it; prints build time, the unit's
    /// memory.peak, the MemAvailable floor and the balloon.
    BenchBuild(Box<BenchBuildArgs>),
    /// Fail if any qemu/virtiofsd/vhost-device-vsock/dnsmasq or TAP network
    /// namespace the harness made is still there
    CheckLeaks,
}

#[derive(clap::Args)]
struct BenchBootArgs {
    /// Rounds of the main comparisons (harness vs plain, direct vs efi)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Rounds with second boots and the stock kernel (default: --runs)
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..))]
    secondary_runs: Option<u32>,
    /// The direct-layout payload (default: $AVF_OUT/debian-direct/payload)
    #[arg(long)]
    direct: Option<PathBuf>,
    /// The efi-layout payload (default: $AVF_OUT/debian-efi/payload, skipped if not built)
    #[arg(long)]
    efi: Option<PathBuf>,
    /// A direct payload with the stock Debian kernel + initrd (default:
    /// $AVF_OUT/stock/debian-direct/payload, skipped if not built)
    #[arg(long)]
    stock: Option<PathBuf>,
    /// Leave out the plain-QEMU side
    #[arg(long)]
    no_plain: bool,
    /// Seconds between the end of the boot and `free -m`
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    /// Override the vCPU count of every boot (default: from cpu_topology)
    #[arg(long)]
    vcpus: Option<u32>,
    /// Override memory_mib of every boot
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Where every sample goes (default: target/bench/boot-<unix time>.json)
    #[arg(long)]
    json: Option<PathBuf>,
    /// Per-boot logs and QEMU command lines
    #[arg(long, default_value = "target/avf-artefacts/bench")]
    artefacts: PathBuf,
}

#[derive(clap::Args)]
struct BenchBuildArgs {
    /// Rounds (each builds once per memory size)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// The payload (default: $AVF_OUT/debian-direct/payload)
    #[arg(long)]
    payload: Option<PathBuf>,
    /// Memory sizes besides the payload's own memory_mib (1024: the
    /// Android 17 app's default, docs/terminal-app.md)
    #[arg(long, num_args = 1.., default_values_t = [1024u64])]
    memory_mib: Vec<u64>,
    /// Leave out the payload's own memory_mib
    #[arg(long)]
    no_payload_memory: bool,
    /// The memory policy's time scale (1: the app's real steps, +5 % a minute)
    #[arg(long, default_value_t = 1.0)]
    balloon_time_scale: f64,
    /// A directory of arm64 .debs (default: harness/scripts/guest-toolchain.sh's, cached)
    #[arg(long)]
    toolchain: Option<PathBuf>,
    /// linux-avf-headers package (default: $AVF_OUT/repo/aarch64/linux-avf-headers-*.pkg.tar.zst)
    #[arg(long)]
    headers: Option<PathBuf>,
    /// Override the vCPU count (default: from cpu_topology)
    #[arg(long)]
    vcpus: Option<u32>,
    /// Where every sample goes (default: target/bench/build-<unix time>.json)
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "target/avf-artefacts/bench-build")]
    artefacts: PathBuf,
}

/// The one linux-avf-headers package in the build's repo.
fn headers_package() -> Result<PathBuf> {
    let repo = avf_harness::payload::out_dir().join("repo/aarch64");
    let found: Vec<PathBuf> = std::fs::read_dir(&repo)
        .with_context(|| format!("reading the package repo {}", repo.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-avf-headers-") && n.ends_with(".pkg.tar.zst"))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{}: no linux-avf-headers-*.pkg.tar.zst (build with --kernel avf)",
            repo.display()
        ),
        _ => bail!(
            "{}: more than one linux-avf-headers package: {found:?}",
            repo.display()
        ),
    }
}

/// harness/scripts/guest-toolchain.sh's cached directory of debs.
fn fetch_toolchain(payload: &std::path::Path) -> Result<PathBuf> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-toolchain.sh");
    let out = std::process::Command::new(&script)
        .arg(payload)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        bail!("{} printed no directory", script.display());
    }
    Ok(PathBuf::from(dir))
}

async fn bench_build(a: BenchBuildArgs) -> Result<()> {
    use bench::build::{BuildConfig, BuildOptions};
    let payload = match a.payload {
        Some(p) => p,
        None => avf_harness::payload::built_payload("debian", "direct")?,
    };
    if !payload.join("vm_config.json").is_file() {
        bail!("bench-build: {} has no vm_config.json", payload.display());
    }
    if !(a.balloon_time_scale.is_finite() && a.balloon_time_scale > 0.0) {
        bail!(
            "bench-build: --balloon-time-scale {} must be > 0",
            a.balloon_time_scale
        );
    }
    let mut configs = Vec::new();
    if !a.no_payload_memory {
        configs.push(BuildConfig {
            key: "payload-memory".into(),
            label: "the payload's memory_mib".into(),
            memory_mib: None,
        });
    }
    for m in &a.memory_mib {
        configs.push(BuildConfig {
            key: format!("{m}-mib"),
            label: format!("{m} MiB"),
            memory_mib: Some(*m),
        });
    }
    if configs.is_empty() {
        bail!("bench-build: no memory size left (--no-payload-memory and no --memory-mib)");
    }
    let headers = match a.headers {
        Some(h) => h,
        None => headers_package()?,
    };
    let toolchain = match a.toolchain {
        Some(t) => t,
        None => fetch_toolchain(&payload)?,
    };
    let options = BuildOptions {
        payload,
        configs,
        runs: a.runs,
        balloon_time_scale: a.balloon_time_scale,
        toolchain,
        headers,
        vcpus: a.vcpus,
        artefacts: a.artefacts,
    };
    options.check()?;
    let run = bench::build::run(&options).await;
    let json = a
        .json
        .unwrap_or_else(|| PathBuf::from(format!("target/bench/build-{}.json", run.started_unix)));
    bench::report::write_json(&run, &json)?;
    print!("{}", bench::build::render(&run));
    println!("\nevery sample: {}", json.display());
    match run.failures() {
        0 => Ok(()),
        n => bail!("{n} build(s) failed (see above and {})", json.display()),
    }
}

/// The benchmark's configurations from the CLI's payload choices: the
/// direct payload is required; efi and stock are skipped, with a note
/// naming the build command, when their default payload is not built.
fn bench_configs(a: &BenchBootArgs) -> Result<(Vec<bench::Config>, Vec<String>)> {
    use bench::{Config, Side};
    let out = avf_harness::payload::out_dir();
    let direct = match &a.direct {
        Some(p) => p.clone(),
        None => avf_harness::payload::built_payload("debian", "direct")?,
    };
    let mut skipped = Vec::new();
    let mut optional =
        |given: &Option<PathBuf>, default: PathBuf, key: &str, build: &str| match given {
            Some(p) => Some(p.clone()),
            None if default.join("vm_config.json").is_file() => Some(default),
            None => {
                skipped.push(format!(
                    "{key}: {} is not built ({build})",
                    default.display()
                ));
                None
            }
        };
    let efi = optional(
        &a.efi,
        out.join("debian-efi/payload"),
        "harness-efi",
        "image-build/build-all.sh --base debian --layout efi --kernel avf",
    );
    let stock = optional(
        &a.stock,
        out.join("stock/debian-direct/payload"),
        "harness-stock",
        "AVF_OUT=$AVF_OUT/stock image-build/build-all.sh --base debian --layout direct --kernel stock",
    );
    for p in [Some(&direct), efi.as_ref(), stock.as_ref()]
        .into_iter()
        .flatten()
    {
        if !p.exists() {
            bail!("bench-boot: payload {} does not exist", p.display());
        }
    }
    let config = |key: &str, label: &str, side, payload: &PathBuf, second_boot, primary| Config {
        key: key.into(),
        label: label.into(),
        side,
        payload: payload.clone(),
        second_boot,
        primary,
        vcpu: None,
    };
    let mut configs = vec![
        config(
            "harness-direct",
            "harness, direct, linux-avf",
            Side::Harness,
            &direct,
            true,
            true,
        ),
        // What pointer authentication costs under TCG, side by side.
        Config {
            vcpu: Some(VcpuModel::NoPauth),
            ..config(
                "harness-direct-nopauth",
                "harness, direct, linux-avf, --vcpu no-pauth",
                Side::Harness,
                &direct,
                false,
                true,
            )
        },
    ];
    if a.no_plain {
        skipped.push("plain-direct, plain-app-devices-direct: --no-plain".into());
    } else {
        configs.push(config(
            "plain-direct",
            "plain QEMU, direct, linux-avf",
            Side::Plain,
            &direct,
            false,
            true,
        ));
        configs.push(config(
            "plain-app-devices-direct",
            "plain QEMU + the app's devices, direct, linux-avf",
            Side::PlainAppDevices,
            &direct,
            false,
            true,
        ));
    }
    if let Some(p) = &efi {
        configs.push(config(
            "harness-efi",
            "harness, efi (U-Boot, systemd-boot), linux-avf",
            Side::Harness,
            p,
            true,
            true,
        ));
    }
    if let Some(p) = &stock {
        configs.push(config(
            "harness-stock",
            "harness, direct, stock Debian kernel + initrd",
            Side::Harness,
            p,
            false,
            false,
        ));
    }
    Ok((configs, skipped))
}

async fn bench_boot(a: BenchBootArgs) -> Result<()> {
    let (configs, skipped) = bench_configs(&a)?;
    let options = bench::BenchOptions {
        configs,
        runs: a.runs,
        secondary_runs: a.secondary_runs.unwrap_or(a.runs).min(a.runs),
        launch: avf_harness::plan::Options {
            vcpus: a.vcpus,
            memory_mib: a.memory_mib,
            ..Default::default()
        },
        settle: Duration::from_secs(a.settle_secs),
        artefacts: a.artefacts,
        skipped,
    };
    let run = bench::run(&options).await;
    let json = a
        .json
        .unwrap_or_else(|| PathBuf::from(format!("target/bench/boot-{}.json", run.started_unix)));
    bench::report::write_json(&run, &json)?;
    print!("{}", bench::report::render(&run));
    println!(
        "
every sample: {}",
        json.display()
    );
    match run.failures() {
        0 => Ok(()),
        n => bail!("{n} boot(s) failed (see above and {})", json.display()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("avf-harness: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The main job's single boot: to the marker and the agent, then a clean
/// power-off; the console transcript stays in the artefacts dir.
async fn smoke_run(mut vm: Vm) -> Result<()> {
    let boot = vm.wait_boot().await;
    let boot = match boot {
        Ok(b) => b,
        Err(e) => {
            eprintln!("[avf] artefacts: {}", vm.artefacts().display());
            vm.stop().await;
            return Err(e.context("smoke boot"));
        }
    };
    eprintln!(
        "[avf] booted {}: boot marker after {:.1}s, guest agent after {:.1}s",
        boot.build_id,
        boot.to_marker.as_secs_f64(),
        boot.to_agent.as_secs_f64()
    );
    let off = vm
        .powerdown(avf_harness::timeouts::Timeout::Powerdown.get())
        .await
        .context("smoke power-off")?;
    eprintln!(
        "[avf] powered off: SHUTDOWN reason {} after {:.1}s",
        off.reason,
        off.elapsed.as_secs_f64()
    );
    vm.stop().await;
    Ok(())
}

async fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Boot {
            payload,
            keep,
            launch,
            in_place,
            artefacts,
            smoke,
            app,
        } => {
            let launch = LaunchRequest {
                payload,
                in_place,
                options: (*launch).into(),
                artefacts,
                keep_instance: keep,
            };
            if smoke {
                eprintln!("[avf] installing payload and starting QEMU…");
                let vm = Vm::launch(launch).await?;
                for line in interactive::describe(&vm) {
                    eprintln!("{line}");
                }
                return smoke_run(vm).await;
            }
            let mut person = Person::stdio();
            let _raw = RawMode::enter();
            interactive::boot(BootRequest { launch, keep, app }, &mut person).await
        }
        Cmd::Run {
            scenario,
            snapshots,
        } => {
            let sc = Scenario::load(&scenario)?;
            let snapshot_dir = match snapshots {
                Some(s) => s,
                None => scenario
                    .canonicalize()?
                    .parent()
                    .and_then(|p| p.parent())
                    .map(|p| p.join("snapshots"))
                    .context("scenario file has no parent dir")?,
            };
            let r = Runner {
                snapshot_dir,
                progress: true,
            }
            .run(&sc)
            .await?;
            eprintln!(
                "[avf] {} passed in {:.1}s (boot marker {:.1}s, agent {:.1}s)",
                sc.name,
                r.total.as_secs_f64(),
                r.boot_to_marker.map_or(0.0, |d| d.as_secs_f64()),
                r.boot_to_agent.map_or(0.0, |d| d.as_secs_f64())
            );
            for n in &r.notes {
                println!("{n}");
            }
            Ok(())
        }
        Cmd::Check { payload } => {
            let scratch = tempfile::Builder::new().prefix("avf-check-").tempdir()?;
            // An archive's unpacked copy goes with a signal too.
            avf_harness::procs::register_dir(scratch.path());
            // Errors name the archive's member, not the scratch copy.
            let shown = payload.join("vm_config.json");
            let inst = if payload.is_file() {
                let (inst, got) =
                    avf_harness::payload::Instance::unpacked(&payload, scratch.path())?;
                for w in &got.warnings {
                    eprintln!("[avf] installing {}: {w}", payload.display());
                }
                println!(
                    "{}: installs as the app's installer reads it: {}",
                    payload.display(),
                    got.files.join(", ")
                );
                inst
            } else {
                avf_harness::payload::Instance::in_place(&payload, scratch.path())?
            };
            let text = std::fs::read_to_string(inst.vm_config())
                .with_context(|| format!("{}: cannot read", shown.display()))?;
            let spec = avf_harness::spec::VmSpec::parse(&text, &shown, &inst.expansion())?;
            println!(
                "{}: ok ({} disk(s), {} share(s), kernel: {})",
                spec.source.display(),
                spec.disks.len(),
                spec.shares.len(),
                spec.kernel.is_some()
            );
            Ok(())
        }
        Cmd::BenchBoot(a) => bench_boot(*a).await,
        Cmd::BenchBuild(a) => bench_build(*a).await,
        Cmd::CheckLeaks => {
            let leaks = avf_harness::procs::leaked_processes();
            let namespaces = avf_harness::net::our_namespaces();
            if leaks.is_empty() && namespaces.is_empty() {
                println!("no harness processes or network namespaces left");
                Ok(())
            } else {
                for (pid, cmd) in &leaks {
                    println!("{pid} {cmd}");
                }
                for ns in &namespaces {
                    println!("network namespace {}", ns.display());
                }
                bail!(
                    "{} harness process(es) still running, {} network namespace(s) left",
                    leaks.len(),
                    namespaces.len()
                )
            }
        }
    }
}
