//! The TCG factor: how many times longer the guest takes than this host for
//! the same fixed CPU workload. The app's own deadlines (30 s to find ttyd,
//! 3 s of shutdown grace) are for a phone running its VM under KVM; here
//! they become the app's value × this factor, measured on the running VM,
//! never a guessed scale.
//!
//! Method: [`WORKLOAD`] (MD5 of 64 MiB of zeros: one core, integer work,
//! the same coreutils program on both sides of a Debian guest) runs
//! [`RUNS`] times natively on the host and [`RUNS`] times in the guest
//! (timed by the guest's clock, around the command only); the factor is
//! the ratio of the medians. Both sides are measured back to back, so a
//! host that is busy now slows both.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::vm::Vm;

/// The fixed workload, as `sh -c` runs it on both sides.
pub const WORKLOAD: &str = "head -c 67108864 /dev/zero | md5sum >/dev/null";
/// Runs per side; the median counts.
pub const RUNS: usize = 3;

/// One measurement, kept in the scenario's notes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcgFactor {
    /// Median native run.
    pub host: Duration,
    /// Median guest run.
    pub guest: Duration,
}

impl TcgFactor {
    /// Guest time over host time (at least 1: the guest is never faster
    /// than the host it is emulated on; a lower reading is noise).
    pub fn factor(&self) -> f64 {
        (self.guest.as_secs_f64() / self.host.as_secs_f64().max(1e-6)).max(1.0)
    }

    /// An app's deadline for a phone, as long as it is on this VM.
    pub fn scale(&self, app: Duration) -> Duration {
        app.mul_f64(self.factor())
    }
}

impl std::fmt::Display for TcgFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TCG factor {:.1} (`{WORKLOAD}`, median of {RUNS}: guest {:.3} s, host {:.3} s)",
            self.factor(),
            self.guest.as_secs_f64(),
            self.host.as_secs_f64()
        )
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Measures the factor on `vm` (booted, guest agent up).
pub async fn measure(vm: &Vm) -> Result<TcgFactor> {
    let mut host = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let st = Command::new("sh")
            .args(["-c", WORKLOAD])
            .status()
            .context("running the TCG-factor workload on the host")?;
        if !st.success() {
            bail!("the TCG-factor workload failed on the host: {st}");
        }
        host.push(t.elapsed());
    }
    // The guest's clock around the command only (not guest-exec's polling).
    let script = format!(
        "for i in $(seq {RUNS}); do a=$(date +%s%N); {WORKLOAD} || exit 1; b=$(date +%s%N); echo $((b - a)); done"
    );
    let out = vm.qga().await?.sh(&script).await?;
    if out.exit_code != Some(0) {
        bail!(
            "the TCG-factor workload failed in the guest ({:?}): {}",
            out.exit_code,
            out.stderr_str()
        );
    }
    let guest = parse_nanos(&out.stdout_str())?;
    Ok(TcgFactor {
        host: median(host),
        guest: median(guest),
    })
}

fn parse_nanos(out: &str) -> Result<Vec<Duration>> {
    let v: Vec<Duration> = out
        .lines()
        .map(|l| l.trim().parse::<u64>().map(Duration::from_nanos))
        .collect::<Result<_, _>>()
        .with_context(|| format!("the guest's timings {out:?}: expected nanoseconds a line"))?;
    if v.len() != RUNS {
        bail!("the guest's timings {out:?}: expected {RUNS} lines");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_is_the_ratio_of_medians_and_scales_app_deadlines() {
        let f = TcgFactor {
            host: Duration::from_millis(100),
            guest: Duration::from_millis(1250),
        };
        assert!((f.factor() - 12.5).abs() < 1e-9);
        assert_eq!(f.scale(Duration::from_secs(30)), Duration::from_secs(375));
        let noise = TcgFactor {
            host: Duration::from_millis(100),
            guest: Duration::from_millis(90),
        };
        assert_eq!(noise.factor(), 1.0);
        assert_eq!(
            median(vec![
                Duration::from_secs(3),
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]),
            Duration::from_secs(2)
        );
        assert_eq!(
            parse_nanos("1000\n2000\n3000\n").unwrap()[2],
            Duration::from_micros(3)
        );
        assert!(parse_nanos("1\n2\n").is_err());
        assert!(parse_nanos("x\n2\n3\n").is_err());
    }
}
