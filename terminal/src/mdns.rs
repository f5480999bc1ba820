//! Finding ttyd over mDNS: service `ttyd`, type `_http._tcp` (contract §4).
//!
//! Both modes send one-shot ("legacy unicast") DNS-SD queries from an
//! ephemeral port, which responders such as avahi answer by unicast to the
//! sender: to a given UDP address in QEMU user-mode networking (a host port
//! forwarded to the guest's 5353), or to the mDNS group on an interface in
//! the TAP mode.
//!
//! A reply counts only if it answers a question we asked ([`Asked`]: its ID
//! and its question section, which a legacy-unicast reply repeats) and
//! comes from where an answer can ([`source_ok`]); anything else on our
//! port is ignored.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use crate::netns::GuestNet;

/// The instance name the app looks for.
pub const TTYD_INSTANCE: &str = "ttyd._http._tcp.local.";
/// The app's boot timeout for finding ttyd (upper end of the contract's 20–60 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between query retries.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The mDNS group.
pub const MDNS_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353);

/// Where queries go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MdnsTransport {
    /// Unicast to this address (a host port forwarded to the guest's 5353).
    Unicast(SocketAddr),
    /// Multicast to 224.0.0.251:5353 out of the interface with this address.
    Multicast { interface: Ipv4Addr },
}

/// What discovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtydService {
    /// SRV target host name.
    pub host: String,
    /// SRV port.
    pub port: u16,
    /// The target's IPv4 address.
    pub addr: Ipv4Addr,
}

impl TtydService {
    /// The address to connect to, as the app would (guest IP and SRV port).
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr, self.port))
    }
}

/// Discovery errors.
#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    /// The socket could not be set up.
    #[error("mDNS: socket setup for {transport:?} failed: {source}")]
    Socket {
        transport: MdnsTransport,
        source: std::io::Error,
    },
    /// Nothing usable came back in time.
    #[error("mDNS: {TTYD_INSTANCE} not found via {transport:?} within {timeout:?} ({queries} queries, last problem: {last})")]
    Timeout {
        transport: MdnsTransport,
        timeout: Duration,
        queries: u32,
        last: String,
    },
}

