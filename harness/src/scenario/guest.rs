//! What scenario steps read from and wait for in the guest, through the
//! guest agent and QMP: shared by the plain and the Terminal-app steps.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::timeouts::{wait_until, Check};
use crate::vm::Vm;

const MIB: u64 = 1 << 20;

/// Runs `sh` through the guest agent; non-zero exit is an error.
pub async fn guest_sh(vm: &Vm, sh: &str) -> Result<String> {
    let out = vm.qga().await?.sh(sh).await?;
    if out.exit_code != Some(0) {
        bail!(
            "guest `{sh}` exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.exit_code,
            out.stdout_str(),
            out.stderr_str()
        );
    }
    Ok(out.stdout_str())
}

/// The guest's MemTotal in bytes.
pub async fn guest_mem_total(vm: &Vm) -> Result<u64> {
    let o = guest_sh(vm, "grep MemTotal /proc/meminfo").await?;
    let kb: u64 = o
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("bad /proc/meminfo: {o}"))?;
    Ok(kb * 1024)
}

/// Waits (up to `limit`) until QEMU's balloon leaves the guest `keep`
/// bytes and MemTotal has moved by as much from `base` (MemTotal at
/// `base_keep`); returns (QEMU's figure, MemTotal).
pub async fn wait_balloon(
    vm: &Vm,
    keep: u64,
    (base_total, base_keep): (u64, u64),
    tol: u64,
    limit: Duration,
) -> Result<(u64, u64)> {
    let want_total = base_total as i64 - (base_keep as i64 - keep as i64);
    let what = format!(
        "the balloon leaving the guest {} MiB and MemTotal about {} MiB",
        keep / MIB,
        want_total / MIB as i64
    );
    wait_until(&what, limit, Duration::from_millis(250), || async move {
        let actual = vm.qmp().query_balloon().await?;
        let total = guest_mem_total(vm).await?;
        Ok(
            if actual.abs_diff(keep) <= tol && (total as i64).abs_diff(want_total) <= tol {
                Check::Done((actual, total))
            } else {
                Check::NotYet(format!(
                    "QEMU leaves {} MiB, MemTotal {} MiB",
                    actual / MIB,
                    total / MIB
                ))
            },
        )
    })
    .await
}
