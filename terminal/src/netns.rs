//! Which network namespace the guest network lives in.
//!
//! On the phone the app and the VM's TAP share the host's namespace. A test
//! host keeps each VM's TAP in its own namespace instead, so the app's
//! sockets on the guest network (the gRPC server, mDNS, ttyd) must be made
//! there. A socket belongs to the namespace of the thread that created it,
//! for its whole life, so it is created on a short-lived thread that joined
//! the namespace, and then used from anywhere. Sockets facing the user
//! (forwarded ports on 127.0.0.1) stay in the caller's namespace.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Where guest-network sockets are created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GuestNet {
    /// The caller's own namespace (as on the phone, or behind QEMU user-mode
    /// networking).
    #[default]
    Current,
    /// The network namespace at this path (`/run/netns/<name>`).
    Namespace(PathBuf),
}

impl GuestNet {
    /// A new unbound socket in this namespace.
    pub fn socket(&self, domain: Domain, ty: Type, proto: Protocol) -> io::Result<Socket> {
        match self {
            GuestNet::Current => Socket::new(domain, ty, Some(proto)),
            GuestNet::Namespace(path) => {
                in_namespace(path, move || Socket::new(domain, ty, Some(proto)))
            }
        }
    }

    /// A TCP connection to `addr`, made from this namespace.
    pub async fn tcp_connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let sock = self.socket(Domain::for_address(addr), Type::STREAM, Protocol::TCP)?;
        sock.set_nonblocking(true)?;
        tokio::net::TcpSocket::from_std_stream(sock.into())
            .connect(addr)
            .await
    }

    /// A TCP listener on `addr` in this namespace.
    pub fn tcp_listen(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let sock = self.socket(Domain::for_address(addr), Type::STREAM, Protocol::TCP)?;
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&SockAddr::from(addr))?;
        sock.listen(128)?;
        tokio::net::TcpListener::from_std(sock.into())
    }
}

/// Runs `f` on a fresh thread that joined the network namespace at `path`.
fn in_namespace<T: Send>(path: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        )
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::other(format!("joining network namespace {}: {e}", path.display()))
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_named() {
        let e = GuestNet::Namespace("/run/netns/avf-does-not-exist".into())
            .socket(Domain::IPV4, Type::DGRAM, Protocol::UDP)
            .unwrap_err();
        assert!(e.to_string().contains("avf-does-not-exist"), "{e}");
    }

    #[test]
    fn own_namespace_by_path_works() {
        // /proc/self/ns/net names the namespace we are in already.
        let ns = GuestNet::Namespace("/proc/self/ns/net".into());
        let s = ns
            .socket(Domain::IPV4, Type::DGRAM, Protocol::UDP)
            .expect("socket");
        s.bind(&SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .expect("bind");
    }
}