/// Queries until ttyd's SRV and A records arrive or `timeout` passes.
pub async fn discover_ttyd(
    net: &GuestNet,
    transport: MdnsTransport,
    timeout: Duration,
) -> Result<TtydService, MdnsError> {
    let sock = bind(net, transport).map_err(|source| MdnsError::Socket { transport, source })?;
    let dest: SocketAddr = match transport {
        MdnsTransport::Unicast(a) => a,
        MdnsTransport::Multicast { .. } => MDNS_GROUP.into(),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut queries = 0u32;
    let mut last = String::from("no answer");
    let mut srv: Option<(String, u16)> = None;
    let mut id: u16 = rand_id();
    let mut asked: VecDeque<Asked> = VecDeque::new();
    let mut buf = vec![0u8; 9000];
    loop {
        // Ask for what is still missing: the SRV first, then the target's A.
        id = id.wrapping_add(1);
        let question = match &srv {
            None => Asked::new(id, TTYD_INSTANCE, RecordType::SRV),
            Some((host, _)) => Asked::new(id, host, RecordType::A),
        };
        let query = question.bytes();
        // A late answer to an earlier query of this discovery still counts.
        if asked.len() == ASKED_KEPT {
            asked.pop_front();
        }
        asked.push_back(question);
        queries += 1;
        if let Err(e) = sock.send_to(&query, dest).await {
            // e.g. ECONNREFUSED from a forward that is not up yet: retry.
            last = format!("send to {dest}: {e}");
        }
        let round_end = (tokio::time::Instant::now() + RETRY_INTERVAL).min(deadline);
        while let Ok(received) = tokio::time::timeout_at(round_end, sock.recv_from(&mut buf)).await
        {
            let (len, from) = match received {
                Ok(got) => got,
                Err(e) => {
                    last = format!("receive: {e}");
                    // ICMP errors surface here immediately; don't spin.
                    tokio::time::sleep_until(round_end).await;
                    break;
                }
            };
            let found = match hear(&buf[..len], from, transport, &asked, srv.as_ref()) {
                Ok(found) => found,
                Err(why) => {
                    if let Some(why) = why {
                        last = why;
                    }
                    continue;
                }
            };
            if let Some(s) = found.srv {
                srv = Some(s);
            }
            if let (Some((host, port)), Some(addr)) = (&srv, found.addr) {
                return Ok(TtydService {
                    host: host.clone(),
                    port: *port,
                    addr,
                });
            }
            if srv.is_some() {
                last = "SRV without an A record for its target".into();
                // Ask for the A record at once.
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MdnsError::Timeout {
                transport,
                timeout,
                queries,
                last,
            });
        }
    }
}

fn bind(net: &GuestNet, transport: MdnsTransport) -> std::io::Result<UdpSocket> {
    let udp = |domain| net.socket(domain, socket2::Type::DGRAM, socket2::Protocol::UDP);
    match transport {
        MdnsTransport::Unicast(dest) => {
            let local: SocketAddr = if dest.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = udp(socket2::Domain::for_address(dest))?;
            sock.set_nonblocking(true)?;
            sock.bind(&local.into())?;
            UdpSocket::from_std(sock.into())
        }
        MdnsTransport::Multicast { interface } => {
            let sock = udp(socket2::Domain::IPV4)?;
            sock.set_multicast_if_v4(&interface)?;
            sock.set_multicast_ttl_v4(255)?;
            sock.set_nonblocking(true)?;
            // An ephemeral source port (not 5353) asks for unicast replies.
            sock.bind(&SocketAddr::from((interface, 0)).into())?;
            UdpSocket::from_std(sock.into())
        }
    }
}

fn rand_id() -> u16 {
    // Only needs to differ between runs; the clock is enough.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id()) as u16
}

/// How many of our latest queries a reply may answer.
const ASKED_KEPT: usize = 16;

/// A query we sent: a reply must carry its ID and repeat its question
/// (RFC 6762 §6.7: a legacy-unicast response echoes both).
#[derive(Clone, Debug)]
struct Asked {
    id: u16,
    name: Name,
    rtype: RecordType,
}

impl Asked {
    fn new(id: u16, name: &str, rtype: RecordType) -> Asked {
        // Names come from constants or from a parsed SRV: always valid.
        let name = Name::from_ascii(name).unwrap_or_else(|_| Name::root());
        Asked { id, name, rtype }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(self.id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false);
        msg.add_query(Query::query(self.name.clone(), self.rtype));
        msg.to_vec().unwrap_or_default()
    }

    /// Whether `reply` answers this query: same ID, and our question
    /// (name, case-insensitively, and type) in its question section.
    fn answered_by(&self, reply: &Message) -> bool {
        reply.id() == self.id
            && reply
                .queries()
                .iter()
                .any(|q| q.query_type() == self.rtype && q.name() == &self.name)
    }
}

/// Whether a reply from `from` can be an answer. Unicast: only the address
/// queried answers. Multicast: a responder answers from port 5353 (RFC
/// 6762 §6.7) on the guest's side of the link, never from the host's own
/// interface address, nor from loopback unless the interface is loopback.
fn source_ok(transport: MdnsTransport, from: SocketAddr) -> bool {
    match transport {
        MdnsTransport::Unicast(dest) => from == dest,
        MdnsTransport::Multicast { interface } => {
            let ip = match from.ip() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(ip) => ip,
                    None => return false,
                },
            };
            from.port() == MDNS_GROUP.port()
                && ip != interface
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && !ip.is_broadcast()
                && (interface.is_loopback() || !ip.is_loopback())
        }
    }
}

