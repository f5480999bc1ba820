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
