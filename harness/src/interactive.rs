//! `avf-harness boot`: a payload booted for a person at its console.
//!
//! With `--app` the Terminal app of the profile's release plays along as
//! it does in a scenario: its host side exists before the guest runs, it
//! brings the terminal up (ttyd found inside the app's deadline, or the
//! AIDL mode's registration and bridge) and then shows its terminal tab
//! (ttyd's shell, as droid) in place of the serial console, whose getty
//! nobody can log in to; it forwards the ports the guest reports, and does
//! what the app does when the VM ends. Closing the app
//! (Ctrl-]; with `--keep`, Ctrl-] again or Ctrl-C) is the app's stop; a guest
//! reboot or kernel panic closes the app (Android 15 QPR2, 16) or starts
//! the VM again (17), and the console follows the new VM. What the app
//! sees is printed on stderr as `[app]` lines.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use avf_terminal::events::{Cursor, Event};
use avf_terminal::profile::OnTerminalClosed;
use avf_terminal::ttyd::TtydError;
use avf_terminal::{EventLog, TtydClient};
use tokio::sync::mpsc;

use crate::plan::TTYD_GUEST_PORT;
use crate::scenario::guest::guest_sh;
use crate::scenario::lifecycle::{self, AppRun};
use crate::scenario::model::TerminalOptions;
use crate::scenario::terminal::Session;
use crate::spec::ShareTag;
use crate::timeouts::Timeout;
use crate::vm::{LaunchRequest, Vm};

/// Ctrl-]: leaves the console.
const DETACH: u8 = 0x1d;
/// Ctrl-C, as a raw terminal sends it.
const CTRL_C: u8 = 0x03;
/// WebSocket close code of a normal end (ttyd: the shell exited).
const NORMAL_CLOSE: u16 = 1000;

/// One interactive boot.
pub struct BootRequest {
    pub launch: LaunchRequest,
    /// After Ctrl-], the VM runs on until it ends, or Ctrl-] or Ctrl-C
    /// closes it (the app's stop).
    pub keep: bool,
    /// Play the profile's Terminal app on the host.
    pub app: bool,
}

/// The person at the keyboard: their keys, their screen (the console or
/// the terminal tab), and where the harness's and the app's notes go.
pub struct Person {
    pub keys: mpsc::Receiver<Vec<u8>>,
    pub screen: Box<dyn Write + Send>,
    pub notes: Box<dyn Write + Send>,
}

impl Person {
    /// Whoever sits at this process's terminal (stdin, stdout, stderr).
    pub fn stdio() -> Person {
        Person {
            keys: stdin_keys(),
            screen: Box::new(std::io::stdout()),
            notes: Box::new(std::io::stderr()),
        }
    }

    /// A line of notes; `\r\n` keeps it readable while the terminal is raw.
    fn note(&mut self, msg: &str) {
        let _ = write!(self.notes, "{msg}\r\n");
        let _ = self.notes.flush();
    }

    /// What the app saw or did.
    fn app(&mut self, msg: &str) {
        self.note(&format!("[app] {msg}"));
    }
}

/// How one stretch at the console ended.
enum Ended {
    /// Ctrl-], the end of the keys, or (detached) Ctrl-C.
    Left,
    /// QEMU has gone.
    Exited,
    /// The app closed its last terminal tab (Android 16, 17): its stop.
    LastTabClosed,
}

/// What the person has seen of the current VM run.
#[derive(Default)]
struct Screen {
    console: usize,
    events: Cursor,
    /// The guest's latest listening ports and their commands.
    ports: BTreeMap<u16, String>,
    /// Ports whose host listener was shown.
    shown_forwards: BTreeSet<u16>,
    brought_up: bool,
    /// The app's terminal tab, once open: the person's screen from then on.
    tab: Option<TtydClient>,
    /// How much of the tab's output was shown.
    tab_shown: usize,
    /// What follows the tab's connection ending, until it is done.
    tab_end: Option<TabEnd>,
}

