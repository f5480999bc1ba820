//! A blocking accept loop for an rsbinder `RpcServer`.
//!
//! rsbinder's own loop (`RpcServer::run`) keeps its listener non-blocking
//! and sleeps 5 ms between `accept` attempts so it can see its stop flag:
//! in a VM that is a vCPU wakeup 200 times a second for the VM's whole
//! life (measured in a booted guest under TCG: 265 wakeups and 43 ms of
//! CPU a second), a cost a phone pays in battery. This loop sleeps in
//! poll(2) on the listener and a stop socket, and hands each connection to
//! `RpcServer::serve_connection`, which serves it as rsbinder's loop would
//! (a worker of its own, the handshake deadline, the server's authorizer
//! and session limits).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rsbinder::rpc::transport::{UnixTransport, VsockTransport};
use rsbinder::rpc::{RpcServer, RpcTransport};

/// A listening socket whose connections become RPC transports.
pub trait Listener: AsFd {
    fn set_nonblocking(&self, on: bool) -> io::Result<()>;
    /// One pending connection, in blocking mode (the transports need it),
    /// as a transport.
    fn accept_transport(&self) -> io::Result<Box<dyn RpcTransport>>;
}

impl Listener for vsock::VsockListener {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        vsock::VsockListener::set_nonblocking(self, on)
    }
    fn accept_transport(&self) -> io::Result<Box<dyn RpcTransport>> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(false)?;
        Ok(Box::new(
            VsockTransport::from_stream(stream).map_err(io::Error::from)?,
        ))
    }
}

impl Listener for UnixListener {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        UnixListener::set_nonblocking(self, on)
    }
    fn accept_transport(&self) -> io::Result<Box<dyn RpcTransport>> {
        let (stream, _) = self.accept()?;
        stream.set_nonblocking(false)?;
        Ok(Box::new(
            UnixTransport::from_stream(stream).map_err(io::Error::from)?,
        ))
    }
}

/// Ends [`serve`] from another thread (and any later call with its
/// [`StopSignal`]).
pub struct Stop(UnixStream);

impl Stop {
    pub fn stop(&self) {
        // One byte is enough; if the buffer were somehow full, the loop
        // is already woken.
        let _ = (&self.0).write_all(&[1]);
    }
}

/// The end of the stop socket [`serve`] polls.
pub struct StopSignal(UnixStream);

pub fn stop_pair() -> io::Result<(Stop, StopSignal)> {
    let (a, b) = UnixStream::pair()?;
    Ok((Stop(a), StopSignal(b)))
}

/// Accepts on `listener` until `stop`; each connection is served by
/// `server`. The listener is made non-blocking: a client that goes away
/// between the wakeup and `accept` costs one more poll, not a hang.
/// Transient accept errors are skipped (as rsbinder's loop does); running
/// out of descriptors or memory backs off 50 ms; anything else ends the
/// loop with the error.
pub fn serve(
    server: &Arc<RpcServer>,
    listener: &impl Listener,
    stop: &StopSignal,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.0.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        if !ready(1).is_empty() {
            return Ok(());
        }
        if ready(0).intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
            return Err(io::Error::other(format!(
                "the listener reported {:?}",
                ready(0)
            )));
        }
        if !ready(0).contains(PollFlags::POLLIN) {
            continue;
        }
        match listener.accept_transport() {
            Ok(t) => server.serve_connection(t),
            Err(e) if transient(&e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    eprintln!("accept: {e} (skipped)");
                }
            }
            Err(e) if exhausted(&e) => {
                eprintln!("accept: {e} (backing off)");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What `accept(2)` says may happen to one pending connection.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ETIMEDOUT
        )
    )
}

/// Heals as open sessions close their descriptors.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}
