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
    /// dnsmasq's lease and pid files go here.
    run_dir: PathBuf,
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
    /// upstream: offline).
    pub fn dnsmasq_args(&self) -> Vec<OsString> {
        let fixed = [
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-dhcp",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--user=root",
            "--group=root",
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
            format!("--pid-file={}", self.run_dir.join("dnsmasq.pid").display()),
        ];
        fixed
            .into_iter()
            .map(OsString::from)
            .chain(own.into_iter().map(OsString::from))
            .collect()
    }

    fn leases(&self) -> PathBuf {
        self.run_dir.join("dnsmasq.leases")
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
