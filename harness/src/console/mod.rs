//! The input console (ttyS0 or hvc0) as a byte stream with async
//! `expect(regex, timeout)`. QEMU itself writes the raw transcript (the
//! chardev's `logfile=`), so it survives a harness crash; this side keeps
//! the bytes for matching and answers terminal queries so nothing in the
//! guest waits on them. It also watches for a guest kernel panic: a wait
//! fails at once naming it, instead of running into its timeout.

pub mod qga;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regex::bytes::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{Mutex as AsyncMutex, Notify};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("console: /{pattern}/ not seen within {timeout:?}; last output:\n{tail}")]
    Timeout {
        pattern: String,
        timeout: Duration,
        tail: String,
    },
    #[error("console closed before /{pattern}/ was seen; last output:\n{tail}")]
    Closed { pattern: String, tail: String },
    #[error("the guest kernel panicked before /{pattern}/ was seen: {line}; last output:\n{tail}")]
    GuestPanic {
        pattern: String,
        line: String,
        tail: String,
    },
}

/// What the kernel prints once it has given up.
pub const PANIC_MARK: &[u8] = b"Kernel panic - not syncing";

/// The first complete line holding [`PANIC_MARK`] in `bytes`, from the mark.
fn panic_line(bytes: &[u8]) -> Option<String> {
    let at = bytes
        .windows(PANIC_MARK.len())
        .position(|w| w == PANIC_MARK)?;
    let rest = &bytes[at..];
    let end = rest.iter().position(|&b| b == b'\n')?;
    Some(String::from_utf8_lossy(&rest[..end]).trim_end().to_string())
}

#[derive(Default)]
struct Buf {
    bytes: Vec<u8>,
    /// Everything before this offset has been consumed by an expect().
    cursor: usize,
    closed: bool,
    /// Where the panic scan resumes (the mark may span reads).
    scanned: usize,
    /// The guest kernel's panic line, once seen, and when.
    panic: Option<(String, std::time::Instant)>,
}

impl Buf {
    fn scan_panic(&mut self) {
        if self.panic.is_some() {
            return;
        }
        match panic_line(&self.bytes[self.scanned..]) {
            Some(line) => self.panic = Some((line, std::time::Instant::now())),
            // Keep a mark cut by the read (and its unfinished line) in view.
            None => {
                let tail = self.bytes[self.scanned..]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(self.scanned, |nl| self.scanned + nl + 1);
                self.scanned = tail.max(self.bytes.len().saturating_sub(4096));
            }
        }
    }
}

pub struct Console {
    buf: Arc<Mutex<Buf>>,
    notify: Arc<Notify>,
    writer: Arc<AsyncMutex<OwnedWriteHalf>>,
}

/// Cursor-position report sent back for `ESC[6n` (systemd, agetty ask).
const CPR_REPLY: &[u8] = b"\x1b[24;80R";

