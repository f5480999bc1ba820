//! Fault injection (issue 14): the harness kills one part of a running VM
//! (a sidecar of its process group, or a guest unit's main process through
//! the guest agent), makes the guest kernel panic, or cuts the power, and
//! checks what the rest does. One small function per fault and per check;
//! every check is bounded, so a hang fails the step naming what hung.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use regex::bytes::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::guest::guest_sh;
use super::lifecycle;
use super::model::{AppRestart, ExpectPanic, Fault, FaultTarget, PowerCuts, Scenario, StopKind};
use super::terminal::Session;
use crate::console::ConsoleError;
use crate::timeouts::{wait_until, Check, Timeout};
use crate::vm::Vm;
use avf_terminal::profile::OnTerminalClosed;

fn app(term: &mut Option<Session>) -> Result<&mut Session> {
    term.as_mut()
        .ok_or_else(|| anyhow!("this fault's checks need the app's host side ([terminal])"))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Kills `s.kill`, then runs each check the step asks for, each bounded
/// by `within` from the kill.
pub async fn fault(vm: &mut Vm, term: &mut Option<Session>, s: &Fault) -> Result<String> {
    let within = s.within.get();
    // Checked at load against the scenario's profile; again here against
    // the VM's own, for a scenario built in code rather than loaded.
    s.check_terminal_closed(&vm.plan().profile)
        .map_err(|e| anyhow!("{e}"))?;
    let closes_tab = vm.plan().profile.on_terminal_closed == OnTerminalClosed::CloseTab;
    let from = term.as_ref().map(Session::event_cursor);
    let open = match s.open_forward_fails {
        Some(port) => Some(open_forward(app(term)?, port, within).await?),
        None => None,
    };
    let tty =
        match s.ttyd_session_ends {
            true => Some(app(term)?.take_terminal().context(
                "ttyd_session_ends: the app has no ttyd session open (a ttyd_run first)",
            )?),
            false => None,
        };
    let t0 = Instant::now();
    let mut notes = Vec::new();
    let killed = match &s.kill {
        FaultTarget::Sidecar(name) => {
            notes.push(kill_sidecar(vm, name)?);
            None
        }
        FaultTarget::GuestUnit(unit) => Some((unit, kill_unit(vm, unit).await?)),
    };
    if let Some((stream, addr)) = open {
        notes.push(forward_fails(stream, addr, t0, within).await?);
    }
    if let Some(tty) = tty {
        notes.push(ttyd_session_ends(tty, t0, within).await?);
        if closes_tab {
            notes.push(app_closes_last_tab(vm, app(term)?, s).await?);
            return Ok(notes.join("; "));
        }
    }
    match killed {
        Some((unit, old)) if s.restarted => {
            notes.push(unit_restarted(vm, unit, old, t0, within).await?)
        }
        Some((unit, old)) => notes.push(format!("{unit}: main PID {old} SIGKILLed")),
        None => {}
    }
    for &q in &s.reconnects {
        let from = from.context("reconnects: needs the app's host side ([terminal])")?;
        let at = app(term)?.wait_reopened(q, from, left(t0, within)).await?;
        notes.push(format!(
            "{q:?} queue reopened {} after the kill",
            secs(at.saturating_duration_since(t0))
        ));
    }
    if s.vm_survives {
        notes.push(guest_answers(vm, t0, within).await?);
    }
    if let Some(sh) = &s.then_sh {
        let out = tokio::time::timeout(left(t0, within), guest_sh(vm, sh))
            .await
            .map_err(|_| anyhow!("then_sh did not return within {within:?} of the kill"))??;
        notes.push(format!("then_sh: {}", out.trim()));
    }
    Ok(notes.join("; "))
}

/// What is left of `within` since `t0` (at least a second: a check that
/// is due already still gets one look).
fn left(t0: Instant, within: Duration) -> Duration {
    within
        .saturating_sub(t0.elapsed())
        .max(Duration::from_secs(1))
}

/// SIGKILLs a sidecar of the VM's group by its name.
fn kill_sidecar(vm: &mut Vm, name: &str) -> Result<String> {
    let st = vm.kill_sidecar(name)?;
    Ok(format!("{name} SIGKILLed ({st})"))
}

async fn unit_main_pid(vm: &Vm, unit: &str) -> Result<(u32, String)> {
    let out = guest_sh(
        vm,
        &format!("systemctl show -P MainPID {unit}; systemctl show -P ActiveState {unit}"),
    )
    .await?;
    let mut l = out.lines();
    let pid = l.next().and_then(|p| p.trim().parse().ok());
    let state = l.next().unwrap_or_default().trim().to_string();
    pid.map(|p| (p, state))
        .ok_or_else(|| anyhow!("systemctl show {unit}: {out:?}"))
}

/// SIGKILLs `unit`'s main process through the guest agent; returns its PID.
async fn kill_unit(vm: &Vm, unit: &str) -> Result<u32> {
    let (pid, state) = unit_main_pid(vm, unit).await?;
    if pid == 0 || state != "active" {
        bail!("{unit} is not running (MainPID {pid}, {state})");
    }
    guest_sh(
        vm,
        &format!("systemctl kill --kill-whom=main -s KILL {unit}"),
    )
    .await?;
    Ok(pid)
}

/// systemd ran `unit` again: active under a new main PID.
async fn unit_restarted(
    vm: &Vm,
    unit: &str,
    old: u32,
    t0: Instant,
    within: Duration,
) -> Result<String> {
    let what = format!("{unit} active again under a new main PID (was {old})");
    let pid = wait_until(
        &what,
        left(t0, within),
        Duration::from_millis(200),
        || async {
            let (pid, state) = unit_main_pid(vm, unit).await?;
            Ok(match pid != 0 && pid != old && state == "active" {
                true => Check::Done(pid),
                false => Check::NotYet(format!("MainPID {pid}, {state}")),
            })
        },
    )
    .await?;
    Ok(format!(
        "{unit}: main PID {old} SIGKILLed, systemd restarted it as {pid} within {}",
        secs(t0.elapsed())
    ))
}

/// A connection through the host's forward of guest `port`, proven to
/// echo before the fault.
async fn open_forward(
    app: &Session,
    port: u16,
    within: Duration,
) -> Result<(TcpStream, std::net::SocketAddr)> {
    let addr = app.forward_addr(port, within).await?;
    let probe = b"before the fault\n";
    let echoed = tokio::time::timeout(within, async {
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(probe).await?;
        let mut back = vec![0u8; probe.len()];
        c.read_exact(&mut back).await?;
        std::io::Result::Ok((c, back))
    })
    .await
    .map_err(|_| anyhow!("the forward {addr} → guest {port} did not echo within {within:?}"))?
    .with_context(|| format!("the forward {addr} → guest {port} before the fault"))?;
    if echoed.1 != probe {
        bail!("the forward {addr} echoed {:?}", echoed.1);
    }
    Ok((echoed.0, addr))
}

/// How one exchange through a forward ended.
async fn exchange(c: &mut TcpStream, limit: Duration) -> std::result::Result<String, String> {
    let data = [0x5a_u8; 4096];
    let r = tokio::time::timeout(limit, async {
        c.write_all(&data).await?;
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).await?;
        std::io::Result::Ok(())
    })
    .await;
    match r {
        Err(_) => Err(format!("no answer and no error within {limit:?}")),
        Ok(Ok(())) => Err("still echoing".into()),
        Ok(Err(e)) => Ok(format!("{:?}: {e}", e.kind())),
    }
}

