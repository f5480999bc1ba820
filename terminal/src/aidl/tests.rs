//! The AIDL-mode host against an in-process fake guest: rsbinder over Unix
//! sockets behind a fake vhost-device-vsock, no VM.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avf_aidl::android::system::virtualizationcommon::IGuestAgent::{BnGuestAgent, IGuestAgent};
use avf_aidl::android::system::virtualmachineservice::IVirtualMachineService::IVirtualMachineService;
use avf_aidl::com::android::virtualization::debian::aidl::ActivePort::ActivePort as WirePort;
use avf_aidl::com::android::virtualization::debian::aidl::IDebianService::{
    BnDebianService, IDebianService,
};
use avf_aidl::com::android::virtualization::debian::aidl::IVmActivePortListener::IVmActivePortListener;
use rsbinder::rpc::{RpcClientConfig, RpcServer, RpcSession};
use rsbinder::{Interface, Strong};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guest_vsock::fake::{guest_listen_path, FakeBackend};
use super::guest_vsock::host_port_path;
use super::*;
use crate::events::Event;

const CID: u32 = 3;

/// What the fake guest saw.
#[derive(Default)]
struct Seen {
    balloon: Vec<i64>,
    forwards: Vec<(i32, i32)>,
    clipboard: String,
}

struct FakeDebian {
    uds: PathBuf,
    seen: Arc<Mutex<Seen>>,
}

impl Interface for FakeDebian {}

impl IDebianService for FakeDebian {
    fn setVmActivePortListener(
        &self,
        listener: &Strong<dyn IVmActivePortListener>,
    ) -> rsbinder::BinderResult<()> {
        // Reported later from another thread, as the guest's watcher does:
        // this needs the app's incoming connection.
        let listener = listener.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let ports = [
                WirePort {
                    port: 8080,
                    comm: "perl".into(),
                },
                WirePort {
                    port: 22,
                    comm: "sshd".into(),
                },
            ];
            listener.reportActivePorts(&ports).expect("report");
        });
        Ok(())
    }

    fn requestForwarding(&self, tcp: i32, vsock: i32) -> rsbinder::BinderResult<()> {
        self.seen.lock().unwrap().forwards.push((tcp, vsock));
        // The guest's socat: here the "guest TCP port" is an echo +1.
        let path = host_port_path(&self.uds, vsock as u32);
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect back");
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                buf[..n].iter_mut().for_each(|b| *b = b.wrapping_add(1));
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    fn requestStorageBalloon(&self, n: i64) -> rsbinder::BinderResult<()> {
        self.seen.lock().unwrap().balloon.push(n);
        Ok(())
    }

    fn updateClipboard(&self, text: &str) -> rsbinder::BinderResult<()> {
        self.seen.lock().unwrap().clipboard = text.to_owned();
        Ok(())
    }

    fn readClipboard(&self) -> rsbinder::BinderResult<String> {
        Ok(self.seen.lock().unwrap().clipboard.clone())
    }
}

struct FakeAgent(Mutex<mpsc::Sender<()>>);

impl Interface for FakeAgent {}

impl IGuestAgent for FakeAgent {
    fn shutdownAsync(&self) -> rsbinder::BinderResult<()> {
        let _ = self.0.lock().unwrap().send(());
        Ok(())
    }
}

struct FakeGuest {
    seen: Arc<Mutex<Seen>>,
    server: Arc<RpcServer>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        self.server.stop_accepting();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.server.terminate();
    }
}

/// The guest's `IDebianService` on "vsock 4000".
fn serve_debian(dir: &std::path::Path, uds: &std::path::Path) -> FakeGuest {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server = RpcServer::setup_unix_server(guest_listen_path(dir, 4000)).unwrap();
    server.set_android13plus(WIRE_VERSION);
    server.set_max_threads(4);
    server
        .set_root(
            BnDebianService::new_binder(FakeDebian {
                uds: uds.to_owned(),
                seen: seen.clone(),
            })
            .as_binder(),
        )
        .unwrap();
    let accept = Some(server.run_background());
    FakeGuest {
        seen,
        server,
        accept,
    }
}

/// `linux_vm_manager`: registers its agent with virtmgr; returns the
/// session (kept open, as the agent keeps it) and the shutdown signal.
fn register(uds: &std::path::Path) -> (RpcSession, mpsc::Receiver<()>) {
    let path = host_port_path(uds, CID);
    let session = RpcSession::setup_client_android13plus_with_config(
        RpcClientConfig::unix(&path, WIRE_VERSION).incoming_connections(1),
    )
    .expect("connect virtmgr");
    let vms: Strong<dyn IVirtualMachineService> = session
        .get_root()
        .and_then(Strong::try_from)
        .expect("IVirtualMachineService");
    let (tx, rx) = mpsc::channel();
    let agent = BnGuestAgent::new_binder(FakeAgent(Mutex::new(tx)));
    vms.registerGuestAgent(&agent).expect("registerGuestAgent");
    (session, rx)
}

