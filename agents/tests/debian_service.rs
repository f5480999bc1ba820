//! The AIDL mode's guest side in-process, over Unix sockets instead of
//! vsock: IDebianService against a fake app, the guest agent's
//! registration against fake virtmgrs (both numberings).
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use avf_aidl::android::system::virtualizationcommon::IGuestAgent::IGuestAgent;
use avf_aidl::android::system::virtualmachineservice::IVirtualMachineService::{
    BnVirtualMachineService, IVirtualMachineService,
};
use avf_aidl::com::android::virtualization::debian::aidl::{
    ActivePort::ActivePort,
    IDebianService::IDebianService,
    IVmActivePortListener::{BnVmActivePortListener, IVmActivePortListener},
};
use rsbinder::rpc::{RpcClientConfig, RpcProxy, RpcServer, RpcSession};
use rsbinder::{
    BinderResult, FromIBinder, Interface, Parcel, Remotable, SIBinder, Status, StatusCode, Strong,
    TransactionCode,
};

use avf_agents::active_ports;
use avf_agents::balloon::Paths;
use avf_agents::clipboard::{Clipboard, WaylandSession};
use avf_agents::debian_service::{self, BalloonConfig, DebianService, WIRE_VERSION};
use avf_agents::forward::Endpoint;
use avf_agents::guest_agent::{self, Numbering, PowerOff};
use avf_agents::launcher::ReportedPorts;
use avf_agents::listeners::{ListenerSource, RawListener, Watcher};
use avf_agents::rpc_accept;

const WAIT: Duration = Duration::from_secs(10);

/// Listeners the test controls.
#[derive(Clone, Default)]
struct FakeSockets(Arc<Mutex<Vec<u16>>>);

impl FakeSockets {
    fn set(&self, ports: &[u16]) {
        *self.0.lock().unwrap() = ports.to_vec();
    }
}

impl ListenerSource for FakeSockets {
    fn listeners(&mut self) -> anyhow::Result<Vec<RawListener>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|&port| RawListener {
                addr: Ipv4Addr::UNSPECIFIED.into(),
                port,
                remote_port: 0,
                inode: u64::from(port),
                v6only: false,
            })
            .collect())
    }
}

/// The app's port listener: forwards each report to the test.
struct FakePortListener(Mutex<Sender<Vec<(i32, String)>>>);

impl Interface for FakePortListener {}

impl IVmActivePortListener for FakePortListener {
    fn reportActivePorts(&self, ports: &[ActivePort]) -> BinderResult<()> {
        let v = ports.iter().map(|p| (p.port, p.comm.clone())).collect();
        let _ = self.0.lock().unwrap().send(v);
        Ok(())
    }
}

