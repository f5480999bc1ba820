//! The faithful network mode: the guest's virtio-net on a TAP inside a
//! network namespace of its own, a DHCP and DNS server (dnsmasq) on a
//! private /24 picked at run time, and the host as the default gateway —
//! what Android's tethering gives the VM (contract §3). The namespace keeps
//! the host's own network untouched and lets VMs run side by side.
//!
//! Host services on the guest network (the Terminal app's gRPC server, mDNS,
//! ttyd client) make their sockets in the namespace through
//! the namespace path ([`TapPlan::path`]); QEMU and dnsmasq are started
//! inside it. The plan decides all of it ([`TapPlan`]); [`TapNet`] executes.

use std::ffi::OsString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::procs;

/// The TAP's name inside the namespace.
pub const TAP_IFNAME: &str = "avf0";
/// Names under `/run/netns` are `<NETNS_PREFIX><pid>-<n>`.
pub const NETNS_PREFIX: &str = "avf-";
/// A DNS name the harness's DNS server answers with the host's address.
pub const HOST_DNS_NAME: &str = "host.avf.internal";
const NETNS_DIR: &str = "/run/netns";

/// One VM's TAP network as planned: the namespace's name, the /24 and where
/// dnsmasq keeps its state. Pure data; [`TapNet::create`] makes it real.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlan {
    pub name: String,
    /// The /24's first address (`a.b.c.0`).
    pub network: Ipv4Addr,
    /// The host's address on the /24: the guest's gateway and DNS server.
    pub host: Ipv4Addr,
    /// DHCP leases from here …
    first: Ipv4Addr,
    /// … to here.
    last: Ipv4Addr,
    /// The run dir; dnsmasq's lease and pid files go in its
    /// [`TapPlan::dnsmasq_dir`].
    run_dir: PathBuf,
    /// Who dnsmasq runs as once it has bound its sockets.
    pub dnsmasq_user: DnsmasqUser,
}

/// The unprivileged account dnsmasq drops to: it parses the guest's DHCP
/// and DNS, so it must not do that as root. dnsmasq opens its lease and
/// pid files as root before it drops privileges (and keeps the lease file
/// open), and keeps only the capabilities DHCP needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqUser {
    pub user: String,
    /// The user's primary group by name, if it has one (`--group`;
    /// without it dnsmasq would pick `dip`).
    pub group: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

impl DnsmasqUser {
    /// Debian's `dnsmasq` user (made by the `dnsmasq` package) if it
    /// exists, else `nobody`, with its primary group.
    pub fn resolve() -> DnsmasqUser {
        ["dnsmasq", "nobody"]
            .into_iter()
            .find_map(lookup_user)
            .unwrap_or_else(|| DnsmasqUser {
                // dnsmasq then refuses to start, naming the user.
                user: "nobody".into(),
                group: None,
                uid: 65534,
                gid: 65534,
            })
    }
}

/// `name`'s uid, gid and primary group name, from the system's user
/// database (NSS included).
fn lookup_user(name: &str) -> Option<DnsmasqUser> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid passwd/group (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: the buffers outlive the call; `found` is checked before use.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    let (uid, gid) = (pw.pw_uid, pw.pw_gid);
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut gfound: *mut libc::group = std::ptr::null_mut();
    let mut gbuf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as above.
    let rc = unsafe { libc::getgrgid_r(gid, &mut gr, gbuf.as_mut_ptr(), gbuf.len(), &mut gfound) };
    let group = (rc == 0 && !gfound.is_null()).then(|| {
        // SAFETY: getgrgid_r succeeded: gr_name is a C string in `gbuf`.
        unsafe { std::ffi::CStr::from_ptr(gr.gr_name) }
            .to_string_lossy()
            .into_owned()
    });
    Some(DnsmasqUser {
        user: name.to_string(),
        group,
        uid,
        gid,
    })
}

