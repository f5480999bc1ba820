//! The composite disk: GPT with crosvm's semantics over the partition files,
//! served in place over NBD (no copy of the partitions; writable ones are
//! written in their own files as on the phone, read-only ones refuse writes).
//!
//! Why NBD: QEMU has no composite-disk format that maps GPT metadata plus
//! several raw files into one device; a tiny NBD server gives exactly
//! crosvm's view with per-partition write policy and zero copies.

mod layout;
mod nbd;
#[cfg(test)]
mod tests;

use std::os::unix::fs::FileExt;

pub use layout::{Backing, Layout, LayoutError, PartitionEntry, LINUX_FS_TYPE, SECTOR};
pub use nbd::NbdServer;

/// Why a write was refused (mapped to NBD's EPERM).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("write to read-only region at offset {0}")]
    ReadOnly(u64),
    #[error("write beyond end of disk")]
    OutOfRange,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `off + len` if the range lies within the disk (a guest-supplied offset
/// near `u64::MAX` must not wrap around to a small end).
fn in_range(layout: &Layout, off: u64, len: u64) -> Option<u64> {
    off.checked_add(len).filter(|end| *end <= layout.size)
}

/// The segments `off..off + len` touches; an empty range touches none (a
/// zero-length write in metadata writes nothing, so it is no violation).
fn overlapping(layout: &Layout, off: u64, len: u64) -> impl Iterator<Item = &layout::Segment> {
    let end = off + len;
    layout
        .segments
        .iter()
        .filter(move |s| len > 0 && s.start < end && s.start + s.len > off)
}

/// Reads `buf.len()` bytes at `off` of the virtual disk.
pub fn read_at(layout: &Layout, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let len = buf.len() as u64;
    if in_range(layout, off, len).is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "read beyond end of disk",
        ));
    }
    for s in overlapping(layout, off, len) {
        let from = off.max(s.start);
        let to = (off + len).min(s.start + s.len);
        let dst = &mut buf[(from - off) as usize..(to - off) as usize];
        let rel = from - s.start;
        match &s.backing {
            Backing::Meta(bytes) => {
                dst.copy_from_slice(&bytes[rel as usize..(rel + to - from) as usize])
            }
            Backing::Zero => dst.fill(0),
            Backing::File { file, .. } => file.read_exact_at(dst, rel)?,
        }
    }
    Ok(())
}

/// Writes `buf` at `off`, all or nothing: any overlap with metadata,
/// padding or a read-only partition refuses the whole request.
pub fn write_at(layout: &Layout, buf: &[u8], off: u64) -> Result<(), WriteError> {
    let len = buf.len() as u64;
    if in_range(layout, off, len).is_none() {
        return Err(WriteError::OutOfRange);
    }
    for s in overlapping(layout, off, len) {
        if !matches!(s.backing, Backing::File { writable: true, .. }) {
            return Err(WriteError::ReadOnly(off.max(s.start)));
        }
    }
    for s in overlapping(layout, off, len) {
        if let Backing::File { file, .. } = &s.backing {
            let from = off.max(s.start);
            let to = (off + len).min(s.start + s.len);
            file.write_all_at(
                &buf[(from - off) as usize..(to - off) as usize],
                from - s.start,
            )?;
        }
    }
    Ok(())
}

/// Flushes every writable partition file.
pub fn flush(layout: &Layout) -> std::io::Result<()> {
    for s in &layout.segments {
        if let Backing::File {
            file,
            writable: true,
            ..
        } = &s.backing
        {
            file.sync_data()?;
        }
    }
    Ok(())
}
