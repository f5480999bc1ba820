//! One process group per VM: QEMU and its sidecars join it, each with
//! PR_SET_PDEATHSIG so they die with the harness even under SIGKILL; the
//! group is SIGKILLed on drop (normal exit, panic unwinding, timeout) and
//! from a SIGINT/SIGTERM/SIGHUP handler that knows every live group. The
//! run and instance dirs are registered too ([`register_dir`]): on those
//! signals they are removed before the process ends, as on drop.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
//! not the process: a child forked from a tokio worker (or any thread that
//! ends before the run does) would be SIGKILLed mid-run. So every child is
//! forked by one spawner thread ([`spawn_child`]) that lives as long as
//! the process.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};

/// Live process groups, readable from a signal handler (atomics only).
static LIVE: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];
static HANDLERS: Once = Once::new();
/// The write end of the pipe that wakes the cleaner thread (-1: none).
static CLEANER: AtomicI32 = AtomicI32::new(-1);
/// Set by the first signal; a second one ends the process at once.
static CLEANING: AtomicBool = AtomicBool::new(false);
/// Run and instance dirs of this process, removed on SIGINT/SIGTERM/SIGHUP.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn kill_live_groups() {
    for slot in &LIVE {
        let pg = slot.load(Ordering::SeqCst);
        if pg > 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(-pg, libc::SIGKILL) };
        }
    }
}

/// Kills the live groups at once, then leaves the dirs (which need
/// allocation and locks, not allowed here) to the cleaner thread, which
/// ends the process with this signal. A second signal, or no cleaner,
/// ends it now.
extern "C" fn on_signal(sig: libc::c_int) {
    kill_live_groups();
    let w = CLEANER.load(Ordering::SeqCst);
    if w >= 0 && !CLEANING.swap(true, Ordering::SeqCst) {
        let b = sig as u8;
        // SAFETY: write is async-signal-safe; one byte into an empty pipe.
        if unsafe { libc::write(w, (&raw const b).cast(), 1) } == 1 {
            return;
        }
    }
    // Re-raise with the default action so the exit status tells the truth.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// The cleaner thread: on a signal's byte, kills the groups again (one
/// may have been registered since), removes the registered dirs, then
/// ends the process with that signal's default action.
fn cleaner(r: std::os::fd::OwnedFd) {
    use std::io::Read;
    let mut pipe = File::from(r);
    let mut b = [0u8; 1];
    while pipe.read_exact(&mut b).is_err() {}
    let sig = libc::c_int::from(b[0]);
    kill_live_groups();
    let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    // SAFETY: plain syscalls; kill (not raise) so the signal goes to the
    // process, whichever thread has it unblocked.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handlers (and the cleaner thread
/// they wake) once per process.
pub fn install_signal_handlers() {
    HANDLERS.call_once(|| {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 fills `fds` on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
            use std::os::fd::FromRawFd;
            // SAFETY: a fresh fd, owned by the thread from here on.
            let r = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
            let started = std::thread::Builder::new()
                .name("avf-cleaner".into())
                .spawn(move || cleaner(r));
            if started.is_ok() {
                CLEANER.store(fds[1], Ordering::SeqCst);
            }
        }
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only uses async-signal-safe calls.
            unsafe { libc::signal(s, on_signal as *const () as libc::sighandler_t) };
        }
    });
}

/// Makes `dir` (a run or instance dir of this process) one that SIGINT,
/// SIGTERM and SIGHUP remove before the process ends, as a normal drop
/// would. Call [`release_dir`] once it is removed or handed on.
pub fn register_dir(dir: &Path) {
    install_signal_handlers();
    DIRS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_owned());
}

/// Forgets `dir` (removed already, or to be kept).
pub fn release_dir(dir: &Path) {
    DIRS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|d| d != dir);
}

/// Removes a dir registered with [`register_dir`] and forgets it.
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    release_dir(dir);
}

