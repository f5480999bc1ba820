//! storage_balloon_agent: holds back root filesystem space as the app asks.
use clap::Parser;

use avf_agents::args::StorageBalloonArgs;
use avf_agents::balloon::{self, Balloon, Paths, StatVfs};
use avf_agents::connect::{connect, WaitPolicy};

fn main() -> std::process::ExitCode {
    let args = StorageBalloonArgs::parse();
    avf_agents::run_main("storage_balloon_agent", async move {
        // Find the device before talking to the app: a guest where this
        // cannot work should say so at once.
        let paths = Paths::default();
        let balloon = Balloon {
            reserved_clusters: balloon::reserved_clusters_path(&paths)?,
            stat: StatVfs(paths.root.clone()),
        };
        eprintln!("ballooning through {}", balloon.reserved_clusters.display());
        let mut client = connect(
            &args.grpc.port_source(),
            &args.grpc.host_source(),
            WaitPolicy::default(),
        )
        .await?;
        balloon::run(&mut client, &balloon).await
    })
}
