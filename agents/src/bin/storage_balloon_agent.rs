//! storage_balloon_agent: holds back root filesystem space as the app asks.
use clap::Parser;

use avf_agents::args::StorageBalloonArgs;
use avf_agents::balloon::{self, Balloon, Paths, StatVfs};
use avf_agents::connect::{connect, WaitPolicy};
use avf_agents::Permanent;

fn main() -> std::process::ExitCode {
    let args = StorageBalloonArgs::parse();
    avf_agents::run_main("storage_balloon_agent", async move {
        // Find the device before talking to the app: a guest where this
        // cannot work (root not on ext4) says so once instead of restarting
        // forever.
        let paths = Paths {
            root: args.root.clone(),
            mountinfo: args.mountinfo.clone(),
            sysfs: args.sysfs.clone(),
        };
        let reserved_clusters = balloon::reserved_clusters_path(&paths).map_err(Permanent)?;
        let floor = balloon::kernel_reservation(&reserved_clusters, &args.state_dir)?;
        let balloon = Balloon {
            reserved_clusters,
            stat: StatVfs(paths.root.clone()),
            floor,
        };
        eprintln!(
            "ballooning through {}, never below ext4's own {floor} clusters",
            balloon.reserved_clusters.display()
        );
        let mut client = connect(
            &args.grpc.port_source(),
            &args.grpc.host_source(),
            WaitPolicy::default(),
        )
        .await?;
        balloon::run(&mut client, &balloon).await
    })
}