/// What follows the end of the terminal tab's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TabEnd {
    /// ttyd's page waits for Enter to connect again.
    AwaitEnter,
    /// ttyd's page connects again (Enter on an ended tab, or a clean close
    /// it answers by reconnecting).
    Reconnect,
    /// The app closed the tab (its last one).
    ClosedByApp,
}

/// What a moment of waiting brought.
enum Got {
    Keys(Option<Vec<u8>>),
    Frame(Result<(), TtydError>),
    Nothing,
}

/// Boots `req` for `person`, and plays the app if asked, until the person
/// closes it or the VM ends for good.
pub async fn boot(req: BootRequest, person: &mut Person) -> Result<()> {
    let run = AppRun {
        artefacts: req.launch.artefacts.clone(),
        app: req.app.then(TerminalOptions::default),
    };
    person.note("[avf] installing payload and starting QEMU…");
    let mut vm = Box::pin(Vm::launch_paused(req.launch)).await?;
    // The app's side exists before the guest runs (ca.crt for ttyd).
    let mut term = match &run.app {
        Some(opts) => Some(Box::pin(Session::start(opts, &vm)).await?),
        None => None,
    };
    vm.resume().await?;
    let mut attached = true;
    let mut screen = Screen::default();
    describe(&vm).iter().for_each(|l| person.note(l));
    if term.is_some() {
        let profile = &vm.plan().profile;
        person.app(&format!(
            "playing the {} Terminal app ({})",
            profile.release, profile.name
        ));
    }
    person.note("[avf] attached to the input console; Ctrl-] detaches");
    loop {
        let ended = Box::pin(attend(&vm, term.as_mut(), person, &mut screen, attached)).await?;
        match ended {
            Ended::Left if attached && req.keep => {
                attached = false;
                person.note("[avf] detached; the VM keeps running until it ends; Ctrl-] or Ctrl-C closes it");
            }
            Ended::Left => {
                if let Some(tab) = screen.tab.take() {
                    tab.close().await;
                }
                return close_app(vm, term, person).await;
            }
            Ended::LastTabClosed => return close_app(vm, term, person).await,
            Ended::Exited => {
                if !Box::pin(after_exit(&mut vm, &mut term, &run, person)).await? {
                    return Ok(());
                }
                screen = Screen::default();
                describe(&vm).iter().for_each(|l| person.note(l));
            }
        }
    }
}

/// The screen (when attached) and the app's events until the person
/// leaves or QEMU exits; the app's bring-up runs alongside, once per VM.
async fn attend(
    vm: &Vm,
    app: Option<&mut Session>,
    person: &mut Person,
    screen: &mut Screen,
    attached: bool,
) -> Result<Ended> {
    let log = app.as_ref().map(|a| a.events());
    let Some(app) = app else {
        loop {
            if let Some(end) = tick(vm, person, screen, None, attached).await? {
                return Ok(end);
            }
        }
    };
    if !screen.brought_up {
        let up = async {
            let note = app.bring_up(vm).await?;
            // Each try has its limits; this one bounds them all.
            let load = Timeout::TerminalLoad.get();
            tokio::time::timeout(load * 2, app.open_terminal(load))
                .await
                .map_err(|_| anyhow::anyhow!("no shell within {:?}", load * 2))
                .and_then(|r| r)
                .with_context(|| format!("{note}; but the terminal does not load"))?;
            anyhow::Ok(note)
        };
        let mut pending = Box::pin(up);
        let up = loop {
            tokio::select! {
                r = &mut pending => break r,
                end = tick(vm, person, screen, log.as_ref(), attached) => {
                    if let Some(end) = end? {
                        return Ok(end);
                    }
                }
            }
        };
        drop(pending);
        screen.brought_up = true;
        match up {
            Ok(note) => {
                person.app(&note);
                screen.take_tab(app, person).await?;
            }
            Err(e) => person.app(&format!("the app would show its error screen: {e:#}")),
        }
    }
    loop {
        if let Some(end) = tick(vm, person, screen, log.as_ref(), attached).await? {
            return Ok(end);
        }
        screen.show_forwards(app, person);
        match screen.tab_end {
            Some(TabEnd::Reconnect) => {
                screen.tab_end = None;
                reload_tab(vm, app, person, screen).await?;
            }
            Some(TabEnd::ClosedByApp) => {
                screen.tab_end = None;
                if guest_going_down(vm).await {
                    person.app("the guest is going down by itself: on the phone the app's stop races its reboot or power-off; played here: the VM's end");
                    continue;
                }
                return Ok(Ended::LastTabClosed);
            }
            Some(TabEnd::AwaitEnter) | None => {}
        }
    }
}

