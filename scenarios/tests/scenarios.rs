//! One nextest test per scenario file (`vm::<name>`), plus process-ownership
//! tests and a parse check of every scenario file. Built on libtest-mimic.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use avf_harness::plan::Options;
use avf_harness::scenario::{Runner, Scenario};
use avf_harness::timeouts::{wait_until, Check, Scaled};
use avf_harness::vm::{self, LaunchRequest, Vm};
use libtest_mimic::{Arguments, Failed, Trial};

#[path = "scenarios/interactive.rs"]
mod interactive;

/// Set in the child of `vm::sigkill_mid_boot`: the payload to boot.
const HOLD_ENV: &str = "AVF_SCENARIOS_HOLD_VM";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn to_failed(e: anyhow::Error) -> Failed {
    format!("{e:#}").into()
}

fn run_scenario(sc: Scenario) -> Result<(), Failed> {
    let runner = Runner {
        snapshot_dir: avf_scenarios::snapshots_dir(),
        progress: true,
    };
    // A roomy stack: QEMU-driving futures are large in debug builds.
    let report = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            runtime()
                .block_on(Box::pin(runner.run(&sc)))
                .map(|r| (r, sc))
        })
        .expect("spawn scenario thread")
        .join()
        .map_err(|_| Failed::from("scenario thread panicked"))?;
    let (report, sc) = report.map_err(to_failed)?;
    // Timings for the record (nextest shows them with --success-output).
    println!(
        "scenario {}: total {:.1}s, boot marker {:.1}s, agent {:.1}s",
        sc.name,
        report.total.as_secs_f64(),
        report.boot_to_marker.map_or(0.0, |d| d.as_secs_f64()),
        report.boot_to_agent.map_or(0.0, |d| d.as_secs_f64()),
    );
    for s in &report.steps {
        println!("  {:>6.1}s {}", s.elapsed.as_secs_f64(), s.step);
    }
    for n in &report.notes {
        println!("  note: {n}");
    }
    Ok(())
}

fn payload_for_process_tests() -> Result<std::path::PathBuf> {
    avf_harness::payload::built_payload("debian", "direct")
}

