//! Which TCP ports the guest listens on, and who owns them — what the
//! launcher reports with ReportVmActivePorts.
//!
//! Upstream follows tcpstates through bcc/eBPF; we ask the kernel instead:
//! a sock_diag (inet_diag) dump filtered in the kernel to LISTEN sockets, a
//! few hundred bytes per poll, so polling every 500 ms costs next to nothing.
//! If sock_diag is missing (kernel without INET_DIAG) we fall back to parsing
//! /proc/net/tcp. The owning command is found by matching the socket inode
//! against /proc/<pid>/fd, only when a new socket shows up.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// ttyd's port, never forwarded.
pub const TTYD_PORT: u16 = 7681;
/// Ports below this are privileged and not offered for forwarding.
pub const MIN_PORT: u16 = 1024;

/// A listening socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawListener {
    pub addr: IpAddr,
    pub port: u16,
    pub remote_port: u16,
    pub inode: u64,
    /// For IPv6 sockets: IPV6_V6ONLY. IPv4 sockets: false.
    pub v6only: bool,
}

impl RawListener {
    /// The contract's filter: an IPv4 TCP listener (remote port 0) on a port
    /// ≥ 1024 other than ttyd's. A dual-stack IPv6 socket on `::` (not
    /// v6only) also accepts IPv4 connections on 127.0.0.1, which is where
    /// forwarder_guest connects, so it counts as an IPv4 listener too.
    pub fn is_reportable(&self) -> bool {
        let ipv4_reachable = match self.addr {
            IpAddr::V4(_) => true,
            IpAddr::V6(a) => (!self.v6only && a.is_unspecified()) || a.to_ipv4_mapped().is_some(),
        };
        ipv4_reachable && self.remote_port == 0 && self.port >= MIN_PORT && self.port != TTYD_PORT
    }
}

/// What the launcher reports: port → owning command name.
pub type Snapshot = BTreeMap<u16, String>;

/// The difference between two snapshots (for logging and to decide whether
/// to report).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<(u16, String)>,
    pub removed: Vec<u16>,
    pub changed: Vec<(u16, String)>,
}

impl Diff {
    pub fn between(old: &Snapshot, new: &Snapshot) -> Diff {
        let mut d = Diff::default();
        for (port, comm) in new {
            match old.get(port) {
                None => d.added.push((*port, comm.clone())),
                Some(c) if c != comm => d.changed.push((*port, comm.clone())),
                Some(_) => {}
            }
        }
        d.removed = old
            .keys()
            .filter(|p| !new.contains_key(p))
            .copied()
            .collect();
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The last snapshot the app took, so a report goes out at start and then
/// only on a change (both modes' report loops).
#[derive(Debug, Default)]
pub struct LastReport(Option<Snapshot>);

impl LastReport {
    /// Whether `now` must be reported: nothing taken yet, or it differs
    /// from what was (the change is logged).
    pub fn due(&self, now: &Snapshot) -> bool {
        let Some(old) = &self.0 else { return true };
        let diff = Diff::between(old, now);
        if diff.is_empty() {
            return false;
        }
        eprintln!(
            "listeners changed: +{:?} -{:?} ~{:?}",
            diff.added, diff.removed, diff.changed
        );
        true
    }
    /// The app took `now`.
    pub fn taken(&mut self, now: Snapshot) {
        self.0 = Some(now);
    }
    /// A new listener or session: the next report is a full one.
    pub fn forget(&mut self) {
        self.0 = None;
    }
}

/// Where the raw listeners come from.
pub trait ListenerSource {
    fn listeners(&mut self) -> anyhow::Result<Vec<RawListener>>;
}

/// sock_diag over NETLINK_SOCK_DIAG, LISTEN state only.
pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
}

impl SockDiag {
    pub fn new() -> anyhow::Result<Self> {
        let mut socket =
            Socket::new(NETLINK_SOCK_DIAG).context("opening a NETLINK_SOCK_DIAG socket")?;
        socket.bind_auto().context("binding the sock_diag socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connecting the sock_diag socket to the kernel")?;
        Ok(Self {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    fn dump(&mut self, family: u8, out: &mut Vec<RawListener>) -> anyhow::Result<()> {
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut req = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::LISTEN,
                socket_id,
            })
            .into(),
        );
        req.finalize();
        let mut bytes = vec![0; req.buffer_len()];
        req.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .context("sending the sock_diag request")?;
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .context("receiving the sock_diag answer")?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..n])
                    .context("decoding a sock_diag message")?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return Err(anyhow::Error::new(e.to_io())
                            .context(format!("sock_diag dump of address family {family} failed")));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let v6only = r.nlas.iter().any(|n| matches!(n, Nla::SkV6Only(true)));
                        out.push(RawListener {
                            addr: r.header.socket_id.source_address,
                            port: r.header.socket_id.source_port,
                            remote_port: r.header.socket_id.destination_port,
                            inode: u64::from(r.header.inode),
                            v6only,
                        });
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

impl ListenerSource for SockDiag {
    fn listeners(&mut self) -> anyhow::Result<Vec<RawListener>> {
        let mut out = Vec::new();
        self.dump(AF_INET, &mut out)?;
        // A kernel without IPv6 has no AF_INET6 sock_diag handler: IPv4 only then.
        if let Err(e) = self.dump(AF_INET6, &mut out) {
            let no_family = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::ENOENT));
            if !no_family {
                return Err(e);
            }
        }
        Ok(out)
    }
}

