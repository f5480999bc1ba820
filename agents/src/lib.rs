//! The guest agents of the AVF Terminal contract (shared/docs/avf-contract.md,
//! section 4): they talk to the Terminal app's DebianService over gRPC at the
//! default IPv4 gateway, on the port the app writes to the internal share.
//!
//! One crate, four binaries (`src/bin/`); the logic lives here so the tests
//! can run it against an in-process fake of the app.

pub mod active_ports;
pub mod args;
pub mod balloon;
pub mod clipboard;
pub mod connect;
pub mod debian_service;
pub mod forward;
pub mod gateway;
pub mod guest_agent;
pub mod launcher;
pub mod listeners;
pub mod port_file;
pub mod privdrop;
pub mod proto;
pub mod rpc_accept;
pub mod shutdown;
pub mod vsock_cid;
pub mod wire_form;

/// Exit status for "this guest can never do this" (sysexits' EX_CONFIG); the
/// units list it in `RestartPreventExitStatus=` so systemd stops retrying.
pub const EXIT_PERMANENT: u8 = 78;

/// Marks an error that retrying cannot fix.
#[derive(Debug)]
pub struct Permanent(pub anyhow::Error);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Permanent {}

/// Runs an agent's async main on a single-threaded runtime (the agents are
/// I/O bound and idle most of the time; one thread keeps RSS small) and turns
/// the result into the process exit status systemd acts on.
pub fn run_main<F>(name: &str, fut: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Permanent>().is_some() => {
            eprintln!("{name}: error (not retrying): {e:#}");
            std::process::ExitCode::from(EXIT_PERMANENT)
        }
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
