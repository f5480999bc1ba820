//! Which wire form the Terminal app decodes a `ReportVmActivePorts` request
//! in (docs/terminal-app.md §12). Field 1 is `repeated int32` for the Android
//! 15 QPR2 app (the late Java era) and `repeated ActivePort{port, comm}` for
//! Android 16 and later; no single encoding is right for both, so the
//! launcher finds out once per connection, before its first report:
//!
//! 1. `debian_server_port=` on the kernel command line: only apps after
//!    Android 16 pass it, so `ActivePort`, with no probe.
//! 2. Otherwise `OpenStorageBalloonRequestQueue` with a [`PROBE_DEADLINE`],
//!    then the call is dropped (cancelled). UNIMPLEMENTED: the 15 QPR2 app
//!    has no such method, so `int32`. Anything else (the stream opened, the
//!    deadline passed, another status): `ActivePort`.
use std::fmt;
use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;

use crate::proto::{DebianServiceClient, StorageBalloonQueueOpeningRequest};

/// The kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// The kernel parameter by which apps after Android 16 pass their port.
pub const CMDLINE_PORT_PARAM: &str = crate::port_file::CMDLINE_PARAM;
/// How long the probe waits for the balloon queue to answer: Android 16's
/// handler never answers, so this is also the delay of its first report.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// The form port reports are sent in, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortReportForm {
    /// `repeated ActivePort{port, comm}` (Android 16 and later).
    ActivePort(ActivePortReason),
    /// `repeated int32`, unpacked (Android 15 QPR2).
    Int32(Int32Reason),
}

/// Why the `ActivePort` form was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivePortReason {
    /// The kernel command line has `debian_server_port=`.
    KernelCmdline,
    /// `OpenStorageBalloonRequestQueue` opened a stream.
    BalloonQueueOpened,
    /// `OpenStorageBalloonRequestQueue` did not answer within the deadline
    /// (Android 16's handler is empty), or answered DEADLINE_EXCEEDED.
    BalloonQueueDeadline,
    /// `OpenStorageBalloonRequestQueue` failed with another status.
    BalloonQueueStatus { code: Code, message: String },
}

/// Why the `int32` form was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Int32Reason {
    /// `OpenStorageBalloonRequestQueue` is UNIMPLEMENTED.
    BalloonQueueUnimplemented,
}

impl fmt::Display for PortReportForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortReportForm::ActivePort(why) => {
                write!(f, "repeated ActivePort (Android 16 and later): ")?;
                match why {
                    ActivePortReason::KernelCmdline => {
                        write!(f, "the kernel command line has {CMDLINE_PORT_PARAM}=")
                    }
                    ActivePortReason::BalloonQueueOpened => {
                        write!(f, "OpenStorageBalloonRequestQueue opened a stream")
                    }
                    ActivePortReason::BalloonQueueDeadline => write!(
                        f,
                        "OpenStorageBalloonRequestQueue gave no answer within {:?}",
                        PROBE_DEADLINE
                    ),
                    ActivePortReason::BalloonQueueStatus { code, message } => write!(
                        f,
                        "OpenStorageBalloonRequestQueue answered {code:?} ({message:?})"
                    ),
                }
            }
            PortReportForm::Int32(Int32Reason::BalloonQueueUnimplemented) => write!(
                f,
                "unpacked repeated int32 (Android 15 QPR2): \
                 OpenStorageBalloonRequestQueue is UNIMPLEMENTED"
            ),
        }
    }
}

/// Whether a kernel command line passes `debian_server_port=` (any value:
/// `0` means the AIDL agent, which is still an app after Android 16).
pub fn cmdline_has_server_port(cmdline: &str) -> bool {
    crate::port_file::cmdline_value(cmdline).is_some()
}

