//! A scenario file (TOML): which payload, launch knobs, and steps as data.
//! New step kinds (e.g. the Terminal app's host side for issue 4) are new
//! variants of [`Step`] plus one arm in the runner.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::terminal;
use crate::plan::{Firmware, NetMode};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub file: PathBuf,
    pub description: String,
    /// `<base>-<layout>` under `$AVF_OUT`, e.g. `debian-direct`.
    pub payload: String,
    /// `uboot` (default) or `edk2`, when the payload names no kernel.
    #[serde(default)]
    pub firmware: Firmware,
    /// `user` (default) or `tap` (the faithful mode, see [`crate::net`]).
    #[serde(default)]
    pub net: NetMode,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The Terminal app's host side (issue 4). Implied by any terminal step.
    #[serde(default)]
    pub terminal: Option<terminal::TerminalOptions>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Wait for `AVF-BOOT-OK <build_id>` and the guest agent.
    Boot {
        #[serde(default)]
        max_secs: Option<u64>,
    },
    /// `sh -c` in the guest through the agent.
    Exec {
        sh: String,
        #[serde(default)]
        exit: i32,
        /// Regex the stdout must match.
        #[serde(default)]
        stdout_matches: Option<String>,
        /// Golden snapshot of the (filtered) stdout.
        #[serde(default)]
        snapshot: Option<String>,
    },
    /// Golden snapshot of the console transcript so far.
    ConsoleSnapshot {
        name: String,
        /// Lines matching any of these are dropped (racy ordering etc.).
        #[serde(default)]
        drop: Vec<String>,
        /// When set, only lines matching one of these are kept.
        #[serde(default)]
        keep: Vec<String>,
    },
    /// Set the balloon so the guest has `fraction` of its memory, wait for
    /// QEMU to report it and the guest's MemTotal to follow.
    Balloon {
        fraction: f64,
        #[serde(default = "default_tolerance")]
        tolerance_mib: u64,
    },
    /// `system_powerdown`; SHUTDOWN with `reason` and QEMU gone in time.
    Powerdown {
        reason: String,
        within_secs: u64,
    },
    /// `e2fsck -n` on the host on a partition file (VM must be stopped).
    HostFsck {
        label: String,
    },
    /// The TAP mode's DHCP lease, route and DNS (see `network`).
    TapNetwork(super::network::TapNetwork),
    // The Terminal app's host side (see `terminal`).
    TtydDiscover(terminal::TtydDiscover),
    TtydProbe(terminal::TtydProbe),
    TtydRun(terminal::TtydRun),
    AgentsConnected(terminal::AgentsConnected),
    GuestPort(terminal::GuestPort),
    ForwardRoundtrip(terminal::ForwardRoundtrip),
    AppShutdown(terminal::AppShutdown),
    StorageBalloon(terminal::StorageBalloon),
    GuestNote(terminal::GuestNote),
    MemoryPolicy(terminal::MemoryPolicy),
}

impl Step {
    /// Whether the step needs the Terminal app's host side.
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Step::Boot { .. }
                | Step::Exec { .. }
                | Step::ConsoleSnapshot { .. }
                | Step::Balloon { .. }
                | Step::Powerdown { .. }
                | Step::HostFsck { .. }
                | Step::TapNetwork(_)
        )
    }
}

fn default_tolerance() -> u64 {
    64
}

impl Scenario {
    pub fn load(file: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut s: Scenario = toml::from_str(&text)
            .with_context(|| format!("{}: invalid scenario", file.display()))?;
        s.name = file
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        s.file = file.to_owned();
        for (i, st) in s.steps.iter().enumerate() {
            let bad_re = |re: &str, what: &str| {
                regex::Regex::new(re)
                    .map(drop)
                    .with_context(|| format!("{}: steps[{i}].{what}: bad regex", file.display()))
            };
            match st {
                Step::Exec {
                    stdout_matches: Some(r),
                    ..
                } => bad_re(r, "stdout_matches")?,
                Step::TtydRun(terminal::TtydRun {
                    output_matches: Some(r),
                    ..
                }) => bad_re(r, "output_matches")?,
                Step::ConsoleSnapshot { drop, keep, .. } => {
                    for r in drop {
                        bad_re(r, "drop")?;
                    }
                    for r in keep {
                        bad_re(r, "keep")?;
                    }
                }
                Step::Balloon { fraction, .. } if !(0.05..=1.0).contains(fraction) => {
                    anyhow::bail!(
                        "{}: steps[{i}].fraction: {fraction} (expected 0.05 ..= 1.0)",
                        file.display()
                    )
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// Every `*.toml` in `dir`, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files.iter().map(|f| Scenario::load(f)).collect()
    }

    /// The payload dir (or the error naming the command that builds it).
    pub fn payload_dir(&self) -> Result<PathBuf> {
        let (base, layout) = self.payload.split_once('-').with_context(|| {
            format!(
                "{}: payload {:?} (expected <base>-<layout>)",
                self.file.display(),
                self.payload
            )
        })?;
        crate::payload::built_payload(base, layout)
    }
}