fn register(pg: i32) {
    for slot in &LIVE {
        if slot
            .compare_exchange(0, pg, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

fn unregister(pg: i32) {
    for slot in &LIVE {
        let _ = slot.compare_exchange(pg, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A command to fork, and where the spawner sends the outcome.
type SpawnRequest = (Command, mpsc::SyncSender<std::io::Result<Child>>);

/// The spawner thread's inbox; the thread runs until the process exits
/// (this sender, in a static, is never dropped).
static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// Spawns `cmd` from the long-lived spawner thread, so a PR_SET_PDEATHSIG
/// set in its `pre_exec` is tied to a thread that outlives every run, not
/// to the calling thread. Blocks until the fork/exec is done (anything the
/// caller keeps alive for `pre_exec`, such as a namespace fd, stays valid).
pub fn spawn_child(cmd: Command) -> std::io::Result<Child> {
    let inbox = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("avf-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(tx)
    });
    let (reply, outcome) = mpsc::sync_channel(1);
    let gone = || std::io::Error::other("the spawner thread is gone");
    inbox
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .map_err(|_| gone())?;
    outcome.recv().map_err(|_| gone())?
}

pub struct Member {
    pub name: String,
    pub child: Child,
}

/// The VM's processes. The first spawned becomes the group leader.
#[derive(Default)]
pub struct ProcessGroup {
    pgid: Option<i32>,
    members: Vec<Member>,
}

impl ProcessGroup {
    pub fn new() -> ProcessGroup {
        install_signal_handlers();
        ProcessGroup::default()
    }

    pub fn pgid(&self) -> Option<i32> {
        self.pgid
    }

    /// Spawns `cmd` into the group with stdout/stderr appended to `log`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> std::io::Result<u32> {
        let out = File::options().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let target = self.pgid.unwrap_or(0);
        let parent = std::process::id() as i32;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, target) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let shown = format!("{cmd:?}");
        let child = spawn_child(cmd).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start {name} ({shown}): {e}"))
        })?;
        let pid = child.id();
        if self.pgid.is_none() {
            self.pgid = Some(pid as i32);
            register(pid as i32);
        }
        self.members.push(Member {
            name: name.to_string(),
            child,
        });
        Ok(pid)
    }

    /// Non-blocking: which member exited, with its status.
    pub fn try_wait(&mut self, name: &str) -> std::io::Result<Option<ExitStatus>> {
        match self.members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.child.try_wait(),
            None => Ok(None),
        }
    }

    /// SIGKILLs one member (a crash or a power cut) and reaps it.
    pub fn kill(&mut self, name: &str) -> std::io::Result<()> {
        if let Some(m) = self.members.iter_mut().find(|m| m.name == name) {
            m.child.kill()?;
            m.child.wait()?;
        }
        Ok(())
    }

    /// SIGKILLs one member that must still be running (an injected
    /// fault) and reaps it; an unknown or already gone member is an error
    /// naming the running ones.
    pub fn kill_running(&mut self, name: &str) -> std::io::Result<ExitStatus> {
        let running: Vec<String> = self
            .members
            .iter_mut()
            .filter_map(|m| matches!(m.child.try_wait(), Ok(None)).then(|| m.name.clone()))
            .collect();
        let m = match self.members.iter_mut().find(|m| m.name == name) {
            Some(m) if running.iter().any(|r| r == name) => m,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no running process {name:?} in the VM's group (running: {running:?})"),
                ))
            }
        };
        m.child.kill()?;
        m.child.wait()
    }

    /// SIGKILLs the whole group and reaps every member.
    pub fn kill_all(&mut self) {
        if let Some(pg) = self.pgid {
            unsafe { libc::kill(-pg, libc::SIGKILL) };
        }
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        if let Some(pg) = self.pgid.take() {
            unregister(pg);
        }
        self.members.clear();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The pids listed in /proc (its numeric entries), in directory order;
/// empty if /proc cannot be read.
fn proc_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
}

/// Processes (pid, comm) in process group `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for pid in proc_pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised comm: state ppid pgrp ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        if rest.get(2).and_then(|p| p.parse::<i32>().ok()) == Some(pgid)
            && rest.first() != Some(&"Z")
        {
            out.push((pid, comm));
        }
    }
    out
}

/// The harness's own sidecars and QEMUs still running anywhere on the host,
/// recognised by their run directory (`/tmp/avf-<pid>-<n>/`) on the command
/// line: (pid, command line).
pub fn leaked_processes() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for pid in proc_pids() {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let prog = cmd.split_whitespace().next().unwrap_or_default();
        let ours = [
            "qemu-system-aarch64",
            "virtiofsd",
            "vhost-device-vsock",
            "dnsmasq",
        ]
        .iter()
        .any(|p| prog.ends_with(p));
        if ours && cmd.contains("/tmp/avf-") {
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

/// Entries of `dir` named `<prefix><pid>-<n>…` (harness run dirs, instance
/// dirs, network namespaces) that belong to this user, with the harness pid
/// in their name. Another user's entry is never ours to sweep, whatever
/// its name says.
pub fn owned_entries(dir: &std::path::Path, prefix: &str) -> Vec<(std::path::PathBuf, i32)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(prefix)?.split('-').next()?.parse().ok()?;
            let owner = std::fs::symlink_metadata(e.path()).ok()?.uid();
            (owner == me).then(|| (e.path(), pid))
        })
        .collect()
}

