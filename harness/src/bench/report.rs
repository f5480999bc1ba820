//! The benchmark's human report: one table of medians per configuration,
//! the comparisons as ratios of medians, `systemd-analyze blame`'s top 10
//! per configuration; and the JSON file with every sample.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::stats::{ratio, Summary};
use super::{BenchRun, Config, Sample, Side};

/// Goals from issue 12, printed beside the figures (never asserted).
pub const OVERHEAD_GOAL: f64 = 1.05;
pub const IDLE_USED_GOAL_MIB: f64 = 120.0;

/// Aligned text columns: the first left-aligned, the rest right-aligned.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A configuration's samples of one boot ordinal.
fn group<'a>(run: &'a BenchRun, key: &str, boot: u32) -> Vec<&'a Sample> {
    run.samples
        .iter()
        .filter(|s| s.config == key && s.boot == boot)
        .collect()
}

fn summary(samples: &[&Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<Summary> {
    let v: Vec<f64> = samples.iter().filter_map(|s| f(s)).collect();
    Summary::of(&v)
}

fn to_marker(s: &Sample) -> Option<f64> {
    s.to_marker_s
}
fn phase(name: &'static str) -> impl Fn(&Sample) -> Option<f64> {
    move |s| s.guest.as_ref()?.time.phase(name)
}
fn firmware_and_loader(s: &Sample) -> Option<f64> {
    let t = &s.guest.as_ref()?.time;
    match (t.phase("firmware"), t.phase("loader")) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    }
}
fn used(s: &Sample) -> Option<f64> {
    s.guest.as_ref().map(|g| g.memory.used_mib as f64)
}

fn med(s: Option<Summary>, digits: usize) -> String {
    s.map_or("-".into(), |s| format!("{:.*}", digits, s.median))
}
fn med_range(s: Option<Summary>) -> String {
    s.map_or("-".into(), |s| {
        format!("{:.1} [{:.1}–{:.1}]", s.median, s.min, s.max)
    })
}

/// The (configuration, boot) groups in table order.
fn groups(run: &BenchRun) -> Vec<(&Config, u32, String)> {
    let mut g = Vec::new();
    for c in &run.configs {
        g.push((c, 1, c.label.clone()));
        if c.second_boot {
            g.push((c, 2, format!("{}, 2nd boot", c.label)));
        }
    }
    g
}

/// A comparison line `what: a / b = r`, if both sides have samples.
fn compare(
    out: &mut String,
    what: &str,
    a: Option<Summary>,
    b: Option<Summary>,
    goal: Option<f64>,
) {
    if let (Some(sa), Some(sb), Some(r)) = (a, b, ratio(a, b)) {
        let goal = goal.map_or(String::new(), |g| format!(" (goal ≤ {g:.2})"));
        let _ = writeln!(
            out,
            "  {what}: {:.2} s / {:.2} s = {r:.3}{goal}",
            sa.median, sb.median
        );
    }
}

/// The comparisons the issue asks for, from whichever configurations ran.
fn comparisons(run: &BenchRun) -> String {
    let m = |key: &str, boot: u32| summary(&group(run, key, boot), to_marker);
    let mut out = String::new();
    compare(
        &mut out,
        "harness / plain QEMU (direct, linux-avf, cont→marker)",
        m("harness-direct", 1),
        m("plain-direct", 1),
        Some(OVERHEAD_GOAL),
    );
    // The two factors of that ratio, measured apart.
    compare(
        &mut out,
        "harness / plain QEMU + the app's devices (what the harness itself adds: NBD disk, console, agent, supervision)",
        m("harness-direct", 1),
        m("plain-app-devices-direct", 1),
        Some(OVERHEAD_GOAL),
    );
    compare(
        &mut out,
        "plain QEMU + the app's devices / plain QEMU (what the app's device set costs the guest)",
        m("plain-app-devices-direct", 1),
        m("plain-direct", 1),
        None,
    );
    compare(
        &mut out,
        "phone vCPU / --vcpu no-pauth (direct, harness: what pointer authentication costs under TCG)",
        m("harness-direct", 1),
        m("harness-direct-nopauth", 1),
        None,
    );
    compare(
        &mut out,
        "efi / direct (harness, first boot)",
        m("harness-efi", 1),
        m("harness-direct", 1),
        None,
    );
    compare(
        &mut out,
        "second / first boot (direct)",
        m("harness-direct", 2),
        m("harness-direct", 1),
        None,
    );
    compare(
        &mut out,
        "second / first boot (efi)",
        m("harness-efi", 2),
        m("harness-efi", 1),
        None,
    );
    compare(
        &mut out,
        "stock Debian kernel + initrd / linux-avf (direct, harness)",
        m("harness-stock", 1),
        m("harness-direct", 1),
        None,
    );
    if let Some(u) = summary(&group(run, "harness-direct", 1), used) {
        let _ = writeln!(
            out,
            "  idle memory (direct, linux-avf, `free -m` used): {:.0} MiB (goal ≤ {IDLE_USED_GOAL_MIB:.0})",
            u.median
        );
    }
    out
}

/// `systemd-analyze blame`'s 10 slowest units of a group: each unit's
/// median over the boots that list it, longest first.
pub fn blame_top(samples: &[&Sample], n: usize) -> Vec<(String, f64, usize)> {
    let mut by_unit: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in samples {
        for b in s.guest.iter().flat_map(|g| &g.blame) {
            by_unit.entry(&b.unit).or_default().push(b.secs);
        }
    }
    let mut v: Vec<(String, f64, usize)> = by_unit
        .into_iter()
        .filter_map(|(u, t)| Some((u.to_string(), super::stats::median(&t)?, t.len())))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// `/proc/loadavg`'s three figures as the reports print them.
pub fn load(l: Option<[f64; 3]>) -> String {
    l.map_or("?".into(), |l| {
        format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
    })
}

/// The whole human report.
pub fn render(run: &BenchRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "boot benchmark: {} round(s) interleaved ({} for second boots and secondary configurations), \
         medians [min–max] in seconds; host {} CPU(s), load {} → {}; {:.0} s wall",
        run.runs,
        run.secondary_runs.min(run.runs),
        run.host_cpus,
        load(run.loadavg_before),
        load(run.loadavg_after),
        run.wall_s
    );
    let mut rows = Vec::new();
    for (c, boot, label) in groups(run) {
        let g = group(run, &c.key, boot);
        if g.is_empty() {
            continue;
        }
        let ok = g.iter().filter(|s| s.error.is_none()).count();
        rows.push(vec![
            label,
            format!("{ok}/{}", g.len()),
            med_range(summary(&g, to_marker)),
            med(summary(&g, |s| s.launch_to_marker_s), 1),
            med(summary(&g, firmware_and_loader), 2),
            med(summary(&g, phase("kernel")), 2),
            med(summary(&g, phase("initrd")), 2),
            med(summary(&g, phase("userspace")), 2),
            med(summary(&g, used), 0),
        ]);
    }
    out.push_str(&render_table(
        &[
            "configuration",
            "ok",
            "cont→marker",
            "launch→marker",
            "fw+loader",
            "kernel",
            "initrd",
            "userspace",
            "used MiB",
        ],
        &rows,
    ));
    out.push_str("\ncomparisons (ratios of medians):\n");
    out.push_str(&comparisons(run));
    for (c, boot, label) in groups(run) {
        if c.side != Side::Harness {
            continue;
        }
        let g = group(run, &c.key, boot);
        let top = blame_top(&g, 10);
        if top.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\nsystemd-analyze blame, top 10 ({label}; median over the boots listing the unit):"
        );
        for (unit, secs, n) in top {
            let _ = writeln!(out, "  {secs:7.2} s  {unit} ({n})");
        }
    }
    for why in &run.skipped {
        let _ = writeln!(out, "\nskipped: {why}");
    }
    let failed: Vec<&Sample> = run.samples.iter().filter(|s| s.error.is_some()).collect();
    if !failed.is_empty() {
        out.push_str("\nfailed boots:\n");
        for s in failed {
            let _ = writeln!(
                out,
                "  round {} {} boot {}: {}",
                s.round,
                s.config,
                s.boot,
                s.error.as_deref().unwrap_or_default()
            );
        }
    }
    let unclean = run
        .samples
        .iter()
        .filter(|s| s.clean_poweroff_before == Some(false))
        .count();
    if unclean > 0 {
        let _ = writeln!(
            out,
            "\nnote: {unclean} second boot(s) followed a first boot that did not power off on system_powerdown (stopped with QMP quit instead)"
        );
    }
    out
}

