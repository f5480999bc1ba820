//! The input console (ttyS0 or hvc0) as a byte stream with async
//! `expect(regex, timeout)`. QEMU itself writes the raw transcript (the
//! chardev's `logfile=`), so it survives a harness crash; this side keeps
//! the bytes for matching and answers terminal queries so nothing in the
//! guest waits on them.

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
}

#[derive(Default)]
struct Buf {
    bytes: Vec<u8>,
    /// Everything before this offset has been consumed by an expect().
    cursor: usize,
    closed: bool,
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
                b2.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
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
}