impl Console {
    pub async fn connect(socket: &Path) -> std::io::Result<Console> {
        let stream = UnixStream::connect(socket).await?;
        let (mut rd, wr) = stream.into_split();
        let buf = Arc::new(Mutex::new(Buf::default()));
        let notify = Arc::new(Notify::new());
        let writer = Arc::new(AsyncMutex::new(wr));
        let (b2, n2, w2) = (buf.clone(), notify.clone(), writer.clone());
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // Look for queries across chunk boundaries too.
                tail.extend_from_slice(&chunk[..n]);
                let queries = tail.windows(4).filter(|w| w == b"\x1b[6n").count();
                let keep = tail.len().saturating_sub(3);
                tail.drain(..keep);
                for _ in 0..queries {
                    let _ = w2.lock().await.write_all(CPR_REPLY).await;
                }
                {
                    let mut b = b2.lock().unwrap();
                    b.bytes.extend_from_slice(&chunk[..n]);
                    b.scan_panic();
                }
                n2.notify_waiters();
            }
            b2.lock().unwrap().closed = true;
            n2.notify_waiters();
        });
        Ok(Console {
            buf,
            notify,
            writer,
        })
    }

    /// Sends bytes to the guest.
    pub async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.lock().await.write_all(bytes).await
    }

    /// Everything received so far.
    pub fn transcript(&self) -> Vec<u8> {
        self.buf.lock().unwrap().bytes.clone()
    }

    /// What was received from byte `offset` on (a reader following the
    /// console copies only what is new).
    pub fn transcript_from(&self, offset: usize) -> Vec<u8> {
        let buf = self.buf.lock().unwrap();
        buf.bytes.get(offset..).unwrap_or_default().to_vec()
    }

    /// The guest kernel's panic line, if it has panicked, and when the
    /// harness saw it.
    pub fn panic(&self) -> Option<(String, std::time::Instant)> {
        self.buf.lock().unwrap().panic.clone()
    }

    fn tail(&self) -> String {
        let b = self.buf.lock().unwrap();
        let start = b.bytes.len().saturating_sub(2000);
        String::from_utf8_lossy(&b.bytes[start..]).into_owned()
    }

    /// Waits for `re` in the output not yet consumed; returns the match
    /// (lossily decoded: partial UTF-8 sequences never break matching,
    /// since matching is on bytes) and consumes output up to its end.
    pub async fn expect(&self, re: &Regex, timeout: Duration) -> Result<String, ConsoleError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut b = self.buf.lock().unwrap();
                let found = re
                    .find(&b.bytes[b.cursor..])
                    .map(|m| (m.end(), String::from_utf8_lossy(m.as_bytes()).into_owned()));
                if let Some((end, text)) = found {
                    b.cursor += end;
                    return Ok(text);
                }
                if let Some((line, _)) = b.panic.clone() {
                    drop(b);
                    return Err(ConsoleError::GuestPanic {
                        pattern: re.as_str().into(),
                        line,
                        tail: self.tail(),
                    });
                }
                if b.closed {
                    drop(b);
                    return Err(ConsoleError::Closed {
                        pattern: re.as_str().into(),
                        tail: self.tail(),
                    });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ConsoleError::Timeout {
                    pattern: re.as_str().into(),
                    timeout,
                    tail: self.tail(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expect_handles_split_utf8_queries_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("tty.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // "é" split across writes, a cursor query split across writes.
            for part in [
                &b"boot \xc3"[..],
                b"\xa9t\xc3\xa9 \x1b[6",
                b"n",
                b" AVF-BOOT-OK debian/1\r\n",
            ] {
                s.write_all(part).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let mut reply = [0u8; 8];
            s.read_exact(&mut reply).await.unwrap();
            reply
        });
        let c = Console::connect(&sock).await.unwrap();
        let m = c
            .expect(
                &Regex::new(r"AVF-BOOT-OK (\S+)").unwrap(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(m, "AVF-BOOT-OK debian/1");
        assert_eq!(&server.await.unwrap(), CPR_REPLY);
        assert!(String::from_utf8(c.transcript())
            .unwrap()
            .contains("boot été"));
        // Consumed: the same marker is not matched twice.
        let e = c
            .expect(
                &Regex::new("AVF-BOOT-OK").unwrap(),
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            ConsoleError::Closed { .. } | ConsoleError::Timeout { .. }
        ));
    }

    /// A panic split across reads fails a wait at once, naming the line.
    #[tokio::test]
    async fn a_kernel_panic_fails_the_wait_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("tty.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for part in [
                &b"[   12.3] sysrq: Trigger a crash\r\n[   12.4] Kernel pan"[..],
                b"ic - not syncing: sysrq triggered crash\r\n",
            ] {
                s.write_all(part).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Held open: only the panic may end the wait.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let c = Console::connect(&sock).await.unwrap();
        let t0 = std::time::Instant::now();
        let e = c
            .expect(&Regex::new("AVF-BOOT-OK").unwrap(), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let ConsoleError::GuestPanic { line, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(line, "Kernel panic - not syncing: sysrq triggered crash");
        assert_eq!(c.panic().map(|p| p.0).as_deref(), Some(line.as_str()));
        server.abort();
    }

    #[test]
    fn panic_line_needs_the_whole_line() {
        assert_eq!(panic_line(b"x Kernel panic - not syncing: VFS"), None);
        assert_eq!(
            panic_line(b"x Kernel panic - not syncing: VFS\r\nmore").as_deref(),
            Some("Kernel panic - not syncing: VFS")
        );
    }
}
