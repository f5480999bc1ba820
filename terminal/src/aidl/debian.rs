//! The app's part after registration (`VmController.onGuestAgentRegistered`,
//! `DebianService.kt`): an RPC session to the guest's `IDebianService` on
//! vsock 4000 with one incoming connection (so the guest can call our
//! listener), the port listener, and the calls the app makes.
//! docs/android-releases.md §2.1 B, C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use avf_aidl::com::android::virtualization::debian::aidl::ActivePort::ActivePort as WirePort;
use avf_aidl::com::android::virtualization::debian::aidl::IDebianService::{
    IDebianService, VSOCK_PORT,
};
use avf_aidl::com::android::virtualization::debian::aidl::IVmActivePortListener::{
    BnVmActivePortListener, IVmActivePortListener,
};
use rsbinder::rpc::transport::UnixTransport;
use rsbinder::rpc::{RpcClientConfig, RpcSession, RpcTransport};
use rsbinder::{Interface, Strong};
use tokio::sync::watch;

use super::guest_vsock::connect_blocking;
use super::{AidlError, WIRE_VERSION};
use crate::events::{ActivePort, Event, EventLog};

/// How long one vsock connect (and the RPC handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The guest's port 4000, as the interface declares it.
pub fn debian_service_port() -> u32 {
    u32::try_from(VSOCK_PORT).expect("a positive constant")
}

struct PortListener {
    log: EventLog,
    ports: watch::Sender<Vec<ActivePort>>,
}

impl Interface for PortListener {}

impl IVmActivePortListener for PortListener {
    fn reportActivePorts(&self, ports: &[WirePort]) -> rsbinder::BinderResult<()> {
        // A port outside u16 cannot be a TCP port: dropped, not wrapped.
        let ports: Vec<ActivePort> = ports
            .iter()
            .filter_map(|p| {
                Some(ActivePort {
                    port: u16::try_from(p.port).ok()?,
                    comm: p.comm.clone(),
                })
            })
            .collect();
        self.log.push(None, Event::ActivePorts(ports.clone()));
        self.ports.send_replace(ports);
        Ok(())
    }
}

/// The app's open session to the guest's `IDebianService`.
pub struct DebianConnection {
    session: RpcSession,
    service: Strong<dyn IDebianService>,
    ports: watch::Receiver<Vec<ActivePort>>,
    // Kept alive for the guest's calls.
    _listener: Strong<dyn IVmActivePortListener>,
}

impl DebianConnection {
    /// Connects through vhost-device-vsock's `uds` (blocking: run it off
    /// the async threads), then `setVmActivePortListener`.
    pub fn connect(uds: &Path, log: EventLog) -> Result<DebianConnection, AidlError> {
        let port = debian_service_port();
        let path: PathBuf = uds.to_owned();
        let connector = move || -> rsbinder::Result<Box<dyn RpcTransport>> {
            let s = connect_blocking(&path, port, CONNECT_TIMEOUT).map_err(|e| {
                tracing::warn!("{e}");
                rsbinder::StatusCode::DeadObject
            })?;
            let t = UnixTransport::from_stream(s).map_err(|e| {
                tracing::warn!("vsock {port}: {e:?}");
                rsbinder::StatusCode::DeadObject
            })?;
            Ok(Box::new(t))
        };
        let failed = |status: rsbinder::StatusCode| AidlError::ConnectGuestAgent {
            uds: uds.to_owned(),
            status: format!("{status:?}"),
        };
        let session = RpcSession::setup_client_android13plus_with_config(
            RpcClientConfig::new(WIRE_VERSION, connector)
                .incoming_connections(1)
                .timeout(CONNECT_TIMEOUT),
        )
        .map_err(failed)?;
        // Past set-up, calls wait as long as the guest needs (the app's
        // binder calls have no deadline).
        session.set_timeout(None);
        let service = session
            .get_root()
            .and_then(Strong::<dyn IDebianService>::try_from)
            .map_err(|s| {
                session.close_session();
                failed(s)
            })?;
        let (tx, rx) = watch::channel(Vec::new());
        let listener = BnVmActivePortListener::new_binder(PortListener { log, ports: tx });
        if let Err(status) = service.setVmActivePortListener(&listener) {
            session.close_session();
            return Err(call_err("setVmActivePortListener", status));
        }
        Ok(DebianConnection {
            session,
            service,
            ports: rx,
            _listener: listener,
        })
    }

    /// The guest's latest port report.
    pub fn active_ports(&self) -> watch::Receiver<Vec<ActivePort>> {
        self.ports.clone()
    }

    /// The typed proxy (blocking calls).
    pub fn service(&self) -> Strong<dyn IDebianService> {
        self.service.clone()
    }

    /// The RPC wire version the session settled on.
    pub fn wire_version(&self) -> Option<u32> {
        self.session.wire_protocol_version()
    }
}

impl Drop for DebianConnection {
    fn drop(&mut self) {
        self.session.close_session();
    }
}

pub(crate) fn call_err(method: &'static str, status: rsbinder::Status) -> AidlError {
    AidlError::Call {
        method,
        status: format!("{status:?}"),
    }
}

/// Runs a blocking binder call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    method: &'static str,
    service: Strong<dyn IDebianService>,
    call: impl FnOnce(&dyn IDebianService) -> rsbinder::BinderResult<T> + Send + 'static,
) -> Result<T, AidlError> {
    tokio::task::spawn_blocking(move || call(&*service))
        .await
        .map_err(|_| AidlError::Gone(method))?
        .map_err(|s| call_err(method, s))
}
