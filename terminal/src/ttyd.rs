//! A ttyd client, as the app's terminal view uses it (contract §4–§5): TLS with
//! the app's client certificate, ttyd's self-signed server certificate
//! accepted, WebSocket subprotocol `tty` on `/ws`, and ttyd 1.7's framing:
//!
//! - client → server: first a JSON object `{"AuthToken", "columns", "rows"}`
//!   (starts with `{`), then `0<input>` and `1{"columns":..,"rows":..}`;
//! - server → client: `0<output>`, `1<window title>`, `2<preferences JSON>`.
//!
//! Frames are sent binary, as ttyd's own web client does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::cert::ClientCert;
use crate::netns::GuestNet;

/// The guest's ttyd port.
pub const TTYD_PORT: u16 = 7681;
/// Time allowed for TCP + TLS + WebSocket set-up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// One frame to ttyd (a few bytes: only a peer that stopped reading takes
/// long).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the shell to answer the first probe.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Terminal size announced; wide so typed commands rarely wrap.
pub const COLUMNS: u16 = 400;
/// Terminal rows announced.
pub const ROWS: u16 = 50;

/// ttyd client errors.
#[derive(Debug, thiserror::Error)]
pub enum TtydError {
    /// TCP connect failed (nothing listening, no route).
    #[error("ttyd {addr}: TCP connect failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The server refused the TLS handshake (e.g. client certificate).
    #[error("ttyd {addr}: TLS refused: {reason}")]
    TlsRefused { addr: SocketAddr, reason: String },
    /// The WebSocket upgrade or a later frame failed.
    #[error("ttyd {addr}: WebSocket: {source}")]
    WebSocket {
        addr: SocketAddr,
        source: Box<tungstenite::Error>,
    },
    /// TLS client set-up failed (bad key).
    #[error("ttyd: TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A step took too long.
    #[error("ttyd {addr}: timed out after {timeout:?} while {step}")]
    Timeout {
        addr: SocketAddr,
        step: String,
        timeout: Duration,
    },
    /// The server closed the session.
    #[error("ttyd {addr}: session closed{detail}")]
    Closed { addr: SocketAddr, detail: String },
}

/// Result of a handshake probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// TLS and the WebSocket upgrade succeeded.
    Accepted,
    /// The server refused TLS (alert or close during the handshake).
    TlsRefused(String),
}

/// A command's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// What the command wrote to the terminal, ANSI escapes stripped and
    /// line ends as `\n`.
    pub output: String,
    /// `$?` after the command.
    pub exit_code: i32,
}

/// Accepts any server certificate (ttyd's is self-signed and made in the
/// guest), while still checking the handshake signatures made with it.
#[derive(Debug)]
struct AcceptServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(identity: Option<&ClientCert>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptServerCert(provider)));
    let config = match identity {
        Some(c) => builder.with_client_auth_cert(vec![c.cert_der().clone()], c.key_der())?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The byte stream under the WebSocket: TLS to the guest's address, or
/// plain TCP to the app's vsock bridge on loopback.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// Is this failure the server refusing us during TLS? With TLS 1.3 the
/// client's handshake completes before the server has checked the client
/// certificate, so the refusal (an alert, or a close) only shows on the
/// first read, i.e. during the WebSocket upgrade.
fn tls_refusal(e: &tungstenite::Error) -> Option<String> {
    match e {
        tungstenite::Error::Io(io) => Some(io.to_string()),
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::HandshakeIncomplete) => {
            Some("connection closed during the handshake".into())
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Some("connection closed during the handshake".into())
        }
        _ => None,
    }
}