/// Whether the guest is on its way down by itself (a reboot or power-off
/// from inside: systemd says "stopping", or its agent no longer answers)
/// and QEMU is then gone in time. A tab closed by a guest reboot then
/// gets the reboot's answer, not the app's stop.
async fn guest_going_down(vm: &Vm) -> bool {
    let state = tokio::time::timeout(
        Duration::from_secs(5),
        guest_sh(vm, "systemctl is-system-running || true"),
    )
    .await;
    let down = !matches!(&state, Ok(Ok(s)) if s.trim() != "stopping");
    down && gone_soon(vm).await
}

/// The terminal whose connection ended loads again (ttyd's page, on
/// Enter); a VM on its way down (a reboot, a power-off) ends that without
/// a word: its end says what happened.
async fn reload_tab(
    vm: &Vm,
    app: &mut Session,
    person: &mut Person,
    screen: &mut Screen,
) -> Result<()> {
    let r = tokio::select! {
        r = app.open_terminal(Timeout::TerminalLoad.get()) => r,
        () = qemu_gone(vm) => return Ok(()),
    };
    match r {
        Ok(()) => {
            person.app("the terminal connected again");
            screen.take_tab(app, person).await?;
        }
        // A guest going down refuses the bridge before QEMU exits.
        Err(_) if gone_soon(vm).await => {}
        Err(e) => {
            screen.tab_end = Some(TabEnd::AwaitEnter);
            person.app(&format!("the terminal does not connect again: {e:#}"));
        }
    }
    Ok(())
}

/// How long a guest that refuses the terminal may take to be gone (a
/// reboot: about 2.5 s under TCG from the command to the reset).
const GOING_DOWN: Duration = Duration::from_secs(10);

/// Whether QEMU is gone within [`GOING_DOWN`].
async fn gone_soon(vm: &Vm) -> bool {
    tokio::time::timeout(GOING_DOWN, qemu_gone(vm))
        .await
        .is_ok()
}

