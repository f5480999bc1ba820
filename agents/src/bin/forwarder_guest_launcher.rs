//! forwarder_guest_launcher: reports listening ports and starts forwarders.
use std::path::PathBuf;

use clap::Parser;

use avf_agents::args::LauncherArgs;
use avf_agents::connect::{connect_channel, WaitPolicy};
use avf_agents::launcher::{self, POLL_INTERVAL};
use avf_agents::listeners::Watcher;

/// forwarder_guest is installed next to the launcher; fall back to $PATH.
fn forwarder_program(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| {
            let p = std::env::current_exe()
                .ok()?
                .with_file_name("forwarder_guest");
            p.exists().then_some(p)
        })
        .unwrap_or_else(|| PathBuf::from("forwarder_guest"))
}

fn main() -> std::process::ExitCode {
    let args = LauncherArgs::parse();
    avf_agents::run_main("forwarder_guest_launcher", async move {
        let cid = avf_agents::vsock_cid::local_cid()?;
        let program = forwarder_program(args.forwarder);
        let channel = connect_channel(
            &args.grpc.port_source(),
            &args.grpc.host_source(),
            WaitPolicy::default(),
        )
        .await?;
        eprintln!("connected; local vsock CID {cid}");
        launcher::run(
            channel,
            cid,
            Watcher::system(),
            POLL_INTERVAL,
            args.grpc.cmdline.clone(),
            |local, remote| launcher::spawn_forwarder(&program, &local, &remote),
        )
        .await
    })
}
