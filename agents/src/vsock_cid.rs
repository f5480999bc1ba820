//! The guest's own vsock context ID, which the launcher sends when it opens
//! the forwarding queue (the host rejects connections from another CID).
use anyhow::Context;

pub fn local_cid() -> anyhow::Result<u32> {
    // IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock.
    vsock::get_local_cid().context("reading the local vsock CID from /dev/vsock")
}
