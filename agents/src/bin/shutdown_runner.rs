//! shutdown_runner: powers the VM off when the Terminal app asks.
use clap::Parser;

use avf_agents::args::ShutdownRunnerArgs;
use avf_agents::connect::{connect, WaitPolicy};
use avf_agents::shutdown::{self, Outcome};

fn main() -> std::process::ExitCode {
    let args = ShutdownRunnerArgs::parse();
    avf_agents::run_main("shutdown_runner", async move {
        let mut client = connect(
            &args.grpc.port_source(),
            &args.grpc.host_source(),
            WaitPolicy::default(),
        )
        .await?;
        match shutdown::run(&mut client, shutdown::system_poweroff).await? {
            Outcome::PoweredOff => eprintln!("poweroff started"),
            Outcome::StreamEnded => eprintln!("shutdown queue ended without a request"),
        }
        Ok(())
    })
}
