//! forwarder_guest's core: connect both ends and copy bytes both ways until
//! both sides have closed. The ends are generic streams, so TCP, vsock and
//! Unix sockets all go through the same copy loop.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite};

/// One end of a forwarded connection, as written on the command line:
/// `127.0.0.1:8080`, `vsock:2:5000` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| format!("{s:?}: expected vsock:<cid>:<port>"))?;
            let cid = cid
                .parse()
                .map_err(|_| format!("{s:?}: CID {cid:?} is not a number"))?;
            let port = port
                .parse()
                .map_err(|_| format!("{s:?}: port {port:?} is not a number"))?;
            return Ok(Endpoint::Vsock { cid, port });
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: empty socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(Endpoint::Tcp)
            .map_err(|_| format!("{s:?}: expected <ip>:<port>, vsock:<cid>:<port> or unix:<path>"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected byte stream of any kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub async fn connect(ep: &Endpoint) -> anyhow::Result<Box<dyn Stream>> {
    let s: Box<dyn Stream> = match ep {
        Endpoint::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        Endpoint::Vsock { cid, port } => Box::new(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
        ),
        Endpoint::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
    };
    Ok(s)
}

/// Bytes copied in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub local_to_remote: u64,
    pub remote_to_local: u64,
}

/// Connects the remote end first (the host is waiting for it), then the local
/// one; if the local service is gone the remote end is closed right away so
/// the host does not wait. Then copies until both directions reached EOF.
pub async fn forward(local: &Endpoint, remote: &Endpoint) -> anyhow::Result<Copied> {
    let mut r = connect(remote)
        .await
        .with_context(|| format!("connecting the remote end {remote}"))?;
    let mut l = connect(local)
        .await
        .with_context(|| format!("connecting the local end {local}"))?;
    splice(&mut l, &mut r).await
}

/// The copy loop: each direction is shut down for writing when its source
/// hits EOF; returns once both have.
pub async fn splice<A, B>(local: &mut A, remote: &mut B) -> anyhow::Result<Copied>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a, b) = tokio::io::copy_bidirectional(local, remote)
        .await
        .context("copying between the two ends")?;
    Ok(Copied {
        local_to_remote: a,
        remote_to_local: b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            "vsock:2:1234".parse::<Endpoint>().unwrap(),
            Endpoint::Vsock { cid: 2, port: 1234 }
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "[::1]:80".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:80".parse().unwrap())
        );
        for bad in [
            "vsock:2",
            "vsock:x:1",
            "vsock:2:-1",
            "unix:",
            "localhost",
            "1.2.3.4",
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let ep = Endpoint::Vsock { cid: 2, port: 9 };
        assert_eq!(ep.to_string().parse::<Endpoint>().unwrap(), ep);
    }
}
