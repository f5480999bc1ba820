//! DebianService server against an in-process tonic client.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use avf_terminal::events::{Event, EventLog, Queue};
use avf_terminal::proto;
use avf_terminal::proto::debian_service_client::DebianServiceClient;
use avf_terminal::service::{DebianServer, ServiceConfig, PORT_FILE};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);

async fn server(allowed: &[IpAddr], cid: Option<i32>) -> DebianServer {
    server_with_ip_addr(allowed, cid, true).await
}

async fn server_with_ip_addr(
    allowed: &[IpAddr],
    cid: Option<i32>,
    report_vm_ip_addr: bool,
) -> DebianServer {
    let config = ServiceConfig {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        net: Default::default(),
        allowed_peers: allowed.iter().copied().collect::<HashSet<_>>(),
        expected_cid: cid,
        rpcs: avf_terminal::profile::RpcSet {
            report_vm_ip_addr,
            ..avf_terminal::HostProfile::android16().rpcs
        },
    };
    DebianServer::start(config, EventLog::new()).await.unwrap()
}

async fn client(server: &DebianServer) -> DebianServiceClient<Channel> {
    DebianServiceClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap()
}

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

fn port(port: i32, comm: &str) -> proto::ActivePort {
    proto::ActivePort {
        port,
        comm: comm.into(),
    }
}

#[tokio::test]
async fn port_file_written_only_on_announce_as_bare_digits() {
    let srv = server(&[localhost()], None).await;
    let share = tempfile::tempdir().unwrap();
    assert!(!share.path().join(PORT_FILE).exists());
    let path = srv.announce(share.path()).unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text, srv.local_addr().port().to_string());
    assert!(text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
}