/// The form for a probe's outcome: `None` when the deadline passed, else
/// the call's result (`Ok` = the stream opened).
pub fn from_probe(outcome: Option<Result<(), tonic::Status>>) -> PortReportForm {
    match outcome {
        None => PortReportForm::ActivePort(ActivePortReason::BalloonQueueDeadline),
        Some(Ok(())) => PortReportForm::ActivePort(ActivePortReason::BalloonQueueOpened),
        Some(Err(s)) => match s.code() {
            Code::Unimplemented => PortReportForm::Int32(Int32Reason::BalloonQueueUnimplemented),
            Code::DeadlineExceeded => {
                PortReportForm::ActivePort(ActivePortReason::BalloonQueueDeadline)
            }
            code => PortReportForm::ActivePort(ActivePortReason::BalloonQueueStatus {
                code,
                message: s.message().to_owned(),
            }),
        },
    }
}

/// Opens the storage balloon queue, waits at most `deadline` for it to
/// open or fail, and drops it (which cancels the call).
pub async fn probe(channel: Channel, deadline: Duration) -> PortReportForm {
    let mut client = DebianServiceClient::new(channel);
    // No grpc-timeout header: a server enforcing it would race this timer
    // with its own status (tonic answers CANCELLED), blurring the reason.
    // Dropping the call at the deadline resets the stream, which is enough.
    let request = StorageBalloonQueueOpeningRequest {};
    let outcome =
        tokio::time::timeout(deadline, client.open_storage_balloon_request_queue(request))
            .await
            .ok()
            .map(|r| r.map(drop));
    from_probe(outcome)
}

/// The decision for one connection: the command line rule, else the probe.
/// An unreadable command line counts as one without the parameter.
pub async fn decide(channel: Channel, cmdline: &Path) -> PortReportForm {
    match std::fs::read(cmdline) {
        Ok(bytes) if cmdline_has_server_port(&String::from_utf8_lossy(&bytes)) => {
            PortReportForm::ActivePort(ActivePortReason::KernelCmdline)
        }
        Ok(_) => probe(channel, PROBE_DEADLINE).await,
        Err(e) => {
            eprintln!("reading {}: {e}; probing the app", cmdline.display());
            probe(channel, PROBE_DEADLINE).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_rule() {
        let after16 = "root=/dev/vda1 ds=nocloud console=ttyS0 debian_server_port=0 \
                       gfxstream_enabled hostname=debian\n";
        assert!(cmdline_has_server_port(after16));
        assert!(cmdline_has_server_port("debian_server_port=41234"));
        assert!(cmdline_has_server_port("a\tdebian_server_port="));
        for no in [
            "",
            "root=/dev/vda1 console=ttyS0\n",
            "debian_server_port",
            "debian_server_portx=1",
            "xdebian_server_port=1",
            "foo=debian_server_port=1",
        ] {
            assert!(!cmdline_has_server_port(no), "{no:?}");
        }
    }

    #[test]
    fn probe_outcomes() {
        use tonic::Status;
        assert_eq!(
            from_probe(Some(Err(Status::unimplemented("")))),
            PortReportForm::Int32(Int32Reason::BalloonQueueUnimplemented)
        );
        assert_eq!(
            from_probe(Some(Ok(()))),
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueOpened)
        );
        assert_eq!(
            from_probe(None),
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueDeadline)
        );
        assert_eq!(
            from_probe(Some(Err(Status::deadline_exceeded("")))),
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueDeadline)
        );
        for code in [Code::PermissionDenied, Code::Unavailable, Code::Internal] {
            assert!(matches!(
                from_probe(Some(Err(Status::new(code, "x")))),
                PortReportForm::ActivePort(ActivePortReason::BalloonQueueStatus { code: c, .. }) if c == code
            ));
        }
    }

    #[test]
    fn one_line_logs_name_the_reason() {
        let forms = [
            PortReportForm::Int32(Int32Reason::BalloonQueueUnimplemented),
            PortReportForm::ActivePort(ActivePortReason::KernelCmdline),
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueOpened),
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueDeadline),
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueStatus {
                code: Code::Internal,
                message: "a\nb".into(),
            }),
        ];
        for f in forms {
            let line = f.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.contains("UNIMPLEMENTED")
                    || line.contains("debian_server_port=")
                    || line.contains("opened")
                    || line.contains("no answer within 2s")
                    || line.contains("Internal"),
                "{line}"
            );
        }
    }
}
