//! An in-process fake of the Terminal app's DebianService, on 127.0.0.1, in
//! its own runtime thread so a test can make it vanish mid-stream (dropping
//! the runtime closes every connection, as a dying app would).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use avf_agents::proto::*;

type Items<T> = Arc<Mutex<Option<mpsc::Receiver<Result<T, Status>>>>>;

/// What the fake app saw.
#[derive(Default)]
pub struct Record {
    pub reports: Vec<(Instant, Vec<ActivePort>)>,
    pub forwarding_cids: Vec<i32>,
}

#[derive(Clone)]
struct Svc {
    record: Arc<Mutex<Record>>,
    forwarding: Items<ForwardingRequestItem>,
    shutdown: Items<ShutdownRequestItem>,
    storage: Items<StorageBalloonRequestItem>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn take<T>(items: &Items<T>) -> Result<ReceiverStream<Result<T, Status>>, Status> {
    items
        .lock()
        .unwrap()
        .take()
        .map(ReceiverStream::new)
        .ok_or_else(|| Status::failed_precondition("queue already opened"))
}

#[tonic::async_trait]
impl DebianService for Svc {
    async fn report_vm_active_ports(
        &self,
        req: Request<ReportVmActivePortsRequest>,
    ) -> Result<Response<ReportVmActivePortsResponse>, Status> {
        let ports = req.into_inner().ports;
        self.record
            .lock()
            .unwrap()
            .reports
            .push((Instant::now(), ports));
        Ok(Response::new(ReportVmActivePortsResponse { success: true }))
    }

    type OpenForwardingRequestQueueStream = BoxStream<ForwardingRequestItem>;
    async fn open_forwarding_request_queue(
        &self,
        req: Request<QueueOpeningRequest>,
    ) -> Result<Response<Self::OpenForwardingRequestQueueStream>, Status> {
        self.record
            .lock()
            .unwrap()
            .forwarding_cids
            .push(req.into_inner().cid);
        Ok(Response::new(Box::pin(take(&self.forwarding)?)))
    }

    type OpenShutdownRequestQueueStream = BoxStream<ShutdownRequestItem>;
    async fn open_shutdown_request_queue(
        &self,
        _: Request<ShutdownQueueOpeningRequest>,
    ) -> Result<Response<Self::OpenShutdownRequestQueueStream>, Status> {
        Ok(Response::new(Box::pin(take(&self.shutdown)?)))
    }

    type OpenStorageBalloonRequestQueueStream = BoxStream<StorageBalloonRequestItem>;
    async fn open_storage_balloon_request_queue(
        &self,
        _: Request<StorageBalloonQueueOpeningRequest>,
    ) -> Result<Response<Self::OpenStorageBalloonRequestQueueStream>, Status> {
        Ok(Response::new(Box::pin(take(&self.storage)?)))
    }

    async fn report_vm_ip_addr(
        &self,
        _: Request<IpAddr>,
    ) -> Result<Response<ReportVmIpAddrResponse>, Status> {
        Ok(Response::new(ReportVmIpAddrResponse { success: true }))
    }
}

pub struct FakeApp {
    pub addr: SocketAddr,
    pub record: Arc<Mutex<Record>>,
    pub forwarding: mpsc::Sender<Result<ForwardingRequestItem, Status>>,
    pub shutdown: Option<mpsc::Sender<Result<ShutdownRequestItem, Status>>>,
    pub storage: Option<mpsc::Sender<Result<StorageBalloonRequestItem, Status>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeApp {
    pub fn start() -> FakeApp {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ftx, frx) = mpsc::channel(16);
        let (stx, srx) = mpsc::channel(16);
        let (btx, brx) = mpsc::channel(16);
        let svc = Svc {
            record: Arc::default(),
            forwarding: Arc::new(Mutex::new(Some(frx))),
            shutdown: Arc::new(Mutex::new(Some(srx))),
            storage: Arc::new(Mutex::new(Some(brx))),
        };
        let record = svc.record.clone();
        // No block_on here: tests may call this from inside their own runtime.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(DebianServiceServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        FakeApp {
            addr,
            record,
            forwarding: ftx,
            shutdown: Some(stx),
            storage: Some(btx),
            rt: Some(rt),
        }
    }

    /// The app dies: every connection and stream is cut.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    pub fn reports(&self) -> Vec<(Instant, Vec<ActivePort>)> {
        self.record.lock().unwrap().reports.clone()
    }
}

impl Drop for FakeApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of the fake, through the agents' own connect path.
pub async fn client(app: &FakeApp) -> DebianServiceClient<tonic::transport::Channel> {
    use avf_agents::args::{HostSource, PortSource};
    avf_agents::connect::connect(
        &PortSource::Fixed(app.addr.port()),
        &HostSource::Fixed(app.addr.ip()),
        fast_policy(),
    )
    .await
    .unwrap()
}

pub fn fast_policy() -> avf_agents::connect::WaitPolicy {
    avf_agents::connect::WaitPolicy {
        attempts: 10,
        interval: std::time::Duration::from_millis(100),
        connect_timeout: std::time::Duration::from_secs(2),
    }
}

/// A TCP port on 127.0.0.1 that nobody listens on: bound, noted, closed.
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temp dir and the path of a `debian_service_port` file in it (not
/// created); keep the dir alive as long as the file is used.
pub fn port_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("debian_service_port");
    (d, f)
}

/// Writes `port` into `file` after `delay`, from a task on the current
/// tokio runtime (the app publishing its port late).
pub fn write_port_later(file: std::path::PathBuf, port: u16, delay: std::time::Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        std::fs::write(file, port.to_string()).unwrap();
    });
}