async fn open(
    net: &GuestNet,
    addr: SocketAddr,
    identity: Option<&ClientCert>,
    timeout: Duration,
) -> Result<Ws, TtydError> {
    let config = tls_config(identity)?;
    let step = |step: &str| TtydError::Timeout {
        addr,
        step: step.into(),
        timeout,
    };
    let work = async {
        let tcp = net
            .tcp_connect(addr)
            .await
            .map_err(|source| TtydError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| TtydError::TlsRefused {
                addr,
                reason: e.to_string(),
            })?;
        let mut request = format!("wss://{addr}/ws")
            .into_client_request()
            .map_err(|e| TtydError::WebSocket {
                addr,
                source: Box::new(e),
            })?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tty"));
        let tls: Box<dyn Io> = Box::new(tls);
        match tokio_tungstenite::client_async(request, tls).await {
            Ok((ws, _response)) => Ok(ws),
            Err(e) => Err(match tls_refusal(&e) {
                Some(reason) => TtydError::TlsRefused { addr, reason },
                None => TtydError::WebSocket {
                    addr,
                    source: Box::new(e),
                },
            }),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| step("connecting"))?
}

/// Connects from `net` with `identity` (or none) and reports whether the server let us
/// in. Connection failures below TLS are errors, not refusals.
pub async fn probe(
    net: &GuestNet,
    addr: SocketAddr,
    identity: Option<&ClientCert>,
    timeout: Duration,
) -> Result<Handshake, TtydError> {
    match open(net, addr, identity, timeout).await {
        Ok(mut ws) => {
            // libwebsockets may only now notice a bad certificate: read a
            // moment to see whether the server drops us.
            let _ = ws.send(Message::binary(hello(COLUMNS, ROWS))).await;
            match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Ok(Some(Err(e))) if tls_refusal(&e).is_some() => {
                    Ok(Handshake::TlsRefused(e.to_string()))
                }
                _ => {
                    let _ = ws.close(None).await;
                    Ok(Handshake::Accepted)
                }
            }
        }
        Err(TtydError::TlsRefused { reason, .. }) => Ok(Handshake::TlsRefused(reason)),
        Err(e) => Err(e),
    }
}

/// The query the app's terminal view loads (`TtydView`): no `/` before
/// `?` in the app's URL; the WebView requests `/?…`.
pub const BRIDGE_QUERY: &str = "?fontSize=13&disableResizeOverlay=true&rendererType=dom";

/// What the app's vsock bridge answered a page load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeAnswer {
    /// The HTTP status code.
    pub status: u16,
    /// The status line.
    pub line: String,
}

/// Loads the terminal page through the app's bridge at `addr` as the
/// WebView does: `GET http://localhost:<port>/?…` with the access-token
/// cookie (`None`: no cookie).
pub async fn load_page(
    addr: SocketAddr,
    token: Option<&str>,
    timeout: Duration,
) -> Result<BridgeAnswer, TtydError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TtydError::Connect { addr, source })?;
        let cookie = token.map_or(String::new(), |t| format!("Cookie: access_token={t}\r\n"));
        let request = format!(
            "GET /{BRIDGE_QUERY} HTTP/1.1\r\nHost: localhost:{}\r\n{cookie}Connection: close\r\n\r\n",
            addr.port()
        );
        let io = |source| TtydError::Connect { addr, source };
        tcp.write_all(request.as_bytes()).await.map_err(io)?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = tcp.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head);
        let line = text.lines().next().unwrap_or_default().to_string();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| TtydError::Closed {
                addr,
                detail: format!(": no HTTP status in {line:?}"),
            })?;
        Ok(BridgeAnswer { status, line })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TtydError::Timeout {
            addr,
            step: "loading the page through the bridge".into(),
            timeout,
        })?
}

async fn open_bridge(addr: SocketAddr, token: &str, timeout: Duration) -> Result<Ws, TtydError> {
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TtydError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let mut request = format!("ws://localhost:{}/ws", addr.port())
            .into_client_request()
            .map_err(|e| ws_err(addr, e))?;
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tty"));
        let cookie = HeaderValue::from_str(&format!("access_token={token}")).map_err(|_| {
            TtydError::Closed {
                addr,
                detail: ": the access token is not a header value".into(),
            }
        })?;
        headers.insert("Cookie", cookie);
        let tcp: Box<dyn Io> = Box::new(tcp);
        let (ws, _response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| ws_err(addr, e))?;
        Ok(ws)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TtydError::Timeout {
            addr,
            step: "connecting through the bridge".into(),
            timeout,
        })?
}