impl TapPlan {
    /// Namespace `name` on 192.168.`x`.0/24 (`x` picked at random by the
    /// caller, as tethering picks its subnet per run); state in `run_dir`.
    pub fn new(name: &str, x: u8, run_dir: &Path) -> TapPlan {
        TapPlan {
            name: name.to_string(),
            network: Ipv4Addr::new(192, 168, x, 0),
            host: Ipv4Addr::new(192, 168, x, 1),
            first: Ipv4Addr::new(192, 168, x, 100),
            last: Ipv4Addr::new(192, 168, x, 199),
            run_dir: run_dir.to_path_buf(),
            dnsmasq_user: DnsmasqUser::resolve(),
        }
    }

    /// Namespace `name` where the guest always gets `guest` and the host
    /// is `host`, on their /24 (a profile's fixed addresses).
    pub fn fixed(name: &str, host: Ipv4Addr, guest: Ipv4Addr, run_dir: &Path) -> TapPlan {
        let o = host.octets();
        TapPlan {
            name: name.to_string(),
            network: Ipv4Addr::new(o[0], o[1], o[2], 0),
            host,
            first: guest,
            last: guest,
            run_dir: run_dir.to_path_buf(),
            dnsmasq_user: DnsmasqUser::resolve(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// dnsmasq's arguments, in the foreground: DHCP on the /24 (router and
    /// DNS = host) and DNS for [`HOST_DNS_NAME`], nothing else (no
    /// upstream: offline). It is started unprivileged: see
    /// [`TapPlan::dnsmasq_command`].
    pub fn dnsmasq_args(&self) -> Vec<OsString> {
        let fixed = [
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-dhcp",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--dhcp-authoritative",
        ];
        let own = [
            format!("--interface={TAP_IFNAME}"),
            format!("--listen-address={}", self.host),
            format!("--dhcp-range={},{},255.255.255.0,1h", self.first, self.last),
            format!("--dhcp-option=option:router,{}", self.host),
            format!("--dhcp-option=option:dns-server,{}", self.host),
            format!("--host-record={HOST_DNS_NAME},{}", self.host),
            format!("--dhcp-leasefile={}", self.leases().display()),
            format!(
                "--pid-file={}",
                self.dnsmasq_dir().join("dnsmasq.pid").display()
            ),
        ];
        fixed
            .into_iter()
            .map(OsString::from)
            .chain(own.into_iter().map(OsString::from))
            .collect()
    }

    /// How dnsmasq is started: through `setpriv`, which becomes
    /// [`TapPlan::dnsmasq_user`] with only the capabilities DHCP needs
    /// (ambient, so dnsmasq keeps them without being root) and then
    /// restores the parent-death signal that the credential change clears,
    /// so dnsmasq still dies with the harness, even under SIGKILL. dnsmasq's
    /// own `--user` would drop privileges after that signal is gone.
    pub fn dnsmasq_command(&self) -> (OsString, Vec<OsString>) {
        let u = &self.dnsmasq_user;
        let caps = "+net_admin,+net_raw,+net_bind_service";
        let setpriv = [
            format!("--reuid={}", u.uid),
            format!("--regid={}", u.gid),
            "--clear-groups".to_string(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            "--pdeathsig=keep".to_string(),
            "--".to_string(),
            "dnsmasq".to_string(),
        ];
        let args = setpriv
            .into_iter()
            .map(OsString::from)
            .chain(self.dnsmasq_args())
            .collect();
        ("setpriv".into(), args)
    }

    /// dnsmasq's own dir in the run dir, for its lease and pid files.
    pub fn dnsmasq_dir(&self) -> PathBuf {
        self.run_dir.join("dnsmasq")
    }

    /// Makes [`TapPlan::dnsmasq_dir`]: new (never an existing entry), 0700
    /// and owned by [`TapPlan::dnsmasq_user`], so the files in it are the
    /// unprivileged dnsmasq's to write. The run dir around it stays
    /// root's and private.
    pub fn make_dnsmasq_dir(&self) -> Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = self.dnsmasq_dir();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let u = &self.dnsmasq_user;
        std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid))
            .with_context(|| format!("chown {}:{} {}", u.uid, u.gid, dir.display()))?;
        // The mode, whatever the umask did to it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {}", dir.display()))?;
        Ok(dir)
    }

    fn leases(&self) -> PathBuf {
        self.dnsmasq_dir().join("dnsmasq.leases")
    }

    /// The address dnsmasq leased to `mac`, if any yet.
    pub fn lease(&self, mac: &str) -> Option<Ipv4Addr> {
        let text = std::fs::read_to_string(self.leases()).ok()?;
        parse_lease(&text, mac)
    }
}

/// dnsmasq logs this once it serves DHCP: its readiness.
pub const DNSMASQ_READY: &str = "DHCP, IP range";

/// A [`TapPlan`] made real. Dropping it deletes the namespace (with the
/// TAP); the processes inside must be gone by then.
#[derive(Debug)]
pub struct TapNet(TapPlan);

impl std::ops::Deref for TapNet {
    type Target = TapPlan;
    fn deref(&self) -> &TapPlan {
        &self.0
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl TapNet {
    /// Creates the namespace with the TAP up on the planned /24.
    pub fn create(plan: &TapPlan) -> Result<TapNet> {
        plan.make_dnsmasq_dir()?;
        let name = plan.name.as_str();
        ip(&["netns", "add", name]).context(
            "creating the TAP mode's network namespace (needs root or CAP_SYS_ADMIN and CAP_NET_ADMIN)",
        )?;
        let net = TapNet(plan.clone());
        let host_cidr = format!("{}/24", plan.host);
        for args in [
            &["-n", name, "link", "set", "lo", "up"][..],
            &[
                "-n", name, "tuntap", "add", "dev", TAP_IFNAME, "mode", "tap",
            ],
            &["-n", name, "addr", "add", &host_cidr, "dev", TAP_IFNAME],
            &["-n", name, "link", "set", TAP_IFNAME, "up"],
        ] {
            ip(args)?;
        }
        Ok(net)
    }
}

/// Makes `cmd` start inside the network namespace at `netns` (a path under
/// `/run/netns`); keep the returned file until `cmd` has been spawned.
pub fn enter_on_spawn(netns: &Path, cmd: &mut Command) -> Result<File> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; the fd outlives the spawn
    // because the caller keeps the returned File until then.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(ns)
}

/// dnsmasq's lease file: `<expiry> <mac> <ip> <hostname> <client-id>`.
fn parse_lease(text: &str, mac: &str) -> Option<Ipv4Addr> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[1].eq_ignore_ascii_case(mac))
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

impl Drop for TapNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Deletes namespaces of harness processes that no longer run (SIGKILL).
pub fn sweep_stale_namespaces() -> Vec<PathBuf> {
    procs::left_by_dead(Path::new(NETNS_DIR), NETNS_PREFIX)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            ip(&["netns", "del", &name]).is_ok()
        })
        .collect()
}

