//! The forwarding host: host TCP listeners for the guest's active ports,
//! bridged to the guest over vsock (contract §5).
//!
//! vhost-device-vsock delivers a guest connection to host vsock port V by
//! connecting to the Unix socket `<uds>_<V>`, so for each accepted host
//! connection we listen there, ask the guest (over the forwarding stream) to
//! connect its `127.0.0.1:P` to `vsock:2:V`, accept one connection and
//! splice. The Unix side carries no peer CID: the CID check is made when the
//! guest opens the forwarding queue (its `QueueOpeningRequest.cid` is
//! compared with the VM's CID by the DebianService server), and a given
//! vhost-device-vsock instance only serves that one VM.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinHandle;

use crate::service::{ForwardingQueue, ServiceError};

/// How long the guest gets to connect back over vsock.
pub const GUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Guest ports below this are never forwarded, whatever the user enabled:
/// the app's forwarder_host ignores them (a guest could otherwise take the
/// host's privileged ports, and port 0 means "any").
pub const MIN_FORWARDED_PORT: u16 = 1024;

/// First host vsock port handed out; below are ports guests commonly use.
pub const FIRST_VSOCK_PORT: u32 = 40_000;

/// Errors of the forwarding host.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A host listener could not be bound.
    #[error("forwarding: cannot listen on {addr} for guest port {guest_port}: {source}")]
    Listen {
        addr: SocketAddr,
        guest_port: u16,
        source: std::io::Error,
    },
    /// The vsock Unix socket could not be bound.
    #[error("forwarding: cannot listen on {path}: {source}")]
    VsockListen {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The guest did not connect back in time.
    #[error("forwarding: guest did not connect to vsock port {vsock_port} within {timeout:?}")]
    GuestTimeout { vsock_port: u32, timeout: Duration },
    /// The forwarding request could not be sent.
    #[error(transparent)]
    Request(#[from] ServiceError),
    /// `IDebianService.requestForwarding` failed (AIDL mode).
    #[error("forwarding: requestForwarding: {0}")]
    Binder(String),
    /// Copying bytes failed.
    #[error("forwarding: splice failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends one forwarding request to the guest. Implemented by the service's
/// [`ForwardingQueue`]; tests may use their own.
pub trait RequestSink: Send + Sync + 'static {
    /// Asks the guest to connect its `guest_port` to host vsock `vsock_port`.
    fn request(
        &self,
        guest_port: u16,
        vsock_port: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send + '_>>;
}

impl RequestSink for ForwardingQueue {
    fn request(
        &self,
        guest_port: u16,
        vsock_port: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send + '_>> {
        Box::pin(async move { Ok(ForwardingQueue::request(self, guest_port, vsock_port).await?) })
    }
}

/// Which host port a guest port is published on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPorts {
    /// The guest's own port number, as the app does.
    Same,
    /// An ephemeral port (tests, parallel runs).
    Ephemeral,
}

/// Setup of the forwarding host.
#[derive(Clone, Debug)]
pub struct ForwardingConfig {
    /// vhost-device-vsock's `--uds-path`; guest connections to port V arrive
    /// on `<vsock_uds>_<V>`.
    pub vsock_uds: PathBuf,
    /// Host port choice.
    pub host_ports: HostPorts,
    /// Ports the user enabled; `None` means all.
    pub enabled: Option<HashSet<u16>>,
    /// How long the guest gets to connect back.
    pub guest_connect_timeout: Duration,
}

impl ForwardingConfig {
    /// Defaults for a vsock socket path.
    pub fn new(vsock_uds: impl Into<PathBuf>) -> Self {
        Self {
            vsock_uds: vsock_uds.into(),
            host_ports: HostPorts::Ephemeral,
            enabled: None,
            guest_connect_timeout: GUEST_CONNECT_TIMEOUT,
        }
    }
}

struct Published {
    addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Published {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Inner {
    config: ForwardingConfig,
    sink: Box<dyn RequestSink>,
    next_vsock: AtomicU32,
}

/// Host listeners for the guest's active ports.
pub struct Forwarder {
    inner: Arc<Inner>,
    published: Mutex<BTreeMap<u16, Published>>,
}

impl Forwarder {
    /// A forwarder with no ports published yet.
    pub fn new(config: ForwardingConfig, sink: impl RequestSink) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                sink: Box::new(sink),
                next_vsock: AtomicU32::new(FIRST_VSOCK_PORT),
            }),
            published: Mutex::new(BTreeMap::new()),
        }
    }

    /// Follows the guest's port reports (either mode's service): every
    /// change publishes and withdraws accordingly, until the reports end.
    pub fn follow(
        self: &Arc<Self>,
        mut ports: tokio::sync::watch::Receiver<Vec<crate::events::ActivePort>>,
    ) -> JoinHandle<()> {
        let forwarder = self.clone();
        tokio::spawn(async move {
            while ports.changed().await.is_ok() {
                let active: Vec<u16> = ports.borrow_and_update().iter().map(|p| p.port).collect();
                if let Err(e) = forwarder.update(&active).await {
                    tracing::warn!("{e}");
                }
            }
        })
    }

    /// Publishes the enabled ones of `active` guest ports (never those below
    /// [`MIN_FORWARDED_PORT`]) and withdraws the ports no longer active.
    pub async fn update(&self, active: &[u16]) -> Result<(), ForwardError> {
        let wanted: BTreeSet<u16> = active
            .iter()
            .copied()
            .filter(|p| *p >= MIN_FORWARDED_PORT)
            .filter(|p| {
                self.inner
                    .config
                    .enabled
                    .as_ref()
                    .is_none_or(|e| e.contains(p))
            })
            .collect();
        let to_add: Vec<u16> = {
            let mut published = self.lock();
            published.retain(|port, _| wanted.contains(port));
            wanted
                .iter()
                .copied()
                .filter(|p| !published.contains_key(p))
                .collect()
        };
        // One port that cannot be published (host port taken) must not keep
        // the others from being published: report the first failure after.
        let mut first_err = None;
        for guest_port in to_add {
            match self.publish(guest_port).await {
                Ok(entry) => {
                    self.lock().insert(guest_port, entry);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The host addresses a guest port is published on (IPv4 first).
    pub fn host_addrs(&self, guest_port: u16) -> Option<Vec<SocketAddr>> {
        self.lock().get(&guest_port).map(|p| p.addrs.clone())
    }

    /// The guest ports currently published.
    pub fn published(&self) -> Vec<u16> {
        self.lock().keys().copied().collect()
    }

    async fn publish(&self, guest_port: u16) -> Result<Published, ForwardError> {
        let port = match self.inner.config.host_ports {
            HostPorts::Same => guest_port,
            HostPorts::Ephemeral => 0,
        };
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let l4 = TcpListener::bind(v4)
            .await
            .map_err(|source| ForwardError::Listen {
                addr: v4,
                guest_port,
                source,
            })?;
        let bound = l4.local_addr()?;
        let mut listeners = vec![l4];
        // Same port on [::1]; a host without IPv6 loopback only gets IPv4.
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, bound.port()));
        match TcpListener::bind(v6).await {
            Ok(l6) => listeners.push(l6),
            Err(e) => tracing::debug!("forwarding: no [::1] listener for {guest_port}: {e}"),
        }
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for listener in listeners {
            addrs.push(listener.local_addr()?);
            let inner = self.inner.clone();
            tasks.push(tokio::spawn(accept_loop(inner, listener, guest_port)));
        }
        Ok(Published { addrs, tasks })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Published>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, guest_port: u16) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("forwarding: accept on guest port {guest_port}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = bridge(&inner, tcp, guest_port).await {
                tracing::warn!("forwarding {peer} -> guest port {guest_port}: {e}");
            }
        });
    }
}

