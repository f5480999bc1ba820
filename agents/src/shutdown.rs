//! shutdown_runner: on the first ShutdownRequestItem, power off.
use std::future::Future;

use anyhow::Context;
use tonic::transport::Channel;

use crate::proto::{DebianServiceClient, ShutdownQueueOpeningRequest};

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The app asked; the power-off command ran.
    PoweredOff,
    /// The stream ended without a request: nothing to do.
    StreamEnded,
}

/// Opens the shutdown queue and waits. A broken stream is an error (the
/// caller exits non-zero and systemd restarts it).
pub async fn run<F, Fut>(
    client: &mut DebianServiceClient<Channel>,
    poweroff: F,
) -> anyhow::Result<Outcome>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut stream = client
        .open_shutdown_request_queue(ShutdownQueueOpeningRequest {})
        .await
        .context("opening the shutdown request queue")?
        .into_inner();
    match stream
        .message()
        .await
        .context("reading the shutdown request queue")?
    {
        Some(_) => {
            eprintln!("shutdown requested by the Terminal app");
            poweroff().await?;
            Ok(Outcome::PoweredOff)
        }
        None => Ok(Outcome::StreamEnded),
    }
}

/// The real power-off: `poweroff` (systemd's, i.e. `systemctl poweroff`).
pub async fn system_poweroff() -> anyhow::Result<()> {
    let status = tokio::process::Command::new("poweroff")
        .status()
        .await
        .context("running poweroff")?;
    anyhow::ensure!(status.success(), "poweroff failed: {status}");
    Ok(())
}
