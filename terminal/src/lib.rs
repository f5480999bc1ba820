//! The Android Terminal app's host side, for one VM run (contract §5).
//!
//! Knows nothing of QEMU: the caller hands in the internal share's directory,
//! the vsock Unix socket of the vsock backend and the guest's CID, the
//! addresses the guest and the host see each other at, and a
//! [`balloon::MemoryBalloon`] implementation.

pub mod aidl;
pub mod balloon;
pub mod cert;
pub mod events;
pub mod forwarding;
mod fsutil;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod host;
pub mod image_archive;
pub mod installed_image;
pub mod mdns;
pub mod netns;
pub mod profile;
pub mod reach;
pub mod service;
pub mod ttyd;
pub mod wire;

/// Generated DebianService messages, server and client.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("com.android.virtualization.terminal.proto");
    /// Kept undecoded (see [`crate::wire`]); build one with `From`.
    pub type ReportVmActivePortsRequest = crate::wire::RawPortReport;
}

pub use balloon::{AppState, MemoryBalloon};
pub use cert::ClientCert;
pub use events::{ActivePort, Event, EventLog};
pub use forwarding::HostPorts;
pub use host::{
    HostError, ShutdownOutcome, TerminalHost, TerminalHostConfig, TtydRoute, VsockEndpoint,
};
pub use mdns::MdnsTransport;
pub use netns::GuestNet;
pub use profile::HostProfile;
pub use ttyd::{CommandOutput, Handshake, TtydClient};
