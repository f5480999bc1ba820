//! Bad inputs: each gives a one-line cause, a non-zero exit and nothing
//! half-written under the output name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use avf_image_checks::exec::{is_root, run, Outcome};
use avf_image_checks::repo_root;
use common::Tmpfs;

/// A scratch AVF_OUT and AVF_CACHE, readable by the build user.
struct Scratch {
    out: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let s = Self {
            out: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        };
        for d in [s.out.path(), s.cache.path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        s
    }

    fn build(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        self.script("build-all.sh", args, env)
    }

    /// Runs `image-build/<name>` with this scratch's AVF_OUT and AVF_CACHE.
    fn script(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let mut c = Command::new(repo_root().join("image-build").join(name));
        c.args(args)
            .env("AVF_OUT", self.out.path())
            .env("AVF_CACHE", self.cache.path());
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c).unwrap()
    }
}

/// Nothing under the output name, and no temp dirs left behind.
fn assert_clean(dirs: &[&Path], name: &str) {
    for d in dirs {
        assert!(
            !d.join(name).exists(),
            "{} left under the output name",
            d.join(name).display()
        );
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !n.starts_with(".tmp-"),
                    "temp dir left: {}",
                    e.path().display()
                );
                if e.path().is_dir() && !e.path().is_symlink() {
                    stack.push(e.path());
                }
            }
        }
    }
}

fn assert_one_line_cause(o: &Outcome, needle: &str) {
    assert_ne!(o.code, Some(0), "build succeeded on bad input");
    let last = o.last_err_line();
    assert!(
        last.contains(": error: ") && last.contains(needle),
        "want a cause naming {needle:?}, last line: {last:?}\nstderr:\n{}",
        o.stderr
    );
    let errors = o.stderr.lines().filter(|l| l.contains(": error: ")).count();
    assert_eq!(errors, 1, "more than one error line:\n{}", o.stderr);
}

/// Nothing at all written under AVF_OUT and AVF_CACHE.
fn assert_empty(s: &Scratch) {
    for d in [s.out.path(), s.cache.path()] {
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "written on bad input: {left:?}");
    }
}

/// Every stage refuses an unknown --kernel (and a flag without its value)
/// before doing anything; no root needed.
#[test]
fn unknown_kernel_is_rejected() {
    let s = Scratch::new();
    for script in [
        "build-all.sh",
        "00-prepare-environment.sh",
        "10-build-rootfs.sh",
        "20-install-packages.sh",
        "30-configure-system.sh",
        "40-create-disk-image.sh",
        "50-package-image.sh",
    ] {
        let o = s.script(script, &["--base", "debian", "--kernel", "linux"], &[]);
        assert_one_line_cause(&o, "--kernel must be stock or avf, not 'linux'");
        let o = s.script(script, &["--base", "debian", "--kernel"], &[]);
        assert_one_line_cause(&o, "--kernel needs a value");
    }
    assert_empty(&s);
}

/// A base file that lacks part of the interface listed in lib/common.sh is
/// refused right after it is sourced, naming the file and what is missing.
/// The bases are copied (AVF_BASES) and one name is removed from the copy.
#[test]
fn base_missing_a_hook_or_variable_is_named() {
    let src = repo_root().join("image-build/bases");
    for (remove, want) in [
        ("", ""),
        ("unset -f base_configure", "does not define base_configure"),
        (
            "unset -f base_install_avf",
            "does not define base_install_avf",
        ),
        ("unset BASE_TOOLS", "does not set BASE_TOOLS"),
        ("BASE_NAME=other", "sets BASE_NAME to 'other'"),
    ] {
        let bases = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap().flatten() {
            std::fs::copy(e.path(), bases.path().join(e.file_name())).unwrap();
        }
        let file = bases.path().join("debian.sh");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(&format!("\n{remove}\n"));
        std::fs::write(&file, text).unwrap();
        let s = Scratch::new();
        let o = s.build(
            &["--base", "debian", "--dry-run"],
            &[("AVF_BASES", bases.path().to_str().unwrap())],
        );
        if remove.is_empty() {
            // The unchanged copy builds: the failures below are the removals'.
            assert_eq!(o.code, Some(0), "unchanged base copy: {}", o.stderr);
        } else {
            assert_one_line_cause(
                &o,
                &format!(
                    "{}: base 'debian' {want} (the interface of a base",
                    file.display()
                ),
            );
            assert_empty(&s);
        }
    }
}

fn require_root() {
    assert!(
        is_root(),
        "this test runs the build, which needs root: run the tests as root (CI does)"
    );
}

#[test]
fn missing_tool_names_the_package() {
    require_root();
    // A PATH holding every host tool except mkfs.vfat.
    let bin = tempfile::tempdir().unwrap();
    let path = std::env::var("PATH").unwrap();
    let mut seen = std::collections::HashSet::new();
    for dir in path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name();
            if n == "mkfs.vfat" || !seen.insert(n.clone()) {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), bin.path().join(&n)).unwrap();
        }
    }
    let s = Scratch::new();
    let o = s.build(
        &["--base", "debian", "--layout", "efi"],
        &[("PATH", bin.path().to_str().unwrap())],
    );
    assert_one_line_cause(&o, "missing tool 'mkfs.vfat' (install package 'dosfstools'");
    assert_clean(&[s.out.path(), s.cache.path()], "debian-efi");
}

#[test]
fn unreachable_debian_mirror_fails_fast() {
    require_root();
    let s = Scratch::new();
    let t = Instant::now();
    let o = s.build(
        &["--base", "debian", "--layout", "direct"],
        &[("AVF_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")],
    );
    assert_one_line_cause(&o, "Debian mirror http://127.0.0.1:9/debian unreachable");
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
    assert_clean(&[s.out.path(), s.cache.path()], "debian-direct");
}

