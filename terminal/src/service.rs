//! The DebianService gRPC server the guest agents talk to (contract §4–§5).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::events::{ActivePort, Event, EventLog, Queue};
use crate::fsutil::write_atomic;
use crate::proto;
use crate::proto::debian_service_server::{DebianService, DebianServiceServer};

/// How long [`DebianServer::stop`] waits for clients to hang up.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Name of the port file in the internal share.
pub const PORT_FILE: &str = "debian_service_port";

/// Errors starting or driving the server.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Binding the listening socket failed.
    #[error("DebianService: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Writing `debian_service_port` failed.
    #[error("DebianService: cannot write {path}: {source}")]
    PortFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No forwarding queue is open.
    #[error("DebianService: the guest has no forwarding queue open")]
    NoForwardingQueue,
}

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Address to bind; use port 0 for an ephemeral port.
    pub bind: SocketAddr,
    /// The namespace `bind` is in.
    pub net: crate::netns::GuestNet,
    /// Peers allowed to call. On the phone this is the VM's address; with
    /// QEMU user-mode networking every guest connection arrives from
    /// 127.0.0.1. Empty means: refuse everyone.
    pub allowed_peers: HashSet<IpAddr>,
    /// The VM's vsock CID. When set, a forwarding queue opened with another
    /// CID is refused (PERMISSION_DENIED), as the app would never accept that
    /// guest's vsock connections.
    pub expected_cid: Option<i32>,
    /// The calls served and how they decode (the profile's): a call the
    /// app lacks is UNIMPLEMENTED, as there.
    pub rpcs: crate::profile::RpcSet,
}

type ItemTx<T> = mpsc::Sender<Result<T, Status>>;

/// How many queues of each kind the server holds (see
/// [`DebianServer::open_queues`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub forwarding: usize,
    pub shutdown: usize,
    pub storage_balloon: usize,
}

/// Queues kept open per kind. An agent that reconnects opens a new queue
/// each time; streams it left are pruned when the next opens, and beyond
/// this many still-open ones the oldest are ended (RESOURCE_EXHAUSTED), so
/// the server's memory stays bounded however often agents come back.
pub const MAX_QUEUES_PER_KIND: usize = 8;

/// Makes room for one more queue in `list`: drops the senders whose stream
/// has gone, then ends the oldest still open beyond
/// [`MAX_QUEUES_PER_KIND`]` - 1` with a status.
fn make_room<E, T>(list: &mut Vec<E>, tx: impl Fn(&E) -> &ItemTx<T>) {
    list.retain(|e| !tx(e).is_closed());
    let excess = (list.len() + 1).saturating_sub(MAX_QUEUES_PER_KIND);
    for old in list.drain(..excess) {
        // Dropping the sender ends the stream; the status says why (when
        // the stream's buffer has room for it).
        let _ = tx(&old).try_send(Err(Status::resource_exhausted(format!(
            "a newer queue of this kind replaced this one (at most {MAX_QUEUES_PER_KIND} open)"
        ))));
    }
}

#[derive(Default)]
struct Queues {
    forwarding: Vec<(i32, ItemTx<proto::ForwardingRequestItem>)>,
    shutdown: Vec<ItemTx<proto::ShutdownRequestItem>>,
    storage: Vec<ItemTx<proto::StorageBalloonRequestItem>>,
    last_storage: Option<u64>,
}

struct Shared {
    config: ServiceConfig,
    // Starts as `config.allowed_peers`; grows when the VM's address is learnt.
    allowed: Mutex<HashSet<IpAddr>>,
    log: EventLog,
    queues: Mutex<Queues>,
    ports: watch::Sender<Vec<ActivePort>>,
}

impl Shared {
    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses callers that are not the VM.
    fn admit<T>(&self, req: &Request<T>, method: &'static str) -> Result<(), Status> {
        let peer = req.remote_addr();
        let allowed = peer.is_some_and(|p| {
            self.allowed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&p.ip())
        });
        if allowed {
            return Ok(());
        }
        let reason = format!("peer {peer:?} is not the VM");
        self.log.push(
            peer,
            Event::Refused {
                method,
                reason: reason.clone(),
            },
        );
        Err(Status::permission_denied(reason))
    }

    /// Opens a queue: records it, and notes when the stream goes away
    /// (the guest disconnected, or the host ended it).
    fn open_queue<T: Send + 'static>(
        self: &Arc<Self>,
        queue: Queue,
        cid: Option<i32>,
        peer: Option<SocketAddr>,
    ) -> (ItemTx<T>, BoxStream<T>) {
        let (tx, rx) = mpsc::channel(16);
        self.log.push(peer, Event::QueueOpened { queue, cid });
        let stream = Tracked {
            inner: ReceiverStream::new(rx),
            log: self.log.clone(),
            peer,
            queue,
        };
        (tx, Box::pin(stream))
    }
}