/// Fallback: /proc/net/tcp (IPv4 only; the v6only flag is not visible there).
pub struct ProcNetTcp {
    pub path: PathBuf,
}

impl ListenerSource for ProcNetTcp {
    fn listeners(&mut self) -> anyhow::Result<Vec<RawListener>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        parse_proc_net_tcp(&text, &self.path.display().to_string())
    }
}

/// Parses /proc/net/tcp, keeping LISTEN (0A) sockets.
pub fn parse_proc_net_tcp(text: &str, path: &str) -> anyhow::Result<Vec<RawListener>> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        let field = |i: usize, name: &str| {
            cols.get(i)
                .copied()
                .with_context(|| format!("{path} line {}: missing field {name}", idx + 1))
        };
        if field(3, "st")? != "0A" {
            continue;
        }
        let parse_addr = |s: &str, name: &str| -> anyhow::Result<(Ipv4Addr, u16)> {
            let bad = || {
                format!(
                    "{path} line {}: field {name}: {s:?} is not ADDR:PORT hex",
                    idx + 1
                )
            };
            let (a, p) = s.split_once(':').with_context(bad)?;
            let a = u32::from_str_radix(a, 16).ok().with_context(bad)?;
            let p = u16::from_str_radix(p, 16).ok().with_context(bad)?;
            Ok((Ipv4Addr::from(a.to_ne_bytes()), p))
        };
        let (addr, port) = parse_addr(field(1, "local_address")?, "local_address")?;
        let (_, remote_port) = parse_addr(field(2, "rem_address")?, "rem_address")?;
        let inode_s = field(9, "inode")?;
        let inode = inode_s
            .parse()
            .with_context(|| format!("{path} line {}: field inode: {inode_s:?}", idx + 1))?;
        out.push(RawListener {
            addr: IpAddr::V4(addr),
            port,
            remote_port,
            inode,
            v6only: false,
        });
    }
    Ok(out)
}

/// Maps socket inodes to the command name of the process holding them.
pub struct CommResolver {
    proc_root: PathBuf,
    cache: HashMap<u64, String>,
}

