//! avf-config's kernel-update, run on the host against a temp ESP (the
//! layout forced, the "booted system" check skipped): the efi layout puts
//! the kernel beside the running one and switches the entry whole, keeps
//! the previous kernel, cleans what a cut update left; the direct layout
//! touches nothing and leaves the login message; failures keep the old
//! entry and say so.

use std::path::{Path, PathBuf};
use std::process::Command;

use avf_image_checks::exec::run;
use avf_image_checks::repo_root;

const ENTRY: &str = "title   debian (AVF)\nversion 6.1.192-avf\nlinux   /vmlinuz\noptions root=PARTUUID=x rw rootwait console=ttyS0,115200n8\n";

struct Esp {
    _dir: tempfile::TempDir,
    root: PathBuf,
    esp: PathBuf,
    image: PathBuf,
}

fn esp() -> Esp {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let esp = root.join("esp");
    std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
    std::fs::write(esp.join("loader/entries/avf.conf"), ENTRY).unwrap();
    std::fs::write(esp.join("vmlinuz"), b"image kernel").unwrap();
    let image = root.join("Image");
    std::fs::write(&image, b"new kernel").unwrap();
    Esp {
        _dir: dir,
        root,
        esp,
        image,
    }
}

/// (exit code, stdout + stderr)
fn update(e: &Esp, layout: &str, version: &str, image: &Path) -> (Option<i32>, String) {
    let o = run(Command::new("bash")
        .arg(repo_root().join("image-build/pkgbuilds/avf-config/kernel-update"))
        .args([version, "6.1.192-avf"])
        .arg(image)
        .env("AVF_ESP", &e.esp)
        .env("AVF_KERNEL_PENDING", e.root.join("kernel-pending"))
        .env("AVF_BOOT_LAYOUT", layout)
        .env("AVF_BOOTED", "1"))
    .unwrap();
    (o.code, format!("{}{}", o.stdout, o.stderr))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn entry(e: &Esp) -> String {
    read(&e.esp.join("loader/entries/avf.conf"))
}

#[test]
fn efi_switches_the_entry_and_keeps_the_previous_kernel() {
    let e = esp();
    let (code, out) = update(&e, "efi", "6.1.192-2", &e.image);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("linux-avf 6.1.192-2 (6.1.192-avf) is on the ESP"),
        "{out}"
    );
    assert_eq!(
        entry(&e),
        "title   debian (AVF)\nversion 6.1.192-avf\nlinux   /avf/6.1.192-2/vmlinuz\noptions root=PARTUUID=x rw rootwait console=ttyS0,115200n8 avf.kernel=6.1.192-2\n"
    );
    assert_eq!(read(&e.esp.join("avf/6.1.192-2/vmlinuz")), "new kernel");
    assert_eq!(read(&e.esp.join("vmlinuz")), "image kernel");
    assert!(!e.root.join("kernel-pending").exists());

    // A cut update's leftovers, then two more updates: the marker is not
    // repeated, an epoch's ':' is not in a file name, only the new and the
    // previous kernel stay.
    std::fs::write(e.esp.join("loader/entries/avf.conf.new"), "half").unwrap();
    std::fs::write(e.esp.join("avf/6.1.192-2/vmlinuz.new"), "half").unwrap();
    assert_eq!(update(&e, "efi", "1:6.1.192-3", &e.image).0, Some(0));
    assert_eq!(update(&e, "efi", "6.1.192-4", &e.image).0, Some(0));
    let text = entry(&e);
    assert!(text.contains("linux   /avf/6.1.192-4/vmlinuz\n"), "{text}");
    assert!(
        text.ends_with("console=ttyS0,115200n8 avf.kernel=6.1.192-4\n"),
        "{text}"
    );
    let mut kept: Vec<String> = std::fs::read_dir(e.esp.join("avf"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["1_6.1.192-3", "6.1.192-4"]);
    assert!(!e.esp.join("loader/entries/avf.conf.new").exists());
}

#[test]
fn direct_touches_no_esp_and_leaves_the_login_message() {
    let e = esp();
    let (code, out) = update(&e, "direct", "6.1.192-2", &e.image);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("is installed, but this VM does not boot it"),
        "{out}"
    );
    assert!(out.contains("new image installed from the app"), "{out}");
    assert_eq!(entry(&e), ENTRY);
    assert!(!e.esp.join("avf").exists());
    let pending = read(&e.root.join("kernel-pending"));
    assert!(
        pending.starts_with("6.1.192-2\n*** linux-avf 6.1.192-2"),
        "{pending}"
    );
}

#[test]
fn failures_keep_the_old_entry_and_say_so() {
    let e = esp();
    let (code, out) = update(&e, "efi", "6.1.192-2", &e.root.join("missing"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("missing: no such file"), "{out}");
    std::fs::remove_file(e.esp.join("loader/entries/avf.conf")).unwrap();
    let (code, out) = update(&e, "efi", "6.1.192-2", &e.image);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no loader entry"), "{out}");
    assert!(read(&e.root.join("kernel-pending")).contains("putting it on the ESP failed"));
    let (code, out) = update(&e, "bogus", "6.1.192-2", &e.image);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("expected efi or direct"), "{out}");
}