/// Child mode: launch a VM, report its process group, then wait to be killed.
fn hold_vm(payload: &str) -> ! {
    let rt = runtime();
    rt.block_on(async {
        let vm = Vm::launch(LaunchRequest {
            payload: payload.into(),
            in_place: false,
            // The TAP mode: its dnsmasq and namespace must go too.
            options: Options {
                net: avf_harness::plan::NetMode::Tap,
                ..Options::default()
            },
            artefacts: avf_harness::scenario::artefacts_dir("sigkill-child"),
            keep_instance: false,
        })
        .await
        .expect("launch");
        println!("PGID {}", vm.pgid().expect("group"));
        println!("RUN {}", vm.vsock_uds().parent().unwrap().display());
        println!("INSTANCE {}", vm.instance().root.display());
        println!("NETNS {}", vm.tap().expect("tap mode").path().display());
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}

/// SIGKILL the runner mid-boot: PR_SET_PDEATHSIG must take QEMU, virtiofsd,
/// vhost-device-vsock and dnsmasq with it; the next launch sweeps its dirs
/// and network namespace.
fn sigkill_mid_boot() -> Result<()> {
    let payload = payload_for_process_tests()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(HOLD_ENV, &payload)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut field = |key: &str| -> Result<String> {
        let l = lines.next().context("child ended early")??;
        l.strip_prefix(&format!("{key} "))
            .map(str::to_string)
            .with_context(|| format!("expected {key}, got {l:?}"))
    };
    let pgid: i32 = field("PGID")?.parse()?;
    let run_dir = std::path::PathBuf::from(field("RUN")?);
    let instance = std::path::PathBuf::from(field("INSTANCE")?);
    let netns = std::path::PathBuf::from(field("NETNS")?);
    let before = avf_harness::procs::group_members(pgid);
    if before.len() < 4 {
        bail!("expected qemu, virtiofsd, vhost-device-vsock and dnsmasq in group {pgid}, saw {before:?}");
    }
    // Mid-boot: the kernel is running but the guest is not up yet.
    std::thread::sleep(Duration::from_secs(4));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    runtime().block_on(wait_until(
        "the VM's group gone after SIGKILL of the runner",
        Scaled::secs(10).get(),
        Duration::from_millis(100),
        || async {
            let left = avf_harness::procs::group_members(pgid);
            Ok(match left.is_empty() {
                true => Check::Done(()),
                false => Check::NotYet(format!("still running: {left:?}")),
            })
        },
    ))?;
    let leaked: Vec<_> = avf_harness::procs::leaked_processes()
        .into_iter()
        .filter(|(_, c)| c.contains(&*run_dir.to_string_lossy()))
        .collect();
    if !leaked.is_empty() {
        bail!("leaked: {leaked:?}");
    }
    // The dead runner could not clean up; the sweep (run by every launch) does.
    let swept = vm::sweep_stale_dirs();
    if run_dir.exists() || instance.exists() || netns.exists() {
        bail!("stale dirs not swept: {run_dir:?} {instance:?} {netns:?} (swept {swept:?})");
    }
    Ok(())
}

/// A run that fails (boot marker never seen) leaves no process behind.
fn failed_run_leaves_nothing() -> Result<()> {
    let payload = payload_for_process_tests()?;
    runtime().block_on(async {
        let vm = Vm::launch(LaunchRequest {
            payload,
            in_place: false,
            options: Options::default(),
            artefacts: avf_harness::scenario::artefacts_dir("failed-run"),
            keep_instance: false,
        })
        .await?;
        let pgid = vm.pgid().context("no process group")?;
        let members = avf_harness::procs::group_members(pgid);
        let never = regex::bytes::Regex::new("this marker is never printed")?;
        let r = vm.console().expect(&never, Duration::from_secs(3)).await;
        if r.is_ok() {
            bail!("impossible marker matched");
        }
        drop(vm); // the failure path: no orderly stop
        vm::group_is_empty(pgid)?;
        for (pid, comm) in members {
            if avf_harness::procs::is_alive(pid) {
                bail!("{comm} ({pid}) survived");
            }
        }
        Ok(())
    })
}

fn main() {
    if let Ok(p) = std::env::var(HOLD_ENV) {
        hold_vm(&p);
    }
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    // One trial per file, even when it does not parse: a broken file must
    // fail under its own name, never vanish from the run.
    let cases = avf_scenarios::cases_dir();
    let mut files: Vec<_> = std::fs::read_dir(&cases)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    if files.is_empty() {
        let msg = format!("no scenario files in {}", cases.display());
        trials.push(Trial::test(
            "parse::scenario_files",
            move || Err(msg.into()),
        ));
    }
    for f in files {
        let stem = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // Parsing is its own test, so a broken file fails by name without
        // a VM; its VM test then fails with the same message.
        let parsed = Scenario::load(&f).map_err(|e| format!("{e:#}"));
        let verdict = parsed.as_ref().map(drop).map_err(Clone::clone);
        trials.push(Trial::test(format!("parse::{stem}"), move || {
            verdict.map_err(Failed::from)
        }));
        let name = format!("vm::{stem}");
        match parsed {
            Ok(sc) => trials.push(Trial::test(name, move || run_scenario(sc))),
            Err(msg) => trials.push(Trial::test(name, move || Err(msg.into()))),
        }
    }
    trials.push(Trial::test("vm::process_sigkill_mid_boot", || {
        sigkill_mid_boot().map_err(to_failed)
    }));
    trials.push(Trial::test("vm::process_failed_run_leaves_nothing", || {
        failed_run_leaves_nothing().map_err(to_failed)
    }));
    for (name, test) in [
        (
            "vm::interactive_boot_app_android17",
            interactive::boot_app_android17 as fn() -> anyhow::Result<()>,
        ),
        (
            "vm::interactive_boot_app_android15",
            interactive::boot_app_android15,
        ),
    ] {
        trials.push(Trial::test(name, move || {
            // A roomy stack, as for scenarios: the boot's futures are large.
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn(test)
                .expect("spawn")
                .join()
                .map_err(|_| Failed::from("the interactive boot panicked"))?
                .map_err(to_failed)
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
