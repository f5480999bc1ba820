//! Every timeout the harness uses, named, in one place. Sized for TCG on
//! 2 cores; `AVF_TIMEOUT_SCALE` (a float, default 1) scales them all, e.g.
//! for a slower runner.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A sidecar (virtiofsd, vhost-device-vsock) creating its socket.
    SidecarSocket,
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
}

impl Timeout {
    fn base(self) -> Duration {
        let s = match self {
            Timeout::SidecarSocket => 10,
            Timeout::QemuSockets => 10,
            Timeout::BootMarker => 180,
            Timeout::GuestAgent => 60,
            Timeout::GuestExec => 60,
            Timeout::QmpCommand => 15,
            Timeout::BalloonSettle => 60,
            Timeout::Powerdown => 60,
            Timeout::QemuExit => 5,
        };
        Duration::from_secs(s)
    }

    /// The effective duration, scaled by `AVF_TIMEOUT_SCALE`.
    pub fn get(self) -> Duration {
        self.base().mul_f64(scale())
    }
}

pub fn scale() -> f64 {
    std::env::var("AVF_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0 && v.is_finite())
        .unwrap_or(1.0)
}
