//! [`TerminalHost`]: the app's side for one VM run, tying the DebianService
//! server, the client certificate, mDNS discovery, the ttyd client, the
//! forwarding host and the balloon policies together.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::balloon::{MemoryBalloon, MemoryBalloonPolicy, StorageBalloonPolicy};
use crate::cert::{CertError, ClientCert};
use crate::events::EventLog;
use crate::forwarding::{Forwarder, ForwardingConfig, HostPorts};
use crate::mdns::{discover_ttyd, MdnsError, MdnsTransport, TtydService};
use crate::netns::GuestNet;
use crate::profile::{HostProfile, PortFileWritten, TtydLocator};
use crate::service::{DebianServer, ServiceConfig, ServiceError};
use crate::ttyd::{Handshake, TtydClient, TtydError, CONNECT_TIMEOUT};

/// The guest's vsock device as the host sees it.
#[derive(Clone, Debug)]
pub struct VsockEndpoint {
    /// vhost-device-vsock's `--uds-path`.
    pub uds: PathBuf,
    /// The guest's CID (2048 or above on the phone).
    pub guest_cid: u32,
}

/// How the host reaches the guest's ttyd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtydRoute {
    /// Connect to the address and port mDNS returned (TAP mode, as the app).
    Discovered,
    /// Connect here instead (user-mode networking: a host port forwarded to
    /// the guest's 7681); mDNS is still required to succeed first.
    Via(SocketAddr),
}

/// Everything [`TerminalHost::start`] needs.
#[derive(Clone, Debug)]
pub struct TerminalHostConfig {
    /// The app release (and mode) to play.
    pub profile: HostProfile,
    /// The app's files dir: where it writes `ca.crt` and the port file;
    /// shared as virtio-fs `internal` where the profile shares it.
    pub internal_dir: PathBuf,
    /// The vsock device.
    pub vsock: VsockEndpoint,
    /// Where to bind host services: the address the guest reaches the host
    /// at, seen from the host (the TAP's host address; 127.0.0.1 behind
    /// QEMU user-mode networking, whose gateway forwards there). Port 0.
    pub service_bind: SocketAddr,
    /// The namespace the guest network (and `service_bind`) lives in.
    pub guest_net: GuestNet,
    /// gRPC peers to accept besides the VM's address found by mDNS, which
    /// is always accepted once discovered: 127.0.0.1 with QEMU user-mode
    /// networking, where every guest connection arrives from there.
    pub allowed_peers: HashSet<IpAddr>,
    /// How to send mDNS queries.
    pub mdns: MdnsTransport,
    /// How to reach ttyd.
    pub ttyd_route: TtydRoute,
    /// Host ports for forwarded guest ports.
    pub host_ports: HostPorts,
    /// Guest ports the user enabled for forwarding (`None`: all).
    pub enabled_ports: Option<HashSet<u16>>,
    /// Speed-up for the balloon policies (1.0 = real time).
    pub time_scale: f64,
}

impl TerminalHostConfig {
    /// `profile`'s app with the contract's defaults.
    pub fn new(
        profile: HostProfile,
        internal_dir: impl Into<PathBuf>,
        vsock: VsockEndpoint,
        service_bind: SocketAddr,
        mdns: MdnsTransport,
    ) -> Self {
        Self {
            profile,
            internal_dir: internal_dir.into(),
            vsock,
            service_bind,
            guest_net: GuestNet::Current,
            allowed_peers: HashSet::new(),
            mdns,
            ttyd_route: TtydRoute::Discovered,
            host_ports: HostPorts::Same,
            enabled_ports: None,
            time_scale: 1.0,
        }
    }
}

