//! virtmgr's part of AIDL mode: per VM, `IVirtualMachineService` served
//! with RPC Binder where the guest's `linux_vm_manager` connects (vsock CID
//! 2, port = its own CID; through vhost-device-vsock that is the Unix
//! socket `<uds>_<cid>`). `registerGuestAgent` keeps the guest's
//! `IGuestAgent` and tells the app (`onGuestAgentRegistered`).
//! docs/android-releases.md §2.1 A.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use avf_aidl::android::system::virtualizationcommon::IGuestAgent::IGuestAgent;
use avf_aidl::android::system::virtualmachineservice::IVirtualMachineService::{
    BnVirtualMachineService, IVirtualMachineService,
};
use rsbinder::rpc::RpcServer;
use rsbinder::{Interface, Strong};
use tokio::sync::watch;

use super::guest_vsock::host_port_path;
use super::{AidlError, WIRE_VERSION};
use crate::events::{Event, EventLog};

/// The VM names virtmgr starts the service for (`requires_vm_service`:
/// a raw config named `microdroid` or `debian`).
pub const VM_SERVICE_NAMES: &[&str] = &["debian", "microdroid"];

/// Whether virtmgr serves `IVirtualMachineService` to a VM of this name.
pub fn requires_vm_service(vm_name: &str) -> bool {
    VM_SERVICE_NAMES.contains(&vm_name)
}

/// The guest's agent, as registered.
pub type GuestAgent = Strong<dyn IGuestAgent>;

struct VmServiceImpl {
    log: EventLog,
    registered: watch::Sender<Option<GuestAgent>>,
}

impl Interface for VmServiceImpl {}

impl IVirtualMachineService for VmServiceImpl {
    fn registerGuestAgent(&self, agent: &GuestAgent) -> rsbinder::BinderResult<()> {
        self.log.push(None, Event::GuestAgentRegistered);
        self.registered.send_replace(Some(agent.clone()));
        Ok(())
    }
}

/// The per-VM service; stops serving and removes its socket on drop.
pub struct VmService {
    server: Arc<RpcServer>,
    accept: Option<JoinHandle<()>>,
    path: PathBuf,
    registered: watch::Receiver<Option<GuestAgent>>,
    agent: Mutex<Option<GuestAgent>>,
}

impl VmService {
    /// Serves on `<uds>_<guest_cid>`, or `None` when virtmgr would not
    /// serve a VM named `vm_name`.
    pub fn start(
        vm_name: &str,
        uds: &Path,
        guest_cid: u32,
        log: EventLog,
    ) -> Result<Option<VmService>, AidlError> {
        if !requires_vm_service(vm_name) {
            return Ok(None);
        }
        let path = host_port_path(uds, guest_cid);
        let server = RpcServer::setup_unix_server(&path).map_err(|status| AidlError::Serve {
            path: path.clone(),
            status: format!("{status:?}"),
        })?;
        server.set_android13plus(WIRE_VERSION);
        // One thread for the guest's calls, one for its incoming
        // connection (the guest sets max incoming threads = 1).
        server.set_max_threads(2);
        let (tx, rx) = watch::channel(None);
        let service = BnVirtualMachineService::new_binder(VmServiceImpl {
            log,
            registered: tx,
        });
        server
            .set_root(service.as_binder())
            .map_err(|status| AidlError::Serve {
                path: path.clone(),
                status: format!("{status:?}"),
            })?;
        let accept = server.run_background();
        Ok(Some(VmService {
            server,
            accept: Some(accept),
            path,
            registered: rx,
            agent: Mutex::new(None),
        }))
    }

    /// Where the service listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for `registerGuestAgent` (the app's `onGuestAgentRegistered`).
    pub async fn wait_registered(&self) -> Result<GuestAgent, AidlError> {
        let mut rx = self.registered.clone();
        let agent = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AidlError::Gone("IVirtualMachineService"))?
            .clone()
            .expect("waited for Some");
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(agent.clone());
        Ok(agent)
    }

    /// The registered agent, if any yet.
    pub fn agent(&self) -> Option<GuestAgent> {
        self.registered.borrow().clone()
    }

    /// `IGuestAgent.shutdownAsync()` on the registered agent (oneway).
    pub async fn shutdown_async(&self) -> Result<(), AidlError> {
        let agent = self.agent().ok_or(AidlError::NotRegistered)?;
        tokio::task::spawn_blocking(move || agent.shutdownAsync())
            .await
            .map_err(|_| AidlError::Gone("shutdownAsync"))?
            .map_err(|status| AidlError::Call {
                method: "IGuestAgent.shutdownAsync",
                status: format!("{status:?}"),
            })
    }
}

impl Drop for VmService {
    fn drop(&mut self) {
        self.agent.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.server.stop_accepting();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.server.terminate();
        let _ = std::fs::remove_file(&self.path);
    }
}
