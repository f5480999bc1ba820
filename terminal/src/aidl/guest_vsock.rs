//! Host → guest vsock connections through vhost-device-vsock: connect its
//! Unix socket, write `CONNECT <port>\n`, read `OK <host port>\n`; the
//! stream then carries the guest port's bytes. (Guest → host port V
//! arrives on `<uds>_V` instead: see [`host_port_path`].)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

/// The longest answer line vhost-device-vsock sends (`OK 4294967295\n`).
const MAX_REPLY: usize = 32;

/// A failed host → guest connection.
#[derive(Debug, thiserror::Error)]
pub enum GuestConnectError {
    #[error("vsock {uds}: connect: {source}")]
    Socket {
        uds: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock {uds}: CONNECT {port}: {source}")]
    Io {
        uds: PathBuf,
        port: u32,
        source: std::io::Error,
    },
    /// Nothing listens on the guest port (the backend closes or answers
    /// something other than `OK`).
    #[error("vsock {uds}: CONNECT {port} refused: {answer:?}")]
    Refused {
        uds: PathBuf,
        port: u32,
        answer: String,
    },
    #[error("vsock {uds}: CONNECT {port}: no answer within {timeout:?}")]
    Timeout {
        uds: PathBuf,
        port: u32,
        timeout: Duration,
    },
}

/// The Unix socket a guest connection to host vsock `port` arrives on.
pub fn host_port_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Whether an answer line accepts the connection.
fn accepted(line: &[u8]) -> bool {
    line.starts_with(b"OK ")
}

/// Connects to guest vsock `port` (async; for byte streams): the blocking
/// handshake on a blocking thread, then the stream handed to tokio.
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, GuestConnectError> {
    let owned = uds.to_owned();
    let s = tokio::task::spawn_blocking(move || connect_blocking(&owned, port, timeout))
        .await
        .map_err(|e| GuestConnectError::Io {
            uds: uds.to_owned(),
            port,
            source: std::io::Error::other(e),
        })??;
    let io = |source| GuestConnectError::Io {
        uds: uds.to_owned(),
        port,
        source,
    };
    s.set_nonblocking(true).map_err(io)?;
    UnixStream::from_std(s).map_err(io)
}

/// Connects to guest vsock `port` (blocking; rsbinder's connector runs on
/// its own threads). Reads the answer byte by byte: what follows the line
/// is the guest's.
pub fn connect_blocking(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<StdUnixStream, GuestConnectError> {
    let mut s = StdUnixStream::connect(uds).map_err(|source| GuestConnectError::Socket {
        uds: uds.to_owned(),
        source,
    })?;
    let io = |source| GuestConnectError::Io {
        uds: uds.to_owned(),
        port,
        source,
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = match s.read(&mut b) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(GuestConnectError::Timeout {
                    uds: uds.to_owned(),
                    port,
                    timeout,
                })
            }
            Err(e) => return Err(io(e)),
        };
        if n == 0 || b[0] == b'\n' || line.len() > MAX_REPLY {
            break;
        }
        line.push(b[0]);
    }
    if !accepted(&line) {
        return Err(GuestConnectError::Refused {
            uds: uds.to_owned(),
            port,
            answer: String::from_utf8_lossy(&line).into_owned(),
        });
    }
    s.set_read_timeout(None).map_err(io)?;
    Ok(s)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A stand-in for vhost-device-vsock's host side: `CONNECT <port>`
    //! is answered by connecting to `<dir>/guest_<port>` (the fake guest's
    //! listener) and splicing; nothing there → the backend hangs up.

    use std::path::{Path, PathBuf};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};
    use tokio::task::JoinHandle;

    /// The fake backend; aborted on drop.
    pub struct FakeBackend {
        pub uds: PathBuf,
        task: JoinHandle<()>,
    }

    impl Drop for FakeBackend {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Where the fake guest listens for vsock `port`.
    pub fn guest_listen_path(dir: &Path, port: u32) -> PathBuf {
        dir.join(format!("guest_{port}"))
    }

    impl FakeBackend {
        pub fn start(dir: &Path) -> FakeBackend {
            let uds = dir.join("vsock.sock");
            let listener = UnixListener::bind(&uds).expect("bind fake vsock");
            let dir = dir.to_owned();
            let task = tokio::spawn(async move {
                let mut next_host_port = 50_000u32;
                while let Ok((s, _)) = listener.accept().await {
                    next_host_port += 1;
                    let dir = dir.clone();
                    let host_port = next_host_port;
                    tokio::spawn(async move {
                        let mut s = BufReader::new(s);
                        let mut line = String::new();
                        if s.read_line(&mut line).await.is_err() {
                            return;
                        }
                        let Some(port) = line
                            .trim()
                            .strip_prefix("CONNECT ")
                            .and_then(|p| p.parse::<u32>().ok())
                        else {
                            return;
                        };
                        let Ok(mut guest) =
                            UnixStream::connect(guest_listen_path(&dir, port)).await
                        else {
                            return;
                        };
                        let mut s = s.into_inner();
                        if s.write_all(format!("OK {host_port}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let _ = tokio::io::copy_bidirectional(&mut s, &mut guest).await;
                    });
                }
            });
            FakeBackend { uds, task }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn connect_reaches_the_guest_port_or_says_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FakeBackend::start(dir.path());
        let guest = UnixListener::bind(guest_listen_path(dir.path(), 7681)).unwrap();
        let t = Duration::from_secs(5);
        let mut c = connect(&backend.uds, 7681, t).await.unwrap();
        let (mut g, _) = guest.accept().await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        g.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        let e = connect(&backend.uds, 9, t).await.unwrap_err();
        assert!(
            matches!(e, GuestConnectError::Refused { port: 9, .. }),
            "{e}"
        );
        let uds = backend.uds.clone();
        let e = tokio::task::spawn_blocking(move || connect_blocking(&uds, 9, t))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("CONNECT 9 refused"), "{e}");
        assert_eq!(
            host_port_path(Path::new("/r/v.sock"), 40000),
            Path::new("/r/v.sock_40000")
        );
    }
}
