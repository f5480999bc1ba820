//! forwarder_guest: one forwarded connection, local TCP ↔ host vsock.
use clap::Parser;

use avf_agents::args::ForwarderArgs;

fn main() -> std::process::ExitCode {
    let args = ForwarderArgs::parse();
    avf_agents::run_main("forwarder_guest", async move {
        avf_agents::forward::forward(&args.local, &args.remote).await?;
        Ok(())
    })
}