async fn qemu_gone(vm: &Vm) {
    while !vm.qmp().is_closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shows what is new, then waits a moment for keys.
async fn tick(
    vm: &Vm,
    person: &mut Person,
    screen: &mut Screen,
    log: Option<&EventLog>,
    attached: bool,
) -> Result<Option<Ended>> {
    if attached {
        screen.show(vm, person)?;
    }
    if let Some(log) = log {
        screen.show_events(log, person);
    }
    if vm.qmp().is_closed() {
        return Ok(Some(Ended::Exited));
    }
    if !attached {
        // Detached: nothing is typed into the guest; the terminal is still
        // raw, so Ctrl-C arrives as a key. With no keys at all (stdin
        // ended), only the VM's end or a signal ends the wait.
        let input = tokio::select! {
            input = person.keys.recv() => input,
            _ = tokio::time::sleep(Duration::from_millis(200)) => return Ok(None),
        };
        return Ok(match input {
            Some(b) if b.iter().any(|&k| k == DETACH || k == CTRL_C) => Some(Ended::Left),
            Some(_) => None,
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        });
    }
    let got = tokio::select! {
        input = person.keys.recv() => Got::Keys(input),
        frame = next_frame(&mut screen.tab) => Got::Frame(frame),
        _ = tokio::time::sleep(Duration::from_millis(30)) => Got::Nothing,
    };
    match got {
        Got::Keys(None) => return Ok(Some(Ended::Left)),
        Got::Keys(Some(bytes)) => {
            let (keys, leave) = match bytes.iter().position(|&b| b == DETACH) {
                Some(p) => (&bytes[..p], true),
                None => (&bytes[..], false),
            };
            match &mut screen.tab {
                Some(tab) => {
                    if tab.send_keys(keys).await.is_err() {
                        screen.end_tab(vm.plan().profile.on_terminal_closed, person, None);
                    }
                }
                // ttyd's page after its connection ended: Enter connects.
                None if screen.tab_end == Some(TabEnd::AwaitEnter) => {
                    if keys.contains(&b'\r') {
                        screen.tab_end = Some(TabEnd::Reconnect);
                    }
                }
                None => vm.console().send(keys).await?,
            }
            if leave {
                return Ok(Some(Ended::Left));
            }
        }
        Got::Frame(Ok(())) | Got::Nothing => {}
        Got::Frame(Err(_)) => {
            let code = screen.tab.as_ref().and_then(|t| t.close_code());
            screen.end_tab(vm.plan().profile.on_terminal_closed, person, code);
        }
    }
    Ok(None)
}

/// The tab's next frame; never, without a tab.
async fn next_frame(tab: &mut Option<TtydClient>) -> Result<(), TtydError> {
    match tab {
        Some(t) => t.next_frame().await,
        None => std::future::pending().await,
    }
}

impl Screen {
    /// What is new on the person's screen: the tab's output once it is
    /// open, else the serial console's.
    fn show(&mut self, vm: &Vm, person: &mut Person) -> Result<()> {
        // Only what is new is copied: this runs every 30 ms.
        let console;
        let (new, shown) = match &self.tab {
            Some(tab) => (
                tab.raw_output().get(self.tab_shown..).unwrap_or_default(),
                &mut self.tab_shown,
            ),
            None => {
                console = vm.console().transcript_from(self.console);
                (&console[..], &mut self.console)
            }
        };
        if !new.is_empty() {
            person.screen.write_all(new)?;
            person.screen.flush()?;
            *shown += new.len();
        }
        Ok(())
    }

    /// Takes the tab the app opened: sized like the person's terminal, a
    /// fresh prompt, and only what follows shown (not the app's readiness
    /// check).
    async fn take_tab(&mut self, app: &mut Session, person: &mut Person) -> Result<()> {
        let Some(mut tab) = app.take_terminal() else {
            return Ok(());
        };
        if let Some((columns, rows)) = window_size() {
            tab.resize(columns, rows).await?;
        }
        self.tab_shown = tab.raw_output().len();
        self.tab_end = None;
        tab.send_keys(b"\r").await?;
        person.note("");
        person.app("the terminal tab is open (ttyd's shell); the serial console goes on in the artefacts' console.log; Ctrl-] closes the app");
        self.tab = Some(tab);
        Ok(())
    }

    /// The tab's connection ended (`code`: the close frame's, if ttyd sent
    /// one). Android 16 and 17 close the tab, and with it their last one
    /// they stop the VM. Under 15 QPR2 what follows is ttyd's own page's:
    /// only a clean close with another code than 1000 makes it reconnect
    /// by itself. A close with 1000, or an end without a close frame (what
    /// ttyd 1.7.7 does when the shell exits: the browser fires `error`,
    /// which stops the page from reconnecting), leaves "Press ⏎ to
    /// Reconnect".
    fn end_tab(&mut self, on_closed: OnTerminalClosed, person: &mut Person, code: Option<u16>) {
        self.tab = None;
        person.note("");
        if on_closed == OnTerminalClosed::CloseTab {
            self.tab_end = Some(TabEnd::ClosedByApp);
            person.app(&format!("the terminal's connection closed ({}): the app closes the tab (terminal_disconnect.js → closeTab); it was the last one, so the app stops the VM", code.map_or("no close frame".into(), |c| c.to_string())));
            return;
        }
        match code {
            Some(c) if c != NORMAL_CLOSE => {
                self.tab_end = Some(TabEnd::Reconnect);
                person.app(&format!("the terminal's connection closed ({c}); ttyd's page connects again (\"Reconnecting...\")"));
            }
            _ => {
                self.tab_end = Some(TabEnd::AwaitEnter);
                person.app("the terminal's connection ended; press Enter to connect again (ttyd's page: \"Press ⏎ to Reconnect\")");
            }
        }
    }

    fn show_events(&mut self, log: &EventLog, person: &mut Person) {
        let (records, next) = log.since(self.events);
        self.events = next;
        for r in records {
            let line = match r.event {
                Event::ActivePorts(ports) => {
                    let now: BTreeMap<u16, String> =
                        ports.into_iter().map(|p| (p.port, p.comm)).collect();
                    if now == self.ports {
                        continue;
                    }
                    self.shown_forwards.retain(|p| now.contains_key(p));
                    self.ports = now;
                    let list: Vec<String> = self
                        .ports
                        .iter()
                        // 15 QPR2's form carries no command.
                        .map(|(p, c)| match c.is_empty() {
                            true => p.to_string(),
                            false => format!("{p} ({c})"),
                        })
                        .collect();
                    format!("the guest reports listening ports: [{}]", list.join(", "))
                }
                Event::QueueOpened { queue, .. } => format!("the guest opened the {queue:?} queue"),
                Event::QueueClosed { queue } => format!("the guest's {queue:?} queue closed"),
                Event::ItemSent { queue, detail } => {
                    format!("sent on the {queue:?} queue: {detail}")
                }
                Event::VmIpAddr(ip) => format!("the guest reported its address {ip}"),
                Event::GuestAgentRegistered => "the guest agent registered with virtmgr".into(),
                Event::Refused { method, reason } => {
                    // Android 17's gRPC mode refuses calls until mDNS found
                    // the VM; the agents retry.
                    let when = match self.brought_up {
                        true => "",
                        false => " (before the app found the VM; the guest retries)",
                    };
                    format!("refused {method} from {:?}: {reason}{when}", r.peer)
                }
            };
            person.app(&line);
        }
    }

    /// The host listener of each reported port, once the app forwards it.
    fn show_forwards(&mut self, app: &Session, person: &mut Person) {
        for port in self.ports.keys() {
            if self.shown_forwards.contains(port) {
                continue;
            }
            if let Some(addrs) = app.forwarded(*port) {
                let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                person.app(&format!(
                    "guest port {port} forwarded to {}",
                    list.join(", ")
                ));
                self.shown_forwards.insert(*port);
            }
        }
    }
}

/// What follows QEMU's exit: `true` when the app starts the VM again.
async fn after_exit(
    vm: &mut Vm,
    term: &mut Option<Session>,
    run: &AppRun,
    person: &mut Person,
) -> Result<bool> {
    let reason = vm
        .wait_shutdown(0, Instant::now(), Duration::from_secs(2))
        .await
        .map(|r| r.reason);
    if let Err(e) = lifecycle::end_run(vm, term).await {
        person.app(&format!("{e:#}"));
    }
    let reason = match reason {
        Ok(r) => r,
        Err(_) => {
            person.note("[avf] QEMU exited without a SHUTDOWN event (as if crosvm died)");
            return Ok(false);
        }
    };
    if reason != lifecycle::RESET {
        person.note(&format!("[avf] the VM stopped (SHUTDOWN reason {reason})"));
        if run.app.is_some() {
            // 15 QPR2/16: Runner.onStopped → onVmStop → finish(); 17:
            // STOP_REASON_SHUTDOWN/KILLED → Stopped → MainUiState.Stopped
            // → finish() (MainScreen).
            person.app("the app closes (the VM stopped: onVmStop → finish(); Android 17: Stopped → finish())");
        }
        return Ok(false);
    }
    person.note("[avf] the guest reset (a reboot, or a panic under panic=-1): crosvm's reboot status, STOP_REASON_REBOOT to the app");
    if run.app.is_none() {
        person.note("[avf] no app plays along (--app): the run ends");
        return Ok(false);
    }
    match lifecycle::app_reboot_reaction(vm, term, run).await? {
        None => {
            person.app(lifecycle::APP_CLOSES);
            Ok(false)
        }
        Some(start) => {
            person.app(&format!("{}: {start}", lifecycle::APP_RESTARTS));
            Ok(true)
        }
    }
}

/// The person closes the app: its stop (the shutdown request or virtmgr's
/// `shutdownAsync`, its grace, then a hard stop); without the app, QEMU
/// quits.
async fn close_app(mut vm: Vm, term: Option<Session>, person: &mut Person) -> Result<()> {
    let Some(app) = term else {
        vm.stop().await;
        return Ok(());
    };
    person.app("the app closes: its stop");
    let report = lifecycle::app_stop(&mut vm, &app).await;
    vm.stop().await;
    let finished = app.finish().await;
    person.app(&report?.note);
    finished
}

/// Where a person finds this run's parts: artefacts, shares, vsock, ttyd's
/// forward, the TAP network (one `[avf]` line each).
pub fn describe(vm: &Vm) -> Vec<String> {
    let mut lines = vec![format!("[avf] artefacts: {}", vm.artefacts().display())];
    for tag in [ShareTag::Internal, ShareTag::Android] {
        if let Some(d) = vm.share_dir(tag) {
            lines.push(format!("[avf] share {}: {}", tag.as_str(), d.display()));
        }
    }
    lines.push(format!(
        "[avf] vsock: CID {} via {}",
        vm.guest_cid(),
        vm.vsock_uds().display()
    ));
    if let Some(a) = vm.forwarded(TTYD_GUEST_PORT) {
        lines.push(format!("[avf] ttyd (guest :7681) at https://{a}/"));
    }
    if let Some(t) = vm.tap() {
        lines.push(format!(
            "[avf] network: TAP in namespace {}, {}/24, host (gateway, DNS) {}; the guest's lease is in the artefacts' dnsmasq.log; reach it with `ip netns exec {} <command>`",
            t.name(),
            t.network,
            t.host,
            t.name()
        ));
    }
    lines
}

/// stdin, read on its own thread (a blocking read), as chunks of keys.
fn stdin_keys() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// The person's terminal size (columns, rows), if stdout is a terminal.
fn window_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills the winsize it is given.
    unsafe {
        let mut w: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut w) == 0 && w.ws_col > 0)
            .then_some((w.ws_col, w.ws_row))
    }
}