fn hello(columns: u16, rows: u16) -> Vec<u8> {
    serde_json::json!({ "AuthToken": "", "columns": columns, "rows": rows })
        .to_string()
        .into_bytes()
}

/// An open ttyd session.
pub struct TtydClient {
    addr: SocketAddr,
    ws: Ws,
    raw: Vec<u8>,
    title: Option<String>,
    preferences: Option<String>,
    next_id: u64,
    /// The close frame's code, once ttyd sent one.
    close_code: Option<u16>,
}

impl TtydClient {
    /// Connects from `net`, sends the initial JSON (terminal size), and returns once
    /// the WebSocket is up. Use [`TtydClient::wait_ready`] before typing.
    pub async fn connect(
        net: &GuestNet,
        addr: SocketAddr,
        identity: &ClientCert,
        timeout: Duration,
    ) -> Result<Self, TtydError> {
        let ws = open(net, addr, Some(identity), timeout).await?;
        Self::start(addr, ws).await
    }

    /// Opens the terminal the AIDL-mode app's way: the page, then the
    /// WebSocket, both plain HTTP through its vsock bridge at `addr` with
    /// the access-token cookie.
    pub async fn connect_bridge(
        addr: SocketAddr,
        token: &str,
        timeout: Duration,
    ) -> Result<Self, TtydError> {
        let page = load_page(addr, Some(token), timeout).await?;
        if page.status != 200 {
            return Err(TtydError::Closed {
                addr,
                detail: format!(": the page load answered {:?}", page.line),
            });
        }
        let ws = open_bridge(addr, token, timeout).await?;
        Self::start(addr, ws).await
    }

    /// ttyd's hello (the terminal size) on an opened WebSocket: both ways of
    /// opening end here.
    async fn start(addr: SocketAddr, ws: Ws) -> Result<Self, TtydError> {
        let mut client = Self {
            addr,
            ws,
            raw: Vec::new(),
            title: None,
            preferences: None,
            next_id: std::process::id() as u64 * 1000,
            close_code: None,
        };
        client.send_frame(hello(COLUMNS, ROWS)).await?;
        Ok(client)
    }

    /// One frame to ttyd, bounded: a peer that stops reading cannot hold
    /// the caller.
    async fn send_frame(&mut self, frame: Vec<u8>) -> Result<(), TtydError> {
        let addr = self.addr;
        tokio::time::timeout(SEND_TIMEOUT, self.ws.send(Message::binary(frame)))
            .await
            .map_err(|_| TtydError::Timeout {
                addr,
                step: "sending a frame".into(),
                timeout: SEND_TIMEOUT,
            })?
            .map_err(|e| ws_err(addr, e))
    }

    /// The window title ttyd sent, if any.
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// The client preferences JSON ttyd sent, if any.
    pub fn preferences(&self) -> Option<&str> {
        self.preferences.as_deref()
    }

    /// Everything the terminal showed so far, as ttyd sent it (escapes
    /// and all: what a terminal emulator draws).
    pub fn raw_output(&self) -> &[u8] {
        &self.raw
    }

    /// Waits for ttyd's next frame and takes it in (output, title or
    /// preferences); cancel-safe, so it can race a keyboard.
    pub async fn next_frame(&mut self) -> Result<(), TtydError> {
        match self.ws.next().await {
            None => Err(TtydError::Closed {
                addr: self.addr,
                detail: String::new(),
            }),
            Some(Err(e)) => Err(ws_err(self.addr, e)),
            Some(Ok(msg)) => self.absorb(msg),
        }
    }

