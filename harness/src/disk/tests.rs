use std::process::Command;
use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::spec::Partition;

const ROOT_GUID: &str = "6d0e8c4e-9ef5-4d7b-a7c4-1b2a3c4d5e6f";
const EFI_GUID: &str = "0b9b7d70-4a43-4bb4-9d49-2c9b7e1d2f30";

fn parts(dir: &std::path::Path) -> Vec<Partition> {
    // Sizes not multiples of 1 MiB (and one not of 512) exercise padding.
    let efi: Vec<u8> = (0..3 * 1024 * 1024 + 4096)
        .map(|i| (i % 251) as u8)
        .collect();
    let root: Vec<u8> = (0..5 * 1024 * 1024 + 100)
        .map(|i| (i % 241) as u8)
        .collect();
    std::fs::write(dir.join("efi_part"), efi).unwrap();
    std::fs::write(dir.join("root_part"), root).unwrap();
    vec![
        Partition {
            label: "EFI".into(),
            path: dir.join("efi_part"),
            writable: false,
            guid: Some(Uuid::parse_str(EFI_GUID).unwrap()),
        },
        Partition {
            label: "ROOT".into(),
            path: dir.join("root_part"),
            writable: true,
            guid: Some(Uuid::parse_str(ROOT_GUID).unwrap()),
        },
    ]
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn served_disk_has_crosvm_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let layout = Arc::new(Layout::build(&p, true).unwrap());
    let server = NbdServer::start(layout.clone(), &dir.path().join("nbd.sock")).unwrap();
    let img = dir.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(server.url())
        .arg(&img));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), layout.size);

    // sgdisk verifies both headers and CRCs.
    let verify = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(verify.contains("No problems found"), "{verify}");

    let dump = run(Command::new("sfdisk").arg("--dump").arg(&img));
    let lines: Vec<&str> = dump.lines().filter(|l| l.contains(": start=")).collect();
    assert_eq!(lines.len(), 2, "{dump}");
    for (line, (label, guid)) in lines.iter().zip([("EFI", EFI_GUID), ("ROOT", ROOT_GUID)]) {
        assert!(
            line.contains("type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            "{line}"
        );
        assert!(
            line.contains(&format!("uuid={}", guid.to_uppercase())),
            "{line}"
        );
        assert!(line.contains(&format!("name=\"{label}\"")), "{line}");
    }
    // Config order, 1 MiB aligned, sizes rounded up to a sector.
    assert!(
        lines[0].contains("start=        2048, size=        6152"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("start=       10240, size=       10241"),
        "{}",
        lines[1]
    );

    // Partition contents are the files, byte for byte.
    let disk = std::fs::read(&img).unwrap();
    for e in &layout.entries {
        let file = std::fs::read(&e.path).unwrap();
        let start = (e.first_lba * SECTOR) as usize;
        assert_eq!(&disk[start..start + file.len()], &file[..], "{}", e.label);
    }
}

#[test]
fn writes_land_in_place_and_read_only_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = parts(dir.path());
    let layout = Arc::new(Layout::build(&p, true).unwrap());
    let server = NbdServer::start(layout.clone(), &dir.path().join("nbd.sock")).unwrap();
    let root = layout.entries.iter().find(|e| e.label == "ROOT").unwrap();
    let efi = layout.entries.iter().find(|e| e.label == "EFI").unwrap();
    let efi_before = std::fs::read(&efi.path).unwrap();

    let root_off = root.first_lba * SECTOR + 4096;
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -P 0xab {root_off} 4096"))
        .arg(server.url()));
    let root_after = std::fs::read(&root.path).unwrap();
    assert!(root_after[4096..8192].iter().all(|&b| b == 0xab));

    // Read-only partition, GPT header and padding: refused, nothing changes.
    for off in [efi.first_lba * SECTOR, 512, (efi.last_lba + 1) * SECTOR] {
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c"])
            .arg(format!("write -P 0xcd {off} 512"))
            .arg(server.url())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("Operation not permitted"),
            "offset {off}: {text}"
        );
    }
    assert_eq!(std::fs::read(&efi.path).unwrap(), efi_before);
    drop(server);
    assert!(!dir.path().join("nbd.sock").exists());
}

#[test]
fn read_only_disk_makes_all_partitions_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::build(&parts(dir.path()), false).unwrap();
    assert!(layout.entries.iter().all(|e| !e.writable));
    let off = layout.entries[1].first_lba * SECTOR;
    assert!(matches!(
        write_at(&layout, &[1, 2, 3], off),
        Err(WriteError::ReadOnly(_))
    ));
}

#[test]
fn missing_partition_file_names_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = parts(dir.path());
    p[1].path = dir.path().join("gone");
    let e = Layout::build(&p, true).unwrap_err().to_string();
    assert!(e.contains("\"ROOT\"") && e.contains("gone"), "{e}");
}

