//! Bodies of the steps the harness runs on the VM itself (console, QMP,
//! guest agent, host files); one function per step kind of
//! [`super::model`] with [`super::model::Side::Vm`].

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;

use super::guest::{guest_mem_total, guest_sh, wait_balloon};
use super::model::{
    Balloon, Boot, ConsoleSnapshot, Exec, GuestNote, HostFsck, Powerdown, TapNetwork,
};
use super::{RunReport, Snapshotter};
use crate::timeouts::{wait_until, Check, Timeout};
use crate::vm::Vm;

const MIB: u64 = 1 << 20;

pub async fn boot(vm: &Vm, s: &Boot, report: &mut RunReport) -> Result<()> {
    let b = vm.wait_boot().await?;
    report.boot_to_marker = Some(b.to_marker);
    report.boot_to_agent = Some(b.to_agent);
    if let Some(limit) = s.max.map(|m| m.get()) {
        if b.to_marker > limit {
            bail!("boot took {:?}, more than {limit:?}", b.to_marker);
        }
    }
    Ok(())
}

pub async fn exec(vm: &Vm, s: &Exec, snap: &Snapshotter<'_>) -> Result<()> {
    let out = vm.qga().await?.sh(&s.sh).await?;
    let stdout = out.stdout_str();
    if out.exit_code != Some(s.exit) {
        bail!(
            "exit {:?} (signal {:?}), expected {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.exit_code,
            out.signal,
            s.exit,
            out.stderr_str()
        );
    }
    if let Some(re) = &s.stdout_matches {
        if !Regex::new(re)?.is_match(&stdout) {
            bail!("stdout does not match /{re}/:\n{stdout}");
        }
    }
    if let Some(name) = &s.snapshot {
        snap.check(name, &snap.norm.text(&stdout, &[], &[]))?;
    }
    Ok(())
}

pub fn console_snapshot(vm: &Vm, s: &ConsoleSnapshot, snap: &Snapshotter<'_>) -> Result<()> {
    let compile = |v: &[String]| {
        v.iter()
            .map(|r| Regex::new(r))
            .collect::<Result<Vec<_>, _>>()
    };
    let (keep, drop) = (compile(&s.keep)?, compile(&s.drop)?);
    let text = String::from_utf8_lossy(&vm.console().transcript()).into_owned();
    let mut text = snap.norm.text(&text, &keep, &drop);
    if s.sort_unique {
        let lines: std::collections::BTreeSet<&str> = text.lines().collect();
        text = lines.into_iter().collect::<Vec<_>>().join("\n");
    }
    snap.check(&s.name, &text)
}

pub async fn balloon(vm: &Vm, s: &Balloon) -> Result<()> {
    let total = vm.guest_ram();
    let target = ((total as f64 * s.fraction) as u64) / MIB * MIB;
    let base = (guest_mem_total(vm).await?, vm.qmp().query_balloon().await?);
    vm.qmp().balloon(target).await?;
    wait_balloon(
        vm,
        target,
        base,
        s.tolerance_mib * MIB,
        Timeout::BalloonSettle.get(),
    )
    .await?;
    Ok(())
}

pub async fn powerdown(vm: &mut Vm, s: &Powerdown) -> Result<()> {
    let r = vm.powerdown(s.within.get()).await?;
    if r.reason != s.reason {
        bail!("SHUTDOWN reason {:?}, expected {:?}", r.reason, s.reason);
    }
    Ok(())
}

pub async fn host_fsck(vm: &mut Vm, s: &HostFsck) -> Result<()> {
    if !vm.qemu_exited() {
        bail!("host_fsck needs the VM stopped (add a powerdown step first)");
    }
    let file = vm
        .partition_file(&s.label)
        .ok_or_else(|| anyhow!("no partition labelled {:?}", s.label))?
        .to_owned();
    let out = tokio::process::Command::new("e2fsck")
        .args(["-n", "-f"])
        .arg(&file)
        .output()
        .await
        .context("running e2fsck")?;
    if !out.status.success() {
        bail!(
            "e2fsck -n -f {} exited {}:\n{}{}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub async fn guest_note(vm: &Vm, s: &GuestNote) -> Result<String> {
    let out = guest_sh(vm, &s.sh).await?;
    Ok(format!("{}:\n{}", s.name, out.trim_end()))
}

/// The TAP mode's network: the guest took a DHCP lease on the run's /24,
/// routes by default via the host, and resolves a name the harness's DNS
/// server serves.
pub async fn tap_network(vm: &Vm, s: &TapNetwork) -> Result<String> {
    let tap = vm
        .tap()
        .ok_or_else(|| anyhow!("tap_network needs `net = \"tap\"` in the scenario"))?;
    let host = tap.host;
    let t0 = Instant::now();
    let lease = wait_until(
        "a DHCP lease for the guest's MAC (see dnsmasq.log in the artefacts)",
        s.within.get(),
        Duration::from_millis(200),
        || {
            let ip = vm.guest_ip();
            async move {
                Ok(match ip {
                    Some(ip) => Check::Done(ip),
                    None => Check::NotYet("no lease yet".into()),
                })
            }
        },
    )
    .await?;
    let n = tap.network.octets();
    if lease.octets()[..3] != n[..3] {
        bail!("leased {lease}, outside {}/24", tap.network);
    }
    // The guest's own view: address with its prefix, default route, DNS.
    // The guest waits (up to what is left of the step) for networkd.
    let left = s.within.get().saturating_sub(t0.elapsed()).as_secs().max(1);
    let want_addr = format!("inet {lease}/24 ");
    let want_route = format!("default via {host} ");
    let sh = format!(
        "for i in $(seq {left}); do ip -4 -o addr show scope global | grep -q '{want_addr}' && ip -4 route show default | grep -q '^{want_route}' && break; sleep 1; done; \
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