fn sock(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A fake root filesystem for the storage balloon: ext4 on vda1.
fn balloon_tree(dir: &Path) -> BalloonConfig {
    let sys = dir.join("sys");
    std::fs::create_dir_all(sys.join("dev/block/254:1")).unwrap();
    std::fs::write(
        sys.join("dev/block/254:1/uevent"),
        "MAJOR=254\nMINOR=1\nDEVNAME=vda1\n",
    )
    .unwrap();
    std::fs::create_dir_all(sys.join("fs/ext4/vda1")).unwrap();
    std::fs::write(sys.join("fs/ext4/vda1/reserved_clusters"), "4096\n").unwrap();
    let mi = dir.join("mountinfo");
    std::fs::write(&mi, "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n").unwrap();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    BalloonConfig {
        paths: Paths {
            root: dir.into(),
            mountinfo: mi,
            sysfs: sys,
        },
        state_dir: state,
    }
}

struct App {
    _server: ServerGuard,
    /// The port reporter's thread id.
    reporter_tid: String,
    session: RpcSession,
    service: Strong<dyn IDebianService>,
    sockets: FakeSockets,
    reports: Receiver<Vec<(i32, String)>>,
    _listener: Strong<dyn IVmActivePortListener>,
}

/// Ends the server and its workers when the test ends.
struct ServerGuard {
    server: Arc<RpcServer>,
    accept: Option<std::thread::JoinHandle<()>>,
    /// Our blocking loop's stop (the guest's server); `None`: rsbinder's.
    stop: Option<rpc_accept::Stop>,
    /// The accepting thread's id, for its scheduler counters.
    accept_tid: Option<String>,
}

impl ServerGuard {
    fn stop_accepting(&mut self) {
        match &self.stop {
            Some(stop) => stop.stop(),
            None => self.server.stop_accepting(),
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop_accepting();
        self.server.terminate();
    }
}

/// rsbinder's own accept loop (the fake virtmgr's).
fn serve(server: Arc<RpcServer>) -> ServerGuard {
    let h = server.run_background();
    ServerGuard {
        server,
        accept: Some(h),
        stop: None,
        accept_tid: None,
    }
}

/// Runs `f` on a new thread; also returns the thread's `<pid>/task/<tid>`
/// (for [`sleeps`]).
fn spawn_watched<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> (std::thread::JoinHandle<T>, String) {
    let (tid_tx, tid_rx) = channel();
    let h = std::thread::spawn(move || {
        let me = std::fs::read_link("/proc/thread-self").unwrap();
        tid_tx.send(me.to_string_lossy().into_owned()).unwrap();
        f()
    });
    (h, tid_rx.recv_timeout(WAIT).unwrap())
}

/// The guest's: `rpc_accept` on `listener`.
fn serve_blocking(server: Arc<RpcServer>, listener: UnixListener) -> ServerGuard {
    let (stop, signal) = rpc_accept::stop_pair().unwrap();
    let (h, tid) = {
        let server = server.clone();
        spawn_watched(move || rpc_accept::serve(&server, &listener, &signal).unwrap())
    };
    ServerGuard {
        server,
        accept: Some(h),
        stop: Some(stop),
        accept_tid: Some(tid),
    }
}

/// Starts the service on `dir/debian.sock` and connects to it as the app
/// does: a session with one incoming connection for the listener's calls.
fn start_app(dir: &Path, rt: &tokio::runtime::Runtime, fwd_dir: PathBuf) -> App {
    let sockets = FakeSockets::default();
    let (ltx, lrx) = channel();
    let reported = ReportedPorts::default();
    let service = DebianService::new(
        ltx,
        reported.clone(),
        rt.handle().clone(),
        Arc::new(move |remote| match remote {
            Endpoint::Vsock { cid: 2, port } => Endpoint::Unix(fwd_dir.join(format!("{port}"))),
            other => panic!("unexpected remote end {other}"),
        }),
        balloon_tree(dir),
        Clipboard::new(WaylandSession {
            user: "root".into(),
            run_user: dir.join("no-session"),
            display: "wayland-0".into(),
        }),
    );
    let watcher = Watcher::new(Box::new(sockets.clone()), dir.join("no-proc"));
    let (_, reporter_tid) = spawn_watched(move || {
        active_ports::report_loop(watcher, lrx, Duration::from_millis(50), reported)
    });
    let path = sock(dir, "debian.sock");
    // As the guest does: rsbinder's server on a socket nothing accepts on,
    // our blocking loop on the one the app uses.
    let server = RpcServer::setup_unix_server(sock(dir, "unused.sock")).unwrap();
    debian_service::configure(&server, service.into_binder()).unwrap();
    let guard = serve_blocking(server, UnixListener::bind(&path).unwrap());
    let session = RpcSession::setup_client_android13plus_with_config(
        RpcClientConfig::unix(&path, WIRE_VERSION).incoming_connections(1),
    )
    .unwrap();
    let service = <dyn IDebianService>::try_from(session.get_root().unwrap()).unwrap();
    let (rtx, rrx) = channel();
    let listener = BnVmActivePortListener::new_binder(FakePortListener(Mutex::new(rtx)));
    App {
        _server: guard,
        reporter_tid,
        session,
        service,
        sockets,
        reports: rrx,
        _listener: listener,
    }
}

impl App {
    fn listen(&self) {
        self.service
            .setVmActivePortListener(&self._listener)
            .unwrap();
    }

    fn next_report(&self) -> Vec<(i32, String)> {
        self.reports.recv_timeout(WAIT).expect("a port report")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.session.close_session();
    }
}

#[test]
fn the_port_reporter_sleeps_until_the_app_sets_a_listener() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = start_app(d.path(), &rt, d.path().into());
    // No listener (every mode but the AIDL one): no scans, no wakeups
    // (it used to wake every poll interval, 50 ms here).
    std::thread::sleep(Duration::from_millis(100));
    let before = sleeps(&app.reporter_tid);
    std::thread::sleep(Duration::from_millis(500));
    let woke = sleeps(&app.reporter_tid) - before;
    assert!(woke <= 1, "the idle reporter woke {woke} times in 500 ms");
    // A listener wakes it at once with a full report.
    app.listen();
    assert_eq!(app.next_report(), []);
}

#[test]
fn ports_are_reported_in_full_then_on_change_with_the_launchers_filter() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = start_app(d.path(), &rt, d.path().into());
    // 22 (< 1024) and 7681 (ttyd) are never reported, as in gRPC mode.
    app.sockets.set(&[8080, 22, 7681]);
    app.listen();
    assert_eq!(app.next_report(), [(8080, String::new())]);
    app.sockets.set(&[8080, 3000]);
    assert_eq!(
        app.next_report(),
        [(3000, String::new()), (8080, String::new())]
    );
    app.sockets.set(&[]);
    assert_eq!(app.next_report(), []);
    // A new listener gets a full report at once, changed or not.
    app.listen();
    assert_eq!(app.next_report(), []);
}