    /// The code of ttyd's close frame, if it sent one (ttyd 1.7.7 sends
    /// none when the shell exits: the connection just ends).
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Everything the terminal showed so far, escapes stripped.
    pub fn transcript(&self) -> String {
        clean(&self.raw)
    }

    /// Types `text` (use `\r` for Enter).
    pub async fn send_input(&mut self, text: &str) -> Result<(), TtydError> {
        self.send_keys(text.as_bytes()).await
    }

    /// Sends key bytes as they come from a keyboard (any encoding).
    pub async fn send_keys(&mut self, keys: &[u8]) -> Result<(), TtydError> {
        let mut frame = Vec::with_capacity(keys.len() + 1);
        frame.push(b'0');
        frame.extend_from_slice(keys);
        self.send_frame(frame).await
    }

    /// Resizes the terminal.
    pub async fn resize(&mut self, columns: u16, rows: u16) -> Result<(), TtydError> {
        let mut frame = vec![b'1'];
        frame.extend_from_slice(
            serde_json::json!({ "columns": columns, "rows": rows })
                .to_string()
                .as_bytes(),
        );
        self.send_frame(frame).await
    }

    /// Reads frames until the cleaned transcript from byte `from` of the
    /// raw stream satisfies `done`, which returns a value to keep.
    async fn read_until<T>(
        &mut self,
        from: usize,
        deadline: tokio::time::Instant,
        step: &str,
        mut done: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, TtydError> {
        loop {
            if let Some(v) = done(&clean(&self.raw[from.min(self.raw.len())..])) {
                return Ok(v);
            }
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| TtydError::Timeout {
                    addr: self.addr,
                    step: step.into(),
                    timeout: deadline.saturating_duration_since(tokio::time::Instant::now()),
                })?;
            match next {
                None => {
                    return Err(TtydError::Closed {
                        addr: self.addr,
                        detail: String::new(),
                    })
                }
                Some(Err(e)) => return Err(ws_err(self.addr, e)),
                Some(Ok(msg)) => self.absorb(msg)?,
            }
        }
    }

