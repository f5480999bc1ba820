//! forwarder_guest_launcher: reports the guest's listening ports and starts a
//! forwarder_guest per forwarded connection.
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::forward::Endpoint;
use crate::listeners::{LastReport, Snapshot, Watcher};
use crate::proto::{
    ActivePort, DebianServiceClient, ForwardingRequestItem, QueueOpeningRequest,
    ReportVmActivePortsRequest, ReportVmActivePortsRequestInt32, ReportVmActivePortsResponse,
};
use crate::wire_form::{self, PortReportForm};

/// How often the listeners are polled: bounds the report latency.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The host's vsock CID (contract section 3).
pub const HOST_CID: u32 = 2;

/// The forwarder_guest arguments for one forwarding item.
pub fn forwarder_args(item: &ForwardingRequestItem) -> anyhow::Result<(Endpoint, Endpoint)> {
    let port = u16::try_from(item.guest_tcp_port)
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| {
            format!(
                "ForwardingRequestItem.guest_tcp_port {} is not a TCP port",
                item.guest_tcp_port
            )
        })?;
    let vsock_port = u32::try_from(item.vsock_port).with_context(|| {
        format!(
            "ForwardingRequestItem.vsock_port {} is not a vsock port",
            item.vsock_port
        )
    })?;
    Ok((
        Endpoint::Tcp(([127, 0, 0, 1], port).into()),
        Endpoint::Vsock {
            cid: HOST_CID,
            port: vsock_port,
        },
    ))
}

/// Turns the launcher's command line for a forwarder into argv.
pub fn forwarder_argv(local: &Endpoint, remote: &Endpoint) -> Vec<OsString> {
    vec![
        "--local".into(),
        local.to_string().into(),
        "--remote".into(),
        remote.to_string().into(),
    ]
}