/// Writes a run (every sample) as JSON to `path` (parents created); the
/// boot and the build benchmarks both.
pub fn write_json(run: &impl serde::Serialize, path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let text = serde_json::to_string_pretty(run)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::super::guest::{AnalyzeTime, Blame, GuestFigures, Memory, Phase};
    use super::*;

    fn config(key: &str, side: Side, second_boot: bool) -> Config {
        Config {
            key: key.into(),
            label: key.replace('-', " "),
            side,
            payload: "p".into(),
            second_boot,
            primary: true,
            vcpu: None,
        }
    }

    fn sample(config: &str, boot: u32, marker: f64, used: u64, blame: &[(&str, f64)]) -> Sample {
        Sample {
            config: config.into(),
            round: 1,
            boot,
            to_marker_s: Some(marker),
            launch_to_marker_s: Some(marker + 2.0),
            guest: (used > 0).then(|| GuestFigures {
                state: "running".into(),
                time: AnalyzeTime {
                    phases: vec![
                        Phase {
                            name: "kernel".into(),
                            secs: 1.0,
                        },
                        Phase {
                            name: "userspace".into(),
                            secs: marker - 1.0,
                        },
                    ],
                    total: marker,
                },
                blame: blame
                    .iter()
                    .map(|(u, s)| Blame {
                        unit: u.to_string(),
                        secs: *s,
                    })
                    .collect(),
                memory: Memory {
                    total_mib: 3950,
                    used_mib: used,
                },
            }),
            ..Sample::default()
        }
    }

    #[test]
    fn table_columns_align() {
        let t = render_table(
            &["what", "n"],
            &[
                vec!["a".into(), "10".into()],
                vec!["longer".into(), "1".into()],
            ],
        );
        assert_eq!(t, "what     n\na       10\nlonger   1\n");
    }

    #[test]
    fn report_has_medians_ratios_blame_and_failures() {
        let run = BenchRun {
            started_unix: 0,
            wall_s: 100.0,
            host_cpus: 2,
            loadavg_before: Some([1.0, 2.0, 3.0]),
            loadavg_after: None,
            runs: 3,
            secondary_runs: 1,
            settle_s: 10,
            vcpus: None,
            memory_mib: None,
            configs: vec![
                config("harness-direct", Side::Harness, true),
                config("plain-direct", Side::Plain, false),
            ],
            skipped: vec!["harness-stock: not built".into()],
            samples: vec![
                sample(
                    "harness-direct",
                    1,
                    26.0,
                    240,
                    &[("a.service", 3.0), ("b.device", 9.0)],
                ),
                sample("harness-direct", 1, 24.0, 250, &[("a.service", 5.0)]),
                sample("harness-direct", 1, 30.0, 230, &[("a.service", 4.0)]),
                sample("harness-direct", 2, 20.0, 200, &[]),
                sample("plain-direct", 1, 23.0, 0, &[]),
                sample("plain-direct", 1, 25.0, 0, &[]),
                Sample {
                    config: "plain-direct".into(),
                    round: 3,
                    boot: 1,
                    error: Some("plain boot: no marker".into()),
                    ..Sample::default()
                },
            ],
        };
        let r = render(&run);
        assert!(r.contains("load 1.00 2.00 3.00 → ?"), "{r}");
        assert!(
            r.lines().any(|l| l.starts_with("harness direct ")
                && l.contains("3/3")
                && l.contains("26.0 [24.0–30.0]")
                && l.trim_end().ends_with("240")),
            "{r}"
        );
        assert!(r.contains("harness direct, 2nd boot"), "{r}");
        assert!(
            r.lines()
                .any(|l| l.starts_with("plain direct") && l.contains("2/3")),
            "{r}"
        );
        assert!(
            r.contains("harness / plain QEMU (direct, linux-avf, cont→marker): 26.00 s / 24.00 s = 1.083 (goal ≤ 1.05)"),
            "{r}"
        );
        assert!(
            r.contains("second / first boot (direct): 20.00 s / 26.00 s = 0.769"),
            "{r}"
        );
        assert!(!r.contains("efi / direct"), "{r}");
        assert!(
            r.contains("idle memory (direct, linux-avf, `free -m` used): 240 MiB"),
            "{r}"
        );
        let blame = r.split("blame, top 10 (harness direct;").nth(1).unwrap();
        let b = blame.find("b.device").unwrap();
        let a = blame.find("a.service").unwrap();
        assert!(b < a, "longest first: {blame}");
        assert!(blame.contains("4.00 s  a.service (3)"), "{blame}");
        assert!(r.contains("skipped: harness-stock: not built"), "{r}");
        assert!(
            r.contains("round 3 plain-direct boot 1: plain boot: no marker"),
            "{r}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bench/x.json");
        write_json(&run, &path).unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(back["samples"].as_array().unwrap().len(), 7);
        assert_eq!(back["samples"][0]["guest"]["memory"]["used_mib"], 240);
    }
}
