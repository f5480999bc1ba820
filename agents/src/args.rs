//! Command lines of the four agents, with the upstream flag names.
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser};

/// Where the app's port file lives on the guest (contract section 4).
pub const DEFAULT_PORT_FILE: &str = "/mnt/internal/debian_service_port";

/// How an agent finds the DebianService: `--grpc-port-file` (Android 16), or
/// the older `--grpc-port N` and `--host-addr A`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct GrpcArgs {
    /// File holding the DebianService port as ASCII digits.
    #[arg(long, value_name = "FILE", conflicts_with = "grpc_port")]
    pub grpc_port_file: Option<PathBuf>,
    /// Older form: the DebianService port itself.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub grpc_port: Option<u16>,
    /// Older form: the host's address (default: the default IPv4 gateway).
    #[arg(long, value_name = "ADDR")]
    pub host_addr: Option<IpAddr>,
    /// The kernel command line, read for `debian_server_port=` (tests).
    #[arg(
        long,
        value_name = "FILE",
        default_value = crate::wire_form::PROC_CMDLINE,
        hide = true
    )]
    pub cmdline: PathBuf,
}

/// Where the port comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSource {
    Fixed(u16),
    /// `debian_server_port=<port>` on the kernel command line, where the
    /// app puts it (Android 17's gRPC mode: no internal share, so no
    /// file); else the file (Android 15 QPR2 and 16).
    CmdlineOrFile {
        cmdline: PathBuf,
        file: PathBuf,
    },
}

/// Where the host address comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSource {
    Fixed(IpAddr),
    /// The default IPv4 gateway, read from this route table.
    Gateway(PathBuf),
}

impl GrpcArgs {
    pub fn port_source(&self) -> PortSource {
        match (&self.grpc_port_file, self.grpc_port) {
            (_, Some(p)) => PortSource::Fixed(p),
            (f, None) => PortSource::CmdlineOrFile {
                cmdline: self.cmdline.clone(),
                file: f
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PORT_FILE)),
            },
        }
    }

    pub fn host_source(&self) -> HostSource {
        match self.host_addr {
            Some(a) => HostSource::Fixed(a),
            None => HostSource::Gateway(PathBuf::from(crate::gateway::PROC_NET_ROUTE)),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "shutdown_runner",
    about = "Powers the VM off when the Terminal app asks"
)]
pub struct ShutdownRunnerArgs {
    #[command(flatten)]
    pub grpc: GrpcArgs,
}

#[derive(Parser, Debug)]
#[command(
    name = "storage_balloon_agent",
    about = "Holds back root filesystem space the Terminal app asks for"
)]
pub struct StorageBalloonArgs {
    #[command(flatten)]
    pub grpc: GrpcArgs,
    /// The filesystem to balloon (tests).
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    pub root: PathBuf,
    /// mountinfo to find its device in (tests).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/proc/self/mountinfo",
        hide = true
    )]
    pub mountinfo: PathBuf,
    /// sysfs mount point (tests).
    #[arg(long, value_name = "DIR", default_value = "/sys", hide = true)]
    pub sysfs: PathBuf,
    /// Where ext4's own reservation is recorded for this boot (tests).
    #[arg(long, value_name = "DIR", default_value = crate::balloon::DEFAULT_STATE_DIR, hide = true)]
    pub state_dir: PathBuf,
}

#[derive(Parser, Debug)]
#[command(
    name = "forwarder_guest_launcher",
    about = "Reports listening TCP ports to the Terminal app and starts a forwarder per forwarded connection"
)]
pub struct LauncherArgs {
    #[command(flatten)]
    pub grpc: GrpcArgs,
    /// The forwarder_guest program (default: next to this program, else $PATH).
    #[arg(long, value_name = "PATH", hide = true)]
    pub forwarder: Option<PathBuf>,
}

#[derive(Parser, Debug)]
#[command(
    name = "forwarder_guest",
    about = "Copies one connection between a local TCP port and the host's vsock port"
)]
pub struct ForwarderArgs {
    /// Local end, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub local: crate::forward::Endpoint,
    /// Remote end, e.g. vsock:2:5000.
    #[arg(long, value_name = "ADDR")]
    pub remote: crate::forward::Endpoint,
}

#[derive(Parser, Debug)]
#[command(
    name = "debian_service",
    about = "Serves IDebianService on vsock port 4000 and registers the guest agent with the host (the Terminal app's AIDL mode)"
)]
pub struct DebianServiceArgs {
    /// Where ext4's own reservation is recorded for this boot (tests).
    #[arg(long, value_name = "DIR", default_value = DEBIAN_SERVICE_STATE_DIR, hide = true)]
    pub state_dir: PathBuf,
}

/// debian_service's RuntimeDirectory.
pub const DEBIAN_SERVICE_STATE_DIR: &str = "/run/debian_service";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Endpoint;

    #[test]
    fn port_file_form() {
        let a = ShutdownRunnerArgs::try_parse_from([
            "shutdown_runner",
            "--grpc-port-file",
            "/mnt/internal/debian_service_port",
        ])
        .unwrap();
        assert_eq!(
            a.grpc.port_source(),
            PortSource::CmdlineOrFile {
                cmdline: "/proc/cmdline".into(),
                file: DEFAULT_PORT_FILE.into()
            }
        );
        assert_eq!(
            a.grpc.host_source(),
            HostSource::Gateway("/proc/self/net/route".into())
        );
    }

    #[test]
    fn older_form() {
        let a = StorageBalloonArgs::try_parse_from([
            "storage_balloon_agent",
            "--grpc-port",
            "12000",
            "--host-addr",
            "192.168.0.1",
        ])
        .unwrap();
        assert_eq!(a.grpc.port_source(), PortSource::Fixed(12000));
        assert_eq!(
            a.grpc.host_source(),
            HostSource::Fixed("192.168.0.1".parse().unwrap())
        );
    }

    #[test]
    fn no_flags_default_to_the_contract_path() {
        let a = LauncherArgs::try_parse_from(["forwarder_guest_launcher"]).unwrap();
        assert_eq!(
            a.grpc.port_source(),
            PortSource::CmdlineOrFile {
                cmdline: "/proc/cmdline".into(),
                file: DEFAULT_PORT_FILE.into()
            }
        );
        assert_eq!(a.grpc.cmdline, PathBuf::from("/proc/cmdline"));
    }

    #[test]
    fn both_port_forms_conflict() {
        let e = LauncherArgs::try_parse_from([
            "forwarder_guest_launcher",
            "--grpc-port-file",
            "/x",
            "--grpc-port",
            "1",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_values_name_the_flag() {
        for argv in [
            &["shutdown_runner", "--grpc-port", "0"][..],
            &["shutdown_runner", "--grpc-port", "port"],
            &["shutdown_runner", "--host-addr", "not-an-ip"],
        ] {
            let e = ShutdownRunnerArgs::try_parse_from(argv).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(argv[1]), "{msg}");
        }
    }

    #[test]
    fn forwarder_flags() {
        let a = ForwarderArgs::try_parse_from([
            "forwarder_guest",
            "--local",
            "127.0.0.1:8080",
            "--remote",
            "vsock:2:5000",
        ])
        .unwrap();
        assert_eq!(a.local, Endpoint::Tcp("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(a.remote, Endpoint::Vsock { cid: 2, port: 5000 });
        let e = ForwarderArgs::try_parse_from([
            "forwarder_guest",
            "--local",
            "127.0.0.1:8080",
            "--remote",
            "vsock:two:5000",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--remote"), "{e}");
    }
}
