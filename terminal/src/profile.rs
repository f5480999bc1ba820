//! [`HostProfile`]: what the phone does for one Android release (and mode),
//! as data. Everything release-specific that the host side or the harness's
//! plan does reads it from here; nothing else knows a release. Each field
//! names the app class it follows.
//!
//! Filled today: `android16`, from the behaviour the suite asserts. Named
//! but not filled yet: `android15-qpr2` (issue 10) and the Android 17 modes
//! (issue 13); asking for them is a clear error, never a silent fallback.

use std::time::Duration;

/// How the app reaches the guest's services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The guest's agents call a gRPC DebianService on the host whose port
    /// they read from a file in the internal share; the app finds ttyd over
    /// mDNS and opens it with TLS and a client certificate whose public
    /// half it leaves in the internal share (`MainActivity`,
    /// `DebianServiceImpl`, `CertificateUtils`).
    GrpcPortFile {
        /// The port file's name in the internal share.
        port_file: &'static str,
        /// The ttyd instance the app browses for (`_http._tcp`).
        ttyd_instance: &'static str,
        /// ttyd's TCP port in the guest.
        ttyd_port: u16,
    },
}

/// The virtio-fs shares the app gives the VM (`ConfigJson.SharedPathJson`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    /// The app's files dir as tag `internal` (guest root).
    pub internal: bool,
    /// The user's storage as tag `android` (guest droid).
    pub android: bool,
}

/// The DebianService calls the app serves (`DebianServiceImpl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcSet {
    /// `ReportVmIpAddr` (Android 15 QPR2's way to find the VM).
    pub report_vm_ip_addr: bool,
}

/// The client certificate the app makes for ttyd (`CertificateUtils`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertificateShape {
    pub common_name: &'static str,
}

/// What the image's agents and units expect of the host (the guest side of
/// the contract; the agents read these paths and flags, see agents/).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentContract {
    /// The flag the agents' units pass for the DebianService port.
    pub port_flag: &'static str,
    /// Where the guest reads the port.
    pub guest_port_file: &'static str,
}

/// One release's app and crosvm, as the harness plays them.
#[derive(Clone, Debug, PartialEq)]
pub struct HostProfile {
    /// As scenarios and `--profile` name it.
    pub name: &'static str,
    /// Human name of the release.
    pub release: &'static str,
    pub transport: Transport,
    pub shares: Shares,
    pub rpcs: RpcSet,
    pub certificate: CertificateShape,
    pub agents: AgentContract,
    /// How long the app waits, from the VM's start, to find ttyd before it
    /// shows its error screen (`MainActivity`'s boot timeout).
    pub discovery_deadline: Duration,
    /// Kernel parameters the host appends to the payload's `params`
    /// (`VmLauncherService`); none in this release.
    pub kernel_params: &'static [&'static str],
}

/// The names [`HostProfile::by_name`] knows, filled or not.
pub const PROFILE_NAMES: &[&str] = &["android16", "android15-qpr2", "android17"];

/// The profile asked for does not exist, or is not filled in yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("host profile {0:?} is not filled in yet (known: android16)")]
    NotYet(String),
    #[error("unknown host profile {0:?} (known: {known})", known = PROFILE_NAMES.join(", "))]
    Unknown(String),
}

impl HostProfile {
    /// Android 16's Terminal app.
    pub fn android16() -> HostProfile {
        HostProfile {
            name: "android16",
            release: "Android 16",
            transport: Transport::GrpcPortFile {
                port_file: crate::service::PORT_FILE,
                ttyd_instance: crate::mdns::TTYD_INSTANCE,
                ttyd_port: crate::ttyd::TTYD_PORT,
            },
            shares: Shares {
                internal: true,
                android: true,
            },
            // Unimplemented in 16's DebianServiceImpl; our agents never call it.
            rpcs: RpcSet {
                report_vm_ip_addr: false,
            },
            certificate: CertificateShape {
                common_name: "avf-terminal",
            },
            agents: AgentContract {
                port_flag: "--grpc-port-file",
                guest_port_file: "/mnt/internal/debian_service_port",
            },
            // Our allowance until issue 10 measures the TCG factor against
            // the app's own deadline.
            discovery_deadline: Duration::from_secs(60),
            kernel_params: &[],
        }
    }

    /// The profile named `name` (as in a scenario or on the command line).
    pub fn by_name(name: &str) -> Result<HostProfile, ProfileError> {
        match name {
            "android16" => Ok(HostProfile::android16()),
            n if PROFILE_NAMES.contains(&n) => Err(ProfileError::NotYet(n.to_string())),
            n => Err(ProfileError::Unknown(n.to_string())),
        }
    }
}

impl Default for HostProfile {
    fn default() -> Self {
        HostProfile::android16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_or_say_why_not() {
        assert_eq!(HostProfile::by_name("android16").unwrap().name, "android16");
        assert_eq!(
            HostProfile::by_name("android17"),
            Err(ProfileError::NotYet("android17".into()))
        );
        let e = HostProfile::by_name("android99").unwrap_err().to_string();
        assert!(e.contains("android99") && e.contains("android16"), "{e}");
    }
}
