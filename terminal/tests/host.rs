//! TerminalHost end to end without a VM: the test plays the guest (mDNS
//! responder, ttyd stand-in, agents as tonic clients, forwarder_guest as a
//! Unix-socket client).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use avf_terminal::events::{Event, Queue};
use avf_terminal::forwarding::HostPorts;
use avf_terminal::host::{
    HostError, ShutdownOutcome, TerminalHost, TerminalHostConfig, TtydRoute, VsockEndpoint,
};
use avf_terminal::mdns::MdnsTransport;
use avf_terminal::profile::HostProfile;
use avf_terminal::proto;
use avf_terminal::proto::debian_service_client::DebianServiceClient;
use avf_terminal::ttyd::Handshake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

mod common;

const T: Duration = Duration::from_secs(10);
const CID: u32 = 2048;

fn config(share: &std::path::Path, mdns: SocketAddr) -> TerminalHostConfig {
    let mut c = TerminalHostConfig::new(
        HostProfile::android16(),
        share,
        VsockEndpoint {
            uds: share.join("vsock.sock"),
            guest_cid: CID,
        },
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        MdnsTransport::Unicast(mdns),
    );
    c.host_ports = HostPorts::Ephemeral;
    // User-mode networking: guest connections arrive from 127.0.0.1.
    c.allowed_peers = [IpAddr::V4(Ipv4Addr::LOCALHOST)].into_iter().collect();
    c
}

fn read_ca(share: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let pem = std::fs::read(share.join("ca.crt")).unwrap();
    let cert = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    cert
}

#[tokio::test]
async fn discovery_port_file_terminal_agents_forwarding_shutdown() {
    let share = tempfile::tempdir().unwrap();
    // The ttyd port is only known once the stand-in runs, and the stand-in
    // needs ca.crt: route ttyd explicitly and let mDNS say 7681, as in
    // user-mode networking.
    let mdns = common::mdns_responder(Ipv4Addr::new(10, 0, 2, 15), 7681).await;
    let mut cfg = config(share.path(), mdns);
    let ttyd_listener_slot = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ttyd_addr = ttyd_listener_slot.local_addr().unwrap();
    drop(ttyd_listener_slot);
    cfg.ttyd_route = TtydRoute::Via(ttyd_addr);
    let host = TerminalHost::start(cfg).await.unwrap();
    assert!(matches!(host.ttyd_addr(), Err(HostError::NotDiscovered)));

    let found = host.discover_ttyd(T).await.unwrap();
    assert_eq!(found.socket_addr(), "10.0.2.15:7681".parse().unwrap());
    let port: u16 = std::fs::read_to_string(share.path().join("debian_service_port"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(port, host.server().local_addr().port());
    assert_eq!(host.ttyd_addr().unwrap(), ttyd_addr);

    // Terminal through the stand-in, which trusts the share's ca.crt.
    let (_real, _) = common::fake_ttyd_on(ttyd_addr, read_ca(share.path())).await;
    let mut term = host.open_terminal(T).await.unwrap();
    let out = term.run("echo from-guest", T).await.unwrap();
    assert_eq!(out.output, "from-guest\n");
    let other = avf_terminal::ClientCert::generate("intruder").unwrap();
    assert!(matches!(
        host.probe_ttyd(Some(&other)).await.unwrap(),
        Handshake::TlsRefused(_)
    ));
    assert!(matches!(
        host.probe_ttyd(None).await.unwrap(),
        Handshake::TlsRefused(_)
    ));

    // The guest agents, connecting to the port from the file.
    let mut agent = DebianServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut queue = agent
        .open_forwarding_request_queue(proto::QueueOpeningRequest { cid: CID as i32 })
        .await
        .unwrap()
        .into_inner();
    let mut shutdown = agent
        .open_shutdown_request_queue(proto::ShutdownQueueOpeningRequest {})
        .await
        .unwrap()
        .into_inner();

    // A "guest server" on 8080 (here: a host TCP echo that adds 1 to bytes).
    let guest_srv = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guest_srv_addr = guest_srv.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = guest_srv.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    for b in &mut buf[..n] {
                        *b = b.wrapping_add(1);
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
            });
        }
    });
    // forwarder_guest_launcher: for each item, connect <uds>_<V> to the server.
    let uds = share.path().join("vsock.sock");
    tokio::spawn(async move {
        while let Ok(Some(item)) = queue.message().await {
            assert_eq!(item.guest_tcp_port, 8080);
            let path = format!("{}_{}", uds.display(), item.vsock_port);
            tokio::spawn(async move {
                let mut v = UnixStream::connect(path).await.unwrap();
                let mut t = TcpStream::connect(guest_srv_addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut v, &mut t).await;
            });
        }
    });

    let from = host.events().cursor();
    agent
        .report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![
            proto::ActivePort {
                port: 8080,
                comm: "python3".into(),
            },
        ]))
        .await
        .unwrap();
    host.events()
        .wait_for_ports(from, Duration::from_secs(2), |p| {
            p.iter().any(|a| a.port == 8080)
        })
        .await
        .unwrap();
    let addrs = wait_forwarded(&host, 8080).await;
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i ^ (i >> 9)) as u8).collect();
    let mut conn = TcpStream::connect(addrs[0]).await.unwrap();
    let (mut rd, mut wr) = conn.split();
    let sent = data.clone();
    let (_, got) = tokio::join!(
        async move { wr.write_all(&sent).await.unwrap() },
        async move {
            let mut got = vec![0u8; 1 << 20];
            rd.read_exact(&mut got).await.unwrap();
            got
        }
    );
    assert!(
        got.iter().zip(&data).all(|(g, d)| *g == d.wrapping_add(1)),
        "1 MiB round trip"
    );

    // The port goes away when the guest stops listening.
    agent
        .report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(host.forwarded(8080).is_none());

    // Shutdown: one item, then the stream ends.
    assert_eq!(host.request_shutdown().await, ShutdownOutcome::Requested);
    assert_eq!(
        shutdown.message().await.unwrap(),
        Some(proto::ShutdownRequestItem {})
    );
    assert_eq!(shutdown.message().await.unwrap(), None);
    assert_eq!(host.request_shutdown().await, ShutdownOutcome::NoStream);
    assert!(host.events().snapshot().iter().any(|r| r.event
        == Event::QueueOpened {
            queue: Queue::Forwarding,
            cid: Some(CID as i32)
        }));
    host.stop().await;
}

