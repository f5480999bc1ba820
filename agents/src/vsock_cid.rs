//! The guest's own vsock context ID, which the launcher sends when it opens
//! the forwarding queue (the host rejects connections from another CID).
use anyhow::Context;

pub fn local_cid() -> anyhow::Result<u32> {
    // IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock.
    let cid = vsock::get_local_cid().context("reading the local vsock CID from /dev/vsock")?;
    // VMADDR_CID_ANY: no guest-side transport (virtio-vsock driver missing).
    anyhow::ensure!(
        cid != libc::VMADDR_CID_ANY,
        "/dev/vsock reports no local CID (no virtio-vsock transport loaded?)"
    );
    Ok(cid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cid_or_a_clear_error() {
        match super::local_cid() {
            // In a guest ≥ 3; on a machine that is itself a vsock host, 2.
            Ok(cid) => assert_ne!(cid, libc::VMADDR_CID_ANY),
            Err(e) => assert!(format!("{e:#}").contains("/dev/vsock"), "{e:#}"),
        }
    }
}