/// Starts forwarder_guest as a child process and reaps it in the background.
/// The child runs as `nobody` (when the launcher is root: supplementary
/// groups dropped, gid then uid changed) with no capability and
/// no_new_privs ([`crate::privdrop`]): it needs only AF_VSOCK and TCP to
/// 127.0.0.1.
pub fn spawn_forwarder(
    program: &PathBuf,
    local: &Endpoint,
    remote: &Endpoint,
) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(forwarder_argv(local, remote))
        .stdin(std::process::Stdio::null());
    if let Some((uid, gid)) = crate::privdrop::forwarder_identity() {
        // std calls setgroups(0) before setuid when the parent is root.
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: clear_capabilities makes only async-signal-safe syscalls. It
    // runs after the uid/gid change (std's order), which needs CAP_SETUID.
    unsafe {
        cmd.pre_exec(crate::privdrop::clear_capabilities);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    tokio::spawn(async move {
        match child.wait().await {
            Ok(s) if !s.success() => eprintln!("forwarder_guest exited: {s}"),
            Err(e) => eprintln!("waiting for forwarder_guest: {e}"),
            Ok(_) => {}
        }
    });
    Ok(())
}

/// The ports the app may ask to forward: those of the last report it
/// accepted, and of the one in flight (the app may act on a report before
/// its answer reaches us). Shared by the two halves of the launcher.
#[derive(Debug, Clone, Default)]
pub struct ReportedPorts(Arc<Mutex<Reported>>);

#[derive(Debug, Default)]
struct Reported {
    accepted: BTreeSet<u16>,
    in_flight: BTreeSet<u16>,
}

impl ReportedPorts {
    /// As if `ports` had been reported and accepted (tests).
    pub fn from_ports(ports: impl IntoIterator<Item = u16>) -> Self {
        let r = Self::default();
        r.lock().accepted = ports.into_iter().collect();
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reported> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A report of `snapshot` is being sent.
    pub fn sending(&self, snapshot: &Snapshot) {
        self.lock().in_flight = snapshot.keys().copied().collect();
    }

    /// The app answered the report being sent: `accepted` or not.
    pub fn answered(&self, accepted: bool) {
        let mut r = self.lock();
        let sent = std::mem::take(&mut r.in_flight);
        if accepted {
            r.accepted = sent;
        }
    }

    /// Whether the app may have `port` as an active port from us.
    pub fn allows(&self, port: u16) -> bool {
        let r = self.lock();
        r.accepted.contains(&port) || r.in_flight.contains(&port)
    }
}

/// Serves the forwarding queue: for every item on a port the launcher
/// reported as active (`reported`), `spawn(local, remote)`; an item for
/// any other port is refused with a log line. Returns when the host ends
/// the stream; a broken stream is an error.
pub async fn serve_forwarding<S>(
    mut client: DebianServiceClient<Channel>,
    cid: u32,
    reported: ReportedPorts,
    mut spawn: S,
) -> anyhow::Result<()>
where
    S: FnMut(Endpoint, Endpoint) -> anyhow::Result<()>,
{
    let cid = i32::try_from(cid).with_context(|| format!("local vsock CID {cid} does not fit"))?;
    let mut stream = client
        .open_forwarding_request_queue(QueueOpeningRequest { cid })
        .await
        .context("opening the forwarding request queue")?
        .into_inner();
    while let Some(item) = stream
        .message()
        .await
        .context("reading the forwarding request queue")?
    {
        // A bad item or a failed spawn loses one connection, not the queue.
        let checked = forwarder_args(&item).and_then(|(l, r)| match &l {
            Endpoint::Tcp(a) if !reported.allows(a.port()) => anyhow::bail!(
                "refused: guest port {} is not among the ports last reported as active",
                a.port()
            ),
            _ => Ok((l, r)),
        });
        match checked.and_then(|(l, r)| spawn(l, r)) {
            Ok(()) => {}
            Err(e) => eprintln!("forwarding {item:?}: {e:#}"),
        }
    }
    eprintln!("the Terminal app closed the forwarding queue");
    Ok(())
}

/// The gRPC path of `ReportVmActivePorts`, for the int32 form (the
/// generated client only sends the `ActivePort` message).
pub const REPORT_PATH: &str =
    "/com.android.virtualization.terminal.proto.DebianService/ReportVmActivePorts";

/// Sends one snapshot in `form` and returns the app's `success`.
pub async fn send_report(
    channel: &Channel,
    form: &PortReportForm,
    snapshot: &Snapshot,
) -> Result<bool, tonic::Status> {
    let response = match form {
        PortReportForm::ActivePort(_) => {
            let ports = snapshot
                .iter()
                .map(|(port, comm)| ActivePort {
                    port: i32::from(*port),
                    comm: comm.clone(),
                })
                .collect();
            DebianServiceClient::new(channel.clone())
                .report_vm_active_ports(ReportVmActivePortsRequest { ports })
                .await?
        }
        PortReportForm::Int32(_) => {
            let ports = snapshot.keys().map(|p| i32::from(*p)).collect();
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
            let codec = tonic_prost::ProstCodec::<
                ReportVmActivePortsRequestInt32,
                ReportVmActivePortsResponse,
            >::default();
            grpc.unary(
                tonic::Request::new(ReportVmActivePortsRequestInt32 { ports }),
                PathAndQuery::from_static(REPORT_PATH),
                codec,
            )
            .await?
        }
    };
    Ok(response.into_inner().success)
}

/// Decides the report form for this connection (the kernel command line
/// `cmdline`, else a probe of the app: [`wire_form`]), logs it once, then
/// reports a full snapshot at start and again whenever it changes, polling
/// every `interval`. Runs until an RPC fails.
/// What was sent and accepted goes to `reported`.
pub async fn report_ports(
    channel: Channel,
    watcher: Watcher,
    interval: Duration,
    cmdline: PathBuf,
    reported: ReportedPorts,
) -> anyhow::Result<()> {
    let form = wire_form::decide(channel.clone(), &cmdline).await;
    eprintln!("port reports: {form}");
    report_ports_as(channel, form, watcher, interval, reported).await
}

/// [`report_ports`] with the form already decided.
pub async fn report_ports_as(
    channel: Channel,
    form: PortReportForm,
    mut watcher: Watcher,
    interval: Duration,
    allowed: ReportedPorts,
) -> anyhow::Result<()> {
    let mut last = LastReport::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = watcher.snapshot().context("listing listening sockets")?;
        if !last.due(&now) {
            continue;
        }
        allowed.sending(&now);
        let sent = send_report(&channel, &form, &now).await;
        allowed.answered(matches!(sent, Ok(true)));
        let ok = sent.context("ReportVmActivePorts")?;
        if ok {
            last.taken(now);
        } else {
            // Not recorded as reported: sent again on the next poll.
            eprintln!("the Terminal app did not accept the port report; retrying");
        }
    }
}

/// Both halves together; whichever ends first ends the launcher.
pub async fn run<S>(
    channel: Channel,
    cid: u32,
    watcher: Watcher,
    interval: Duration,
    cmdline: PathBuf,
    spawn: S,
) -> anyhow::Result<()>
where
    S: FnMut(Endpoint, Endpoint) -> anyhow::Result<()>,
{
    let reported = ReportedPorts::default();
    tokio::select! {
        r = serve_forwarding(DebianServiceClient::new(channel.clone()), cid, reported.clone(), spawn) => r,
        r = report_ports(channel, watcher, interval, cmdline, reported) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_path_is_the_generated_method() {
        assert_eq!(
            REPORT_PATH,
            format!(
                "/{}/ReportVmActivePorts",
                crate::proto::debian_service_server::SERVICE_NAME
            )
        );
    }

    #[test]
    fn int32_form_is_unpacked() {
        use prost::Message;
        let bytes = ReportVmActivePortsRequestInt32 {
            ports: vec![8080, 300],
        }
        .encode_to_vec();
        // field 1, wire type 0, per port: 0x08 varint
        assert_eq!(bytes, [0x08, 0x90, 0x3f, 0x08, 0xac, 0x02]);
    }
}