/// An offset near `u64::MAX` must not wrap `off + len` around to a small
/// end: refused as out of range, not a panic or a false success.
#[test]
fn offsets_that_overflow_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::build(&parts(dir.path()), true).unwrap();
    let root = layout.entries.iter().find(|e| e.label == "ROOT").unwrap();
    let before = std::fs::read(&root.path).unwrap();
    for off in [u64::MAX, u64::MAX - 2, layout.size, layout.size - 1] {
        assert!(
            matches!(
                write_at(&layout, &[1, 2, 3, 4], off),
                Err(WriteError::OutOfRange)
            ),
            "write at {off}"
        );
        let mut buf = [0u8; 4];
        assert!(read_at(&layout, &mut buf, off).is_err(), "read at {off}");
    }
    assert_eq!(std::fs::read(&root.path).unwrap(), before);
}

#[test]
fn more_partitions_than_a_gpt_holds_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let one = parts(dir.path()).remove(1);
    let many = vec![one; 129];
    let e = Layout::build(&many, true).unwrap_err().to_string();
    assert!(e.contains("129 partitions") && e.contains("128"), "{e}");
}

/// A partition file swapped for a link after the spec checked it: the
/// open does not follow it, and the host file is untouched.
#[test]
fn a_partition_that_is_a_symlink_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = parts(dir.path());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"host data").unwrap();
    let link = dir.path().join("root_link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    p[1].path = link;
    let e = Layout::build(&p, true).unwrap_err();
    assert!(matches!(e, LayoutError::Open { .. }), "{e}");
    assert!(e.to_string().contains("\"ROOT\""), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
}

/// A fifo (or device node) where a partition file should be: refused
/// without hanging in open.
#[test]
fn a_partition_that_is_a_fifo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = parts(dir.path());
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    p[0].path = fifo;
    let e = Layout::build(&p, false).unwrap_err();
    assert!(matches!(e, LayoutError::NotRegular { .. }), "{e}");
    assert!(e.to_string().contains("\"EFI\""), "{e}");
}

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a plain syscall on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A client's bytes in, the server's out: `nbd::serve` over a buffer.
struct Wire {
    input: std::io::Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl std::io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl std::io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Small partitions (3000 bytes read-only, 5000 writable), fresh each time.
fn small_layout(dir: &std::path::Path) -> Layout {
    std::fs::write(dir.join("efi_part"), vec![0xE5; 3000]).unwrap();
    std::fs::write(dir.join("root_part"), vec![0x5A; 5000]).unwrap();
    let p = vec![
        Partition {
            label: "EFI".into(),
            path: dir.join("efi_part"),
            writable: false,
            guid: Some(Uuid::parse_str(EFI_GUID).unwrap()),
        },
        Partition {
            label: "ROOT".into(),
            path: dir.join("root_part"),
            writable: true,
            guid: Some(Uuid::parse_str(ROOT_GUID).unwrap()),
        },
    ];
    Layout::build(&p, true).unwrap()
}

/// One transmission-phase request as the fuzz client sends it.
#[derive(Debug, Clone)]
struct Req {
    good_magic: bool,
    ty: u16,
    offset: u64,
    length: u32,
    /// How many bytes of a write's payload the client sends (a short one
    /// ends the stream mid-request).
    sent: u32,
    fill: u8,
}

/// Fuzz: the NBD server never panics on any client bytes, and on a
/// well-formed session it answers each request exactly as the protocol
/// and crosvm's write policy say: out-of-range reads and writes get
/// EINVAL, writes touching metadata, padding or the read-only partition
/// EPERM and change nothing, the rest succeed; reads return what a model
/// of the disk holds; the read-only partition file never changes.
#[test]
fn fuzz_nbd_requests() {
    use avf_terminal::fuzzing::{proptest, proptest::prelude::*, run};
    // tmpfs where there is one: the partition files are rewritten per input.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let geometry = small_layout(dir.path());
    let size = geometry.size;
    let mut edges = vec![
        0,
        1,
        511,
        512,
        size - 1,
        size,
        size + 1,
        u64::MAX,
        u64::MAX - 511,
    ];
    for e in &geometry.entries {
        let first = e.first_lba * SECTOR;
        let end = (e.last_lba + 1) * SECTOR;
        edges.extend([first - 1, first, first + 1, end - 1, end, end + 1]);
    }

    // Arbitrary bytes from the first one: handshake and all.
    run(
        "disk::nbd::serve (bytes)",
        20_000,
        proptest::collection::vec(any::<u8>(), 0..300),
        |bytes| {
            let mut w = Wire {
                input: std::io::Cursor::new(bytes),
                output: Vec::new(),
            };
            let _ = super::nbd::serve(&mut w, &geometry);
            Ok(())
        },
    );

    let offset = prop_oneof![
        3 => proptest::sample::select(edges.clone()),
        1 => (proptest::sample::select(edges), -600i64..600).prop_map(|(e, d)| e.wrapping_add_signed(d)),
        1 => any::<u64>(),
    ];
    let length = prop_oneof![
        3 => proptest::sample::select(vec![0u32, 1, 2, 511, 512, 513, 4096, 6000]),
        1 => 0u32..20_000,
        1 => proptest::sample::select(vec![(32 << 20) - 1, 32 << 20, (32 << 20) + 1, u32::MAX]),
    ];
    let req = (
        prop_oneof![19 => Just(true), 1 => Just(false)],
        prop_oneof![8 => 0u16..4, 1 => any::<u16>()],
        offset,
        length,
        prop_oneof![9 => Just(u32::MAX), 1 => any::<u32>()],
        any::<u8>(),
    )
        .prop_map(|(good_magic, ty, offset, length, sent, fill)| Req {
            good_magic,
            ty,
            offset,
            length,
            sent,
            fill,
        });
    run(
        "disk::nbd::serve (requests)",
        1_000,
        proptest::collection::vec(req, 0..12),
        |reqs| {
            let layout = small_layout(dir.path());
            let mut model = vec![0u8; size as usize];
            read_at(&layout, &mut model, 0).unwrap();
            let efi_before = std::fs::read(dir.path().join("efi_part")).unwrap();

            let mut input = Vec::new();
            input.extend_from_slice(&2u32.to_be_bytes()); // NO_ZEROES
            input.extend_from_slice(&0x4948_4156_454F_5054u64.to_be_bytes());
            input.extend_from_slice(&7u32.to_be_bytes()); // OPT_GO
            input.extend_from_slice(&0u32.to_be_bytes());
            for (i, r) in reqs.iter().enumerate() {
                let magic: u32 = if r.good_magic {
                    0x2560_9513
                } else {
                    0x2560_9512
                };
                input.extend_from_slice(&magic.to_be_bytes());
                input.extend_from_slice(&0u16.to_be_bytes());
                input.extend_from_slice(&r.ty.to_be_bytes());
                input.extend_from_slice(&(i as u64).to_be_bytes());
                input.extend_from_slice(&r.offset.to_be_bytes());
                input.extend_from_slice(&r.length.to_be_bytes());
                if r.ty == 1 {
                    let n = r.length.min(r.sent).min(20_000);
                    input.extend(std::iter::repeat_n(r.fill, n as usize));
                }
            }
            let mut w = Wire {
                input: std::io::Cursor::new(input),
                output: Vec::new(),
            };
            let _ = super::nbd::serve(&mut w, &layout);

            // Skip the greeting (18 bytes) and OPT_GO's INFO + ACK (32 + 20).
            let out = &w.output;
            prop_assert!(out.len() >= 70, "handshake: {} bytes", out.len());
            let mut at = 70;
            let max = 32u64 << 20;
            for (i, r) in reqs.iter().enumerate() {
                if !r.good_magic || r.ty == 2 {
                    break; // bad magic drops the client; DISC ends it
                }
                let in_range = r
                    .offset
                    .checked_add(r.length as u64)
                    .is_some_and(|e| e <= size);
                let want = match r.ty {
                    0 if r.length as u64 > max || !in_range => 22,
                    0 => 0,
                    1 if r.length as u64 > max => break, // dropped
                    1 if r.length.min(r.sent).min(20_000) < r.length => break, // EOF mid-payload
                    1 if !in_range => 22,
                    1 => {
                        let (lo, hi) = (r.offset, r.offset + r.length as u64);
                        let writable = hi == lo
                            || layout.segments.iter().all(|s| {
                                s.start >= hi
                                    || s.start + s.len <= lo
                                    || matches!(s.backing, Backing::File { writable: true, .. })
                            });
                        if writable {
                            model[lo as usize..hi as usize].fill(r.fill);
                            0
                        } else {
                            1
                        }
                    }
                    3 => 0,
                    _ => 22,
                };
                let head = out.get(at..at + 16);
                prop_assert!(head.is_some(), "request {i} {r:?}: no reply");
                let head = head.unwrap();
                prop_assert_eq!(&head[0..4], &0x6744_6698u32.to_be_bytes()[..]);
                let err = u32::from_be_bytes(head[4..8].try_into().unwrap());
                let cookie = u64::from_be_bytes(head[8..16].try_into().unwrap());
                prop_assert_eq!(cookie, i as u64);
                prop_assert_eq!(err, want, "request {} {:?}", i, r);
                at += 16;
                if r.ty == 0 && err == 0 {
                    let n = r.length as usize;
                    let data = &out[at..at + n];
                    let (lo, hi) = (r.offset as usize, r.offset as usize + n);
                    prop_assert!(
                        data == &model[lo..hi],
                        "request {} {:?}: read differs",
                        i,
                        r
                    );
                    at += n;
                }
            }
            prop_assert_eq!(at, out.len(), "replies past the expected ones");
            let efi_after = std::fs::read(dir.path().join("efi_part")).unwrap();
            prop_assert!(efi_after == efi_before, "the read-only partition changed");
            Ok(())
        },
    );
}