/// A queue's stream that logs `QueueClosed` when tonic drops it. Holding no
/// sender, it does not keep the stream open itself.
struct Tracked<S> {
    inner: S,
    log: EventLog,
    peer: Option<SocketAddr>,
    queue: Queue,
}

impl<S: Stream + Unpin> Stream for Tracked<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        self.log
            .push(self.peer, Event::QueueClosed { queue: self.queue });
    }
}

struct Svc(Arc<Shared>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DebianService for Svc {
    async fn report_vm_active_ports(
        &self,
        request: Request<proto::ReportVmActivePortsRequest>,
    ) -> Result<Response<proto::ReportVmActivePortsResponse>, Status> {
        self.0.admit(&request, "ReportVmActivePorts")?;
        let peer = request.remote_addr();
        // Read the way this release's app reads it (see crate::wire).
        let form = self.0.config.rpcs.port_report;
        let read = request.into_inner().read(form).map_err(|e| {
            Status::internal(format!(
                "ReportVmActivePortsRequest does not parse as the {form:?} form: {e}"
            ))
        })?;
        let mut ports = Vec::new();
        for p in read {
            let port = u16::try_from(p.port).map_err(|_| {
                Status::invalid_argument(format!("ActivePort.port {} is not a TCP port", p.port))
            })?;
            ports.push(ActivePort { port, comm: p.comm });
        }
        self.0.log.push(peer, Event::ActivePorts(ports.clone()));
        self.0.ports.send_replace(ports);
        Ok(Response::new(proto::ReportVmActivePortsResponse {
            success: true,
        }))
    }

    type OpenForwardingRequestQueueStream = BoxStream<proto::ForwardingRequestItem>;

    async fn open_forwarding_request_queue(
        &self,
        request: Request<proto::QueueOpeningRequest>,
    ) -> Result<Response<Self::OpenForwardingRequestQueueStream>, Status> {
        self.0.admit(&request, "OpenForwardingRequestQueue")?;
        let peer = request.remote_addr();
        let cid = request.into_inner().cid;
        if let Some(expected) = self.0.config.expected_cid {
            if cid != expected {
                let reason =
                    format!("QueueOpeningRequest.cid {cid} is not the VM's CID {expected}");
                self.0.log.push(
                    peer,
                    Event::Refused {
                        method: "OpenForwardingRequestQueue",
                        reason: reason.clone(),
                    },
                );
                return Err(Status::permission_denied(reason));
            }
        }
        let (tx, stream) = self.0.open_queue(Queue::Forwarding, Some(cid), peer);
        let mut queues = self.0.queues();
        make_room(&mut queues.forwarding, |(_, tx)| tx);
        queues.forwarding.push((cid, tx));
        Ok(Response::new(stream))
    }

    type OpenShutdownRequestQueueStream = BoxStream<proto::ShutdownRequestItem>;

    async fn open_shutdown_request_queue(
        &self,
        request: Request<proto::ShutdownQueueOpeningRequest>,
    ) -> Result<Response<Self::OpenShutdownRequestQueueStream>, Status> {
        self.0.admit(&request, "OpenShutdownRequestQueue")?;
        let (tx, stream) = self
            .0
            .open_queue(Queue::Shutdown, None, request.remote_addr());
        let mut queues = self.0.queues();
        make_room(&mut queues.shutdown, |tx| tx);
        queues.shutdown.push(tx);
        Ok(Response::new(stream))
    }

    type OpenStorageBalloonRequestQueueStream = BoxStream<proto::StorageBalloonRequestItem>;

    async fn open_storage_balloon_request_queue(
        &self,
        request: Request<proto::StorageBalloonQueueOpeningRequest>,
    ) -> Result<Response<Self::OpenStorageBalloonRequestQueueStream>, Status> {
        if !self.0.config.rpcs.storage_balloon {
            return Err(Status::unimplemented(
                "OpenStorageBalloonRequestQueue is not served by this app",
            ));
        }
        self.0.admit(&request, "OpenStorageBalloonRequestQueue")?;
        let (tx, stream) = self
            .0
            .open_queue(Queue::StorageBalloon, None, request.remote_addr());
        let mut queues = self.0.queues();
        // A (re)started agent gets the current figure at once instead of
        // waiting for the policy's next tick, which may be an hour away.
        if let Some(available_bytes) = queues.last_storage {
            let _ = tx.try_send(Ok(proto::StorageBalloonRequestItem { available_bytes }));
        }
        make_room(&mut queues.storage, |tx| tx);
        queues.storage.push(tx);
        Ok(Response::new(stream))
    }

    async fn report_vm_ip_addr(
        &self,
        request: Request<proto::IpAddr>,
    ) -> Result<Response<proto::ReportVmIpAddrResponse>, Status> {
        if !self.0.config.rpcs.report_vm_ip_addr {
            return Err(Status::unimplemented(
                "ReportVmIpAddr is not served by this app",
            ));
        }
        self.0.admit(&request, "ReportVmIpAddr")?;
        let peer = request.remote_addr();
        self.0
            .log
            .push(peer, Event::VmIpAddr(request.into_inner().addr));
        Ok(Response::new(proto::ReportVmIpAddrResponse {
            success: true,
        }))
    }
}

/// A running DebianService server. Dropping it stops the server.
pub struct DebianServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl DebianServer {
    /// Binds and starts serving. The port file is not written yet: call
    /// [`DebianServer::announce`] once ttyd has been found, as the app does.
    pub async fn start(config: ServiceConfig, log: EventLog) -> Result<Self, ServiceError> {
        let listener = config
            .net
            .tcp_listen(config.bind)
            .map_err(|source| ServiceError::Bind {
                addr: config.bind,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
            addr: config.bind,
            source,
        })?;
        let shared = Arc::new(Shared {
            allowed: Mutex::new(config.allowed_peers.clone()),
            config,
            log,
            queues: Mutex::new(Queues::default()),
            ports: watch::channel(Vec::new()).0,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = TcpListenerStream::new(listener);
        let svc = DebianServiceServer::new(Svc(shared.clone()));
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            shared,
            local_addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Also accepts calls from `peer` (the VM's address, once known).
    pub fn allow_peer(&self, peer: IpAddr) {
        self.shared
            .allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer);
    }

    /// How many queues of each kind the server holds a sender for.
    pub fn open_queues(&self) -> QueueCounts {
        let q = self.shared.queues();
        QueueCounts {
            forwarding: q.forwarding.len(),
            shutdown: q.shutdown.len(),
            storage_balloon: q.storage.len(),
        }
    }

    /// The call log.
    pub fn log(&self) -> &EventLog {
        &self.shared.log
    }

    /// Writes `<internal>/debian_service_port` with this server's port.
    pub fn announce(&self, internal: &Path) -> Result<PathBuf, ServiceError> {
        write_port_file(internal, self.local_addr.port())
    }

    /// The guest's latest active-port snapshot, updated on every report.
    pub fn active_ports(&self) -> watch::Receiver<Vec<ActivePort>> {
        self.shared.ports.subscribe()
    }

    /// A handle to send forwarding requests with.
    pub fn forwarding(&self) -> ForwardingQueue {
        ForwardingQueue(self.shared.clone())
    }

    /// Asks the guest to power off: one empty item on every open shutdown
    /// stream, then the stream ends. Returns whether any stream took the
    /// request; when none did, the caller must stop the VM hard.
    pub async fn request_shutdown(&self) -> bool {
        let senders = std::mem::take(&mut self.shared.queues().shutdown);
        let mut delivered = false;
        for tx in senders {
            if tx.send(Ok(proto::ShutdownRequestItem {})).await.is_ok() {
                delivered = true;
            }
            // Dropping `tx` ends the stream.
        }
        if delivered {
            self.shared.log.push(
                None,
                Event::ItemSent {
                    queue: Queue::Shutdown,
                    detail: "ShutdownRequestItem {}".into(),
                },
            );
        }
        delivered
    }

    /// Sends `available_bytes` on every open storage-balloon stream and
    /// remembers it for streams opened later. Returns how many took it.
    pub async fn send_storage_balloon(&self, available_bytes: u64) -> usize {
        self.storage_balloon().send(available_bytes).await
    }

    /// A handle for the storage-balloon policy.
    pub fn storage_balloon(&self) -> StorageBalloonQueue {
        StorageBalloonQueue(self.shared.clone())
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        {
            // Ending the queues lets open streams finish so the graceful
            // shutdown does not wait on them forever.
            let mut q = self.shared.queues();
            q.forwarding.clear();
            q.shutdown.clear();
            q.storage.clear();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Graceful shutdown waits for clients to hang up; a guest that
            // never does must not hold the host.
            match tokio::time::timeout(STOP_GRACE, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!("DebianService ended with: {e}"),
                Ok(Err(e)) => tracing::warn!("DebianService task failed: {e}"),
                Err(_) => task.abort(),
            }
        }
    }
}

impl Drop for DebianServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Sends `ForwardingRequestItem`s on the guest's forwarding stream.
#[derive(Clone)]
pub struct ForwardingQueue(Arc<Shared>);

impl ForwardingQueue {
    /// The CID the guest opened the queue with, if a queue is open.
    pub fn cid(&self) -> Option<i32> {
        let mut q = self.0.queues();
        q.forwarding.retain(|(_, tx)| !tx.is_closed());
        q.forwarding.last().map(|(cid, _)| *cid)
    }

    /// Asks the guest to connect `guest_tcp_port` to host vsock port
    /// `vsock_port`, on the newest open forwarding stream.
    pub async fn request(&self, guest_tcp_port: u16, vsock_port: u32) -> Result<(), ServiceError> {
        let tx = {
            let mut q = self.0.queues();
            q.forwarding.retain(|(_, tx)| !tx.is_closed());
            q.forwarding.last().map(|(_, tx)| tx.clone())
        };
        let tx = tx.ok_or(ServiceError::NoForwardingQueue)?;
        let item = proto::ForwardingRequestItem {
            guest_tcp_port: i32::from(guest_tcp_port),
            vsock_port: i32::try_from(vsock_port).map_err(|_| ServiceError::NoForwardingQueue)?,
        };
        tx.send(Ok(item))
            .await
            .map_err(|_| ServiceError::NoForwardingQueue)?;
        self.0.log.push(
            None,
            Event::ItemSent {
                queue: Queue::Forwarding,
                detail: format!("guest_tcp_port={guest_tcp_port} vsock_port={vsock_port}"),
            },
        );
        Ok(())
    }
}

/// Sends `StorageBalloonRequestItem`s to the guest.
#[derive(Clone)]
pub struct StorageBalloonQueue(Arc<Shared>);

impl StorageBalloonQueue {
    /// Sends `available_bytes` on every open storage-balloon stream and
    /// remembers it for streams opened later. Returns how many took it.
    pub async fn send(&self, available_bytes: u64) -> usize {
        let senders: Vec<_> = {
            let mut q = self.0.queues();
            q.last_storage = Some(available_bytes);
            q.storage.retain(|tx| !tx.is_closed());
            q.storage.clone()
        };
        let mut delivered = 0;
        for tx in senders {
            let item = proto::StorageBalloonRequestItem { available_bytes };
            if tx.send(Ok(item)).await.is_ok() {
                delivered += 1;
            }
        }
        self.0.log.push(
            None,
            Event::ItemSent {
                queue: Queue::StorageBalloon,
                detail: format!("available_bytes={available_bytes} to {delivered} stream(s)"),
            },
        );
        delivered
    }
}

impl crate::balloon::StorageSink for StorageBalloonQueue {
    async fn send(&self, available_bytes: u64) {
        StorageBalloonQueue::send(self, available_bytes).await;
    }
}

/// Writes `<internal>/debian_service_port` as bare ASCII digits, atomically.
/// Public so a scenario can also plant a stale port.
pub fn write_port_file(internal: &Path, port: u16) -> Result<PathBuf, ServiceError> {
    let path = internal.join(PORT_FILE);
    write_atomic(&path, port.to_string().as_bytes()).map_err(|source| ServiceError::PortFile {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