/// `voluntary_ctxt_switches` of `/proc/<pid>/task/<tid>`: how often the
/// thread went to sleep.
fn sleeps(thread: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{thread}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_accept_loop_sleeps_until_a_client_comes_and_stops_when_told() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut app = start_app(d.path(), &rt, d.path().into());
    assert_eq!(app.service.readClipboard().unwrap(), "");
    // Idle: rsbinder's loop would wake every 5 ms (about 100 times here).
    let tid = app._server.accept_tid.clone().unwrap();
    let before = sleeps(&tid);
    std::thread::sleep(Duration::from_millis(500));
    let woke = sleeps(&tid) - before;
    assert!(
        woke <= 2,
        "the idle accept loop woke {woke} times in 500 ms"
    );
    // ... and still accepts: a second client.
    let path = sock(d.path(), "debian.sock");
    let second = RpcSession::setup_client_android13plus_with_config(RpcClientConfig::unix(
        &path,
        WIRE_VERSION,
    ))
    .unwrap();
    let service = <dyn IDebianService>::try_from(second.get_root().unwrap()).unwrap();
    assert_eq!(service.readClipboard().unwrap(), "");
    second.close_session();
    // Told to stop, the loop ends at once (the join would hang otherwise).
    let (done_tx, done_rx) = channel();
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            app._server.stop_accepting();
            done_tx.send(()).unwrap();
        });
        done_rx.recv_timeout(WAIT).expect("the accept loop stopped");
    });
    assert!(t.elapsed() < WAIT);
}

