//! Stand-ins shared by the integration tests: a ttyd look-alike and an
//! mDNS responder; and the ttyd client checks both ttyd tests make.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avf_terminal::cert::ClientCert;
use avf_terminal::ttyd::{probe, Handshake, TtydClient};
use avf_terminal::GuestNet;

use futures_util::{SinkExt, StreamExt};
use hickory_proto::op::{Message as Dns, MessageType};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
pub struct Seen {
    pub hello: Option<serde_json::Value>,
    pub resizes: Vec<serde_json::Value>,
}

/// Starts the stand-in; `ca` is the only client certificate it trusts.
pub async fn fake_ttyd(ca: CertificateDer<'static>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    fake_ttyd_on("127.0.0.1:0".parse().unwrap(), ca).await
}

/// Like [`fake_ttyd`], on a given address.
pub async fn fake_ttyd_on(
    bind: SocketAddr,
    ca: CertificateDer<'static>,
) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let (server_cert, server_key) = server_cert();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return; // refused client certificate
                };
                session(tls, seen).await;
            });
        }
    });
    (addr, seen)
}

async fn session(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    seen: Arc<Mutex<Seen>>,
) {
    // The Err type is tungstenite's, fixed by its Callback trait.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let wants_tty = req
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "tty"));
        if req.uri().path() != "/ws" || !wants_tty {
            let mut err = ErrorResponse::new(Some("not ttyd's endpoint".into()));
            *err.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            return Err(err);
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("tty"));
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();

    // ttyd spawns the command only after the JSON hello.
    let first = match rx.next().await {
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        _ => return,
    };
    assert_eq!(first.first(), Some(&b'{'), "first frame must be JSON");
    seen.lock().unwrap().hello = Some(serde_json::from_slice(&first).unwrap());
    tx.send(Message::binary(b"1bash (avf-guest)".to_vec()))
        .await
        .unwrap();
    tx.send(Message::binary(b"2{}".to_vec())).await.unwrap();

    let mut child = tokio::process::Command::new("bash")
        .args([
            "--norc",
            "--noprofile",
            "-c",
            "exec 2>&1; exec bash --norc --noprofile",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let echo_tx = out_tx.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                // onlcr, as a pty would do.
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\n', "\r\n");
                    let _ = out_tx.send(text.into_bytes());
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            // Tiny frames, so markers and escapes straddle frame boundaries.
            for chunk in bytes.chunks(5) {
                let mut frame = vec![b'0'];
                frame.extend_from_slice(chunk);
                if tx.send(Message::binary(frame)).await.is_err() {
                    return;
                }
            }
        }
    });
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Binary(b) = msg else { continue };
        match b.first() {
            Some(b'0') => {
                let input = String::from_utf8_lossy(&b[1..]).into_owned();
                // Echo with colour noise, as a shell's line editor would.
                let echo = format!("\x1b[32m{}\x1b[0m", input.replace('\r', "\r\n"));
                let _ = echo_tx.send(echo.into_bytes());
                let _ = stdin.write_all(input.replace('\r', "\n").as_bytes()).await;
            }
            Some(b'1') => {
                let size = serde_json::from_slice(&b[1..]).unwrap();
                seen.lock().unwrap().resizes.push(size);
            }
            _ => {}
        }
    }
    writer.abort();
}

/// Answers one-shot DNS-SD queries for ttyd: SRV → `host:port` with the A
/// record (`addr`) in the additional section.
pub async fn mdns_responder(addr: Ipv4Addr, port: u16) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 9000];
        loop {
            let (len, from) = sock.recv_from(&mut buf).await.unwrap();
            let Ok(q) = Dns::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(query) = q.queries().first().cloned() else {
                continue;
            };
            if query.query_type() != RecordType::SRV {
                continue;
            }
            let host = Name::from_ascii("avf-guest.local.").unwrap();
            let o = addr.octets();
            let mut r = Dns::new();
            r.set_id(q.id()).set_message_type(MessageType::Response);
            r.add_query(query.clone());
            r.add_answer(Record::from_rdata(
                query.name().clone(),
                10,
                RData::SRV(SRV::new(0, 0, port, host.clone())),
            ));
            r.add_additional(Record::from_rdata(
                host,
                10,
                RData::A(A::new(o[0], o[1], o[2], o[3])),
            ));
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    local
}

/// A self-signed server certificate for `avf-guest` (as the guest's
/// first-boot ttyd certificate), with its key.
pub fn server_cert() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["avf-guest".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert, key)
}

/// A client connected to the ttyd at `addr` with `app`'s certificate, its
/// shell ready for commands.
pub async fn ready_client(addr: SocketAddr, app: &ClientCert, t: Duration) -> TtydClient {
    let mut c = TtydClient::connect(&GuestNet::Current, addr, app, t)
        .await
        .unwrap();
    c.wait_ready(t).await.unwrap();
    c
}

/// Runs `cmd` and checks its output and exit code.
pub async fn assert_run(c: &mut TtydClient, cmd: &str, output: &str, exit_code: i32, t: Duration) {
    let out = c.run(cmd, t).await.unwrap();
    assert_eq!(out.output, output);
    assert_eq!(out.exit_code, exit_code);
}

/// The ttyd at `addr` trusts `app`'s certificate only: the TLS handshake
/// succeeds with it and is refused without one and with `other`.
pub async fn assert_only_app_cert_accepted(
    addr: SocketAddr,
    app: &ClientCert,
    other: &ClientCert,
    t: Duration,
) {
    assert_eq!(
        probe(&GuestNet::Current, addr, Some(app), t).await.unwrap(),
        Handshake::Accepted
    );
    let none = probe(&GuestNet::Current, addr, None, t).await.unwrap();
    assert!(matches!(none, Handshake::TlsRefused(_)), "{none:?}");
    let foreign = probe(&GuestNet::Current, addr, Some(other), t)
        .await
        .unwrap();
    assert!(matches!(foreign, Handshake::TlsRefused(_)), "{foreign:?}");
}
