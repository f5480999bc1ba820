//! debian_service: the guest side of the Terminal app's AIDL mode. Serves
//! IDebianService on vsock port 4000, then registers the guest agent with
//! the host in every mode (in Android 17's gRPC mode for virtmgr's graceful
//! stop); where no host service answers, the registration is retried with
//! backoff while the service keeps serving (one payload for every release).
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use avf_agents::args::DebianServiceArgs;
use avf_agents::balloon::Paths;
use avf_agents::clipboard::{Clipboard, WaylandSession};
use avf_agents::debian_service::{self, BalloonConfig, DebianService, VSOCK_PORT};
use avf_agents::guest_agent::{self, Backoff, PowerOff};
use avf_agents::launcher::{ReportedPorts, POLL_INTERVAL};
use avf_agents::listeners::Watcher;
use avf_agents::{active_ports, Permanent};

/// `poweroff` on its own thread: shutdownAsync is oneway and returns at once.
fn system_poweroff() -> PowerOff {
    Arc::new(|| {
        std::thread::spawn(|| match std::process::Command::new("poweroff").status() {
            Ok(s) if s.success() => eprintln!("poweroff started"),
            Ok(s) => eprintln!("poweroff failed: {s}"),
            Err(e) => eprintln!("running poweroff: {e}"),
        });
    })
}

fn main() -> ExitCode {
    let args = DebianServiceArgs::parse();
    avf_agents::run_main("debian_service", async move {
        // Without a vsock transport neither side of the AIDL mode can work.
        let cid = avf_agents::vsock_cid::local_cid().map_err(Permanent)?;
        let (listeners_tx, listeners_rx) = std::sync::mpsc::channel();
        let reported = ReportedPorts::default();
        let service = DebianService::new(
            listeners_tx,
            reported.clone(),
            tokio::runtime::Handle::current(),
            Arc::new(|remote| remote),
            BalloonConfig {
                paths: Paths::default(),
                state_dir: args.state_dir.clone(),
            },
            Clipboard::new(WaylandSession::default()),
        );
        // Listening before registering: the app connects to 4000 as soon
        // as the host tells it the agent registered.
        let server = rsbinder::rpc::RpcServer::setup_vsock_server(libc::VMADDR_CID_ANY, VSOCK_PORT)
            .map_err(|e| anyhow::anyhow!("listening on vsock port {VSOCK_PORT}: {e:?}"))?;
        debian_service::configure(&server, service.into_binder())
            .map_err(|e| anyhow::anyhow!("configuring the IDebianService server: {e:?}"))?;
        let accept = server.run_background();
        eprintln!("IDebianService on vsock port {VSOCK_PORT}; local CID {cid}");

        let reporter = std::thread::Builder::new()
            .name("port-reports".into())
            .spawn(move || {
                active_ports::report_loop(Watcher::system(), listeners_rx, POLL_INTERVAL, reported)
            })
            .context("starting the port reporter")?;
        let stop = Arc::new(AtomicBool::new(false));
        let registrar = {
            let stop = stop.clone();
            let cmdline = args.cmdline.clone();
            std::thread::Builder::new()
                .name("registration".into())
                .spawn(move || {
                    eprintln!(
                        "registering the guest agent ({})",
                        guest_agent::mode_for_registration(&cmdline)
                    );
                    guest_agent::keep_registered(
                        || guest_agent::vsock_config(cid),
                        system_poweroff(),
                        Backoff::default(),
                        || stop.load(Ordering::SeqCst),
                    )
                })
                .context("starting the registration")?
        };

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        }
        eprintln!("stopping");
        stop.store(true, Ordering::SeqCst);
        server.stop_accepting();
        let _ = accept.join();
        // Ends the app's sessions; the service (and the reporter's channel) goes with them.
        server.terminate();
        drop(server);
        let _ = registrar.join();
        drop(reporter); // detached: it ends when its channel closes
        Ok(())
    })
}