#[tokio::test]
async fn refuses_bad_setups_with_clear_errors() {
    let share = tempfile::tempdir().unwrap();
    let mdns = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let mut cfg = config(share.path(), mdns);
    cfg.profile.shares.internal = false;
    let err = TerminalHost::start(cfg).await.err().unwrap();
    assert!(
        matches!(
            err,
            HostError::Unsupported {
                profile: "android16",
                ..
            }
        ),
        "{err}"
    );

    let missing = share.path().join("nope");
    let err = TerminalHost::start(config(&missing, mdns))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("nope"), "{err}");

    let mut cfg = config(share.path(), mdns);
    cfg.vsock.guest_cid = 2;
    let err = TerminalHost::start(cfg).await.err().unwrap();
    assert!(err.to_string().contains("guest_cid"), "{err}");

    // Only the VM's address may call: with 10.0.2.15 allowed, a local
    // client is refused.
    let mut cfg = config(share.path(), mdns);
    cfg.allowed_peers = [IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15))]
        .into_iter()
        .collect::<HashSet<_>>();
    let host = TerminalHost::start(cfg).await.unwrap();
    let mut c = DebianServiceClient::connect(format!("http://{}", host.server().local_addr()))
        .await
        .unwrap();
    let err = c
        .report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // mDNS that never answers: the discovery error names the instance.
    let host = TerminalHost::start(config(share.path(), mdns))
        .await
        .unwrap();
    let err = host
        .discover_ttyd(Duration::from_millis(1200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ttyd._http._tcp.local."), "{err}");
    assert!(!share.path().join("debian_service_port").exists());
}

#[tokio::test]
async fn the_address_found_by_mdns_becomes_the_allowed_peer() {
    let share = tempfile::tempdir().unwrap();
    // TAP mode: no extra peers; the guest is wherever mDNS says (here the
    // loopback address, so the test's client stands in for the guest).
    let mdns = common::mdns_responder(Ipv4Addr::LOCALHOST, 7681).await;
    let mut cfg = config(share.path(), mdns);
    cfg.allowed_peers.clear();
    let host = TerminalHost::start(cfg).await.unwrap();
    let mut c = DebianServiceClient::connect(format!("http://{}", host.server().local_addr()))
        .await
        .unwrap();
    let ports = || proto::ReportVmActivePortsRequest::from(vec![]);
    let err = c.report_vm_active_ports(ports()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    host.discover_ttyd(T).await.unwrap();
    assert!(
        c.report_vm_active_ports(ports())
            .await
            .unwrap()
            .into_inner()
            .success
    );
}

/// The host addresses `guest_port` is published at, within [`T`].
async fn wait_forwarded(host: &TerminalHost, guest_port: u16) -> Vec<SocketAddr> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(addrs) = host.forwarded(guest_port) {
            return addrs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{guest_port} not published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
