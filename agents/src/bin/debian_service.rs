//! debian_service: the guest side of the Terminal app's AIDL mode. Serves
//! IDebianService on vsock port 4000, then registers the guest agent with
//! the host in every mode (in Android 17's gRPC mode for virtmgr's graceful
//! stop); where no host service answers, the registration is retried with
//! backoff while the service keeps serving (one payload for every release).
use std::process::ExitCode;
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
use avf_agents::{active_ports, rpc_accept, Permanent};

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
        // as the host tells it the agent registered. Our own blocking
        // accept (rpc_accept: rsbinder's loop wakes the vCPU every 5 ms);
        // rsbinder builds a server only around a listener of its own, so
        // the server gets a root-only Unix socket in our runtime directory
        // that nothing accepts on.
        let listener = vsock::VsockListener::bind_with_cid_port(libc::VMADDR_CID_ANY, VSOCK_PORT)
            .with_context(|| format!("listening on vsock port {VSOCK_PORT}"))?;
        let unused = args.state_dir.join("rpc-server-unused.sock");
        let server = rsbinder::rpc::RpcServer::setup_unix_server(&unused)
            .map_err(|e| anyhow::anyhow!("binding {}: {e:?}", unused.display()))?;
        debian_service::configure(&server, service.into_binder())
            .map_err(|e| anyhow::anyhow!("configuring the IDebianService server: {e:?}"))?;
        let (stop_accept, stop_signal) =
            rpc_accept::stop_pair().context("the accept loop's stop socket")?;
        let (accept_tx, mut accept_ended) = tokio::sync::oneshot::channel();
        let accept = {
            let server = server.clone();
            std::thread::Builder::new()
                .name("accept".into())
                .spawn(move || {
                    let _ = accept_tx.send(rpc_accept::serve(&server, &listener, &stop_signal));
                })
                .context("starting the accept loop")?
        };
        eprintln!("IDebianService on vsock port {VSOCK_PORT}; local CID {cid}");

        let reporter = std::thread::Builder::new()
            .name("port-reports".into())
            .spawn(move || {
                active_ports::report_loop(Watcher::system(), listeners_rx, POLL_INTERVAL, reported)
            })
            .context("starting the port reporter")?;
        let wakeup = Arc::new(guest_agent::Wakeup::default());
        let registrar = {
            let wakeup = wakeup.clone();
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
                        wakeup,
                    )
                })
                .context("starting the registration")?
        };

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut failed = None;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            // Only an error ends the loop unasked: stop, then fail (systemd restarts us).
            r = &mut accept_ended => failed = Some(match r {
                Ok(Err(e)) => anyhow::anyhow!("the accept loop on vsock port {VSOCK_PORT} ended: {e}"),
                _ => anyhow::anyhow!("the accept loop on vsock port {VSOCK_PORT} ended"),
            }),
        }
        eprintln!("stopping");
        wakeup.stop();
        stop_accept.stop();
        let _ = accept.join();
        // Ends the app's sessions; the service (and the reporter's channel) goes with them.
        server.terminate();
        drop(server);
        let _ = registrar.join();
        drop(reporter); // detached: it ends when its channel closes
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}