/// [`owned_entries`] whose harness process no longer exists (SIGKILLed).
pub fn left_by_dead(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    owned_entries(dir, prefix)
        .into_iter()
        .filter(|(_, pid)| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .map(|(path, _)| path)
        .collect()
}

/// Removes run and instance dirs left by harness processes that no longer
/// exist (e.g. SIGKILLed): `<dir>/avf-<pid>-<n>` or `<dir>/<pid>-<n>`.
pub fn sweep_stale(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    left_by_dead(dir, prefix)
        .into_iter()
        .filter(|p| std::fs::remove_dir_all(p).is_ok())
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie: in a container, PID 1
/// may never reap orphans such as virtiofsd's sandbox child).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_pids_lists_this_process() {
        let me = std::process::id() as i32;
        assert!(proc_pids().any(|p| p == me));
    }

    #[test]
    fn the_sweep_takes_only_this_users_entries_of_dead_harnesses() {
        let d = tempfile::tempdir().unwrap();
        // No process has this pid.
        let dead = d.path().join(format!("avf-{}-0-x", i32::MAX));
        let alive = d.path().join(format!("avf-{}-0-x", std::process::id()));
        let foreign = d.path().join(format!("avf-{}-1-x", i32::MAX));
        for p in [&dead, &alive, &foreign] {
            std::fs::create_dir(p).unwrap();
        }
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&foreign, Some(12345), Some(12345)).unwrap();
        } else {
            std::fs::remove_dir(&foreign).unwrap();
        }
        assert_eq!(sweep_stale(d.path(), "avf-"), std::slice::from_ref(&dead));
        assert!(!dead.exists() && alive.exists());
        if unsafe { libc::geteuid() } == 0 {
            assert!(foreign.exists(), "another user's entry was swept");
        }
    }

    /// PDEATHSIG follows the forking thread: a child spawned on behalf of
    /// a thread that then exits must keep running.
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let path = log.path().to_owned();
        let mut group = std::thread::spawn(move || {
            let mut g = ProcessGroup::new();
            let mut c = Command::new("sleep");
            c.arg("30");
            g.spawn("sleep", c, &path).unwrap();
            g
        })
        .join()
        .unwrap();
        // The thread is gone; PDEATHSIG (if tied to it) is delivered while
        // the kernel reparents its children, just after join returns.
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_millis(500) {
            assert_eq!(
                group.try_wait("sleep").unwrap(),
                None,
                "the child died with the thread that spawned it"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let pg = group.pgid().unwrap();
        group.kill_all();
        assert!(group_members(pg).is_empty());
    }

    /// Set for the child process of
    /// `sigterm_kills_the_groups_and_removes_the_registered_dirs`.
    const SIGNAL_CHILD: &str = "AVF_PROCS_SIGNAL_CHILD";

    /// The child's body (returns at once in a normal run): registers a run
    /// dir and an instance dir, starts a group, says so, and waits to be
    /// signalled.
    #[test]
    fn signal_child() {
        let Some(base) = std::env::var_os(SIGNAL_CHILD) else {
            return;
        };
        let base = PathBuf::from(base);
        let pid = std::process::id();
        let run = base.join(format!("avf-{pid}-0-run"));
        let instance = base.join(format!("{pid}-0-instance"));
        for d in [&run, &instance] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/file"), b"x").unwrap();
            register_dir(d);
        }
        let mut g = ProcessGroup::new();
        let mut c = Command::new("sleep");
        c.arg("30");
        g.spawn("sleep", c, &run.join("sleep.log")).unwrap();
        let pg = g.pgid().unwrap();
        std::fs::write(base.join("ready.tmp"), pg.to_string()).unwrap();
        std::fs::rename(base.join("ready.tmp"), base.join("ready")).unwrap();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn sigterm_kills_the_groups_and_removes_the_registered_dirs() {
        use std::os::unix::process::ExitStatusExt;
        let base = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "procs::tests::signal_child", "--nocapture"])
            .env(SIGNAL_CHILD, base.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let ready = base.path().join("ready");
        let t0 = std::time::Instant::now();
        let pg: i32 = loop {
            if let Ok(t) = std::fs::read_to_string(&ready) {
                break t.parse().unwrap();
            }
            if t0.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("the child never got ready");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let pid = child.id();
        let made = |name: &str| base.path().join(name.replace("PID", &pid.to_string()));
        assert!(made("avf-PID-0-run").is_dir() && made("PID-0-instance").is_dir());
        assert!(!group_members(pg).is_empty());
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
        let left: Vec<_> = std::fs::read_dir(base.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "ready")
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        // SIGKILLed members may take a moment to be reaped by init (seen
        // under a parallel test run): give them two seconds.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !group_members(pg).is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(group_members(pg).is_empty(), "{:?}", group_members(pg));
    }

    #[test]
    fn group_members_finds_this_process_group() {
        let pg = unsafe { libc::getpgrp() };
        let me = std::process::id() as i32;
        assert!(group_members(pg).iter().any(|(p, _)| *p == me));
    }
}