/// One datagram on our port: what it tells if it answers a question we
/// asked from where an answer can come; else why it is ignored (`None`:
/// not a response at all, ignored silently).
fn hear(
    datagram: &[u8],
    from: SocketAddr,
    transport: MdnsTransport,
    asked: &VecDeque<Asked>,
    known: Option<&(String, u16)>,
) -> Result<Found, Option<String>> {
    let msg = Message::from_vec(datagram).map_err(|e| Some(format!("undecodable reply: {e}")))?;
    if msg.message_type() != MessageType::Response {
        return Err(None);
    }
    if !source_ok(transport, from) {
        return Err(Some(format!(
            "ignored a reply from {from} (not where answers come from)"
        )));
    }
    if !asked.iter().any(|q| q.answered_by(&msg)) {
        return Err(Some(format!(
            "ignored a reply from {from} to a question not asked (id {})",
            msg.id()
        )));
    }
    Ok(parse_reply(&msg, known))
}

#[derive(Debug, Default)]
struct Found {
    srv: Option<(String, u16)>,
    addr: Option<Ipv4Addr>,
}

/// Picks ttyd's SRV and its target's A record out of a reply's sections.
fn parse_reply(msg: &Message, known: Option<&(String, u16)>) -> Found {
    let instance = Name::from_ascii(TTYD_INSTANCE).unwrap_or_else(|_| Name::root());
    let mut found = Found::default();
    let records = || msg.answers().iter().chain(msg.additionals());
    for r in records() {
        if let RData::SRV(srv) = r.data() {
            if r.name().eq_case(&instance) || r.name() == &instance {
                found.srv = Some((srv.target().to_ascii(), srv.port()));
            }
        }
    }
    let target = found.srv.as_ref().or(known).map(|(h, _)| h.clone());
    if let Some(target) = target {
        let target = Name::from_ascii(&target).unwrap_or_else(|_| Name::root());
        for r in records() {
            if let RData::A(a) = r.data() {
                if r.name() == &target {
                    found.addr = Some(a.0);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::Record;

    /// A tiny responder: answers SRV queries for ttyd (with or without the A
    /// record in the additional section) and A queries for its host, after
    /// ignoring the first `ignore` queries.
    async fn responder(ignore: usize, with_additional: bool) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        serve(sock, None, ignore, with_additional, None);
        addr
    }

    /// A reply to `query` (id `id`) saying ttyd is at `addr`:7681, with the
    /// A record in the additional section.
    fn reply(id: u16, query: &Query, addr: Ipv4Addr, with_additional: bool) -> Message {
        let host = Name::from_ascii("avf-guest.local.").unwrap();
        let mut r = Message::new();
        r.set_id(id)
            .set_message_type(MessageType::Response)
            .set_authoritative(true);
        r.add_query(query.clone());
        let a = Record::from_rdata(host.clone(), 10, RData::A(A::from(addr)));
        match query.query_type() {
            RecordType::SRV => {
                let instance = Name::from_ascii(TTYD_INSTANCE).unwrap();
                r.add_answer(Record::from_rdata(
                    instance,
                    10,
                    RData::SRV(SRV::new(0, 0, 7681, host.clone())),
                ));
                if with_additional {
                    r.add_additional(a);
                }
            }
            RecordType::A if query.name() == &host => {
                r.add_answer(a);
            }
            _ => {}
        }
        r
    }

    /// A forged reply sent before each real one.
    #[derive(Clone, Copy)]
    enum Forgery {
        /// A valid answer, from a socket other than the one queried.
        OtherSource,
        /// From the right socket, with an ID we never sent.
        OtherId,
        /// From the right socket, with our ID, answering another name.
        OtherName,
        /// From the right socket, answering no question at all.
        NoQuestion,
    }

    /// Where a forged reply says ttyd is.
    const EVIL: Ipv4Addr = Ipv4Addr::new(6, 6, 6, 6);

    /// Serves on `sock`, replying from `reply_from` if given; sends junk
    /// and, if asked, a forged reply pointing at [`EVIL`] first (from
    /// `sock` itself when `reply_from` is set: the multicast test's
    /// "host's own address").
    fn serve(
        sock: UdpSocket,
        reply_from: Option<UdpSocket>,
        ignore: usize,
        with_additional: bool,
        forgery: Option<Forgery>,
    ) {
        tokio::spawn(async move {
            let out = reply_from.as_ref().unwrap_or(&sock);
            let rogue = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut buf = vec![0u8; 9000];
            let mut seen = 0;
            loop {
                let (len, from) = sock.recv_from(&mut buf).await.unwrap();
                seen += 1;
                // Junk first, to show it is ignored.
                out.send_to(b"\x00\x01junk", from).await.unwrap();
                if seen <= ignore {
                    continue;
                }
                let q = Message::from_vec(&buf[..len]).unwrap();
                let query = q.queries()[0].clone();
                if reply_from.is_some() {
                    // From the interface's own address: not an answer.
                    let forged = reply(q.id(), &query, EVIL, true);
                    sock.send_to(&forged.to_vec().unwrap(), from).await.unwrap();
                }
                let forged = match forgery {
                    None => None,
                    Some(Forgery::OtherSource) => {
                        let r = reply(q.id(), &query, EVIL, true);
                        rogue.send_to(&r.to_vec().unwrap(), from).await.unwrap();
                        None
                    }
                    Some(Forgery::OtherId) => {
                        Some(reply(q.id().wrapping_add(100), &query, EVIL, true))
                    }
                    Some(Forgery::OtherName) => {
                        let other = Name::from_ascii("other._http._tcp.local.").unwrap();
                        let mut r = reply(q.id(), &query, EVIL, true);
                        r.take_queries();
                        r.add_query(Query::query(other, query.query_type()));
                        Some(r)
                    }
                    Some(Forgery::NoQuestion) => {
                        let mut r = reply(q.id(), &query, EVIL, true);
                        r.take_queries();
                        Some(r)
                    }
                };
                if let Some(f) = forged {
                    out.send_to(&f.to_vec().unwrap(), from).await.unwrap();
                }
                // The real answer comes after the forgery.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let r = reply(q.id(), &query, Ipv4Addr::new(10, 0, 2, 15), with_additional);
                if r.answers().is_empty() {
                    continue;
                }
                out.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
    }

    async fn discover_despite(forgery: Forgery) -> TtydService {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        serve(sock, None, 0, true, Some(forgery));
        discover_ttyd(
            &GuestNet::Current,
            MdnsTransport::Unicast(addr),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_reply_from_another_source_is_ignored() {
        let svc = discover_despite(Forgery::OtherSource).await;
        assert_eq!(svc.addr, Ipv4Addr::new(10, 0, 2, 15));
    }

    #[tokio::test]
    async fn a_reply_with_another_id_is_ignored() {
        let svc = discover_despite(Forgery::OtherId).await;
        assert_eq!(svc.addr, Ipv4Addr::new(10, 0, 2, 15));
    }

    #[tokio::test]
    async fn a_reply_for_another_name_is_ignored() {
        let svc = discover_despite(Forgery::OtherName).await;
        assert_eq!(svc.addr, Ipv4Addr::new(10, 0, 2, 15));
    }

    #[tokio::test]
    async fn a_reply_to_no_question_is_ignored() {
        let svc = discover_despite(Forgery::NoQuestion).await;
        assert_eq!(svc.addr, Ipv4Addr::new(10, 0, 2, 15));
    }

    #[test]
    fn a_reply_must_repeat_our_id_and_question() {
        let asked = Asked::new(7, TTYD_INSTANCE, RecordType::SRV);
        let ours = Query::query(asked.name.clone(), RecordType::SRV);
        let ok = reply(7, &ours, EVIL, true);
        assert!(asked.answered_by(&ok));
        assert!(!asked.answered_by(&reply(8, &ours, EVIL, true)));
        let upper = Name::from_ascii("TTYD._http._tcp.local.").unwrap();
        assert!(asked.answered_by(&reply(7, &Query::query(upper, RecordType::SRV), EVIL, true)));
        let other_type = Query::query(asked.name.clone(), RecordType::TXT);
        assert!(!asked.answered_by(&reply(7, &other_type, EVIL, true)));
        let other = Query::query(
            Name::from_ascii("other._http._tcp.local.").unwrap(),
            RecordType::SRV,
        );
        assert!(!asked.answered_by(&reply(7, &other, EVIL, true)));
        let mut none = ok.clone();
        none.take_queries();
        assert!(!asked.answered_by(&none));
    }

    #[test]
    fn replies_come_only_from_where_answers_can() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let uni = MdnsTransport::Unicast(at("127.0.0.1:5555"));
        assert!(source_ok(uni, at("127.0.0.1:5555")));
        assert!(!source_ok(uni, at("127.0.0.1:5556")));
        assert!(!source_ok(uni, at("127.0.0.2:5555")));
        let tap = MdnsTransport::Multicast {
            interface: Ipv4Addr::new(192, 168, 7, 1),
        };
        assert!(source_ok(tap, at("192.168.7.150:5353")));
        assert!(source_ok(tap, at("[::ffff:192.168.7.150]:5353")));
        assert!(
            !source_ok(tap, at("192.168.7.1:5353")),
            "the host's own address"
        );
        assert!(!source_ok(tap, at("127.0.0.1:5353")), "loopback");
        assert!(
            !source_ok(tap, at("192.168.7.150:40000")),
            "not the mDNS port"
        );
        assert!(!source_ok(tap, at("[fe80::1]:5353")));
        let lo = MdnsTransport::Multicast {
            interface: Ipv4Addr::LOCALHOST,
        };
        assert!(source_ok(lo, at("127.0.0.2:5353")));
        assert!(!source_ok(lo, at("127.0.0.1:5353")));
    }

    #[tokio::test]
    async fn multicast_query_on_an_interface() {
        // A responder on the mDNS group, joined on loopback (the TAP mode
        // does the same on the TAP's host address).
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_nonblocking(true).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5353)).into())
            .unwrap();
        s.join_multicast_v4(MDNS_GROUP.ip(), &Ipv4Addr::LOCALHOST)
            .unwrap();
        // Answers come from another address of the link than the host's
        // interface (127.0.0.1): 127.0.0.2, port 5353. A reply from the
        // interface's own address comes first and is ignored.
        let out = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        out.set_reuse_address(true).unwrap();
        out.set_nonblocking(true).unwrap();
        out.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 5353)).into())
            .unwrap();
        serve(
            UdpSocket::from_std(s.into()).unwrap(),
            Some(UdpSocket::from_std(out.into()).unwrap()),
            0,
            true,
            None,
        );
        let svc = discover_ttyd(
            &GuestNet::Current,
            MdnsTransport::Multicast {
                interface: Ipv4Addr::LOCALHOST,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(svc.socket_addr(), "10.0.2.15:7681".parse().unwrap());
    }

    #[tokio::test]
    async fn finds_ttyd_from_srv_and_additional_a() {
        let addr = responder(0, true).await;
        let svc = discover_ttyd(
            &GuestNet::Current,
            MdnsTransport::Unicast(addr),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(svc.port, 7681);
        assert_eq!(svc.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(svc.host, "avf-guest.local.");
        assert_eq!(svc.socket_addr(), "10.0.2.15:7681".parse().unwrap());
    }

    #[tokio::test]
    async fn retries_and_asks_for_the_a_record_separately() {
        let addr = responder(2, false).await;
        let t = std::time::Instant::now();
        let svc = discover_ttyd(
            &GuestNet::Current,
            MdnsTransport::Unicast(addr),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(svc.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert!(t.elapsed() >= Duration::from_secs(2), "two retries of 1 s");
    }

    #[tokio::test]
    async fn times_out_with_a_clear_error() {
        // Nobody listens there: the error names the instance and transport.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dead = sock.local_addr().unwrap();
        drop(sock);
        let err = discover_ttyd(
            &GuestNet::Current,
            MdnsTransport::Unicast(dead),
            Duration::from_millis(1500),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ttyd._http._tcp.local."), "{text}");
        assert!(
            matches!(err, MdnsError::Timeout { queries: 2, .. }),
            "{text}"
        );
    }

    /// Fuzz: no datagram on our port panics the discovery's handling of
    /// it, from any source; raw bytes, and replies built from arbitrary
    /// records (odd names, ports, types) that answer our questions, with
    /// some bytes flipped. What is found can be asked for next.
    #[test]
    fn fuzz_datagrams() {
        use crate::fuzzing::{proptest::prelude::*, run};
        let dest: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let id = 0x4242;
        let asked: VecDeque<Asked> = [
            Asked::new(id, TTYD_INSTANCE, RecordType::SRV),
            Asked::new(id, "avf-guest.local.", RecordType::A),
        ]
        .into();
        let check = |datagram: &[u8], from: SocketAddr, transport: MdnsTransport| {
            let known = ("avf-guest.local.".to_string(), 7681);
            for k in [None, Some(&known)] {
                if let Ok(found) = hear(datagram, from, transport, &asked, k) {
                    if let Some((host, _)) = &found.srv {
                        let next = Asked::new(id.wrapping_add(1), host, RecordType::A);
                        let _ = next.bytes();
                    }
                }
            }
        };

        let from = prop_oneof![
            Just(dest),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ];
        run(
            "mdns datagrams (bytes)",
            20_000,
            (proptest::collection::vec(any::<u8>(), 0..512), from),
            |(bytes, from)| {
                check(&bytes, from, MdnsTransport::Unicast(dest));
                let interface = Ipv4Addr::new(192, 168, 77, 1);
                check(&bytes, from, MdnsTransport::Multicast { interface });
                Ok(())
            },
        );

        let label = proptest::collection::vec(
            prop_oneof![
                4 => proptest::char::range('a', 'z'),
                1 => Just('.'),
                1 => Just('\\'),
                1 => Just('_'),
                1 => Just('-'),
                1 => Just('A'),
                1 => any::<char>(),
            ],
            1..12,
        )
        .prop_map(|c| c.into_iter().collect::<String>());
        let name = prop_oneof![
            Just(Name::from_ascii(TTYD_INSTANCE).unwrap()),
            Just(Name::from_ascii("avf-guest.local.").unwrap()),
            Just(Name::from_ascii("AVF-Guest.LOCAL.").unwrap()),
            Just(Name::root()),
            proptest::collection::vec(label, 0..6).prop_map(|labels| {
                Name::from_labels(labels.iter().map(|l| l.as_bytes()))
                    .unwrap_or_else(|_| Name::root())
            }),
        ];
        let rdata = prop_oneof![
            (any::<u16>(), name.clone()).prop_map(|(port, t)| RData::SRV(SRV::new(0, 0, port, t))),
            any::<[u8; 4]>().prop_map(|a| RData::A(A::from(Ipv4Addr::from(a)))),
            name.clone()
                .prop_map(|n| RData::PTR(hickory_proto::rr::rdata::PTR(n))),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
                RData::TXT(hickory_proto::rr::rdata::TXT::from_bytes(vec![&b[..]]))
            }),
        ];
        let record = (name.clone(), any::<u32>(), rdata)
            .prop_map(|(n, ttl, d)| Record::from_rdata(n, ttl, d));
        let reply = (
            prop_oneof![Just(id), any::<u16>()],
            prop_oneof![
                Just(Query::query(
                    Name::from_ascii(TTYD_INSTANCE).unwrap(),
                    RecordType::SRV
                )),
                Just(Query::query(
                    Name::from_ascii("avf-guest.local.").unwrap(),
                    RecordType::A
                )),
                name.prop_map(|n| Query::query(n, RecordType::A)),
            ],
            proptest::collection::vec(record.clone(), 0..5),
            proptest::collection::vec(record, 0..5),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        );
        run(
            "mdns datagrams (replies)",
            3_000,
            reply,
            |(rid, query, answers, additionals, flips)| {
                let mut m = Message::new();
                m.set_id(rid).set_message_type(MessageType::Response);
                m.add_query(query);
                m.add_answers(answers);
                m.add_additionals(additionals);
                let Ok(mut bytes) = m.to_vec() else {
                    return Ok(());
                };
                // As built, then with some bytes flipped.
                check(&bytes, dest, MdnsTransport::Unicast(dest));
                for (at, x) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= x;
                }
                check(&bytes, dest, MdnsTransport::Unicast(dest));
                Ok(())
            },
        );
    }
}