/// The open forward and a new one both end with an error, in time.
async fn forward_fails(
    mut c: TcpStream,
    addr: std::net::SocketAddr,
    t0: Instant,
    within: Duration,
) -> Result<String> {
    let open = exchange(&mut c, left(t0, within))
        .await
        .map_err(|e| anyhow!("the open connection through {addr} after the kill: {e}"))?;
    let open_at = t0.elapsed();
    let t1 = Instant::now();
    let fresh = match tokio::time::timeout(left(t0, within), TcpStream::connect(addr)).await {
        Err(_) => bail!("a new connection to {addr} hung after the kill"),
        Ok(Err(e)) => format!("connect: {e}"),
        Ok(Ok(mut n)) => exchange(&mut n, left(t0, within))
            .await
            .map_err(|e| anyhow!("a new connection through {addr} after the kill: {e}"))?,
    };
    Ok(format!(
        "open forward ended after {} ({open}); a new one ended in {} ({fresh})",
        secs(open_at),
        secs(t1.elapsed())
    ))
}

/// Android 16 and 17 close the tab whose connection ended; it was the
/// app's last, so the app stops the VM (the profile's stop), which must
/// end as `s.expect_stop` says. The checks that need a running VM cannot
/// follow (`Fault::check_terminal_closed`).
async fn app_closes_last_tab(vm: &mut Vm, app: &Session, s: &Fault) -> Result<String> {
    let release = vm.plan().profile.release;
    let report = lifecycle::app_stop(vm, app).await?;
    report.expect(s.expect_stop, "the app's stop after it closed its last tab")?;
    Ok(format!(
        "the {release} app closes that tab (terminal_disconnect.js → closeTab), its last, and stops the VM: {}",
        report.note
    ))
}