#[tokio::test]
async fn report_vm_ip_addr_is_unimplemented_where_the_profile_lacks_it() {
    let srv = server_with_ip_addr(&[localhost()], None, false).await;
    let mut c = client(&srv).await;
    let err = c
        .report_vm_ip_addr(proto::IpAddr {
            addr: "10.0.2.15".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn records_active_ports_and_ip_addr() {
    let srv = server(&[localhost()], None).await;
    let mut c = client(&srv).await;
    let from = srv.log().cursor();
    let mut ports_rx = srv.active_ports();
    let resp = c
        .report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![
            port(8080, "python3"),
            port(3000, "node"),
        ]))
        .await
        .unwrap();
    assert!(resp.into_inner().success);
    let ports = srv
        .log()
        .wait_for_ports(from, WAIT, |p| p.iter().any(|a| a.port == 8080))
        .await
        .unwrap();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[1].comm, "node");
    ports_rx.changed().await.unwrap();
    assert_eq!(ports_rx.borrow().len(), 2);

    let resp = c
        .report_vm_ip_addr(proto::IpAddr {
            addr: "10.0.2.15".into(),
        })
        .await
        .unwrap();
    assert!(resp.into_inner().success);
    srv.log()
        .wait_for(from, WAIT, |e| *e == Event::VmIpAddr("10.0.2.15".into()))
        .await
        .unwrap();

    // A port outside u16 is rejected with a message naming the field.
    let err = c
        .report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![port(
            70000, "bad",
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("ActivePort.port"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn other_peers_are_refused() {
    let srv = server(&[IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15))], None).await;
    let mut c = client(&srv).await;
    let err = c
        .report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = c
        .open_shutdown_request_queue(proto::ShutdownQueueOpeningRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let refused = srv
        .log()
        .snapshot()
        .iter()
        .filter(|r| matches!(r.event, Event::Refused { .. }))
        .count();
    assert_eq!(refused, 2);
    assert!(srv.log().latest_ports().is_none());
}

#[tokio::test]
async fn shutdown_sends_one_item_then_ends_the_stream() {
    let srv = server(&[localhost()], None).await;
    assert!(!srv.request_shutdown().await, "no stream open yet");

    let mut c = client(&srv).await;
    let from = srv.log().cursor();
    let mut stream = c
        .open_shutdown_request_queue(proto::ShutdownQueueOpeningRequest {})
        .await
        .unwrap()
        .into_inner();
    srv.log()
        .wait_for(from, WAIT, |e| {
            matches!(
                e,
                Event::QueueOpened {
                    queue: Queue::Shutdown,
                    ..
                }
            )
        })
        .await
        .unwrap();
    assert!(srv.request_shutdown().await);
    let first = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
    assert_eq!(first.unwrap(), Some(proto::ShutdownRequestItem {}));
    let end = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
    assert_eq!(end.unwrap(), None, "stream ends after the one item");
    assert!(!srv.request_shutdown().await, "the stream was consumed");
}

#[tokio::test]
async fn storage_balloon_items_reach_open_and_late_streams() {
    let srv = server(&[localhost()], None).await;
    let mut c = client(&srv).await;
    assert_eq!(srv.send_storage_balloon(5 << 30).await, 0);

    // A stream opened after a value was set gets that value first.
    let mut s = c
        .open_storage_balloon_request_queue(proto::StorageBalloonQueueOpeningRequest {})
        .await
        .unwrap()
        .into_inner();
    let item = tokio::time::timeout(WAIT, s.message()).await.unwrap();
    assert_eq!(item.unwrap().unwrap().available_bytes, 5 << 30);

    assert_eq!(srv.send_storage_balloon(123_456).await, 1);
    let item = tokio::time::timeout(WAIT, s.message()).await.unwrap();
    assert_eq!(item.unwrap().unwrap().available_bytes, 123_456);
}

#[tokio::test]
async fn forwarding_queue_carries_requests_and_checks_cid() {
    let srv = server(&[localhost()], Some(2048)).await;
    let mut c = client(&srv).await;
    let fwd = srv.forwarding();
    assert!(fwd.request(8080, 50_000).await.is_err(), "no queue yet");

    let err = c
        .open_forwarding_request_queue(proto::QueueOpeningRequest { cid: 3 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("cid 3"), "{}", err.message());

    let mut s = c
        .open_forwarding_request_queue(proto::QueueOpeningRequest { cid: 2048 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fwd.cid(), Some(2048));
    fwd.request(8080, 50_000).await.unwrap();
    let item = tokio::time::timeout(WAIT, s.message()).await.unwrap();
    assert_eq!(
        item.unwrap().unwrap(),
        proto::ForwardingRequestItem {
            guest_tcp_port: 8080,
            vsock_port: 50_000
        }
    );
}

#[tokio::test]
async fn survives_garbage_and_a_client_that_vanishes_mid_stream() {
    let srv = server(&[localhost()], None).await;

    // Garbage on the HTTP/2 port: not a preface, then a bogus frame.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x09\x00\x00\x00\x00\x01garbage!!"[..],
        &[0u8; 4096][..],
    ] {
        let mut sock = tokio::net::TcpStream::connect(srv.local_addr())
            .await
            .unwrap();
        let _ = sock.write_all(junk).await;
        drop(sock);
    }

    // A malformed gRPC message body (length prefix larger than the body).
    let mut c = client(&srv).await;
    let channel = Channel::from_shared(format!("http://{}", srv.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/com.android.virtualization.terminal.proto.DebianService/ReportVmActivePorts",
    );
    let bad: Vec<u8> = vec![0x0a, 0xff, 0xff, 0x01];
    let result: Result<tonic::Response<proto::ReportVmActivePortsResponse>, _> =
        raw.unary(tonic::Request::new(bad), path, BytesCodec).await;
    assert!(result.is_err(), "undecodable request must fail");

    // A client that opens a stream and disappears.
    let from = srv.log().cursor();
    {
        let mut gone = client(&srv).await;
        let _stream = gone
            .open_shutdown_request_queue(proto::ShutdownQueueOpeningRequest {})
            .await
            .unwrap();
    }
    srv.log()
        .wait_for(from, WAIT, |e| {
            matches!(
                e,
                Event::QueueClosed {
                    queue: Queue::Shutdown
                }
            )
        })
        .await
        .unwrap();
    assert!(
        !srv.request_shutdown().await,
        "a vanished stream takes nothing"
    );

    // Still serving.
    let resp = c
        .report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![port(
            9000, "x",
        )]))
        .await
        .unwrap();
    assert!(resp.into_inner().success);
    srv.stop().await;
}

/// Sends raw bytes as a gRPC message, decodes the reply as protobuf.
#[derive(Clone, Copy)]
struct BytesCodec;

type Prost =
    tonic_prost::ProstCodec<proto::ReportVmActivePortsRequest, proto::ReportVmActivePortsResponse>;

impl tonic::codec::Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = proto::ReportVmActivePortsResponse;
    type Encoder = RawEncoder;
    type Decoder = <Prost as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut Prost::default())
    }
}

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