/// Puts the terminal in raw mode for the console; restored on drop.
pub struct RawMode(Option<libc::termios>);

impl RawMode {
    pub fn enter() -> RawMode {
        // SAFETY: termios calls on fd 0 with a zeroed struct they fill in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 0 || libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person() -> Person {
        Person {
            keys: mpsc::channel(1).1,
            screen: Box::new(std::io::sink()),
            notes: Box::new(std::io::sink()),
        }
    }

    #[test]
    fn a_closed_terminal_gets_the_releases_answer() {
        let mut p = person();
        // Android 16 and 17: the app closes the tab, its last: its stop.
        let mut s = Screen::default();
        s.end_tab(OnTerminalClosed::CloseTab, &mut p, None);
        assert_eq!(s.tab_end, Some(TabEnd::ClosedByApp));
        // 15 QPR2: ttyd's page. No close frame (ttyd 1.7.7 on `exit`) or
        // 1000: "Press ⏎ to Reconnect"; another clean code: reconnects.
        for code in [None, Some(NORMAL_CLOSE)] {
            let mut s = Screen::default();
            s.end_tab(OnTerminalClosed::TtydPage, &mut p, code);
            assert_eq!(s.tab_end, Some(TabEnd::AwaitEnter), "{code:?}");
        }
        let mut s = Screen::default();
        s.end_tab(OnTerminalClosed::TtydPage, &mut p, Some(1011));
        assert_eq!(s.tab_end, Some(TabEnd::Reconnect));
    }
}