impl CommResolver {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            cache: HashMap::new(),
        }
    }

    /// Resolves all `inodes`, scanning /proc only if one is not cached yet.
    /// Unknown owners (gone, or hidden from us) get an empty name.
    pub fn resolve(&mut self, inodes: &HashSet<u64>) -> HashMap<u64, String> {
        self.cache.retain(|i, _| inodes.contains(i));
        let missing: HashSet<u64> = inodes
            .iter()
            .filter(|i| !self.cache.contains_key(i))
            .copied()
            .collect();
        if !missing.is_empty() {
            let found = scan_proc(&self.proc_root, &missing);
            for i in missing {
                self.cache
                    .insert(i, found.get(&i).cloned().unwrap_or_default());
            }
        }
        inodes
            .iter()
            .map(|i| (*i, self.cache.get(i).cloned().unwrap_or_default()))
            .collect()
    }
}

/// One pass over /proc/<pid>/fd/*; the lowest pid holding a socket wins (the
/// parent, when a server forks workers).
fn scan_proc(proc_root: &Path, wanted: &HashSet<u64>) -> HashMap<u64, String> {
    let mut owner: HashMap<u64, (u32, PathBuf)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return HashMap::new();
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(&target) else {
                continue;
            };
            if wanted.contains(&inode) && owner.get(&inode).is_none_or(|(p, _)| pid < *p) {
                owner.insert(inode, (pid, e.path()));
            }
        }
    }
    owner
        .into_iter()
        .filter_map(|(inode, (_, dir))| {
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            Some((inode, comm.trim_end_matches('\n').to_owned()))
        })
        .collect()
}

