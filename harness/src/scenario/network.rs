//! Scenario step for the TAP mode's network (issue 4 scenario 8): the guest
//! took a DHCP lease on the run's /24, routes by default via the host, and
//! resolves a name the harness's DNS server serves.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

use super::guest::guest_sh;
use crate::timeouts::scale;
use crate::vm::Vm;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapNetwork {
    /// A name the harness's DNS server answers with the host's address.
    #[serde(default = "default_name")]
    pub resolve: String,
    /// Time for the lease and the route to appear, from this step's start.
    pub within_secs: u64,
}

fn default_name() -> String {
    crate::net::HOST_DNS_NAME.to_string()
}

pub async fn check(vm: &Vm, s: &TapNetwork) -> Result<String> {
    let tap = vm
        .tap()
        .ok_or_else(|| anyhow!("tap_network needs `net = \"tap\"` in the scenario"))?;
    let host = tap.host;
    let within = Duration::from_secs(s.within_secs).mul_f64(scale());
    let t0 = Instant::now();
    let lease = loop {
        if let Some(ip) = vm.guest_ip() {
            break ip;
        }
        if t0.elapsed() > within {
            bail!(
                "no DHCP lease for the guest's MAC within {within:?} (see dnsmasq.log in the artefacts)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let n = tap.network.octets();
    if lease.octets()[..3] != n[..3] {
        bail!("leased {lease}, outside {}/24", tap.network);
    }
    // The guest's own view: address with its prefix, default route, DNS.
    let want_addr = format!("inet {lease}/24 ");
    let want_route = format!("default via {host} ");
    let sh = format!(
        "for i in $(seq 30); do ip -4 -o addr show scope global | grep -q '{want_addr}' && ip -4 route show default | grep -q '^{want_route}' && break; sleep 1; done; \
         ip -4 -o addr show scope global; ip -4 route show default; getent ahostsv4 {} | head -1",
        s.resolve
    );
    let out = guest_sh(vm, &sh).await?;
    if !out.contains(&want_addr) {
        bail!("the guest does not have {lease}/24:\n{out}");
    }
    if !out.lines().any(|l| l.starts_with(&want_route)) {
        bail!("the guest's default route is not via {host}:\n{out}");
    }
    let resolved = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default();
    if resolved != host.to_string() {
        bail!(
            "{} resolved to {resolved:?} in the guest, expected {host}:\n{out}",
            s.resolve
        );
    }
    Ok(format!(
        "lease {lease}/24 on {}/24 after {:.1} s, default via {host}, {} → {resolved}",
        tap.network,
        vm.since_start().as_secs_f64(),
        s.resolve
    ))
}
