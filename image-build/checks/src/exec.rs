//! Running host tools with errors that name the command.

use std::path::PathBuf;
use std::process::Command;

/// The repository root (this crate lives in `image-build/checks`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root exists")
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The last non-empty line of stderr: the build's one-line cause.
    pub fn last_err_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

/// Runs `cmd` to completion, capturing output; fails only if it cannot start.
pub fn run(cmd: &mut Command) -> Result<Outcome, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    Ok(Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `cmd` and returns stdout; a non-zero exit is an error with stderr.
pub fn run_ok(cmd: &mut Command) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let o = run(cmd)?;
    if o.code != Some(0) {
        return Err(format!(
            "{desc} exited with {:?}: {}",
            o.code,
            o.stderr.trim()
        ));
    }
    Ok(o.stdout)
}

/// True when the tests run as root (needed for runuser, mounts, chroots).
pub fn is_root() -> bool {
    // SAFETY-free: read our effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
