//! What the benchmark reads from a booted guest through the guest agent:
//! `systemd-analyze time` (firmware/loader/kernel/initrd/userspace),
//! `systemd-analyze blame`, `free -m` after the boot settles, and the
//! system state. Parsing is pure; [`measure`] runs the one script.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::vm::Vm;

/// One phase of `systemd-analyze time` (`kernel`, `userspace`, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    pub name: String,
    pub secs: f64,
}

/// `systemd-analyze time`: its phases in the order printed, and the sum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyzeTime {
    pub phases: Vec<Phase>,
    pub total: f64,
}

impl AnalyzeTime {
    pub fn phase(&self, name: &str) -> Option<f64> {
        self.phases.iter().find(|p| p.name == name).map(|p| p.secs)
    }
}

/// One line of `systemd-analyze blame`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blame {
    pub unit: String,
    pub secs: f64,
}

/// The `Mem:` line of `free -m`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Memory {
    pub total_mib: u64,
    pub used_mib: u64,
}

/// Everything one boot's guest said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestFigures {
    /// `systemctl is-system-running` once the boot finished.
    pub state: String,
    pub time: AnalyzeTime,
    pub blame: Vec<Blame>,
    pub memory: Memory,
}

/// A systemd timespan as systemd prints it (`1min 2.345s`, `850ms`,
/// `12us`) in seconds.
pub fn parse_timespan(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for tok in s.split_whitespace() {
        let split = tok
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let (num, unit) = tok.split_at(split);
        let n: f64 = num.parse().ok()?;
        let scale = match unit {
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        total += n * scale;
        any = true;
    }
    any.then_some(total)
}

/// `Startup finished in 1.050s (kernel) + 24.512s (userspace) = 25.563s`.
pub fn parse_analyze_time(out: &str) -> Result<AnalyzeTime> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Startup finished in "))
        .with_context(|| {
            format!("systemd-analyze time: no `Startup finished in` line in {out:?}")
        })?;
    let (parts, total) = line
        .split_once(" = ")
        .with_context(|| format!("systemd-analyze time: no ` = <total>` in {line:?}"))?;
    let total = parse_timespan(total)
        .with_context(|| format!("systemd-analyze time: total {total:?} is not a timespan"))?;
    let mut phases = Vec::new();
    for part in parts.split(" + ") {
        let (span, name) = part
            .trim()
            .strip_suffix(')')
            .and_then(|p| p.rsplit_once(" ("))
            .with_context(|| format!("systemd-analyze time: {part:?} is not `<span> (<phase>)`"))?;
        let secs = parse_timespan(span)
            .with_context(|| format!("systemd-analyze time: {span:?} is not a timespan"))?;
        phases.push(Phase {
            name: name.to_string(),
            secs,
        });
    }
    Ok(AnalyzeTime { phases, total })
}

/// `systemd-analyze blame`: `<span> <unit>` a line, longest first.
pub fn parse_blame(out: &str) -> Result<Vec<Blame>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (span, unit) = l
                .trim()
                .rsplit_once(char::is_whitespace)
                .with_context(|| format!("systemd-analyze blame: {l:?} is not `<span> <unit>`"))?;
            let secs = parse_timespan(span)
                .with_context(|| format!("systemd-analyze blame: {span:?} is not a timespan"))?;
            Ok(Blame {
                unit: unit.to_string(),
                secs,
            })
        })
        .collect()
}

/// `free -m`'s `Mem:` line: total and used (used excludes buff/cache).
pub fn parse_free(out: &str) -> Result<Memory> {
    let fields: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .with_context(|| format!("free -m: no `Mem:` line in {out:?}"))?
        .split_whitespace()
        .collect();
    let num = |i: usize, what: &str| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("free -m: no {what} in {fields:?}"))
    };
    Ok(Memory {
        total_mib: num(1, "total")?,
        used_mib: num(2, "used")?,
    })
}

/// Section markers of [`script`]'s output.
const SECTIONS: [&str; 4] = ["@@state", "@@time", "@@blame", "@@free"];

/// The guest side, one `sh -c`: wait for the boot to finish (systemd-
/// analyze refuses before), read its times, let it settle, read memory.
pub fn script(settle: Duration) -> String {
    format!(
        "timeout 120 systemctl is-system-running --wait >/dev/null 2>&1; \
         echo @@state; systemctl is-system-running; \
         echo @@time; systemd-analyze time; \
         echo @@blame; systemd-analyze blame --no-pager; \
         sleep {}; echo @@free; free -m",
        settle.as_secs()
    )
}