fn config(uds: &std::path::Path, name: &str) -> AidlHostConfig {
    AidlHostConfig {
        vm_name: name.into(),
        vsock: VsockEndpoint {
            uds: uds.to_owned(),
            guest_cid: CID,
        },
        host_ports: HostPorts::Ephemeral,
        enabled_ports: None,
        ttyd_over_vsock: true,
        time_scale: 1.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_ports_forwarding_clipboard_balloon_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::start(dir.path());
    let guest = serve_debian(dir.path(), &backend.uds);
    let host = AidlHost::start(config(&backend.uds, "debian"))
        .await
        .unwrap();
    assert!(host.vm_service().path().exists());
    assert!(
        host.bridge().is_some(),
        "the app's bridge runs from the start"
    );

    let uds = backend.uds.clone();
    let (session, shutdown) = tokio::task::spawn_blocking(move || register(&uds))
        .await
        .unwrap();
    host.on_registered(Duration::from_secs(10)).await.unwrap();
    assert_eq!(host.wire_version(), Some(WIRE_VERSION));
    let log = host.events();
    assert!(log
        .snapshot()
        .iter()
        .any(|r| r.event == Event::GuestAgentRegistered));

    // The listener's report, and the forwarding host publishing 8080 (not 22).
    let r = log
        .wait_for(log.cursor(), Duration::from_secs(10), |e| {
            matches!(e, Event::ActivePorts(_))
        })
        .await
        .or_else(|_| {
            log.snapshot()
                .into_iter()
                .find(|r| matches!(r.event, Event::ActivePorts(_)))
                .ok_or("no report")
        })
        .unwrap();
    let Event::ActivePorts(ports) = r.event else {
        unreachable!()
    };
    assert_eq!(ports[0].port, 8080);
    assert_eq!(ports[0].comm, "perl");
    let mut addr = None;
    for _ in 0..100 {
        addr = host.forwarded(8080);
        if addr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = addr.expect("8080 published")[0];
    assert!(host.forwarded(22).is_none(), "privileged ports stay");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"abc").await.unwrap();
    let mut back = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"bcd");
    let (tcp_port, vsock_port) = guest.seen.lock().unwrap().forwards[0];
    assert_eq!(tcp_port, 8080);
    assert!(vsock_port as u32 >= crate::forwarding::FIRST_VSOCK_PORT);

    // Clipboard round trip; the storage balloon request arrives.
    host.update_clipboard("héllo ✓").await.unwrap();
    assert_eq!(host.read_clipboard().await.unwrap(), "héllo ✓");
    host.request_storage_balloon(123 << 20).await.unwrap();
    // Oneway calls arrive in order: the two-way call after it has flushed it.
    let _ = host.read_clipboard().await.unwrap();
    assert_eq!(guest.seen.lock().unwrap().balloon, vec![123 << 20]);

    // The app's stop: shutdownAsync reaches the guest's agent.
    host.shutdown_async().await.unwrap();
    tokio::task::spawn_blocking(move || shutdown.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("shutdownAsync arrived");

    let path = host.vm_service().path().to_owned();
    host.stop().await;
    assert!(!path.exists(), "virtmgr's socket removed");
    session.close_session();
    drop(guest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_debian_service_is_the_apps_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::start(dir.path());
    let host = AidlHost::start(config(&backend.uds, "debian"))
        .await
        .unwrap();
    let uds = backend.uds.clone();
    let (session, _shutdown) = tokio::task::spawn_blocking(move || register(&uds))
        .await
        .unwrap();
    let e = host
        .on_registered(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(e, AidlError::ConnectGuestAgent { .. }), "{e}");
    assert!(
        e.to_string().contains("Failed to connect to guest agent"),
        "{e}"
    );
    session.close_session();
    host.stop().await;
}

#[tokio::test]
async fn only_vms_named_debian_get_the_vm_service() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::start(dir.path());
    let Err(e) = AidlHost::start(config(&backend.uds, "arch")).await else {
        panic!("served a VM named arch");
    };
    assert!(e.to_string().contains("\"arch\""), "{e}");
    assert!(!host_port_path(&backend.uds, CID).exists());
    assert!(requires_vm_service("microdroid"));
}
