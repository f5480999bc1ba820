//! Android 17's AIDL mode, the app's and virtmgr's side (issue 13;
//! docs/android-releases.md §2, §3.3): virtmgr's `IVirtualMachineService`
//! per VM ([`virtmgr`]), the app's session to the guest's
//! `IDebianService` with its port listener ([`debian`]), forwarding and
//! the storage balloon over that session, and ttyd over vsock behind the
//! app's token bridge ([`bridge`]). Every vsock path goes through
//! vhost-device-vsock's Unix sockets ([`guest_vsock`]).

pub mod bridge;
pub mod debian;
pub mod guest_vsock;
pub mod virtmgr;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avf_aidl::com::android::virtualization::debian::aidl::IDebianService::IDebianService;
use rsbinder::Strong;
use tokio::task::JoinHandle;

use crate::balloon::{StorageBalloonPolicy, StorageSink};
use crate::events::{Event, EventLog, Queue};
use crate::forwarding::{ForwardError, Forwarder, ForwardingConfig, HostPorts, RequestSink};
use crate::host::VsockEndpoint;

pub use bridge::{BridgeConfig, TtydBridge};
pub use debian::DebianConnection;
pub use virtmgr::{requires_vm_service, VmService};

/// The RPC wire version we offer and accept: 2 (Android 16). Android 17's
/// is unverified (§2.4); libbinder steps down to the lower of the two.
pub const WIRE_VERSION: u32 = 2;