fn broken_pkgbuild(fixture: &str) {
    require_root();
    // The real PKGBUILDs plus one broken one from fixtures/bad.
    let pk = tempfile::tempdir().unwrap();
    let src = repo_root().join("image-build/pkgbuilds");
    let copy = |from: &Path, to: &Path| {
        let o = run(Command::new("cp").arg("-r").arg(from).arg(to)).unwrap();
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    };
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.path().is_dir() {
            copy(&e.path(), pk.path());
        }
    }
    let broken: PathBuf = pk.path().join("avf-broken");
    copy(&repo_root().join("fixtures/bad").join(fixture), &broken);
    let o = run(Command::new("chmod").arg("-R").arg("a+rX").arg(pk.path())).unwrap();
    assert_eq!(o.code, Some(0));
    let s = Scratch::new();
    let o = s.build(
        &["--base", "debian"],
        &[("AVF_PKGBUILDS", pk.path().to_str().unwrap())],
    );
    assert_one_line_cause(
        &o,
        &format!(
            "{}: makepkg cannot parse it",
            broken.join("PKGBUILD").display()
        ),
    );
    assert_clean(&[s.out.path(), s.cache.path()], "debian-efi");
}

#[test]
fn broken_pkgbuild_syntax() {
    broken_pkgbuild("pkgbuild-syntax");
}

#[test]
fn broken_pkgbuild_without_pkgver() {
    broken_pkgbuild("pkgbuild-no-pkgver");
}

/// A full disk: AVF_OUT on a 32 MiB tmpfs.
#[test]
fn full_disk_is_one_line() {
    require_root();
    let mnt = Tmpfs::mount(32);
    let cache = tempfile::tempdir().unwrap();
    let o = run(Command::new(repo_root().join("image-build/build-all.sh"))
        .args(["--base", "debian", "--layout", "efi"])
        .env("AVF_OUT", mnt.path())
        .env("AVF_CACHE", cache.path()))
    .unwrap();
    assert_one_line_cause(
        &o,
        &format!("not enough free space in {}", mnt.path().display()),
    );
    assert_clean(&[mnt.path(), cache.path()], "debian-efi");
}

/// The disk fills up while the root image is written (past the up-front
/// check): stage 40 on a 64 MiB tmpfs, from the cached configured rootfs.
#[test]
fn full_disk_while_writing_root_part() {
    require_root();
    let a = avf_image_checks::artefact::need("debian", "efi");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.dir.join("build-info.json")).unwrap())
            .unwrap();
    let rootfs = info["rootfs_cache"]
        .as_str()
        .expect("build-info.json: rootfs_cache")
        .to_string();
    assert!(Path::new(&rootfs).is_dir(), "{rootfs} gone from the cache: rebuild with `image-build/build-all.sh --base debian --layout efi`");
    let mnt = Tmpfs::mount(64);
    let o = run(
        Command::new(repo_root().join("image-build/40-create-disk-image.sh"))
            .args(["--base", "debian", "--layout", "efi", "--in", &rootfs])
            .env("AVF_OUT", mnt.path()),
    )
    .unwrap();
    assert_one_line_cause(&o, "mkfs.ext4 failed writing");
    assert_clean(&[mnt.path()], ".staging/debian-efi");
    assert_clean(&[mnt.path()], "debian-efi");
}

/// The kernel builds in the background while stage 10 runs: its failure
/// still ends the build with one line naming the step, after the tail of
/// its output, and leaves no process or temp dir. Stage 10 is taken from
/// the shared cache (a link), so only the kernel job has work to do.
#[test]
fn failing_background_step_is_one_line_naming_it() {
    require_root();
    let s = Scratch::new();
    let dry = s.script(
        "10-build-rootfs.sh",
        &["--base", "debian", "--dry-run"],
        &[],
    );
    let scratch_rootfs = PathBuf::from(dry.stdout.lines().last().unwrap_or_default());
    let shared = std::env::var("AVF_CACHE").unwrap_or_else(|_| "/var/cache/arch-avf".into());
    let name = scratch_rootfs
        .file_name()
        .expect("stage 10 --dry-run prints the rootfs path");
    let cached = Path::new(&shared).join("debian").join(name);
    assert!(
        cached.is_dir(),
        "{} is not built: run `image-build/build-all.sh --base debian --layout efi` first",
        cached.display()
    );
    std::fs::create_dir_all(scratch_rootfs.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&cached, &scratch_rootfs).unwrap();
    let o = s.build(
        &["--base", "debian"],
        &[("AVF_KERNEL_SRC", "/nonexistent/linux-source.tar.xz")],
    );
    assert_ne!(o.code, Some(0), "build succeeded without a kernel source");
    let last = o.last_err_line();
    assert!(
        last.starts_with("build-all: error: background step kernel failed"),
        "want the last line to name the step, got {last:?}\nstderr:\n{}",
        o.stderr
    );
    // Above it, the tail of the job's output with the kernel's own cause
    // (nested failures print their causes as they unwind, as in stage 20).
    let report = o
        .stderr
        .split("the last lines of background step 'kernel'")
        .nth(1);
    assert!(
        report.is_some_and(
            |r| r.contains("kernel source tarball not found: /nonexistent/linux-source.tar.xz")
        ),
        "the report shows the kernel's own cause:\n{}",
        o.stderr
    );
    std::fs::remove_file(&scratch_rootfs).unwrap();
    assert_clean(&[s.out.path(), s.cache.path()], "debian-efi");
}