/// Errors of the host as a whole.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The profile asks for something this host side cannot play yet.
    #[error("terminal host: profile {profile}: {why}")]
    Unsupported {
        profile: &'static str,
        why: &'static str,
    },
    /// The internal share is missing.
    #[error("terminal host: internal share {0} is not a directory")]
    NoShare(PathBuf),
    /// The guest CID cannot be a guest's.
    #[error("terminal host: vsock.guest_cid {0} is not a guest CID (must be 3 or above)")]
    BadCid(u32),
    /// Discovery has not happened yet.
    #[error("terminal host: ttyd has not been discovered yet (call discover_ttyd first)")]
    NotDiscovered,
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Mdns(#[from] MdnsError),
    #[error(transparent)]
    Reach(#[from] crate::reach::ReachError),
    #[error(transparent)]
    Ttyd(#[from] TtydError),
}

/// What became of a shutdown request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest's shutdown runner got the request.
    Requested,
    /// No shutdown stream was open: stop the VM hard, as the app does.
    NoStream,
}

/// The app's side for one VM run.
pub struct TerminalHost {
    config: TerminalHostConfig,
    cert: ClientCert,
    server: DebianServer,
    forwarder: Arc<Forwarder>,
    forward_task: JoinHandle<()>,
    ttyd: Mutex<Option<TtydService>>,
}

impl TerminalHost {
    /// Generates the client certificate, writes `ca.crt` into the share and
    /// starts the DebianService server (its port file comes with discovery).
    pub async fn start(config: TerminalHostConfig) -> Result<Self, HostError> {
        let profile = &config.profile;
        let (ttyd, _) = profile.transport.ttyd();
        let port_file_written = profile.transport.port_file_written();
        if profile.transport.is_rpc_binder() {
            return Err(HostError::Unsupported {
                profile: profile.name,
                why: "the AIDL mode has no gRPC DebianService: use avf_terminal::aidl::AidlHost",
            });
        }
        if port_file_written.is_some() && !profile.shares.internal {
            return Err(HostError::Unsupported {
                profile: profile.name,
                why: "the port-file transport needs the internal share",
            });
        }
        if !config.internal_dir.is_dir() {
            return Err(HostError::NoShare(config.internal_dir.clone()));
        }
        if config.vsock.guest_cid < 3 {
            return Err(HostError::BadCid(config.vsock.guest_cid));
        }
        let cert = ClientCert::generate(config.profile.certificate.common_name)?;
        cert.write_ca(&config.internal_dir)?;
        let mut allowed_peers = config.allowed_peers.clone();
        if let TtydLocator::Fixed { addr } = ttyd {
            allowed_peers.insert(IpAddr::V4(addr));
        }
        let server = DebianServer::start(
            ServiceConfig {
                bind: config.service_bind,
                net: config.guest_net.clone(),
                allowed_peers,
                expected_cid: i32::try_from(config.vsock.guest_cid).ok(),
                rpcs: config.profile.rpcs,
            },
            EventLog::new(),
        )
        .await?;
        if port_file_written == Some(PortFileWritten::AtStart) {
            server.announce(&config.internal_dir)?;
        }
        let mut fwd_config = ForwardingConfig::new(&config.vsock.uds);
        fwd_config.host_ports = config.host_ports;
        fwd_config.enabled = config.enabled_ports.clone();
        let forwarder = Arc::new(Forwarder::new(fwd_config, server.forwarding()));
        let forward_task = forwarder.follow(server.active_ports());
        Ok(Self {
            config,
            cert,
            server,
            forwarder,
            forward_task,
            ttyd: Mutex::new(None),
        })
    }

    /// Finds ttyd the profile's way, giving up after `within`: over mDNS
    /// (then gRPC is accepted from the address found) or by pinging the
    /// fixed address; then, where the app writes it only now, the port
    /// file so the agents can connect.
    pub async fn discover_ttyd(&self, within: Duration) -> Result<TtydService, HostError> {
        let transport = self.config.profile.transport;
        let (ttyd, ttyd_port) = transport.ttyd();
        let found = match ttyd {
            TtydLocator::Mdns { .. } => {
                let found = discover_ttyd(&self.config.guest_net, self.config.mdns, within).await?;
                self.server.allow_peer(IpAddr::V4(found.addr));
                found
            }
            TtydLocator::VsockBridge => {
                return Err(HostError::Unsupported {
                    profile: self.config.profile.name,
                    why: "ttyd is reached through the AIDL mode's vsock bridge",
                })
            }
            TtydLocator::Fixed { addr } => {
                crate::reach::wait_reachable(&self.config.guest_net, addr, within).await?;
                TtydService {
                    host: addr.to_string(),
                    port: ttyd_port,
                    addr,
                }
            }
        };
        if transport.port_file_written() == Some(PortFileWritten::AfterDiscovery) {
            self.server.announce(&self.config.internal_dir)?;
        }
        *self.ttyd.lock().unwrap_or_else(|e| e.into_inner()) = Some(found.clone());
        Ok(found)
    }

    /// Where ttyd is reached, once discovered.
    pub fn ttyd_addr(&self) -> Result<SocketAddr, HostError> {
        let found = self.ttyd.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let found = found.ok_or(HostError::NotDiscovered)?;
        Ok(match self.config.ttyd_route {
            TtydRoute::Discovered => found.socket_addr(),
            TtydRoute::Via(addr) => addr,
        })
    }

    /// Opens a terminal with the app's certificate and waits for the shell.
    pub async fn open_terminal(&self, ready_timeout: Duration) -> Result<TtydClient, HostError> {
        let mut client = TtydClient::connect(
            &self.config.guest_net,
            self.ttyd_addr()?,
            &self.cert,
            CONNECT_TIMEOUT,
        )
        .await?;
        client.wait_ready(ready_timeout).await?;
        Ok(client)
    }

    /// Tries the TLS handshake with `identity` (the app's, another, or none).
    pub async fn probe_ttyd(&self, identity: Option<&ClientCert>) -> Result<Handshake, HostError> {
        Ok(crate::ttyd::probe(
            &self.config.guest_net,
            self.ttyd_addr()?,
            identity,
            CONNECT_TIMEOUT,
        )
        .await?)
    }

    /// The app's client certificate.
    pub fn client_cert(&self) -> &ClientCert {
        &self.cert
    }

    /// The internal share.
    pub fn internal_dir(&self) -> &Path {
        &self.config.internal_dir
    }

    /// Everything the guest called, for assertions.
    pub fn events(&self) -> &EventLog {
        self.server.log()
    }

    /// The DebianService server (storage-balloon items, addresses).
    pub fn server(&self) -> &DebianServer {
        &self.server
    }

    /// Asks the guest to power off.
    pub async fn request_shutdown(&self) -> ShutdownOutcome {
        if self.server.request_shutdown().await {
            ShutdownOutcome::Requested
        } else {
            ShutdownOutcome::NoStream
        }
    }

    /// Host addresses a guest port is forwarded from, once published.
    pub fn forwarded(&self, guest_port: u16) -> Option<Vec<SocketAddr>> {
        self.forwarder.host_addrs(guest_port)
    }

    /// Starts the memory-balloon policy for a guest with `guest_ram` bytes.
    pub fn memory_policy<B: MemoryBalloon>(
        &self,
        balloon: B,
        guest_ram: u64,
    ) -> MemoryBalloonPolicy {
        MemoryBalloonPolicy::spawn(balloon, guest_ram, self.config.time_scale)
    }

    /// Starts the storage-balloon policy, measuring the host with `allocatable`.
    pub fn storage_policy(
        &self,
        allocatable: impl Fn() -> std::io::Result<u64> + Send + 'static,
    ) -> StorageBalloonPolicy {
        StorageBalloonPolicy::spawn(
            self.server.storage_balloon(),
            allocatable,
            self.config.time_scale,
        )
    }

    /// Stops the server and the forwarding host.
    pub async fn stop(self) {
        self.forward_task.abort();
        self.server.stop().await;
    }
}
