//! An in-process fake of the Terminal app's DebianService, on 127.0.0.1, in
//! its own runtime thread so a test can make it vanish mid-stream (dropping
//! the runtime closes every connection, as a dying app would).
//!
//! The fake plays one app [`Era`]: it decodes `ReportVmActivePorts` the way
//! that app does (from the raw request bytes, which it keeps) and answers
//! `OpenStorageBalloonRequestQueue` the way that app does.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::{Request, Response, Status};

use avf_agents::proto::*;

/// Which Terminal app the fake plays (docs/terminal-app.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Android 16 and later: `repeated ActivePort` reports; the storage
    /// balloon queue opens (as after-16 with the balloon flag on).
    ActivePort,
    /// Android 16 itself: `repeated ActivePort`; the storage balloon handler
    /// is empty, so the call never gets an answer.
    SilentBalloon,
    /// Android 15 QPR2 (late Java): `repeated int32` reports; there is no
    /// storage balloon method (UNIMPLEMENTED).
    Java,
}

const BALLOON_PATH: &str =
    "/com.android.virtualization.terminal.proto.DebianService/OpenStorageBalloonRequestQueue";

type Items<T> = Arc<Mutex<Option<mpsc::Receiver<Result<T, Status>>>>>;

/// What the fake app saw.
#[derive(Default)]
pub struct Record {
    /// Reports as an `ActivePort` app decoded them.
    pub reports: Vec<(Instant, Vec<ActivePort>)>,
    /// Reports as the `int32` app (Era::Java) decoded them.
    pub int32_reports: Vec<(Instant, Vec<i32>)>,
    /// Every report's request bytes, as sent.
    pub raw_reports: Vec<Vec<u8>>,
    pub forwarding_cids: Vec<i32>,
    /// Calls of OpenStorageBalloonRequestQueue, whatever the answer.
    pub balloon_opens: usize,
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
    // Not reached: EraSvc decodes every report itself (kept for the trait).
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

/// Passes the request bytes through undecoded; encodes the response.
struct RawCodec;

struct RawDecoder;

struct ResponseEncoder;

impl Codec for RawCodec {
    type Encode = ReportVmActivePortsResponse;
    type Decode = Vec<u8>;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ReportVmActivePortsResponse;
    type Error = Status;
    fn encode(
        &mut self,
        item: ReportVmActivePortsResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

/// ReportVmActivePorts, decoded as the era's app decodes it.
struct RawReport {
    era: Era,
    record: Arc<Mutex<Record>>,
}

impl Service<Request<Vec<u8>>> for RawReport {
    type Response = Response<ReportVmActivePortsResponse>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Vec<u8>>) -> Self::Future {
        let bytes = req.into_inner();
        let now = Instant::now();
        let mut r = self.record.lock().unwrap();
        r.raw_reports.push(bytes.clone());
        // prost is stricter than protobuf-java: a field with the wrong wire
        // type is an error here, not an unknown field. Good for a test.
        let decoded = match self.era {
            Era::Java => ReportVmActivePortsRequestInt32::decode(&bytes[..])
                .map(|m| r.int32_reports.push((now, m.ports))),
            Era::ActivePort | Era::SilentBalloon => ReportVmActivePortsRequest::decode(&bytes[..])
                .map(|m| r.reports.push((now, m.ports))),
        };
        let result = decoded
            .map(|()| Response::new(ReportVmActivePortsResponse { success: true }))
            .map_err(|e| {
                Status::internal(format!("{:?} app cannot parse the report: {e}", self.era))
            });
        Box::pin(std::future::ready(result))
    }
}

/// The whole DebianService of one era: the generated server, except for
/// ReportVmActivePorts (raw) and OpenStorageBalloonRequestQueue (per era).
#[derive(Clone)]
struct EraSvc {
    era: Era,
    record: Arc<Mutex<Record>>,
    inner: DebianServiceServer<Svc>,
}

impl tonic::server::NamedService for EraSvc {
    const NAME: &'static str = debian_service_server::SERVICE_NAME;
}

impl Service<http::Request<Body>> for EraSvc {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if path == avf_agents::launcher::REPORT_PATH {
            let method = RawReport {
                era: self.era,
                record: self.record.clone(),
            };
            return Box::pin(async move {
                Ok(tonic::server::Grpc::new(RawCodec).unary(method, req).await)
            });
        }
        if path == BALLOON_PATH {
            self.record.lock().unwrap().balloon_opens += 1;
            match self.era {
                Era::ActivePort => {}
                // grpc-java's answer to a method the service does not have.
                Era::Java => {
                    return Box::pin(std::future::ready(Ok(Status::unimplemented(
                        "Method not found: OpenStorageBalloonRequestQueue",
                    )
                    .into_http())))
                }
                Era::SilentBalloon => return Box::pin(std::future::pending()),
            }
        }
        self.inner.call(req)
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
    /// An Android 16+ app (the balloon queue opens).
    pub fn start() -> FakeApp {
        FakeApp::start_era(Era::ActivePort)
    }

    pub fn start_era(era: Era) -> FakeApp {
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
        let svc = EraSvc {
            era,
            record: record.clone(),
            inner: DebianServiceServer::new(svc),
        };
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
                .add_service(svc)
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

    pub fn int32_reports(&self) -> Vec<(Instant, Vec<i32>)> {
        self.record.lock().unwrap().int32_reports.clone()
    }

    pub fn raw_reports(&self) -> Vec<Vec<u8>> {
        self.record.lock().unwrap().raw_reports.clone()
    }

    pub fn balloon_opens(&self) -> usize {
        self.record.lock().unwrap().balloon_opens
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

/// A channel to the fake, through the agents' own connect path.
pub async fn channel(app: &FakeApp) -> tonic::transport::Channel {
    use avf_agents::args::{HostSource, PortSource};
    avf_agents::connect::connect_channel(
        &PortSource::Fixed(app.addr.port()),
        &HostSource::Fixed(app.addr.ip()),
        fast_policy(),
    )
    .await
    .unwrap()
}

/// The (field number, wire type) of every top-level field in `bytes`.
pub fn wire_fields(mut bytes: &[u8]) -> Vec<(u64, u8)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().expect("truncated varint");
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint too long");
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        let wire_type = (key & 7) as u8;
        match wire_type {
            0 => {
                varint(&mut bytes);
            }
            2 => {
                let len = varint(&mut bytes) as usize;
                bytes = &bytes[len..];
            }
            other => panic!("unexpected wire type {other}"),
        }
        out.push((key >> 3, wire_type));
    }
    out
}

/// A fake kernel command line in a fresh temp dir.
pub fn cmdline(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("cmdline");
    std::fs::write(&f, text).unwrap();
    (d, f)
}

/// A command line without `debian_server_port=`, as the Java era and
/// Android 16 boot the VM.
pub const CMDLINE_NO_SERVER_PORT: &str =
    "root=/dev/vda1 ds=nocloud console=ttyS0 hostname=debian\n";

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
