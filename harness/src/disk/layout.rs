//! The composite disk's byte layout with crosvm's semantics: protective MBR,
//! primary GPT, the partition files in config order (each aligned to 1 MiB),
//! backup GPT. Every partition is typed Linux-filesystem, its unique GUID is
//! the config's, its name the label.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use crate::spec::Partition;

pub const SECTOR: u64 = 512;
const ENTRY_COUNT: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRIES_SECTORS: u64 = ENTRY_COUNT * ENTRY_SIZE / SECTOR;
const ALIGN: u64 = 1 << 20;
/// Linux filesystem data, 0FC63DAF-8483-4772-8E79-3D69D8477DE4: crosvm types every
/// partition this way, the ESP included.
pub const LINUX_FS_TYPE: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("partition {label:?}: cannot open {path}: {source}")]
    Open {
        label: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("partition {label:?}: {path} is not a regular file")]
    NotRegular { label: String, path: PathBuf },
    #[error("partition {label:?}: {path} is empty")]
    Empty { label: String, path: PathBuf },
    #[error("{count} partitions: a GPT holds at most {ENTRY_COUNT}")]
    TooMany { count: usize },
}

/// One contiguous run of the virtual disk.
#[derive(Debug)]
pub enum Backing {
    /// Generated metadata (MBR, GPT headers and entries).
    Meta(Vec<u8>),
    /// A partition file, served in place.
    File {
        file: Arc<File>,
        writable: bool,
        label: String,
    },
    /// Alignment padding and sector round-up: reads zero, refuses writes.
    Zero,
}

#[derive(Debug)]
pub struct Segment {
    pub start: u64,
    pub len: u64,
    pub backing: Backing,
}

/// What the guest will see in the partition table, for tests and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    pub label: String,
    pub unique_guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub path: PathBuf,
    pub writable: bool,
}

#[derive(Debug)]
pub struct Layout {
    pub disk_guid: Uuid,
    pub size: u64,
    pub entries: Vec<PartitionEntry>,
    pub segments: Vec<Segment>,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Layout {
    /// Builds the layout; `writable` is the disk-level flag (a read-only disk
    /// makes every partition read-only, as crosvm does).
    pub fn build(parts: &[Partition], disk_writable: bool) -> Result<Layout, LayoutError> {
        if parts.len() as u64 > ENTRY_COUNT {
            return Err(LayoutError::TooMany { count: parts.len() });
        }
        let mut entries = Vec::new();
        let mut files = Vec::new();
        let mut next = ALIGN / SECTOR;
        for p in parts {
            let writable = p.writable && disk_writable;
            let open_err = |source| LayoutError::Open {
                label: p.label.clone(),
                path: p.path.clone(),
                source,
            };
            // Never through a link (the spec checked the path; this closes
            // the last component against a swap since), and only a regular
            // file: a device node or fifo planted there is refused (O_NONBLOCK:
            // opening a fifo does not hang; a regular file ignores it).
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&p.path)
                .map_err(open_err)?;
            let meta = file.metadata().map_err(open_err)?;
            if !meta.is_file() {
                return Err(LayoutError::NotRegular {
                    label: p.label.clone(),
                    path: p.path.clone(),
                });
            }
            let len = meta.len();
            if len == 0 {
                return Err(LayoutError::Empty {
                    label: p.label.clone(),
                    path: p.path.clone(),
                });
            }
            let sectors = len.div_ceil(SECTOR);
            entries.push(PartitionEntry {
                label: p.label.clone(),
                // crosvm picks a random GUID when the config has none.
                unique_guid: p.guid.unwrap_or_else(Uuid::new_v4),
                first_lba: next,
                last_lba: next + sectors - 1,
                path: p.path.clone(),
                writable,
            });
            files.push((Arc::new(file), len));
            next = align_up(next + sectors, ALIGN / SECTOR);
        }
        let total_sectors = next + ENTRIES_SECTORS + 1;
        let disk_guid = Uuid::new_v4();

        let entry_bytes = encode_entries(&entries);
        let entries_crc = crc32fast::hash(&entry_bytes);
        let last_usable = total_sectors - ENTRIES_SECTORS - 2;
        let primary = encode_header(1, total_sectors - 1, 2, last_usable, disk_guid, entries_crc);
        let backup = encode_header(
            total_sectors - 1,
            1,
            total_sectors - 1 - ENTRIES_SECTORS,
            last_usable,
            disk_guid,
            entries_crc,
        );

        let mut head = protective_mbr(total_sectors);
        head.extend_from_slice(&primary);
        head.extend_from_slice(&entry_bytes);
        let mut tail = entry_bytes.clone();
        tail.extend_from_slice(&backup);

        let mut segs = Segments::default();
        segs.push(head.len() as u64, Backing::Meta(head));
        for (e, (file, len)) in entries.iter().zip(files) {
            segs.pad_to(e.first_lba * SECTOR);
            segs.push(
                len,
                Backing::File {
                    file,
                    writable: e.writable,
                    label: e.label.clone(),
                },
            );
        }
        segs.pad_to((total_sectors - ENTRIES_SECTORS - 1) * SECTOR);
        segs.push(tail.len() as u64, Backing::Meta(tail));
        let Segments {
            list: segments,
            pos,
        } = segs;
        debug_assert_eq!(pos, total_sectors * SECTOR);

        Ok(Layout {
            disk_guid,
            size: total_sectors * SECTOR,
            entries,
            segments,
        })
    }

    /// Writes the whole virtual disk to `out` as a sparse raw image (all-
    /// zero MiBs stay holes: a 2 GiB root holds far less). Used by tests
    /// and the boot benchmark's plain-QEMU side.
    pub fn write_image(&self, out: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = File::create(out)?;
        f.set_len(self.size)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < self.size {
            let n = (self.size - off).min(buf.len() as u64) as usize;
            crate::disk::read_at(self, &mut buf[..n], off)?;
            if buf[..n].iter().any(|&b| b != 0) {
                f.write_all_at(&buf[..n], off)?;
            }
            off += n as u64;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Segments {
    list: Vec<Segment>,
    pos: u64,
}

impl Segments {
    fn push(&mut self, len: u64, backing: Backing) {
        if len > 0 {
            self.list.push(Segment {
                start: self.pos,
                len,
                backing,
            });
            self.pos += len;
        }
    }

    fn pad_to(&mut self, to: u64) {
        self.push(to - self.pos, Backing::Zero);
    }
}

fn protective_mbr(total_sectors: u64) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[0] = 0; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE; // GPT protective
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (total_sectors - 1).min(u32::MAX as u64) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

fn encode_header(
    my_lba: u64,
    alt_lba: u64,
    entries_lba: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRIES_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_bytes_le());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRY_COUNT as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn encode_entries(entries: &[PartitionEntry]) -> Vec<u8> {
    let mut b = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (i, e) in entries.iter().enumerate() {
        let r = &mut b[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        r[0..16].copy_from_slice(&LINUX_FS_TYPE.to_bytes_le());
        r[16..32].copy_from_slice(&e.unique_guid.to_bytes_le());
        r[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
        r[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
        for (j, u) in e.label.encode_utf16().take(36).enumerate() {
            r[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    b
}
