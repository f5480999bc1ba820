//! The app's lifecycle between runs: it stops the VM (its own way, or the
//! VM dies under it), applies what the user asked for (a new disk size,
//! the Upgrade screen's reset), and starts the same installed image again
//! through its whole start sequence ([`crate::app`]). The steps after an
//! `app_restart` run against the new VM and a new app host. A guest's own
//! reboot ends the run too; what the app does next is its profile's.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::guest::guest_sh;
use super::model::{AppRestart, GuestReboot, Scenario, StopKind, StopOutcome, TerminalOptions};
use super::terminal::Session;
use crate::timeouts::Timeout;
use crate::vm::{Halt, Vm};
use avf_terminal::installed_image::DiskStep;
use avf_terminal::profile::{AppStop, OnGuestReboot};

/// Runs one `app_restart`; the note says how the run ended, what the app
/// did to the disk and how long each part took.
pub async fn restart(
    sc: &Scenario,
    vm: &mut Vm,
    term: &mut Option<Session>,
    s: &AppRestart,
) -> Result<String> {
    let mut notes = Vec::new();
    match s.stop {
        StopKind::App => {
            let app = term
                .as_ref()
                .context("stop = \"app\" needs the app's host side")?;
            let outcome = app_stop(vm, app).await?;
            outcome.expect(s.expect, "the app's stop")?;
            notes.push(outcome.note);
        }
        StopKind::Kill => {
            vm.halt(Halt::Kill).await;
            notes.push("QEMU SIGKILLed".into());
        }
        StopKind::Exited => {
            if !vm.qemu_exited() {
                bail!("stop = \"exited\", but the VM is still running");
            }
            vm.halt(Halt::Quit).await;
        }
    }
    if let Some(app) = term.take() {
        app.finish().await?;
    }
    if s.expect_clean_fs {
        notes.push(clean_root(vm, "the stop")?);
    }
    if s.upgrade_reset {
        let payload = sc.payload_dir()?;
        vm.instance().upgrade_reset(&payload)?;
        notes.push("Upgrade screen: root_part → root_part_backup, image installed again".into());
    }
    notes.push(start_again(vm, term, &AppRun::of(sc), s.resize_mib.map(|m| m << 20)).await?);
    Ok(notes.join("; "))
}

/// Where a run's later starts put their artefacts, and how its app host
/// runs (none: the run does not talk to the app).
pub struct AppRun {
    pub artefacts: PathBuf,
    pub app: Option<TerminalOptions>,
}

impl AppRun {
    /// A scenario's.
    pub fn of(sc: &Scenario) -> AppRun {
        AppRun {
            artefacts: super::artefacts_dir(&sc.name),
            app: sc.app_options(),
        }
    }
}