/// The app's open ttyd session ends with an error, not a hang.
async fn ttyd_session_ends(
    mut tty: avf_terminal::TtydClient,
    t0: Instant,
    within: Duration,
) -> Result<String> {
    match tty.run("true", left(t0, within)).await {
        Ok(_) => bail!("the open ttyd session still runs commands after the kill"),
        Err(avf_terminal::ttyd::TtydError::Timeout { .. }) => {
            bail!("the open ttyd session hung (no error within {within:?} of the kill)")
        }
        Err(e) => Ok(format!(
            "the open ttyd session ended after {} ({e})",
            secs(t0.elapsed())
        )),
    }
}

/// The guest agent still answers: the VM itself runs on.
async fn guest_answers(vm: &Vm, t0: Instant, within: Duration) -> Result<String> {
    let t1 = Instant::now();
    tokio::time::timeout(left(t0, within), async {
        let out = guest_sh(vm, "cat /proc/uptime").await?;
        anyhow::Ok(out)
    })
    .await
    .map_err(|_| anyhow!("the guest agent did not answer within {within:?} of the kill"))?
    .context("the guest agent after the kill")?;
    Ok(format!("guest agent answered in {}", secs(t1.elapsed())))
}

/// Makes the guest kernel panic while a console wait that would run to
/// the boot timeout is pending; that wait must fail naming the panic in
/// time, QEMU must stop as the plan says, and the logs must hold both.
/// When the panic reset the VM (crosvm's `panic=-1`: `STOP_REASON_REBOOT`
/// to the app), the profile's app then reacts as to a guest reboot.
pub async fn expect_panic(
    sc: &Scenario,
    vm: &mut Vm,
    term: &mut Option<Session>,
    s: &ExpectPanic,
) -> Result<String> {
    let within = s.within.get();
    let from = vm.qmp().event_count();
    let never = Regex::new(&format!("AVF-NEVER-{}", uuid::Uuid::new_v4().simple()))?;
    let t0 = Instant::now();
    let (trigger, waited) = tokio::join!(
        tokio::time::timeout(within, guest_sh(vm, &s.sh)),
        tokio::time::timeout(
            within,
            vm.console().expect(&never, Timeout::BootMarker.get())
        ),
    );
    let line = match waited {
        Err(_) => bail!(
            "no panic detected within {within:?} of the trigger (trigger: {:?})",
            trigger.map(|r| r.map_err(|e| format!("{e:#}")))
        ),
        Ok(Err(ConsoleError::GuestPanic { line, .. })) => line,
        Ok(Err(e)) => bail!("the console wait ended, but not on a panic: {e}"),
        Ok(Ok(m)) => bail!("the console printed {m:?}"),
    };
    let detected = t0.elapsed();
    let r = vm
        .wait_shutdown(from, t0, s.exit_within.get())
        .await
        .context("QEMU after the panic")?;
    // What the kernel said it would do (its panic timeout).
    let transcript = vm.console().transcript();
    let then = String::from_utf8_lossy(&transcript)
        .lines()
        .rev()
        .find(|l| l.contains("Rebooting in") || l.contains("end Kernel panic"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    if r.reason != s.reason {
        bail!(
            "SHUTDOWN reason {:?} after the panic, expected {:?}",
            r.reason,
            s.reason
        );
    }
    let kept = |f: &str, needle: &str| -> Result<()> {
        let p = vm.artefacts().join(f);
        let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        match text.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            true => Ok(()),
            false => bail!("{} does not hold {needle:?}", p.display()),
        }
    };
    kept("console.log", "Kernel panic - not syncing")?;
    kept("qmp.log", "SHUTDOWN")?;
    let mut note = format!(
        "{line:?} detected {} after the trigger; kernel: {then:?}; QEMU stopped {} after the trigger (SHUTDOWN {}, guest {}); console.log and qmp.log kept",
        secs(detected),
        secs(r.elapsed),
        r.reason,
        r.guest
    );
    if r.reason == lifecycle::RESET {
        lifecycle::end_run(vm, term).await?;
        let app = lifecycle::app_after_reboot(sc, vm, term, None).await?;
        note.push_str(&format!("; a reboot to the app: {app}"));
    }
    Ok(note)
}

/// The write burst of cut `n`: 64 KiB files, each fsynced, then its
/// checksum appended to the manifest, fsynced too; so a file named in the
/// manifest was on disk. Returns once the burst runs.
fn burst(n: u32) -> String {
    format!(
        "d=/var/tmp/cuts/c{n} && mkdir -p $d && cd $d && setsid -f sh -c '
i=0
while :; do
  i=$((i + 1))
  head -c 65536 /dev/urandom > f$i
  sync f$i
  sha256sum f$i >> manifest
  sync manifest
done' </dev/null >/dev/null 2>&1"
    )
}

/// Every manifest so far checked; prints `<cut> <files>` per manifest.
const VERIFY: &str = "cd /var/tmp/cuts && for d in c*; do n=$(cat $d/manifest 2>/dev/null | wc -l); \
[ $n -eq 0 ] || (cd $d && sha256sum --quiet --strict -c manifest) || { echo \"$d: BAD\"; exit 1; }; echo \"${d#c} $n\"; done";

/// xorshift64*: the cut points, reproducible from the seed in the note.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// `s.cuts` power cuts at random points of a write burst; after each, the
/// app's start, the boot, and every fsynced file of every burst checked.
pub async fn power_cuts(
    sc: &Scenario,
    vm: &mut Vm,
    term: &mut Option<Session>,
    s: &PowerCuts,
) -> Result<String> {
    let seed = s.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let mut rng = Rng(seed);
    let restart = AppRestart {
        stop: StopKind::Kill,
        expect: None,
        expect_clean_fs: false,
        resize_mib: None,
        upgrade_reset: false,
    };
    let (mut checks, mut files, mut per_cut) = (0usize, 0usize, Vec::new());
    for n in 1..=s.cuts {
        guest_sh(vm, &burst(n)).await?;
        let at = Duration::from_millis(s.min_ms + rng.below(s.max_ms - s.min_ms + 1));
        tokio::time::sleep(at).await;
        lifecycle::restart(sc, vm, term, &restart)
            .await
            .with_context(|| format!("cut {n}: the app's start"))?;
        let boot = vm
            .wait_boot()
            .await
            .with_context(|| format!("cut {n}: the boot after the cut"))?;
        let out = guest_sh(vm, VERIFY)
            .await
            .with_context(|| format!("cut {n}: a file fsynced before a cut is damaged"))?;
        let counts: Vec<(u32, usize)> = out
            .lines()
            .filter_map(|l| {
                let (c, f) = l.split_once(' ')?;
                Some((c.parse().ok()?, f.parse().ok()?))
            })
            .collect();
        files = counts.iter().map(|c| c.1).sum();
        checks += files;
        let this = counts.iter().find(|c| c.0 == n).map_or(0, |c| c.1);
        per_cut.push(format!(
            "#{n} at {} ms: {this} files, boot {:.1} s",
            at.as_millis(),
            boot.to_marker.as_secs_f64()
        ));
    }
    Ok(format!(
        "{} power cuts (seed {seed}): {files} fsynced files, all intact after the last cut ({checks} file checks in all); {}",
        s.cuts,
        per_cut.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_points_stay_in_range_and_repeat_with_the_seed() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let xs: Vec<u64> = (0..100).map(|_| 500 + a.below(2501)).collect();
        assert!(xs.iter().all(|x| (500..=3000).contains(x)));
        assert_eq!(
            xs,
            (0..100).map(|_| 500 + b.below(2501)).collect::<Vec<_>>()
        );
        assert!(xs.iter().any(|&x| x < 1000) && xs.iter().any(|&x| x > 2500));
    }

    #[test]
    fn fault_targets_parse() {
        assert_eq!(
            "guest-agent:avf-ttyd".parse(),
            Ok(FaultTarget::GuestUnit("avf-ttyd".into()))
        );
        assert_eq!(
            "virtiofsd-android".parse(),
            Ok(FaultTarget::Sidecar("virtiofsd-android".into()))
        );
        assert!("qemu".parse::<FaultTarget>().is_err());
        assert!("guest-agent:a;reboot".parse::<FaultTarget>().is_err());
        assert!("guest-agent:".parse::<FaultTarget>().is_err());
    }
}