#[test]
fn clipboard_round_trips_without_a_wayland_session() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = start_app(d.path(), &rt, d.path().into());
    assert_eq!(app.service.readClipboard().unwrap(), "");
    app.service.updateClipboard("héllo, wörld\n").unwrap();
    // updateClipboard is oneway: it may land after a following two-way call.
    let deadline = Instant::now() + WAIT;
    loop {
        let got = app.service.readClipboard().unwrap();
        if got == "héllo, wörld\n" {
            break;
        }
        assert!(Instant::now() < deadline, "readClipboard still {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn forwarding_pipes_a_reported_port_and_refuses_others() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = start_app(d.path(), &rt, d.path().into());
    // The guest service: echoes one line.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut c, _) = echo.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    // The host's end of vsock port 5000 (a Unix socket here).
    let host = UnixListener::bind(d.path().join("5000")).unwrap();
    host.set_nonblocking(true).unwrap();

    // Not reported yet: refused, nothing dials the host.
    app.service
        .requestForwarding(i32::from(port), 5000)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(host.accept().is_err(), "an unreported port was forwarded");

    app.sockets.set(&[port]);
    app.listen();
    assert_eq!(app.next_report(), [(i32::from(port), String::new())]);
    app.service
        .requestForwarding(i32::from(port), 5000)
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut c = loop {
        match host.accept() {
            Ok((c, _)) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no forwarded connection: {e}"),
        }
    };
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping\n");
    // The guest side closed after its answer: the host end sees EOF.
    assert_eq!(c.read(&mut buf).unwrap(), 0);

    // Bad input is logged and dropped, the service keeps serving.
    app.service.requestForwarding(0, 5000).unwrap();
    app.service.requestForwarding(70000, -1).unwrap();
    assert_eq!(app.service.readClipboard().unwrap(), "");
}

#[test]
fn storage_balloon_follows_the_grpc_agents_policy() {
    let d = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = start_app(d.path(), &rt, d.path().into());
    let rc = d.path().join("sys/fs/ext4/vda1/reserved_clusters");
    // A plain file stands in for sysfs here: the agent's write truncates
    // it first, so a read can race it and see nothing. Such a read is no
    // value yet.
    let read = || {
        std::fs::read_to_string(&rc)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let wait_for = |want: &dyn Fn(u64) -> bool| {
        let deadline = Instant::now() + WAIT;
        while !read().is_some_and(want) {
            assert!(
                Instant::now() < deadline,
                "reserved_clusters stays {:?}",
                read()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Nothing available: hold everything users could allocate (on top of
    // ext4's own 4096).
    app.service.requestStorageBalloon(0).unwrap();
    wait_for(&|c| c > 4096);
    // More than exists: back to ext4's own reservation, never below it.
    app.service.requestStorageBalloon(i64::MAX).unwrap();
    wait_for(&|c| c == 4096);
    // A negative request is refused, nothing changes.
    app.service.requestStorageBalloon(-1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(read(), Some(4096));
}

/// virtmgr's numbered IVirtualMachineService: records the agent and at
/// once calls shutdownAsync on it from another thread, as the app does
/// later (so it needs the guest's incoming connection).
struct FakeVm(Mutex<Sender<&'static str>>);

impl Interface for FakeVm {}

impl IVirtualMachineService for FakeVm {
    fn registerGuestAgent(&self, agent: &Strong<dyn IGuestAgent>) -> BinderResult<()> {
        let _ = self.0.lock().unwrap().send("registered");
        let agent = agent.clone();
        std::thread::spawn(move || agent.shutdownAsync().unwrap());
        Ok(())
    }
}

fn recording_poweroff() -> (PowerOff, Receiver<()>) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    (Arc::new(move || tx.lock().unwrap().send(()).unwrap()), rx)
}

fn vm_server(path: &Path, root: SIBinder) -> ServerGuard {
    let server = RpcServer::setup_unix_server(path).unwrap();
    server.set_android13plus(WIRE_VERSION);
    server.set_root(root).unwrap();
    serve(server)
}

#[test]
fn registers_with_the_numbered_form_and_powers_off_on_shutdown_async() {
    let d = tempfile::tempdir().unwrap();
    let path = sock(d.path(), "vm.sock");
    let (tx, rx) = channel();
    let _vm = vm_server(
        &path,
        BnVirtualMachineService::new_binder(FakeVm(Mutex::new(tx))).as_binder(),
    );
    let (poweroff, off) = recording_poweroff();
    let reg = guest_agent::register(
        RpcClientConfig::unix(&path, WIRE_VERSION).incoming_connections(1),
        poweroff,
    )
    .unwrap();
    assert_eq!(reg.numbering, Numbering::Numbered);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "registered");
    off.recv_timeout(WAIT)
        .expect("shutdownAsync reached poweroff");
    assert!(!reg.is_ended());
}

/// An older virtmgr: registerGuestAgent is code 9, code 2 is another
/// method, and the agent's descriptor is virtualmachineservice's.
struct UnnumberedVm(Mutex<Sender<&'static str>>);

impl Remotable for UnnumberedVm {
    fn descriptor() -> &'static str {
        guest_agent::VM_SERVICE_DESCRIPTOR
    }

    fn on_transact(
        &self,
        code: TransactionCode,
        reader: &mut Parcel,
        reply: &mut Parcel,
    ) -> rsbinder::Result<()> {
        if code != guest_agent::UNNUMBERED_REGISTER {
            return Err(StatusCode::UnknownTransaction);
        }
        let agent: SIBinder = reader.read()?;
        let _ = self.0.lock().unwrap().send("registered (code 9)");
        std::thread::spawn(move || {
            let proxy = agent.as_any().downcast_ref::<RpcProxy>().unwrap();
            let data = proxy
                .build_request(guest_agent::UNNUMBERED_AGENT_DESCRIPTOR)
                .unwrap();
            proxy
                .transact(guest_agent::SHUTDOWN_ASYNC, &data, rsbinder::FLAG_ONEWAY)
                .unwrap();
        });
        reply.write(&Status::from(StatusCode::Ok))
    }

    fn on_dump(&self, _: &mut dyn std::io::Write, _: &[String]) -> rsbinder::Result<()> {
        Ok(())
    }
}

#[test]
fn falls_back_to_code_9_on_unknown_transaction() {
    let d = tempfile::tempdir().unwrap();
    let path = sock(d.path(), "vm9.sock");
    let (tx, rx) = channel();
    let _vm = vm_server(
        &path,
        Interface::as_binder(&rsbinder::Binder::new(UnnumberedVm(Mutex::new(tx)))),
    );
    let (poweroff, off) = recording_poweroff();
    let reg = guest_agent::register(
        RpcClientConfig::unix(&path, WIRE_VERSION).incoming_connections(1),
        poweroff,
    )
    .unwrap();
    assert_eq!(reg.numbering, Numbering::Unnumbered);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "registered (code 9)");
    off.recv_timeout(WAIT)
        .expect("shutdownAsync reached poweroff");
}

#[test]
fn no_host_service_is_a_clear_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let (poweroff, _off) = recording_poweroff();
    let path = sock(d.path(), "nobody.sock");
    let e = guest_agent::register(
        RpcClientConfig::unix(&path, WIRE_VERSION).incoming_connections(1),
        poweroff,
    )
    .err()
    .expect("no server");
    assert!(format!("{e:#}").contains("IVirtualMachineService"), "{e:#}");
}

#[test]
fn keep_registered_sleeps_while_registered_and_registers_again_when_the_host_ends_it() {
    let d = tempfile::tempdir().unwrap();
    let path = sock(d.path(), "vm.sock");
    let (tx, rx) = channel();
    let vm = vm_server(
        &path,
        BnVirtualMachineService::new_binder(FakeVm(Mutex::new(tx.clone()))).as_binder(),
    );
    let (poweroff, _off) = recording_poweroff();
    let wakeup = Arc::new(guest_agent::Wakeup::default());
    let (registrar, tid) = {
        let (path, wakeup) = (path.clone(), wakeup.clone());
        spawn_watched(move || {
            guest_agent::keep_registered(
                || RpcClientConfig::unix(&path, WIRE_VERSION).incoming_connections(1),
                poweroff,
                guest_agent::Backoff::new(Duration::from_millis(20), Duration::from_millis(100)),
                wakeup,
            )
        })
    };
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "registered");
    // Registered and idle: asleep (it used to look every 500 ms).
    std::thread::sleep(Duration::from_millis(300));
    let before = sleeps(&tid);
    std::thread::sleep(Duration::from_millis(1500));
    let woke = sleeps(&tid) - before;
    assert!(
        woke <= 1,
        "the registered, idle thread woke {woke} times in 1.5 s"
    );
    // virtmgr goes away and comes back: the death notice wakes the thread,
    // which registers with the new one.
    drop(vm);
    let _vm = vm_server(
        &path,
        BnVirtualMachineService::new_binder(FakeVm(Mutex::new(tx))).as_binder(),
    );
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "registered");
    // Stopped, it ends at once.
    wakeup.stop();
    let t = Instant::now();
    while !registrar.is_finished() {
        assert!(t.elapsed() < WAIT, "keep_registered did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    registrar.join().unwrap();
}
