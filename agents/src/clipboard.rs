//! The clipboard behind IDebianService's `updateClipboard`/`readClipboard`
//! (AIDL mode).
//!
//! With a Wayland session of the terminal user (droid, uid 1000: its
//! compositor socket `/run/user/<uid>/wayland-0` exists) the text goes
//! through that session's clipboard with `wl-copy` / `wl-paste
//! --no-newline`, run as that user, as the app's own guest agent does. A
//! guest without one (our image ships no desktop) keeps the last text in
//! the service, so that a round trip still gives back what the app sent.
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a wl-copy/wl-paste may take: a binder thread waits for it.
const TOOL_TIMEOUT: Duration = Duration::from_secs(3);

/// Where to look for the user's Wayland session.
#[derive(Debug, Clone)]
pub struct WaylandSession {
    /// The terminal user (`droid`).
    pub user: String,
    /// `/run/user`: the session's runtime dir is `<run_user>/<uid>`.
    pub run_user: PathBuf,
    /// The compositor's socket name in it (`wayland-0`).
    pub display: String,
}

impl Default for WaylandSession {
    fn default() -> Self {
        Self {
            user: "droid".into(),
            run_user: "/run/user".into(),
            display: "wayland-0".into(),
        }
    }
}

/// The user's ids and runtime dir, when their Wayland socket exists.
struct LiveSession {
    uid: u32,
    gid: u32,
    home: PathBuf,
    runtime_dir: PathBuf,
}

impl WaylandSession {
    fn live(&self) -> Option<LiveSession> {
        let user = nix::unistd::User::from_name(&self.user).ok()??;
        let runtime_dir = self.run_user.join(user.uid.as_raw().to_string());
        runtime_dir
            .join(&self.display)
            .exists()
            .then(|| LiveSession {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
                runtime_dir,
            })
    }

    fn command(&self, s: &LiveSession, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &s.home)
            .env("XDG_RUNTIME_DIR", &s.runtime_dir)
            .env("WAYLAND_DISPLAY", &self.display)
            .current_dir("/")
            .stderr(Stdio::null());
        // std drops supplementary groups, then sets gid and uid (we are root).
        if nix::unistd::geteuid().is_root() {
            cmd.uid(s.uid).gid(s.gid);
        }
        cmd
    }
}

/// The service's clipboard: the session's when there is one, else our own.
pub struct Clipboard {
    session: WaylandSession,
    kept: Mutex<String>,
}

impl Clipboard {
    pub fn new(session: WaylandSession) -> Self {
        Self {
            session,
            kept: Mutex::new(String::new()),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, String> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `updateClipboard(text)`.
    pub fn update(&self, text: &str) -> anyhow::Result<()> {
        *self.kept() = text.to_owned();
        let Some(s) = self.session.live() else {
            return Ok(());
        };
        // wl-copy forks a child that serves the selection until another
        // client takes it; its stdout stays closed so nothing waits on it.
        let mut child = self
            .session
            .command(&s, "wl-copy")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting wl-copy")?;
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(text.as_bytes()));
        let status = wait_bounded(&mut child, "wl-copy")?;
        written.transpose().context("writing the text to wl-copy")?;
        anyhow::ensure!(status.success(), "wl-copy failed: {status}");
        Ok(())
    }

    /// `readClipboard()`: the session's text (`""` when wl-paste fails, as
    /// with an empty clipboard), else the last text the app sent.
    pub fn read(&self) -> String {
        let Some(s) = self.session.live() else {
            return self.kept().clone();
        };
        let pasted = self
            .session
            .command(&s, "wl-paste")
            .arg("--no-newline")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting wl-paste")
            .and_then(|mut child| {
                let mut out = child.stdout.take().context("wl-paste stdout")?;
                // Read on another thread so the deadline holds on a stuck pipe.
                let reader = std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut out, &mut buf).map(|_| buf)
                });
                let status = wait_bounded(&mut child, "wl-paste")?;
                let buf = reader
                    .join()
                    .map_err(|_| anyhow::anyhow!("wl-paste reader panicked"))?
                    .context("reading wl-paste's output")?;
                anyhow::ensure!(status.success(), "wl-paste failed: {status}");
                Ok(String::from_utf8_lossy(&buf).into_owned())
            });
        pasted.unwrap_or_else(|e| {
            eprintln!("readClipboard: {e:#}; answering \"\"");
            String::new()
        })
    }
}

/// Waits for `child` at most [`TOOL_TIMEOUT`], then kills and reaps it.
fn wait_bounded(
    child: &mut std::process::Child,
    what: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{what} did not finish within {TOOL_TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_session_the_text_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let c = Clipboard::new(WaylandSession {
            user: "root".into(),
            run_user: d.path().into(),
            display: "wayland-0".into(),
        });
        assert_eq!(c.read(), "");
        c.update("héllo\nworld").unwrap();
        assert_eq!(c.read(), "héllo\nworld");
        // An unknown user has no session either.
        let c = Clipboard::new(WaylandSession {
            user: "no-such-user-avf".into(),
            ..WaylandSession::default()
        });
        c.update("x").unwrap();
        assert_eq!(c.read(), "x");
    }
}
