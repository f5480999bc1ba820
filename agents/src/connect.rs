//! Reaching the app's DebianService: wait for the port file, find the host,
//! open an HTTP/2 channel. Failures within the wait window are retried (the
//! file may be missing, half-written or stale); after it the caller exits
//! non-zero and systemd starts it again.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Context};
use tonic::transport::{Channel, Endpoint};

use crate::args::{HostSource, PortSource};
use crate::port_file::PortFileError;
use crate::proto::DebianServiceClient;
use crate::Permanent;

/// How long to keep trying: the contract's "about 10 × 1 s".
#[derive(Debug, Clone, Copy)]
pub struct WaitPolicy {
    pub attempts: u32,
    pub interval: Duration,
    pub connect_timeout: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self {
            attempts: 10,
            interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Resolves the service's address once.
pub fn resolve(port: &PortSource, host: &HostSource) -> anyhow::Result<SocketAddr> {
    let port = match port {
        PortSource::Fixed(p) => *p,
        PortSource::CmdlineOrFile { cmdline, file } => {
            match crate::port_file::cmdline_port(cmdline)? {
                Some(p) => p,
                None => crate::port_file::read_port(file)?,
            }
        }
    };
    let ip = match host {
        HostSource::Fixed(a) => *a,
        HostSource::Gateway(route) => IpAddr::V4(crate::gateway::default_gateway(route)?),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Tries to open a client of the DebianService, re-reading the port file
/// and the gateway on every attempt.
pub async fn connect(
    port: &PortSource,
    host: &HostSource,
    policy: WaitPolicy,
) -> anyhow::Result<DebianServiceClient<Channel>> {
    connect_channel(port, host, policy)
        .await
        .map(DebianServiceClient::new)
}

/// [`connect`], returning the channel itself (for calls the generated
/// client cannot make: the launcher's int32 port reports).
pub async fn connect_channel(
    port: &PortSource,
    host: &HostSource,
    policy: WaitPolicy,
) -> anyhow::Result<Channel> {
    let mut last = anyhow!("no attempt made");
    for attempt in 1..=policy.attempts.max(1) {
        match try_once(port, host, policy.connect_timeout).await {
            Ok(c) => return Ok(c),
            // debian_server_port=0: the app runs no gRPC service this boot
            // (AIDL mode), and no retry or restart will change that.
            Err(e) if is_no_grpc_server(&e) => return Err(Permanent(e).into()),
            Err(e) => {
                eprintln!("attempt {attempt}/{}: {e:#}", policy.attempts);
                last = e;
            }
        }
        if attempt < policy.attempts {
            tokio::time::sleep(policy.interval).await;
        }
    }
    Err(last.context(format!(
        "DebianService not reachable after {} attempts",
        policy.attempts
    )))
}

fn is_no_grpc_server(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<PortFileError>(),
        Some(PortFileError::NoGrpcServer(_))
    )
}

async fn try_once(
    port: &PortSource,
    host: &HostSource,
    timeout: Duration,
) -> anyhow::Result<Channel> {
    let addr = resolve(port, host)?;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .context("building the endpoint URI")?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to DebianService at {addr}"))?;
    Ok(channel)
}