/// `socket:[12345]` → 12345.
fn socket_inode(target: &Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Raw listeners → the snapshot the launcher reports.
pub fn build_snapshot(raw: &[RawListener], comms: &HashMap<u64, String>) -> Snapshot {
    let mut snap = Snapshot::new();
    for l in raw.iter().filter(|l| l.is_reportable()) {
        let comm = comms.get(&l.inode).cloned().unwrap_or_default();
        // Several sockets on one port (SO_REUSEPORT, per-address binds): keep
        // the first non-empty owner.
        let slot = snap.entry(l.port).or_default();
        if slot.is_empty() {
            *slot = comm;
        }
    }
    snap
}

/// Source + resolver: one call gives the current snapshot.
pub struct Watcher {
    source: Box<dyn ListenerSource + Send>,
    comms: CommResolver,
}

impl Watcher {
    pub fn new(source: Box<dyn ListenerSource + Send>, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            source,
            comms: CommResolver::new(proc_root),
        }
    }

    /// sock_diag if the kernel has it, else /proc/net/tcp.
    pub fn system() -> Self {
        let source: Box<dyn ListenerSource + Send> = match SockDiag::new().and_then(|mut s| {
            s.listeners()?;
            Ok(s)
        }) {
            Ok(s) => Box::new(s),
            Err(e) => {
                eprintln!("sock_diag unavailable ({e:#}); polling /proc/self/net/tcp");
                Box::new(ProcNetTcp {
                    path: "/proc/self/net/tcp".into(),
                })
            }
        };
        Self::new(source, "/proc")
    }

    pub fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let raw: Vec<RawListener> = self
            .source
            .listeners()?
            .into_iter()
            .filter(RawListener::is_reportable)
            .collect();
        let inodes = raw.iter().map(|l| l.inode).collect();
        let comms = self.comms.resolve(&inodes);
        Ok(build_snapshot(&raw, &comms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_due_at_start_on_a_change_and_after_forget() {
        let a: Snapshot = [(8080, "python3".to_string())].into();
        let b: Snapshot = [(8080, "node".to_string())].into();
        let mut last = LastReport::default();
        assert!(last.due(&a), "the first report");
        last.taken(a.clone());
        assert!(!last.due(&a), "nothing changed");
        assert!(last.due(&b), "the owner changed");
        last.forget();
        assert!(last.due(&a), "a new listener gets a full report");
    }

    fn l(addr: &str, port: u16, inode: u64) -> RawListener {
        RawListener {
            addr: addr.parse().unwrap(),
            port,
            remote_port: 0,
            inode,
            v6only: false,
        }
    }

    #[test]
    fn contract_filter() {
        assert!(l("0.0.0.0", 8080, 1).is_reportable());
        assert!(l("127.0.0.1", 1024, 1).is_reportable());
        assert!(!l("0.0.0.0", 1023, 1).is_reportable());
        assert!(!l("0.0.0.0", 7681, 1).is_reportable());
        assert!(!RawListener {
            remote_port: 5,
            ..l("0.0.0.0", 8080, 1)
        }
        .is_reportable());
        // Dual-stack :: accepts IPv4; v6only and ::1 do not.
        assert!(l("::", 3000, 1).is_reportable());
        assert!(!RawListener {
            v6only: true,
            ..l("::", 3000, 1)
        }
        .is_reportable());
        assert!(!l("::1", 3000, 1).is_reportable());
        assert!(l("::ffff:127.0.0.1", 3000, 1).is_reportable());
    }

    #[test]
    fn snapshot_and_diff() {
        let raw = vec![
            l("0.0.0.0", 8080, 10),
            l("0.0.0.0", 22, 11),
            l("::", 8080, 12),
            l("127.0.0.1", 5000, 13),
        ];
        let comms = HashMap::from([(10, "python3".to_owned()), (13, "node".to_owned())]);
        let a = build_snapshot(&raw, &comms);
        assert_eq!(
            a,
            Snapshot::from([(5000, "node".into()), (8080, "python3".into())])
        );
        let mut b = a.clone();
        b.remove(&5000);
        b.insert(9000, "nginx".into());
        b.insert(8080, "uvicorn".into());
        let d = Diff::between(&a, &b);
        assert_eq!(d.added, vec![(9000, "nginx".into())]);
        assert_eq!(d.removed, vec![5000]);
        assert_eq!(d.changed, vec![(8080, "uvicorn".into())]);
        assert!(Diff::between(&b, &b).is_empty());
        assert!(!Diff::between(&Snapshot::new(), &b).is_empty());
    }

    #[test]
    fn proc_net_tcp_parsing() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:1E01 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4243 1 0 100 0 0 10 0\n\
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0 100 0 0 10 0\n";
        let v = parse_proc_net_tcp(text, "tcp").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].port, 8080);
        assert_eq!(v[0].inode, 4242);
        assert_eq!(v[1].port, 7681);
        if cfg!(target_endian = "little") {
            assert_eq!(v[1].addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        }
        let e =
            parse_proc_net_tcp("hdr\n 0: zz:1 00000000:0000 0A\n", "/proc/net/tcp").unwrap_err();
        assert!(format!("{e:#}").contains("local_address"), "{e:#}");
    }

    #[test]
    fn socket_link_names() {
        assert_eq!(socket_inode(Path::new("socket:[123]")), Some(123));
        assert_eq!(socket_inode(Path::new("pipe:[123]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn sock_diag_sees_a_host_listener_with_its_comm() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut w = Watcher::new(Box::new(SockDiag::new().unwrap()), "/proc");
        let snap = w.snapshot().unwrap();
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            snap.get(&port).map(String::as_str),
            Some(me.trim_end()),
            "{snap:?}"
        );
        drop(listener);
        let snap = w.snapshot().unwrap();
        assert!(!snap.contains_key(&port), "{snap:?}");
    }

    #[test]
    fn proc_fallback_agrees_with_sock_diag() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut nl = SockDiag::new().unwrap();
        let mut pr = ProcNetTcp {
            path: "/proc/self/net/tcp".into(),
        };
        // Ours only: another process (a test running beside this one) may
        // listen on [::1] with the same port number, which sock_diag lists
        // and /proc/self/net/tcp (IPv4) does not.
        let addr = listener.local_addr().unwrap().ip();
        let ours = |l: &RawListener| l.port == port && l.addr == addr;
        let a: Vec<_> = nl.listeners().unwrap().into_iter().filter(ours).collect();
        let b: Vec<_> = pr.listeners().unwrap().into_iter().filter(ours).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
    }
}