/// Every namespace named like ours (any harness, alive or not).
pub fn our_namespaces() -> Vec<PathBuf> {
    procs::owned_entries(Path::new(NETNS_DIR), NETNS_PREFIX)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(u: &DnsmasqUser) -> (String, Option<String>) {
        (u.user.clone(), u.group.clone())
    }

    /// dnsmasq parses the guest's packets: it must not stay root, and its
    /// files go to its own dir.
    #[test]
    fn dnsmasq_drops_to_an_unprivileged_user() {
        let d = tempfile::tempdir().unwrap();
        let plan = TapPlan::new("avf-1-0", 77, d.path());
        let u = &plan.dnsmasq_user;
        assert_ne!(u.uid, 0, "{u:?}");
        assert_ne!(u.user, "root");
        let (program, argv) = plan.dnsmasq_command();
        assert_eq!(program, "setpriv");
        let args: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // setpriv becomes the user before dnsmasq runs, with the DHCP
        // capabilities ambient, and puts the parent-death signal back.
        for want in [
            format!("--reuid={}", u.uid),
            format!("--regid={}", u.gid),
            "--clear-groups".into(),
            "--pdeathsig=keep".into(),
        ] {
            assert!(args.contains(&want), "{want} not in {args:?}");
        }
        let dnsmasq = args.iter().position(|a| a == "dnsmasq").expect("dnsmasq");
        assert_eq!(args[dnsmasq - 1], "--");
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--user") || a.contains("=root")),
            "{args:?}"
        );
        let state = d.path().join("dnsmasq");
        for (flag, file) in [
            ("--dhcp-leasefile=", "dnsmasq.leases"),
            ("--pid-file=", "dnsmasq.pid"),
        ] {
            let want = format!("{flag}{}", state.join(file).display());
            assert!(args.contains(&want), "{want} not in {args:?}");
        }
    }

    #[test]
    fn the_dnsmasq_user_is_dnsmasq_or_nobody_with_its_group() {
        let u = DnsmasqUser::resolve();
        if let Some(want) = lookup_user("dnsmasq") {
            assert_eq!(account(&u), account(&want));
        } else {
            assert_eq!(u.user, "nobody");
        }
        // Debian: `nogroup` is nobody's primary group.
        if let Some(nobody) = lookup_user("nobody") {
            assert_eq!(nobody.uid, 65534);
            assert!(nobody.group.is_some(), "{nobody:?}");
        }
        assert_eq!(lookup_user("no-such-user-avf"), None);
    }

    /// The dir dnsmasq writes is its own (0700), the run dir stays root's,
    /// an existing entry there is refused, and the lease is read from it.
    #[test]
    fn the_dnsmasq_dir_is_the_unprivileged_users() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        std::fs::DirBuilder::new().create(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut plan = TapPlan::new("avf-1-0", 77, &run);
        plan.dnsmasq_user = DnsmasqUser {
            user: "nobody".into(),
            group: Some("nogroup".into()),
            uid: 65534,
            gid: 65534,
        };
        if unsafe { libc::geteuid() } != 0 {
            // Only root gives a dir away (TAP mode needs root anyway).
            let e = plan.make_dnsmasq_dir().unwrap_err();
            assert!(format!("{e:#}").contains("chown 65534:65534"), "{e:#}");
            return;
        }
        let dir = plan.make_dnsmasq_dir().unwrap();
        assert_eq!(dir, run.join("dnsmasq"));
        let m = std::fs::symlink_metadata(&dir).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        assert_eq!(m.mode() & 0o777, 0o700);
        let r = std::fs::metadata(&run).unwrap();
        assert_eq!((r.uid(), r.mode() & 0o777), (0, 0o700));
        std::fs::write(
            dir.join("dnsmasq.leases"),
            "1764120000 52:54:00:a7:f0:01 192.168.77.150 avf *\n",
        )
        .unwrap();
        assert_eq!(
            plan.lease("52:54:00:a7:f0:01"),
            Some(Ipv4Addr::new(192, 168, 77, 150))
        );
        // Made once: a second call (or anything planted there) fails.
        assert!(plan.make_dnsmasq_dir().is_err());
    }

    #[test]
    fn lease_lines() {
        let text = "1764120000 52:54:00:a7:f0:01 192.168.77.150 avf 01:52:54:00:a7:f0:01\n\
                    1764120000 52:54:00:00:00:02 192.168.77.151 * *\n";
        assert_eq!(
            parse_lease(text, "52:54:00:A7:F0:01"),
            Some(Ipv4Addr::new(192, 168, 77, 150))
        );
        assert_eq!(parse_lease(text, "52:54:00:00:00:03"), None);
        assert_eq!(parse_lease("garbage\n", "52:54:00:00:00:03"), None);
    }
}
