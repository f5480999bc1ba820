//! The harness's one timeout vocabulary. Every wait takes a [`Scaled`]
//! duration: sized for TCG on 2 cores and stretched by `AVF_TIMEOUT_SCALE`
//! (a float, default 1) for a slower runner. Fixed waits are named in
//! [`Timeout`]; scenario fields (`within_secs`, `within_ms`, `max_secs`)
//! deserialise into [`Scaled`] and drive the wait they name. Polling goes
//! through [`wait_until`].

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

/// A duration as written (in a scenario, a profile, or [`Timeout`]); what a
/// wait uses is [`Scaled::get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scaled(Duration);

impl Scaled {
    pub const fn secs(s: u64) -> Scaled {
        Scaled(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Scaled {
        Scaled(Duration::from_millis(ms))
    }
    pub const fn from_duration(d: Duration) -> Scaled {
        Scaled(d)
    }
    /// The duration as written, unscaled (for messages and policy maths).
    pub fn base(self) -> Duration {
        self.0
    }
    /// The effective duration: the base times `AVF_TIMEOUT_SCALE`.
    pub fn get(self) -> Duration {
        self.0.mul_f64(scale())
    }
}

/// Serde: a whole number of seconds (`within_secs = 30`).
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Scaled, D::Error> {
    u64::deserialize(d).map(Scaled::secs)
}

/// Serde: a whole number of milliseconds (`within_ms = 2000`).
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Scaled, D::Error> {
    u64::deserialize(d).map(Scaled::millis)
}

/// Serde: an optional number of seconds.
pub fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scaled>, D::Error> {
    Option::<u64>::deserialize(d).map(|o| o.map(Scaled::secs))
}

/// The harness's fixed waits, each with its one base value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A sidecar (virtiofsd, vhost-device-vsock, dnsmasq) becoming ready.
    SidecarReady,
    /// QEMU creating its QMP/serial sockets after spawn.
    QemuSockets,
    /// Power-on to `AVF-BOOT-OK` on ttyS0.
    BootMarker,
    /// qemu-guest-agent answering `guest-sync` after the boot marker.
    GuestAgent,
    /// One `guest-exec` command to finish.
    GuestExec,
    /// One QMP command's reply.
    QmpCommand,
    /// The balloon reaching its target and the guest's MemTotal following.
    BalloonSettle,
    /// `system_powerdown` to QEMU's exit.
    Powerdown,
    /// `quit` (or SIGTERM) to QEMU's exit before SIGKILL.
    QemuExit,
    /// The guest's diagnostics dump after a failed step.
    Diagnostics,
    /// The app's terminal tab loading (ttyd answering, its shell ready)
    /// in an interactive boot.
    TerminalLoad,
}

impl Timeout {
    pub fn scaled(self) -> Scaled {
        Scaled::secs(match self {
            Timeout::SidecarReady => 10,
            Timeout::QemuSockets => 10,
            Timeout::BootMarker => 180,
            Timeout::GuestAgent => 60,
            Timeout::GuestExec => 60,
            Timeout::QmpCommand => 15,
            Timeout::BalloonSettle => 60,
            Timeout::Powerdown => 60,
            Timeout::QemuExit => 5,
            Timeout::Diagnostics => 60,
            Timeout::TerminalLoad => 60,
        })
    }

    /// The effective duration, scaled by `AVF_TIMEOUT_SCALE`.
    pub fn get(self) -> Duration {
        self.scaled().get()
    }
}

pub fn scale() -> f64 {
    std::env::var("AVF_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0 && v.is_finite())
        .unwrap_or(1.0)
}

/// One look at a condition being waited for.
pub enum Check<T> {
    Done(T),
    /// Not yet; the text says what was seen (it ends the timeout error).
    NotYet(String),
}

/// Polls `probe` every `every` until it is [`Check::Done`], fails at once
/// on its error, and fails naming `what`, the limit and the last state once
/// `limit` has passed. `limit` is effective already: a [`Scaled::get`] or
/// [`Timeout::get`], or what is left of one. `what` reads "… within <limit>".
pub async fn wait_until<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Check<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match probe().await? {
            Check::Done(v) => return Ok(v),
            Check::NotYet(state) if Instant::now() >= deadline => {
                anyhow::bail!("{what} within {limit:?}: {state}")
            }
            Check::NotYet(_) => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_the_value_or_names_the_last_state() {
        let mut n = 0;
        let v = wait_until(
            "counting",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                let c = n;
                async move {
                    Ok(if c >= 3 {
                        Check::Done(c)
                    } else {
                        Check::NotYet(format!("{c}"))
                    })
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = wait_until::<(), _, _>(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { Ok(Check::NotYet("still nothing".into())) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("never within") && e.ends_with("still nothing"),
            "{e}"
        );
        let e = wait_until::<(), _, _>(
            "failing",
            Duration::from_secs(5),
            Duration::from_millis(5),
            || async { anyhow::bail!("broken probe") },
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(e, "broken probe");
    }

    #[test]
    fn scenario_fields_deserialise_unscaled() {
        #[derive(Deserialize)]
        struct S {
            #[serde(deserialize_with = "secs")]
            a: Scaled,
            #[serde(deserialize_with = "millis")]
            b: Scaled,
        }
        let s: S = toml::from_str("a = 3\nb = 250\n").unwrap();
        assert_eq!(s.a.base(), Duration::from_secs(3));
        assert_eq!(s.b.base(), Duration::from_millis(250));
    }
}