/// Errors of the AIDL-mode host.
#[derive(Debug, thiserror::Error)]
pub enum AidlError {
    #[error("virtmgr: cannot serve IVirtualMachineService on {path}: {status}")]
    Serve { path: PathBuf, status: String },
    /// virtmgr serves no `IVirtualMachineService` for this VM name, so
    /// the guest can never register.
    #[error("virtmgr: no IVirtualMachineService for a VM named {0:?} (vm_config.json \"name\" must be \"debian\")")]
    NoVmService(String),
    /// The app's error state after `onGuestAgentRegistered`.
    #[error("the Terminal app would show \"Failed to connect to guest agent\": IDebianService on vsock 4000 via {uds}: {status}")]
    ConnectGuestAgent { uds: PathBuf, status: String },
    #[error("{method}: {status}")]
    Call {
        method: &'static str,
        status: String,
    },
    #[error("the guest agent has not registered")]
    NotRegistered,
    #[error("IDebianService is not connected (no guest agent registered yet)")]
    NotConnected,
    #[error("{0}: the serving side went away")]
    Gone(&'static str),
    #[error("the guest agent did not register within {0:?}")]
    RegisterTimeout(Duration),
    #[error("ttyd bridge: {0}")]
    Bridge(std::io::Error),
}

/// Forwarding requests over `IDebianService.requestForwarding`.
struct BinderForwarding(Strong<dyn IDebianService>);

impl RequestSink for BinderForwarding {
    fn request(
        &self,
        guest_port: u16,
        vsock_port: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send + '_>> {
        let service = self.0.clone();
        Box::pin(async move {
            let vsock = i32::try_from(vsock_port)
                .map_err(|_| ForwardError::Binder(format!("vsock port {vsock_port} > i32")))?;
            debian::blocking("requestForwarding", service, move |s| {
                s.requestForwarding(i32::from(guest_port), vsock)
            })
            .await
            .map_err(|e| ForwardError::Binder(e.to_string()))
        })
    }
}

/// Storage reports over `IDebianService.requestStorageBalloon`.
#[derive(Clone)]
pub struct BinderStorage {
    service: Strong<dyn IDebianService>,
    log: EventLog,
}

impl StorageSink for BinderStorage {
    async fn send(&self, available_bytes: u64) {
        let n = i64::try_from(available_bytes).unwrap_or(i64::MAX);
        let r = debian::blocking("requestStorageBalloon", self.service.clone(), move |s| {
            s.requestStorageBalloon(n)
        })
        .await;
        match r {
            Ok(()) => self.log.push(
                None,
                Event::ItemSent {
                    queue: Queue::StorageBalloon,
                    detail: format!("requestStorageBalloon({n})"),
                },
            ),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// What [`AidlHost::start`] needs.
#[derive(Clone, Debug)]
pub struct AidlHostConfig {
    /// vm_config.json's `name`.
    pub vm_name: String,
    pub vsock: VsockEndpoint,
    pub host_ports: HostPorts,
    /// Guest ports the user enabled (`None`: all).
    pub enabled_ports: Option<HashSet<u16>>,
    /// `canUseTtydOverVsock()`: start the ttyd bridge.
    pub ttyd_over_vsock: bool,
    /// Speed-up for the balloon policy.
    pub time_scale: f64,
}

struct Connected {
    debian: Arc<DebianConnection>,
    forwarder: Arc<Forwarder>,
    forward_task: JoinHandle<()>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.forward_task.abort();
    }
}

/// The app and virtmgr for one VM run in AIDL mode.
pub struct AidlHost {
    config: AidlHostConfig,
    log: EventLog,
    vm_service: VmService,
    bridge: Option<TtydBridge>,
    connected: Mutex<Option<Connected>>,
}

impl AidlHost {
    /// virtmgr's service (before the VM runs) and, where the app can, the
    /// ttyd bridge (the app's `Running("localhost", bridgePort)`).
    pub async fn start(config: AidlHostConfig) -> Result<AidlHost, AidlError> {
        let log = EventLog::new();
        let vm_service = VmService::start(
            &config.vm_name,
            &config.vsock.uds,
            config.vsock.guest_cid,
            log.clone(),
        )?
        .ok_or_else(|| AidlError::NoVmService(config.vm_name.clone()))?;
        let bridge = match config.ttyd_over_vsock {
            true => Some(
                TtydBridge::start(BridgeConfig::new(&config.vsock.uds))
                    .await
                    .map_err(AidlError::Bridge)?,
            ),
            false => None,
        };
        Ok(AidlHost {
            config,
            log,
            vm_service,
            bridge,
            connected: Mutex::new(None),
        })
    }

    /// Waits for `registerGuestAgent`, then does what the app does on
    /// `onGuestAgentRegistered`: connects `IDebianService` (its failure is
    /// the app's "Failed to connect to guest agent"), sets the port
    /// listener and starts the forwarding host.
    pub async fn on_registered(&self, within: Duration) -> Result<(), AidlError> {
        tokio::time::timeout(within, self.vm_service.wait_registered())
            .await
            .map_err(|_| AidlError::RegisterTimeout(within))??;
        let uds = self.config.vsock.uds.clone();
        let log = self.log.clone();
        let debian = tokio::task::spawn_blocking(move || DebianConnection::connect(&uds, log))
            .await
            .map_err(|_| AidlError::Gone("connect"))??;
        let debian = Arc::new(debian);
        let mut fwd = ForwardingConfig::new(&self.config.vsock.uds);
        fwd.host_ports = self.config.host_ports;
        fwd.enabled = self.config.enabled_ports.clone();
        let forwarder = Arc::new(Forwarder::new(fwd, BinderForwarding(debian.service())));
        let forward_task = forwarder.follow(debian.active_ports());
        *self.lock() = Some(Connected {
            debian,
            forwarder,
            forward_task,
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connected>> {
        self.connected.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn service(&self) -> Result<Strong<dyn IDebianService>, AidlError> {
        self.lock()
            .as_ref()
            .map(|c| c.debian.service())
            .ok_or(AidlError::NotConnected)
    }

    /// Everything the guest called (registration, port reports) and the
    /// app sent.
    pub fn events(&self) -> &EventLog {
        &self.log
    }

    /// The ttyd bridge, where the app runs one.
    pub fn bridge(&self) -> Option<&TtydBridge> {
        self.bridge.as_ref()
    }

    /// virtmgr's per-VM service.
    pub fn vm_service(&self) -> &VmService {
        &self.vm_service
    }

    /// The session's wire version, once connected.
    pub fn wire_version(&self) -> Option<u32> {
        self.lock().as_ref().and_then(|c| c.debian.wire_version())
    }

    /// Host addresses a guest port is forwarded from, once published.
    pub fn forwarded(&self, guest_port: u16) -> Option<Vec<SocketAddr>> {
        self.lock()
            .as_ref()
            .and_then(|c| c.forwarder.host_addrs(guest_port))
    }

    /// A handle for the storage-balloon policy.
    pub fn storage_sink(&self) -> Result<BinderStorage, AidlError> {
        Ok(BinderStorage {
            service: self.service()?,
            log: self.log.clone(),
        })
    }

    /// One `requestStorageBalloon(available_bytes)`.
    pub async fn request_storage_balloon(&self, available_bytes: u64) -> Result<(), AidlError> {
        self.storage_sink()?.send(available_bytes).await;
        Ok(())
    }

    /// The storage-balloon policy (the gRPC mode's, over this session).
    pub fn storage_policy(
        &self,
        allocatable: impl Fn() -> std::io::Result<u64> + Send + 'static,
    ) -> Result<StorageBalloonPolicy, AidlError> {
        Ok(StorageBalloonPolicy::spawn(
            self.storage_sink()?,
            allocatable,
            self.config.time_scale,
        ))
    }

    /// `updateClipboard(text)` (oneway).
    pub async fn update_clipboard(&self, text: &str) -> Result<(), AidlError> {
        let text = text.to_owned();
        debian::blocking("updateClipboard", self.service()?, move |s| {
            s.updateClipboard(&text)
        })
        .await
    }

    /// `readClipboard()`.
    pub async fn read_clipboard(&self) -> Result<String, AidlError> {
        debian::blocking("readClipboard", self.service()?, |s| s.readClipboard()).await
    }

    /// The app's stop request: `IGuestAgent.shutdownAsync()`.
    pub async fn shutdown_async(&self) -> Result<(), AidlError> {
        self.vm_service.shutdown_async().await?;
        self.log.push(
            None,
            Event::ItemSent {
                queue: Queue::Shutdown,
                detail: "IGuestAgent.shutdownAsync()".into(),
            },
        );
        Ok(())
    }

    /// Ends the session, the forwarding host, the bridge and virtmgr's
    /// service (its socket removed).
    pub async fn stop(self) {
        let connected = self.lock().take();
        if let Some(c) = connected {
            // close_session joins nothing async; keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || drop(c)).await;
        }
        let AidlHost { vm_service, .. } = self;
        let _ = tokio::task::spawn_blocking(move || drop(vm_service)).await;
    }
}

#[cfg(test)]
mod tests;
