//! `IDebianService`, the guest's side of the Terminal app's AIDL mode
//! (docs/android-releases.md §2, §3.3), served with RPC binder on vsock
//! port 4000. Each method reuses the gRPC-mode agent that does the same
//! job: ports as the launcher reports them, forwarding as forwarder_guest
//! copies, the storage balloon's policy, plus the clipboard.
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use avf_aidl::com::android::virtualization::debian::aidl::IDebianService::{
    BnDebianService, IDebianService,
};
use rsbinder::rpc::RpcServer;
use rsbinder::{BinderResult, Strong};

use crate::active_ports::Listener;
use crate::balloon::{self, Balloon, Paths, StatVfs};
use crate::clipboard::Clipboard;
use crate::forward::Endpoint;
use crate::launcher::{forwarder_args, ReportedPorts};
use crate::proto::ForwardingRequestItem;

/// `IDebianService.VSOCK_PORT`.
pub const VSOCK_PORT: u32 = 4000;
/// Threads serving the app's calls, as the app's own guest agent has.
pub const MAX_THREADS: u32 = 4;
/// The highest RPC binder wire version we offer (Android 16's); the app's
/// libbinder steps down to it, or we to an older app's.
pub const WIRE_VERSION: u32 = 2;

/// Maps the host end of a forwarded connection (`vsock:2:<port>`) to what
/// is dialled: the identity on a guest; a Unix socket in tests.
pub type RemoteMap = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

/// The storage balloon, found on the first request: a guest whose root
/// cannot be ballooned says so once and ignores the requests.
enum BalloonState {
    NotYet,
    Ready(Balloon<StatVfs>),
    Unavailable,
}

/// Where the balloon looks and keeps its floor record.
#[derive(Debug, Clone)]
pub struct BalloonConfig {
    pub paths: Paths,
    /// The unit's RuntimeDirectory (ext4's own reservation, recorded once
    /// per boot: see [`balloon::kernel_reservation`]).
    pub state_dir: PathBuf,
}

pub struct DebianService {
    listeners: Mutex<Sender<Listener>>,
    reported: ReportedPorts,
    forwards: tokio::runtime::Handle,
    remote_map: RemoteMap,
    balloon_config: BalloonConfig,
    balloon: Mutex<BalloonState>,
    clipboard: Clipboard,
}

impl DebianService {
    /// `listeners` feeds [`crate::active_ports::report_loop`], which
    /// records into `reported`; forwarded connections run on `forwards`.
    pub fn new(
        listeners: Sender<Listener>,
        reported: ReportedPorts,
        forwards: tokio::runtime::Handle,
        remote_map: RemoteMap,
        balloon_config: BalloonConfig,
        clipboard: Clipboard,
    ) -> Self {
        Self {
            listeners: Mutex::new(listeners),
            reported,
            forwards,
            remote_map,
            balloon_config,
            balloon: Mutex::new(BalloonState::NotYet),
            clipboard,
        }
    }

    /// The binder object to serve.
    pub fn into_binder(self) -> Strong<dyn IDebianService> {
        BnDebianService::new_binder(self)
    }

    fn apply_balloon(&self, available_bytes: u64) -> anyhow::Result<Option<u64>> {
        let mut state = self.balloon.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*state, BalloonState::NotYet) {
            *state = match self.open_balloon() {
                Ok(b) => {
                    eprintln!(
                        "storage balloon through {}, never below ext4's own {} clusters",
                        b.reserved_clusters.display(),
                        b.floor
                    );
                    BalloonState::Ready(b)
                }
                Err(e) => {
                    eprintln!("storage balloon unavailable, ignoring requests: {e:#}");
                    BalloonState::Unavailable
                }
            };
        }
        match &*state {
            BalloonState::Ready(b) => b.apply(available_bytes).map(Some),
            _ => Ok(None),
        }
    }

    fn open_balloon(&self) -> anyhow::Result<Balloon<StatVfs>> {
        let c = &self.balloon_config;
        let reserved_clusters = balloon::reserved_clusters_path(&c.paths)?;
        let floor = balloon::kernel_reservation(&reserved_clusters, &c.state_dir)?;
        Ok(Balloon {
            reserved_clusters,
            stat: StatVfs(c.paths.root.clone()),
            floor,
        })
    }
}

impl rsbinder::Interface for DebianService {}

impl IDebianService for DebianService {
    fn setVmActivePortListener(&self, listener: &Listener) -> BinderResult<()> {
        let sent = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(listener.clone());
        if sent.is_err() {
            eprintln!("setVmActivePortListener: the port reporter has stopped");
        }
        Ok(())
    }

    fn requestForwarding(&self, guest_tcp_port: i32, vsock_port: i32) -> BinderResult<()> {
        // The gRPC launcher's checks, on the same item shape.
        let item = ForwardingRequestItem {
            guest_tcp_port,
            vsock_port,
        };
        let checked = forwarder_args(&item).and_then(|(local, remote)| match &local {
            Endpoint::Tcp(a) if !self.reported.allows(a.port()) => anyhow::bail!(
                "refused: guest port {} is not among the ports last reported as active",
                a.port()
            ),
            _ => Ok((local, (self.remote_map)(remote))),
        });
        match checked {
            Ok((local, remote)) => {
                self.forwards.spawn(async move {
                    match crate::forward::forward(&local, &remote).await {
                        Ok(c) => eprintln!(
                            "forwarded {local} ↔ {remote}: {} bytes out, {} bytes in",
                            c.local_to_remote, c.remote_to_local
                        ),
                        Err(e) => eprintln!("forwarding {local} ↔ {remote}: {e:#}"),
                    }
                });
            }
            Err(e) => eprintln!("requestForwarding({guest_tcp_port}, {vsock_port}): {e:#}"),
        }
        Ok(())
    }

    fn requestStorageBalloon(&self, available_bytes: i64) -> BinderResult<()> {
        let Ok(bytes) = u64::try_from(available_bytes) else {
            eprintln!(
                "requestStorageBalloon: availableBytes {available_bytes} is negative; ignored"
            );
            return Ok(());
        };
        match self.apply_balloon(bytes) {
            Ok(Some(clusters)) => {
                eprintln!("availableBytes {bytes} → reserved_clusters {clusters}")
            }
            Ok(None) => {}
            Err(e) => eprintln!("requestStorageBalloon({bytes}): {e:#}"),
        }
        Ok(())
    }

    fn updateClipboard(&self, text: &str) -> BinderResult<()> {
        if let Err(e) = self.clipboard.update(text) {
            eprintln!("updateClipboard: {e:#}");
        }
        Ok(())
    }

    fn readClipboard(&self) -> BinderResult<String> {
        Ok(self.clipboard.read())
    }
}

/// Binds the RPC binder server for `service` (not yet accepting: call
/// `run_background`). Vsock in the guest; a Unix socket in tests.
pub fn configure(
    server: &Arc<RpcServer>,
    service: Strong<dyn IDebianService>,
) -> rsbinder::Result<()> {
    server.set_android13plus(WIRE_VERSION);
    server.set_max_threads(MAX_THREADS);
    server.set_root(service.as_binder())
}
