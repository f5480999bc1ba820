//! PKGBUILDs and scripts: parse, match their .SRCINFO, pass shellcheck.

use std::path::{Path, PathBuf};
use std::process::Command;

use avf_image_checks::exec::{is_root, run};
use avf_image_checks::repo_root;

fn pkgbuild_dirs() -> Vec<PathBuf> {
    let dir = repo_root().join("image-build/pkgbuilds");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("PKGBUILD").is_file())
        .collect();
    v.sort();
    for need in [
        "avf-agents",
        "avf-config",
        "avf-ttyd",
        "avf-upstream-agents",
    ] {
        assert!(
            v.iter().any(|p| p.ends_with(need)),
            "pkgbuilds/{need} missing"
        );
    }
    v
}

/// makepkg --printsrcinfo, as the build user when we are root (makepkg
/// refuses root), with a writable BUILDDIR.
fn printsrcinfo(dir: &Path) -> String {
    let conf = repo_root().join("image-build/makepkg-aarch64.conf");
    let build = tempfile::tempdir().unwrap();
    let mut cmd = if is_root() {
        let user = std::env::var("AVF_BUILD_USER").unwrap_or_else(|_| "avfbuild".into());
        std::fs::set_permissions(
            build.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut c = Command::new("runuser");
        c.args(["-u", &user, "--", "makepkg"]);
        c
    } else {
        Command::new("makepkg")
    };
    cmd.current_dir(dir)
        .env("BUILDDIR", build.path())
        .env("PKGDEST", build.path())
        .env("SRCDEST", build.path())
        .arg("--config")
        .arg(&conf)
        .arg("--printsrcinfo");
    let o = run(&mut cmd).unwrap();
    assert_eq!(
        o.code,
        Some(0),
        "{}: makepkg --printsrcinfo: {}",
        dir.display(),
        o.stderr
    );
    o.stdout
}

#[test]
fn srcinfo_is_current() {
    for dir in pkgbuild_dirs() {
        let want = printsrcinfo(&dir);
        let got = std::fs::read_to_string(dir.join(".SRCINFO"))
            .unwrap_or_else(|e| panic!("{}/.SRCINFO: {e}", dir.display()));
        assert_eq!(
            got,
            want,
            "{}/.SRCINFO is stale: run image-build/pkgbuilds/update.sh",
            dir.display()
        );
        assert!(
            want.contains("\tarch = aarch64\n"),
            "{}: arch must be aarch64",
            dir.display()
        );
    }
}

/// What a package's `extra-inputs` lists (hashed into its cache key by
/// stage 20) exists: a typo would silently leave an input out of the key.
#[test]
fn extra_inputs_exist() {
    let mut n = 0;
    for dir in pkgbuild_dirs() {
        let list = dir.join("extra-inputs");
        let Ok(text) = std::fs::read_to_string(&list) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            n += 1;
            assert!(
                !line.starts_with('/') && !line.split('/').any(|c| c == ".."),
                "{}: {line:?} is not a repo-relative path",
                list.display()
            );
            assert!(
                repo_root().join(line).exists(),
                "{}: {line} does not exist",
                list.display()
            );
        }
    }
    assert!(
        n > 0,
        "no extra-inputs found (avf-agents builds the agents crate)"
    );
}

#[test]
fn pkgbuilds_pass_shellcheck() {
    for dir in pkgbuild_dirs() {
        let pb = dir.join("PKGBUILD");
        // makepkg defines srcdir/pkgdir and reads the metadata variables.
        let o = run(Command::new("shellcheck")
            .args(["-s", "bash", "-e", "SC2034,SC2154,SC2164"])
            .arg(&pb))
        .unwrap();
        assert_eq!(
            o.code,
            Some(0),
            "shellcheck {}:\n{}",
            pb.display(),
            o.stdout
        );
    }
}

#[test]
fn scripts_pass_shellcheck() {
    let ib = repo_root().join("image-build");
    let mut files = Vec::new();
    let mut stack = vec![ib.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("checks") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "sh")
                || p.file_name()
                    .is_some_and(|n| n == "boot-marker" || n == "ttyd-gen-cert")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the stage scripts, found {files:?}"
    );
    let o = run(Command::new("shellcheck")
        .current_dir(&ib)
        .arg("-x")
        .args(&files))
    .unwrap();
    assert_eq!(o.code, Some(0), "shellcheck:\n{}", o.stdout);
}
