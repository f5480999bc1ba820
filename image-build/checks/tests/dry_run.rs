//! The Arch base cannot run here (no ALARM mirror): its dry run must print
//! every bootstrap command, and the real run must fail fast naming --base debian.

use std::process::Command;
use std::time::Instant;

use avf_image_checks::exec::run;
use avf_image_checks::repo_root;

#[test]
fn archlinuxarm_dry_run_prints_the_bootstrap() {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let o = run(Command::new(repo_root().join("image-build/build-all.sh"))
        .args(["--base", "archlinuxarm", "--dry-run"])
        .env("AVF_OUT", out.path())
        .env("AVF_CACHE", cache.path()))
    .unwrap();
    assert_eq!(o.code, Some(0), "dry run failed: {}", o.stderr);
    let cmds: Vec<&str> = o.stdout.lines().filter(|l| l.starts_with("+ ")).collect();
    // The package file the PKGBUILD names (its version, not a copy of it).
    let agents_pkg = {
        let pb = std::fs::read_to_string(
            avf_image_checks::repo_root().join("image-build/pkgbuilds/avf-agents/PKGBUILD"),
        )
        .unwrap();
        let field = |k: &str| {
            pb.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("avf-agents/PKGBUILD: no {k}"))
                .to_string()
        };
        format!(
            "avf-agents-{}-{}-aarch64.pkg.tar.zst",
            field("pkgver="),
            field("pkgrel=")
        )
    };
    let want = [
        "curl -fL --retry 3 -o ",
        "ArchLinuxARM-aarch64-latest.tar.gz.md5",
        "md5sum\\ -c",
        "gpg --homedir",
        "--verify ",
        "bsdtar -xpf ",
        "pacman-key --gpgdir \"$g\" --init",
        "pacman-key --gpgdir \"$g\" --populate archlinuxarm",
        "/etc/pacman.d/gnupg",
        // The whole list is checked against packages.txt by tests/packages.rs.
        "pacman -Syu --noconfirm --needed base systemd ",
        "userdel -r alarm",
        "makepkg --config ",
        "avf-agents/PKGBUILD",
        "avf-config/PKGBUILD",
        "makepkg\\ --noconfirm",
        "repo-add ",
        &agents_pkg,
        "Server = file:///var/tmp/avf-repo",
        "pacman --config /var/tmp/avf-repo/pacman.conf -Sy --noconfirm --needed avf-agents avf-config avf-ttyd",
    ];
    let all = cmds.join("\n");
    for w in want {
        assert!(all.contains(w), "dry run lacks {w:?}:\n{all}");
    }
    // Order: verify before extracting, keyring before installing.
    let pos = |s: &str| all.find(s).unwrap();
    assert!(pos("md5sum") < pos("bsdtar -xpf"));
    assert!(pos("--verify ") < pos("bsdtar -xpf"));
    assert!(pos("pacman-key --gpgdir \"$g\" --populate") < pos("pacman -Syu"));
    // No keyring in the image: every machine would share its local master
    // key. Each pacman that verifies packages gets a keyring of the
    // build's own in the chroot's /tmp (a tmpfs gone after the command),
    // and the root's default one is removed after the bootstrap.
    for l in &cmds {
        if l.contains("pacman-key") {
            assert!(
                l.contains("--gpgdir \"$g\"") && l.contains("mktemp -d /tmp/"),
                "pacman-key on the image's own keyring: {l}"
            );
        }
        let installs = [" pacman -S ", " pacman -Sy", " pacman --config "]
            .iter()
            .any(|p| l.contains(p));
        if installs {
            assert!(
                l.contains(" avf-build-keyring pacman "),
                "pacman installs without the build's keyring: {l}"
            );
        }
    }
    assert!(
        cmds.iter()
            .any(|l| l.starts_with("+ rm -rf ") && l.ends_with("/etc/pacman.d/gnupg")),
        "the bootstrap does not remove /etc/pacman.d/gnupg:\n{all}"
    );
    assert!(pos("pacman -Scc") < pos("/etc/pacman.d/gnupg"));
    assert!(pos("repo-add ") < pos("pacman --config /var/tmp/avf-repo"));
    assert_eq!(
        o.stdout.lines().last().unwrap(),
        format!("{}/archlinuxarm-efi/images.tar.gz", out.path().display())
    );
    // A dry run writes nothing.
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "dry run wrote to AVF_OUT"
    );
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "dry run wrote to AVF_CACHE"
    );
}

#[test]
fn debian_dry_run_prints_mmdebstrap() {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let o = run(Command::new(repo_root().join("image-build/build-all.sh"))
        .args(["--base", "debian", "--layout", "direct", "--dry-run"])
        .env("AVF_OUT", out.path())
        .env("AVF_CACHE", cache.path()))
    .unwrap();
    assert_eq!(o.code, Some(0), "dry run failed: {}", o.stderr);
    assert!(
        o.stdout.contains("+ mmdebstrap --mode=root --arch=arm64"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("ttyd"),
        "ttyd not requested: {}",
        o.stdout
    );
}

#[test]
fn archlinuxarm_unreachable_mirror_fails_fast() {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = run(Command::new(repo_root().join("image-build/build-all.sh"))
        .args(["--base", "archlinuxarm"])
        .env("AVF_OUT", out.path())
        .env("AVF_CACHE", cache.path())
        .env("AVF_ALARM_OS_MIRROR", "http://127.0.0.1:9"))
    .unwrap();
    let secs = t.elapsed().as_secs();
    assert_ne!(o.code, Some(0));
    let last = o.last_err_line();
    assert!(
        last.contains("error:") && last.contains("--base debian"),
        "last line: {last}\n{}",
        o.stderr
    );
    assert!(secs < 60, "took {secs} s");
    assert!(!out.path().join("archlinuxarm-efi").exists());
}