/// The app's whole start again on the same installed instance, after
/// [`Vm::halt`]: its disk steps, the VM, and (when the run talks to the
/// app) a new app host; the VM is resumed. The note says what the disk
/// steps did and how long they took.
async fn start_again(
    vm: &mut Vm,
    term: &mut Option<Session>,
    run: &AppRun,
    disk_size: Option<u64>,
) -> Result<String> {
    let n = vm.starts() + 1;
    let artefacts = run.artefacts.join(format!("start-{n}"));
    let t = Instant::now();
    vm.relaunch_paused(&artefacts, disk_size)
        .await
        .with_context(|| {
            format!(
                "the app's start #{n} (artefacts in {})",
                artefacts.display()
            )
        })?;
    let steps = &vm.started_by_app().disk_steps;
    // Notes are the app's decisions, not commands: count what touched the disk.
    let commands = steps
        .iter()
        .filter(|d| !matches!(d, DiskStep::Note(_)))
        .count();
    let done = if steps.is_empty() {
        "none".to_string()
    } else {
        steps
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let note = format!(
        "start #{n}: {commands} pre-boot disk command(s) in {:.1} s: {done}",
        t.elapsed().as_secs_f64(),
    );
    if let Some(opts) = &run.app {
        *term = Some(Box::pin(Session::start(opts, vm)).await?);
    }
    vm.resume().await?;
    Ok(note)
}

/// One `guest_reboot`: `systemctl reboot` in the guest (what `sudo reboot`
/// in the terminal does), QEMU's `guest-reset` SHUTDOWN (`-no-reboot`, as
/// crosvm exits with its reboot status), a clean ROOT (a reboot unmounts
/// like a power-off), then what the profile's app does on
/// `STOP_REASON_REBOOT`: close, or start the VM again and see a new boot.
pub async fn guest_reboot(
    sc: &Scenario,
    vm: &mut Vm,
    term: &mut Option<Session>,
    s: &GuestReboot,
) -> Result<String> {
    let before = guest_sh(vm, BOOT_ID).await?.trim().to_string();
    let from = vm.qmp().event_count();
    let t0 = Instant::now();
    vm.qga().await?.spawn(&["systemctl", "reboot"]).await?;
    let down = vm
        .wait_shutdown(from, t0, s.within.get())
        .await
        .context("the guest's reboot: QEMU did not stop")?;
    if down.reason != RESET {
        bail!(
            "after `systemctl reboot` the VM stopped with {:?}, not a reset \
             (virtmgr would not report STOP_REASON_REBOOT)",
            down.reason
        );
    }
    let mut notes = vec![format!(
        "the guest reset {:.2} s after `systemctl reboot`",
        down.elapsed.as_secs_f64()
    )];
    end_run(vm, term).await?;
    notes.push(clean_root(vm, "the guest's reboot")?);
    notes.push(app_after_reboot(sc, vm, term, Some(&before)).await?);
    Ok(notes.join("; "))
}

const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";

/// QEMU's SHUTDOWN reason when the guest resets under `-no-reboot`: what
/// crosvm's reboot exit status is, `STOP_REASON_REBOOT` to the app.
pub const RESET: &str = "guest-reset";

/// Ends this run once QEMU has gone: its sidecars, and the app's host side
/// (which reports calls it refused).
pub async fn end_run(vm: &mut Vm, term: &mut Option<Session>) -> Result<()> {
    vm.halt(Halt::Quit).await;
    if let Some(app) = term.take() {
        app.finish().await?;
    }
    Ok(())
}

/// What the profile's app does once the VM stopped with crosvm's reboot
/// status (`STOP_REASON_REBOOT`: a guest reboot, or a kernel panic under
/// `panic=-1`), after [`end_run`]: Android 15 QPR2/16 close; Android 17
/// starts the VM again, whose boot is awaited (a new `boot_id` when the
/// old one, `before`, is known).
pub async fn app_after_reboot(
    sc: &Scenario,
    vm: &mut Vm,
    term: &mut Option<Session>,
    before: Option<&str>,
) -> Result<String> {
    let Some(start) = app_reboot_reaction(vm, term, &AppRun::of(sc)).await? else {
        return Ok(APP_CLOSES.into());
    };
    let boot = vm
        .wait_boot()
        .await
        .context("the app's restart after the reboot")?;
    let after = guest_sh(vm, BOOT_ID).await?.trim().to_string();
    if before == Some(after.as_str()) {
        bail!("the guest's boot_id is unchanged ({after}): this is not a new boot");
    }
    Ok(format!(
        "{APP_RESTARTS}: {start}; booted again: marker {:.1} s, agent {:.1} s",
        boot.to_marker.as_secs_f64(),
        boot.to_agent.as_secs_f64()
    ))
}

/// What 15 QPR2's and 16's app does on `STOP_REASON_REBOOT`.
pub const APP_CLOSES: &str =
    "the app closes (onVmStop → finish()); the VM stays stopped until the app is opened again";
/// What 17's app does on `STOP_REASON_REBOOT`.
pub const APP_RESTARTS: &str = "the app starts the VM again (Rebooting → restartVm)";

/// The profile's answer to `STOP_REASON_REBOOT`, after [`end_run`]: `None`
/// when the app closes ([`APP_CLOSES`]), else the note of its whole start
/// again ([`start_again`]; the VM resumed, its boot not awaited).
pub async fn app_reboot_reaction(
    vm: &mut Vm,
    term: &mut Option<Session>,
    run: &AppRun,
) -> Result<Option<String>> {
    match vm.plan().profile.on_guest_reboot {
        OnGuestReboot::CloseApp => Ok(None),
        OnGuestReboot::RestartVm => Ok(Some(start_again(vm, term, run, None).await?)),
    }
}

/// ROOT's ext4, with the VM stopped, must be marked clean with no journal
/// to replay: a shutdown (or reboot) that completed.
fn clean_root(vm: &Vm, after: &str) -> Result<String> {
    let root = vm
        .partition_file("ROOT")
        .context("the payload has no ROOT partition")?;
    let state = ext4_state(root)?;
    if state.needs_recovery || !state.clean {
        bail!(
            "{}: after {after} the filesystem is not clean (state {:?}, needs_recovery {})",
            root.display(),
            state.state,
            state.needs_recovery
        );
    }
    Ok(format!(
        "ROOT clean, no journal to replay ({})",
        state.state
    ))
}

/// How the app's stop ended.
pub struct StopReport {
    pub kind: StopOutcome,
    pub note: String,
}

impl StopReport {
    /// Fails unless the stop ended as `want` says (if it says anything);
    /// `what` names the stop.
    pub fn expect(&self, want: Option<StopOutcome>, what: &str) -> Result<()> {
        match want {
            Some(w) if w != self.kind => bail!(
                "{what} ended {:?}, expected {w:?}: {}",
                self.kind,
                self.note
            ),
            _ => Ok(()),
        }
    }
}

/// The app's stop under the VM's profile: the shutdown request (Android
/// 16 `doShutdown`: the gRPC stream, if open; Android 17: virtmgr's
/// `shutdownAsync` to a registered agent), then the grace × the TCG factor
/// for the VM to exit, then a hard stop; with nobody to ask, a hard stop
/// at once.
pub async fn app_stop(vm: &mut Vm, app: &Session) -> Result<StopReport> {
    let factor = vm.tcg_factor().await?;
    let stop = vm.plan().profile.stop;
    let (grace, grace_note) = match stop {
        AppStop::ShutdownRequest { grace: Some(g) } | AppStop::Virtmgr { grace: g } => (
            factor.scale(g),
            format!("the grace {} s × {factor}", g.as_secs()),
        ),
        // No grace: the app lets the VM go in its own time (our limit is
        // the harness's power-off timeout).
        AppStop::ShutdownRequest { grace: None } => (
            Timeout::Powerdown.get(),
            "no hard-stop timer in this app".to_string(),
        ),
    };
    let nobody = match stop {
        AppStop::ShutdownRequest { .. } => "no shutdown stream open: stopped hard at once",
        AppStop::Virtmgr { .. } => "no guest agent registered with virtmgr: crosvm killed at once",
    };
    let from = vm.qmp().event_count();
    let t0 = Instant::now();
    let report = match app.request_shutdown().await {
        avf_terminal::ShutdownOutcome::NoStream => StopReport {
            kind: StopOutcome::Hard,
            note: nobody.into(),
        },
        avf_terminal::ShutdownOutcome::Requested => match vm.wait_shutdown(from, t0, grace).await {
            Ok(r) => StopReport {
                kind: StopOutcome::InGrace,
                note: format!(
                    "powered off {:.2} s after the request ({}), inside {:.1} s ({grace_note})",
                    r.elapsed.as_secs_f64(),
                    r.reason,
                    grace.as_secs_f64(),
                ),
            },
            Err(e) => StopReport {
                kind: StopOutcome::Hard,
                note: format!(
                    "still running after {:.1} s ({grace_note}): stopped hard ({e:#})",
                    grace.as_secs_f64(),
                ),
            },
        },
    };
    vm.halt(Halt::Quit).await;
    Ok(report)
}

/// What `dumpe2fs -h` says of an ext4 image.
#[derive(Debug, PartialEq, Eq)]
pub struct Ext4State {
    pub state: String,
    pub clean: bool,
    pub needs_recovery: bool,
}

/// The superblock's state and whether the journal needs replaying.
pub fn ext4_state(image: &std::path::Path) -> Result<Ext4State> {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .context("running dumpe2fs (e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "dumpe2fs -h {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_dumpe2fs(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_dumpe2fs(text: &str) -> Ext4State {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let state = field("Filesystem state:");
    Ext4State {
        clean: state.split_whitespace().next() == Some("clean"),
        needs_recovery: field("Filesystem features:")
            .split_whitespace()
            .any(|f| f == "needs_recovery"),
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumpe2fs_state_and_recovery_flag() {
        let dirty = "Filesystem volume name:   root\nFilesystem features:      has_journal ext_attr needs_recovery extent\nFilesystem state:         clean\n";
        let s = parse_dumpe2fs(dirty);
        assert!(s.clean && s.needs_recovery);
        let s = parse_dumpe2fs("Filesystem features:      has_journal\nFilesystem state:         not clean with errors\n");
        assert!(!s.clean && !s.needs_recovery);
        assert_eq!(s.state, "not clean with errors");
    }

    #[test]
    fn a_fresh_ext4_is_clean() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        let s = ext4_state(&img).unwrap();
        assert!(s.clean && !s.needs_recovery, "{s:?}");
    }
}