#[tokio::test]
async fn stop_does_not_wait_forever_on_connected_guests() {
    let srv = server(&[localhost()], None).await;
    let mut c = client(&srv).await;
    let _stream = c
        .open_storage_balloon_request_queue(proto::StorageBalloonQueueOpeningRequest {})
        .await
        .unwrap()
        .into_inner();
    // A raw TCP client that never speaks HTTP/2 nor hangs up.
    let _silent = tokio::net::TcpStream::connect(srv.local_addr())
        .await
        .unwrap();
    let addr = srv.local_addr();
    let t = std::time::Instant::now();
    tokio::time::timeout(WAIT, srv.stop()).await.unwrap();
    assert!(t.elapsed() <= avf_terminal::service::STOP_GRACE + Duration::from_millis(500));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// Android 15 QPR2's app: ports as `repeated int32` (what its guests send),
/// no storage-balloon queue; an Android 16 guest's ActivePort report reads
/// as the garbage that app would see.
#[tokio::test]
async fn android15_qpr2_reads_int32_ports_and_has_no_storage_balloon() {
    let config = ServiceConfig {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        net: Default::default(),
        allowed_peers: [localhost()].into_iter().collect(),
        expected_cid: None,
        rpcs: avf_terminal::HostProfile::android15_qpr2().rpcs,
    };
    let srv = DebianServer::start(config, EventLog::new()).await.unwrap();
    let mut c = client(&srv).await;
    let err = c
        .open_storage_balloon_request_queue(proto::StorageBalloonQueueOpeningRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{}", srv.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let path = || {
        tonic::codegen::http::uri::PathAndQuery::from_static(
            "/com.android.virtualization.terminal.proto.DebianService/ReportVmActivePorts",
        )
    };
    // Unpacked int32 (field 1, wire type 0): 8080, then 3000.
    let unpacked: Vec<u8> = vec![0x08, 0x90, 0x3f, 0x08, 0xb8, 0x17];
    raw.ready().await.unwrap();
    raw.unary(tonic::Request::new(unpacked), path(), BytesCodec)
        .await
        .unwrap();
    let ports = srv.active_ports().borrow().clone();
    assert_eq!(
        ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![8080, 3000]
    );
    // An Android 16 guest's report: the ActivePort bytes become ports.
    c.report_vm_active_ports(proto::ReportVmActivePortsRequest::from(vec![port(
        8080, "sh",
    )]))
    .await
    .unwrap();
    let ports = srv.active_ports().borrow().clone();
    assert_eq!(
        ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![8, 8080, 18, 2, u16::from(b's'), u16::from(b'h')]
    );
    srv.stop().await;
}

/// An agent that reconnects over and over (or many that never hang up)
/// must not grow the server: closed queues are pruned, at most
/// `MAX_QUEUES_PER_KIND` stay open per kind (the oldest are ended with a
/// status), and the newest queue still works.
#[tokio::test]
async fn a_thousand_reopened_queues_stay_bounded_and_the_newest_works() {
    const MAX: usize = 8;
    let srv = server(&[localhost()], Some(3)).await;
    let mut c = client(&srv).await;
    // Still-open streams: the cap must close the oldest.
    let mut open = Vec::new();
    let mut storage = Vec::new();
    for i in 0..1000 {
        let s = c
            .open_forwarding_request_queue(proto::QueueOpeningRequest { cid: 3 })
            .await
            .unwrap()
            .into_inner();
        open.push(s);
        // Dropped streams: pruned when the next one opens.
        let gone = c
            .open_shutdown_request_queue(proto::ShutdownQueueOpeningRequest {})
            .await
            .unwrap();
        drop(gone);
        let st = c
            .open_storage_balloon_request_queue(proto::StorageBalloonQueueOpeningRequest {})
            .await
            .unwrap()
            .into_inner();
        // Half of them kept open, half dropped.
        if i % 2 == 0 {
            storage.push(st);
        }
        let n = srv.open_queues();
        assert!(n.forwarding <= MAX, "{i}: {n:?}");
        assert!(n.shutdown <= MAX, "{i}: {n:?}");
        assert!(n.storage_balloon <= MAX, "{i}: {n:?}");
    }
    // The oldest forwarding stream was ended with a status.
    let first = open.first_mut().unwrap();
    let ended = tokio::time::timeout(WAIT, first.message()).await.unwrap();
    let status = ended.expect_err("the oldest queue ends with a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // The newest gets the request.
    srv.forwarding().request(8080, 5000).await.unwrap();
    let last = open.last_mut().unwrap();
    let item = tokio::time::timeout(WAIT, last.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((item.guest_tcp_port, item.vsock_port), (8080, 5000));
    assert_eq!(srv.forwarding().cid(), Some(3));
}