/// Splits [`script`]'s output into its sections and parses each.
pub fn parse_script_output(out: &str) -> Result<GuestFigures> {
    let mut sections: Vec<(&str, String)> = Vec::new();
    for line in out.lines() {
        if SECTIONS.contains(&line.trim()) {
            sections.push((line.trim(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let get = |name: &str| -> Result<&str> {
        match sections.iter().find(|(n, _)| *n == name) {
            Some((_, body)) => Ok(body.as_str()),
            None => bail!("the guest's measurement script printed no {name} section: {out:?}"),
        }
    };
    Ok(GuestFigures {
        state: get("@@state")?.trim().to_string(),
        time: parse_analyze_time(get("@@time")?)?,
        blame: parse_blame(get("@@blame")?)?,
        memory: parse_free(get("@@free")?)?,
    })
}

/// Runs [`script`] on the booted `vm` and parses what it printed.
pub async fn measure(vm: &Vm, settle: Duration) -> Result<GuestFigures> {
    let within = crate::timeouts::Timeout::GuestExec.get() + Duration::from_secs(120) + settle;
    let out = vm
        .qga()
        .await?
        .exec(&["/bin/sh".into(), "-c".into(), script(settle)], within)
        .await
        .context("the guest's boot measurements (guest-exec)")?;
    parse_script_output(&out.stdout_str()).with_context(|| {
        format!(
            "parsing the guest's boot measurements (exit {:?}, stderr {:?})",
            out.exit_code,
            out.stderr_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_as_systemd_prints_them() {
        assert_eq!(parse_timespan("24.512s"), Some(24.512));
        assert_eq!(parse_timespan("850ms"), Some(0.85));
        assert_eq!(parse_timespan("1min 2.5s"), Some(62.5));
        assert_eq!(parse_timespan("12us"), Some(12e-6));
        assert_eq!(parse_timespan("1h 1min"), Some(3660.0));
        assert_eq!(parse_timespan(""), None);
        assert_eq!(parse_timespan("fast"), None);
        assert_eq!(parse_timespan("3 s"), None);
    }

    #[test]
    fn analyze_time_direct_and_efi() {
        let t = parse_analyze_time(
            "Startup finished in 1.050s (kernel) + 24.512s (userspace) = 25.563s \n\
             multi-user.target reached after 24.201s in userspace.\n",
        )
        .unwrap();
        assert_eq!(t.phase("kernel"), Some(1.05));
        assert_eq!(t.phase("userspace"), Some(24.512));
        assert_eq!(t.total, 25.563);
        let efi = parse_analyze_time(
            "Startup finished in 2.104s (firmware) + 1.2s (loader) + 980ms (kernel) + 1min 1.5s (userspace) = 1min 5.784s\n",
        )
        .unwrap();
        let names: Vec<&str> = efi.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["firmware", "loader", "kernel", "userspace"]);
        assert_eq!(efi.phase("userspace"), Some(61.5));
        assert_eq!(efi.phase("initrd"), None);
        let e = parse_analyze_time("Bootup is not yet finished").unwrap_err();
        assert!(e.to_string().contains("Startup finished"), "{e}");
        assert!(parse_analyze_time("Startup finished in 1s (kernel) = x").is_err());
    }

    #[test]
    fn blame_lines_with_multi_word_spans() {
        let b = parse_blame(
            "11.402s dev-vda1.device\n 1min 2.3s apt-daily.service\n    850ms systemd-journald.service\n\n",
        )
        .unwrap();
        assert_eq!(
            b,
            [
                Blame {
                    unit: "dev-vda1.device".into(),
                    secs: 11.402
                },
                Blame {
                    unit: "apt-daily.service".into(),
                    secs: 62.3
                },
                Blame {
                    unit: "systemd-journald.service".into(),
                    secs: 0.85
                },
            ]
        );
        assert!(parse_blame("soon foo.service\n").is_err());
    }

    #[test]
    fn free_mem_line() {
        let m = parse_free(
            "               total        used        free      shared  buff/cache   available\n\
             Mem:            3950         243        3500           1         300        3700\n\
             Swap:           1974           0        1974\n",
        )
        .unwrap();
        assert_eq!(
            m,
            Memory {
                total_mib: 3950,
                used_mib: 243
            }
        );
        assert!(parse_free("Swap: 1 2 3\n").is_err());
        assert!(parse_free("Mem: x\n").is_err());
    }

    #[test]
    fn the_scripts_sections_parse_into_figures() {
        let out = "@@state\nrunning\n@@time\nStartup finished in 1.0s (kernel) + 20.0s (userspace) = 21.0s\n\
                   @@blame\n5.0s a.service\n1.0s b.service\n@@free\n      total used\nMem: 3950 150 3000 1 800 3700\n";
        let g = parse_script_output(out).unwrap();
        assert_eq!(g.state, "running");
        assert_eq!(g.time.total, 21.0);
        assert_eq!(g.blame.len(), 2);
        assert_eq!(g.memory.used_mib, 150);
        let e = parse_script_output("@@state\nrunning\n").unwrap_err();
        assert!(e.to_string().contains("@@time"), "{e}");
        assert!(script(Duration::from_secs(10)).contains("sleep 10;"));
    }
}