/// Removes the vsock socket file when the bridge ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn vsock_path(base: &Path, port: u32) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

async fn bridge(inner: &Inner, mut tcp: TcpStream, guest_port: u16) -> Result<(), ForwardError> {
    let (vsock_port, listener, file) = loop {
        let port = inner.next_vsock.fetch_add(1, Ordering::Relaxed);
        let path = vsock_path(&inner.config.vsock_uds, port);
        match UnixListener::bind(&path) {
            Ok(l) => break (port, l, SocketFile(path)),
            // Left over from another run or in use: take the next port.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(ForwardError::VsockListen { path, source }),
        }
    };
    inner.sink.request(guest_port, vsock_port).await?;
    let timeout = inner.config.guest_connect_timeout;
    let (mut guest, _) = tokio::time::timeout(timeout, listener.accept())
        .await
        .map_err(|_| ForwardError::GuestTimeout {
            vsock_port,
            timeout,
        })??;
    // One connection per vsock port: stop listening before splicing.
    drop(listener);
    drop(file);
    tokio::io::copy_bidirectional(&mut tcp, &mut guest).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::sync::mpsc;

    /// Plays the guest: on each request, connects `<uds>_<V>` to a local
    /// echo-with-transform server standing in for the guest's port.
    struct FakeGuest {
        uds: PathBuf,
        seen: mpsc::UnboundedSender<(u16, u32)>,
        mode: Mode,
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Echo,
        Never,
        /// Connects, then hangs up at once on every other request.
        HangUpOdd,
    }

    impl RequestSink for FakeGuest {
        fn request(
            &self,
            guest_port: u16,
            vsock_port: u32,
        ) -> Pin<Box<dyn Future<Output = Result<(), ForwardError>> + Send + '_>> {
            let _ = self.seen.send((guest_port, vsock_port));
            let path = vsock_path(&self.uds, vsock_port);
            let mode = self.mode;
            Box::pin(async move {
                if mode == Mode::HangUpOdd && vsock_port % 2 == 1 {
                    drop(UnixStream::connect(&path).await.unwrap());
                } else if mode != Mode::Never {
                    tokio::spawn(async move {
                        let mut s = UnixStream::connect(&path).await.unwrap();
                        // The guest server: reply with every byte + 1.
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = s.read(&mut buf).await.unwrap();
                            if n == 0 {
                                break;
                            }
                            for b in &mut buf[..n] {
                                *b = b.wrapping_add(1);
                            }
                            s.write_all(&buf[..n]).await.unwrap();
                        }
                    });
                }
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn splices_a_mebibyte_through_the_vsock_socket() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let (tx, mut seen) = mpsc::unbounded_channel();
        let fwd = Forwarder::new(
            ForwardingConfig::new(&uds),
            FakeGuest {
                uds: uds.clone(),
                seen: tx,
                mode: Mode::Echo,
            },
        );
        fwd.update(&[8080, 7000]).await.unwrap();
        assert_eq!(fwd.published(), vec![7000, 8080]);
        let addr = fwd.host_addrs(8080).unwrap()[0];
        assert!(addr.ip().is_loopback(), "the app listens on loopback only");

        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = tcp.split();
        let sent = data.clone();
        let (_, got) = tokio::join!(
            async move { wr.write_all(&sent).await.unwrap() },
            async move {
                let mut got = vec![0u8; 1 << 20];
                rd.read_exact(&mut got).await.unwrap();
                got
            }
        );
        let expect: Vec<u8> = data.iter().map(|b| b.wrapping_add(1)).collect();
        assert!(got == expect, "1 MiB round trip differs");
        let (gp, vp) = seen.recv().await.unwrap();
        assert_eq!(gp, 8080);
        assert!(vp >= FIRST_VSOCK_PORT);
        drop(tcp);

        // Socket files are cleaned up once the guest connected.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");

        // Withdrawn when no longer active.
        fwd.update(&[7000]).await.unwrap();
        assert_eq!(fwd.published(), vec![7000]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn guest_that_never_connects_times_out_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let (tx, mut seen) = mpsc::unbounded_channel();
        let mut config = ForwardingConfig::new(&uds);
        config.guest_connect_timeout = Duration::from_millis(200);
        config.enabled = Some([9000].into_iter().collect());
        let fwd = Forwarder::new(
            config,
            FakeGuest {
                uds: uds.clone(),
                seen: tx,
                mode: Mode::Never,
            },
        );
        fwd.update(&[9000, 9001]).await.unwrap();
        assert_eq!(fwd.published(), vec![9000], "9001 is not enabled");
        // Privileged ports and port 0 are never forwarded, enabled or not.
        let mut low = ForwardingConfig::new(&uds);
        low.enabled = None;
        let (tx2, _seen2) = mpsc::unbounded_channel();
        let all = Forwarder::new(
            low,
            FakeGuest {
                uds: uds.clone(),
                seen: tx2,
                mode: Mode::Never,
            },
        );
        all.update(&[0, 22, 80, 1023]).await.unwrap();
        assert!(all.published().is_empty(), "{:?}", all.published());
        let addr = fwd.host_addrs(9000).unwrap()[0];
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let (_, vp) = seen.recv().await.unwrap();
        assert!(vsock_path(&uds, vp).exists(), "listening for the guest");
        // The host side is closed once the guest failed to show up.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(!vsock_path(&uds, vp).exists(), "socket file removed");
    }

    #[tokio::test]
    async fn guest_hanging_up_closes_that_connection_only() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let (tx, _seen) = mpsc::unbounded_channel();
        let fwd = Forwarder::new(
            ForwardingConfig::new(&uds),
            FakeGuest {
                uds: uds.clone(),
                seen: tx,
                mode: Mode::HangUpOdd,
            },
        );
        fwd.update(&[8080]).await.unwrap();
        let addr = fwd.host_addrs(8080).unwrap()[0];
        let mut ok = 0;
        let mut hung_up = 0;
        for _ in 0..4 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let _ = tcp.write_all(b"ping").await;
            let mut buf = [0u8; 4];
            match tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut buf)).await {
                Ok(Ok(_)) => {
                    assert_eq!(&buf, b"qjoh");
                    ok += 1;
                }
                Ok(Err(_)) => hung_up += 1,
                Err(_) => panic!("host side neither answered nor closed"),
            }
        }
        assert_eq!((ok, hung_up), (2, 2));
    }

    #[tokio::test]
    async fn a_taken_host_port_does_not_block_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _seen) = mpsc::unbounded_channel();
        let mut config = ForwardingConfig::new(dir.path().join("vsock.sock"));
        config.host_ports = HostPorts::Same;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let free_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let fwd = Forwarder::new(
            config,
            FakeGuest {
                uds: dir.path().join("vsock.sock"),
                seen: tx,
                mode: Mode::Never,
            },
        );
        let err = fwd.update(&[taken_port, free_port]).await.unwrap_err();
        assert!(err.to_string().contains(&taken_port.to_string()), "{err}");
        assert_eq!(fwd.published(), vec![free_port]);
        assert_eq!(fwd.host_addrs(free_port).unwrap()[0].port(), free_port);
    }
}
