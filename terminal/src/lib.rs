//! The Android Terminal app's host side, for one VM run (contract §5).
//!
//! Knows nothing of QEMU: the caller hands in the internal share's directory,
//! the vsock Unix socket of the vsock backend and the guest's CID, the
//! addresses the guest and the host see each other at, and a
//! [`balloon::MemoryBalloon`] implementation.

pub mod balloon;
pub mod cert;
pub mod events;
pub mod forwarding;
pub mod mdns;
mod fsutil;
pub mod service;

/// Generated DebianService messages, server and client.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("com.android.virtualization.terminal.proto");
}

pub use cert::ClientCert;
pub use events::{ActivePort, Event, EventLog};