    fn absorb(&mut self, msg: Message) -> Result<(), TtydError> {
        let data: Vec<u8> = match msg {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Close(frame) => {
                self.close_code = frame.as_ref().map(|f| u16::from(f.code));
                return Err(TtydError::Closed {
                    addr: self.addr,
                    detail: frame
                        .map(|f| format!(" ({} {})", f.code, f.reason))
                        .unwrap_or_default(),
                });
            }
            _ => return Ok(()),
        };
        let Some((&cmd, body)) = data.split_first() else {
            return Ok(());
        };
        match cmd {
            b'0' => self.raw.extend_from_slice(body),
            b'1' => self.title = Some(String::from_utf8_lossy(body).into_owned()),
            b'2' => self.preferences = Some(String::from_utf8_lossy(body).into_owned()),
            other => tracing::debug!("ttyd: ignoring frame type {:?}", other as char),
        }
        Ok(())
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Waits until a shell answers: types a marker-printing command every
    /// 2 s (input typed before the shell starts may be flushed by login).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), TtydError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.fresh_id();
        let marker = format!("AVFR_{id}\n");
        loop {
            self.send_input(&format!("printf '%s_%s\\n' AVFR {id}\r"))
                .await?;
            let round = (tokio::time::Instant::now() + Duration::from_secs(2)).min(deadline);
            match self
                .read_until(0, round, "waiting for the shell", |t| {
                    t.contains(&marker).then_some(())
                })
                .await
            {
                Ok(()) => return Ok(()),
                Err(TtydError::Timeout { .. }) if round < deadline => continue,
                Err(TtydError::Timeout { addr, step, .. }) => {
                    return Err(TtydError::Timeout {
                        addr,
                        step,
                        timeout,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Types `cmd` (one line; no newlines) into the shell and returns its output and
    /// exit code, found between markers only the shell's output can contain.
    pub async fn run(&mut self, cmd: &str, timeout: Duration) -> Result<CommandOutput, TtydError> {
        let id = self.fresh_id();
        let from = self.raw.len();
        // One line, so the tty echoes all of it before anything runs. The
        // typed line (echoed back) holds "AVFB <id>"; only printf's output
        // holds "AVFB_<id>", so echo cannot be mistaken for output. `eval`
        // keeps commands ending in `&` or a comment well-formed.
        let quoted = cmd.replace('\'', "'\\''");
        let line = format!(
            "printf '%s_%s\\n' AVFB {id}; eval '{quoted}'; printf '\\n%s_%s:%s\\n' AVFE {id} \"$?\"\r"
        );
        self.send_input(&line).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let step = format!("running {cmd:?}");
        self.read_until(from, deadline, &step, |t| parse_markers(t, id))
            .await
            .map_err(|e| match e {
                TtydError::Timeout { addr, step, .. } => TtydError::Timeout {
                    addr,
                    step,
                    timeout,
                },
                e => e,
            })
    }

    /// Closes the session.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn ws_err(addr: SocketAddr, e: tungstenite::Error) -> TtydError {
    TtydError::WebSocket {
        addr,
        source: Box::new(e),
    }
}

/// Stands in for tabs while escapes are stripped (the stripper drops all C0
/// controls but newline); a private-use character no shell prints.
const TAB_STAND_IN: &str = "\u{E009}";

/// Terminal bytes as text: escapes stripped, `\r\n` and stray `\r` removed,
/// tabs kept.
fn clean(raw: &[u8]) -> String {
    let tabbed = String::from_utf8_lossy(raw).replace('\t', TAB_STAND_IN);
    let stripped = strip_ansi_escapes::strip(tabbed.as_bytes());
    String::from_utf8_lossy(&stripped)
        .replace('\r', "")
        .replace(TAB_STAND_IN, "\t")
}

/// Finds `AVFB_<id>` and `AVFE_<id>:<code>` lines in cleaned text.
fn parse_markers(text: &str, id: u64) -> Option<CommandOutput> {
    let begin = format!("AVFB_{id}\n");
    let end = format!("\nAVFE_{id}:");
    let start = text.find(&begin)? + begin.len();
    let rest = &text[start..];
    let stop = rest.find(&end)?;
    let after = &rest[stop + end.len()..];
    let line_end = after.find('\n')?;
    let exit_code = after[..line_end].trim().parse().ok()?;
    // `end` starts with the newline printed before the marker itself.
    let output = rest[..stop].to_string();
    Some(CommandOutput { output, exit_code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_out_of_echo_and_escapes() {
        let id = 42;
        let raw = concat!(
            "\x1b[?2004h\x1b]0;droid@avf: ~\x07droid@avf:~$ ",
            "printf '%s_%s\\n' AVFB 42; echo hi\r\n",
            "printf '\\n%s_%s:%s\\n' AVFE 42 \"$?\"\r\n\x1b[?2004l\r",
            "AVFB_42\r\n\x1b[1;32mhi\x1b[0m\r\nthere\r\n\r\nAVFE_42:7\r\n",
            "\x1b[?2004hdroid@avf:~$ "
        );
        let got = parse_markers(&clean(raw.as_bytes()), id).unwrap();
        assert_eq!(got.output, "hi\nthere\n");
        assert_eq!(got.exit_code, 7);

        // Output without a final newline.
        let got = parse_markers(&clean(b"AVFB_42\r\nno\tnewline\r\nAVFE_42:0\r\n"), id).unwrap();
        assert_eq!(got.output, "no\tnewline");
        // Incomplete: the end marker's line is not finished yet.
        assert!(parse_markers("AVFB_42\nx\nAVFE_42:1", id).is_none());
        // Another command's markers do not count.
        assert!(parse_markers("AVFB_41\nx\n\nAVFE_41:0\n", id).is_none());
    }
}
