//! The app's ttyd bridge (`AndroidToVmBridge`): a loopback listener whose
//! clients must carry `access_token=<uuid>` in their first bytes (else
//! HTTP 403); each is joined to the guest's vsock 7681, tried 600 times
//! 100 ms apart (else HTTP 504), with the bytes read so far replayed.
//! docs/android-releases.md §1 row 17.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::guest_vsock;

/// ttyd's vsock port in the guest (`ttyd_vsock_bridge.service`).
pub const TTYD_VSOCK_PORT: u32 = 7681;
/// The bridge reads this much once, and looks for the token in it.
pub const FIRST_READ: usize = 4096;
/// Connect attempts to the guest per client …
pub const CONNECT_TRIES: u32 = 600;
/// … this far apart.
pub const CONNECT_INTERVAL: Duration = Duration::from_millis(100);

const FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const GATEWAY_TIMEOUT: &[u8] =
    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// How the bridge reaches the guest.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// vhost-device-vsock's `--uds-path`.
    pub vsock_uds: PathBuf,
    pub guest_port: u32,
    pub tries: u32,
    pub interval: Duration,
}

impl BridgeConfig {
    /// The app's values.
    pub fn new(vsock_uds: impl Into<PathBuf>) -> Self {
        Self {
            vsock_uds: vsock_uds.into(),
            guest_port: TTYD_VSOCK_PORT,
            tries: CONNECT_TRIES,
            interval: CONNECT_INTERVAL,
        }
    }
}

/// The running bridge; stops accepting on drop (open pipes end with
/// their clients).
pub struct TtydBridge {
    addr: SocketAddr,
    token: String,
    task: JoinHandle<()>,
}

impl Drop for TtydBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TtydBridge {
    /// Listens on 127.0.0.1:0 with a fresh token.
    pub async fn start(config: BridgeConfig) -> std::io::Result<TtydBridge> {
        let token = uuid::Uuid::new_v4().to_string();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let key = format!("access_token={token}");
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let config = config.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(client, &config, &key).await {
                        tracing::debug!("ttyd bridge: {e}");
                    }
                });
            }
        });
        Ok(TtydBridge { addr, token, task })
    }

    /// Where the app's WebView connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The access token (the app's cookie).
    pub fn token(&self) -> &str {
        &self.token
    }
}

async fn serve(mut client: TcpStream, config: &BridgeConfig, key: &str) -> std::io::Result<()> {
    let mut first = vec![0u8; FIRST_READ];
    let n = client.read(&mut first).await?;
    first.truncate(n);
    if !contains(&first, key.as_bytes()) {
        client.write_all(FORBIDDEN).await?;
        return client.shutdown().await;
    }
    let mut guest = None;
    for attempt in 0..config.tries {
        match guest_vsock::connect(&config.vsock_uds, config.guest_port, config.interval * 10).await
        {
            Ok(s) => {
                guest = Some(s);
                break;
            }
            Err(e) => {
                if attempt + 1 == config.tries {
                    tracing::warn!("ttyd bridge: giving up after {} tries: {e}", config.tries);
                }
                tokio::time::sleep(config.interval).await;
            }
        }
    }
    let Some(mut guest) = guest else {
        client.write_all(GATEWAY_TIMEOUT).await?;
        return client.shutdown().await;
    };
    guest.write_all(&first).await?;
    tokio::io::copy_bidirectional(&mut client, &mut guest).await?;
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::super::guest_vsock::fake::{guest_listen_path, FakeBackend};
    use super::*;
    use tokio::net::UnixListener;

    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn token_gates_then_the_guest_gets_the_replayed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FakeBackend::start(dir.path());
        let mut config = BridgeConfig::new(&backend.uds);
        config.tries = 5;
        config.interval = Duration::from_millis(20);
        let bridge = TtydBridge::start(config).await.unwrap();
        assert!(bridge.addr().ip().is_loopback());
        uuid::Uuid::parse_str(bridge.token()).expect("a uuid");

        // Missing and wrong tokens: 403, the guest never asked.
        let got = exchange(bridge.addr(), "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 403"), "{got}");
        let wrong =
            "GET /?x HTTP/1.1\r\nCookie: access_token=00000000-0000-4000-8000-000000000000\r\n\r\n";
        assert!(exchange(bridge.addr(), wrong)
            .await
            .starts_with("HTTP/1.1 403"));

        // Right token, nothing listening in the guest: 504 after the tries.
        let ok = format!(
            "GET /?fontSize=13 HTTP/1.1\r\nCookie: access_token={}\r\n\r\n",
            bridge.token()
        );
        let t0 = std::time::Instant::now();
        let got = exchange(bridge.addr(), &ok).await;
        assert!(got.starts_with("HTTP/1.1 504"), "{got}");
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "tried 5 × 20 ms"
        );

        // Right token, guest ttyd up: the first bytes arrive replayed, then a pipe.
        let guest = UnixListener::bind(guest_listen_path(dir.path(), TTYD_VSOCK_PORT)).unwrap();
        let echo = tokio::spawn(async move {
            let (mut g, _) = guest.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = g.read(&mut buf).await.unwrap();
            let seen = String::from_utf8_lossy(&buf[..n]).into_owned();
            g.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
                .await
                .unwrap();
            seen
        });
        let got = exchange(bridge.addr(), &ok).await;
        assert!(got.ends_with("\r\n\r\nhi"), "{got}");
        assert_eq!(echo.await.unwrap(), ok);
    }
}
