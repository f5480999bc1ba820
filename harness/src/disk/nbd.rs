//! A minimal NBD server (fixed newstyle handshake, simple replies) on a Unix
//! socket, serving one [`Layout`]. Written from the NBD protocol document.
//! Enough for QEMU's client: OPT_GO / OPT_EXPORT_NAME, READ, WRITE, FLUSH, DISC.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{Layout, WriteError};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const INFO_EXPORT: u16 = 0;

const TF_HAS_FLAGS: u16 = 1;
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const MAX_REQUEST: u32 = 32 << 20;

/// Serves the disk until dropped. Writes are logged to `log` when refused.
pub struct NbdServer {
    path: PathBuf,
    /// A handle on the listening socket, to wake `accept` at drop.
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NbdServer {
    pub fn start(layout: Arc<Layout>, path: &Path) -> std::io::Result<NbdServer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let handle = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let layout = layout.clone();
                    let _ = std::thread::Builder::new()
                        .name("nbd-conn".into())
                        .spawn(move || {
                            // A client going away mid-request is normal at VM exit.
                            let _ = serve(conn, &layout);
                        });
                }
            })?;
        Ok(NbdServer {
            path: path.to_owned(),
            listener: handle,
            stop,
            thread: Some(thread),
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The URL QEMU tools accept (`qemu-img`, `qemu-io`).
    pub fn url(&self) -> String {
        format!("nbd+unix:///?socket={}", self.path.display())
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag: shutdown() on a listening
        // socket makes a blocked accept() return (Linux), even when the
        // socket file is already gone.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_u16(r: &mut impl Read) -> std::io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn opt_reply(w: &mut impl Write, opt: u32, ty: u32, data: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

fn transmission_flags(layout: &Layout) -> u16 {
    let any_writable = layout.entries.iter().any(|e| e.writable);
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH;
    if !any_writable {
        f |= TF_READ_ONLY;
    }
    f
}

/// One client on `s` (a socket; any byte stream in the fuzz tests).
pub(super) fn serve(mut s: impl Read + Write, layout: &Layout) -> std::io::Result<()> {
    s.write_all(&NBDMAGIC.to_be_bytes())?;
    s.write_all(&IHAVEOPT.to_be_bytes())?;
    s.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    let client_flags = read_u32(&mut s)?;
    let flags = transmission_flags(layout);

    // Option haggling.
    loop {
        if read_u64(&mut s)? != IHAVEOPT {
            return Err(bad("bad option magic"));
        }
        let opt = read_u32(&mut s)?;
        let len = read_u32(&mut s)?;
        if len > 64 * 1024 {
            return Err(bad("option too long"));
        }
        let mut data = vec![0; len as usize];
        s.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                s.write_all(&layout.size.to_be_bytes())?;
                s.write_all(&flags.to_be_bytes())?;
                if client_flags & CLIENT_NO_ZEROES == 0 {
                    s.write_all(&[0u8; 124])?;
                }
                break;
            }
            OPT_GO | OPT_INFO => {
                let mut info = Vec::new();
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&layout.size.to_be_bytes());
                info.extend_from_slice(&flags.to_be_bytes());
                opt_reply(&mut s, opt, REP_INFO, &info)?;
                opt_reply(&mut s, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    break;
                }
            }
            OPT_ABORT => {
                let _ = opt_reply(&mut s, opt, REP_ACK, &[]);
                return Ok(());
            }
            // Structured replies, meta contexts, TLS, extended headers: not offered.
            _ => opt_reply(&mut s, opt, REP_ERR_UNSUP, &[])?,
        }
    }

    // Transmission.
    let mut buf = Vec::new();
    loop {
        if read_u32(&mut s)? != REQUEST_MAGIC {
            return Err(bad("bad request magic"));
        }
        let _cmd_flags = read_u16(&mut s)?;
        let ty = read_u16(&mut s)?;
        let cookie = read_u64(&mut s)?;
        let offset = read_u64(&mut s)?;
        let length = read_u32(&mut s)?;
        let reply = |s: &mut dyn Write, err: u32, data: &[u8]| -> std::io::Result<()> {
            let mut b = Vec::with_capacity(16 + data.len());
            b.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            b.extend_from_slice(&err.to_be_bytes());
            b.extend_from_slice(&cookie.to_be_bytes());
            b.extend_from_slice(data);
            s.write_all(&b)
        };
        match ty {
            CMD_READ => {
                if length > MAX_REQUEST || offset.saturating_add(length as u64) > layout.size {
                    reply(&mut s, EINVAL, &[])?;
                    continue;
                }
                buf.resize(length as usize, 0);
                match super::read_at(layout, &mut buf, offset) {
                    Ok(()) => reply(&mut s, 0, &buf)?,
                    Err(_) => reply(&mut s, EIO, &[])?,
                }
            }
            CMD_WRITE => {
                if length > MAX_REQUEST {
                    return Err(bad("write too large"));
                }
                buf.resize(length as usize, 0);
                s.read_exact(&mut buf)?;
                let err = match super::write_at(layout, &buf, offset) {
                    Ok(()) => 0,
                    Err(WriteError::ReadOnly(_)) => EPERM,
                    Err(WriteError::OutOfRange) => EINVAL,
                    Err(WriteError::Io(_)) => EIO,
                };
                reply(&mut s, err, &[])?;
            }
            CMD_FLUSH => {
                let err = if super::flush(layout).is_ok() { 0 } else { EIO };
                reply(&mut s, err, &[])?;
            }
            CMD_DISC => return Ok(()),
            _ => reply(&mut s, EINVAL, &[])?,
        }
    }
}
