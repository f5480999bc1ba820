//! avf-config's ttyd-gen-cert, run on the host against a temp dir: every
//! boot it must leave a usable key and certificate pair behind, whatever a
//! power cut left (an empty key, a half-replaced pair, garbage), and keep a
//! good pair as it is.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use avf_image_checks::exec::{run, run_ok};
use avf_image_checks::repo_root;

fn config_dir() -> PathBuf {
    repo_root().join("image-build/pkgbuilds/avf-config")
}

/// Runs the script on `dir`; panics on a non-zero exit.
fn gen(dir: &Path) {
    let o = run(Command::new("sh")
        .arg(config_dir().join("ttyd-gen-cert"))
        .arg(dir))
    .unwrap();
    assert_eq!(
        o.code,
        Some(0),
        "ttyd-gen-cert {}: {}",
        dir.display(),
        o.stderr
    );
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The pair parses and matches (the same check ttyd's TLS setup needs),
/// with the modes ttyd's key needs, and no temp files are left.
fn assert_valid_pair(dir: &Path) {
    let key = dir.join("server.key");
    let crt = dir.join("server.crt");
    let kpub = run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key),
    )
    .unwrap_or_else(|e| panic!("server.key does not parse: {e}"));
    let cpub = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&crt),
    )
    .unwrap_or_else(|e| panic!("server.crt does not parse: {e}"));
    assert!(kpub.contains("BEGIN PUBLIC KEY"), "{kpub}");
    assert_eq!(kpub, cpub, "server.crt is not server.key's certificate");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600, "server.key mode");
    assert_eq!(mode(&crt), 0o644, "server.crt mode");
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["server.key", "server.crt", "server.pair"].contains(&n.as_str()))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn first_boot_makes_a_pair() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ttyd");
    gen(&dir);
    assert_valid_pair(&dir);
}

#[test]
fn a_good_pair_is_kept() {
    let d = tempfile::tempdir().unwrap();
    gen(d.path());
    let (k, c) = (
        read(&d.path().join("server.key")),
        read(&d.path().join("server.crt")),
    );
    gen(d.path());
    assert_eq!(
        read(&d.path().join("server.key")),
        k,
        "a good key was replaced"
    );
    assert_eq!(
        read(&d.path().join("server.crt")),
        c,
        "a good certificate was replaced"
    );
}

/// Runs the script with an `openssl` first on PATH that only leaves a
/// trace; returns whether it was called.
fn gen_counting_openssl(dir: &Path) -> bool {
    let bin = tempfile::tempdir().unwrap();
    let trace = bin.path().join("called");
    let shim = bin.path().join("openssl");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec /usr/bin/openssl \"$@\"\n",
            trace.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let o = run(Command::new("sh")
        .arg(config_dir().join("ttyd-gen-cert"))
        .arg(dir)
        .env("PATH", path))
    .unwrap();
    assert_eq!(o.code, Some(0), "ttyd-gen-cert: {}", o.stderr);
    trace.exists()
}

/// The boot's critical path: a pair the script made or checked before is
/// recognised by its record, without openssl; a pair the record does not
/// describe (a user's own, an older image's) gets the full check once.
#[test]
fn a_recorded_pair_skips_openssl() {
    let d = tempfile::tempdir().unwrap();
    gen(d.path());
    assert!(
        !gen_counting_openssl(d.path()),
        "openssl ran on a recorded pair"
    );
    // A valid pair without a record (made by an older image): checked, kept, recorded.
    std::fs::remove_file(d.path().join("server.pair")).unwrap();
    let k = read(&d.path().join("server.key"));
    assert!(
        gen_counting_openssl(d.path()),
        "an unrecorded pair was not checked"
    );
    assert_eq!(
        read(&d.path().join("server.key")),
        k,
        "a good key was replaced"
    );
    assert!(
        !gen_counting_openssl(d.path()),
        "the checked pair was not recorded"
    );
    // A garbage record: the full check, the pair kept.
    std::fs::write(d.path().join("server.pair"), b"garbage\n").unwrap();
    assert!(gen_counting_openssl(d.path()));
    assert_eq!(read(&d.path().join("server.key")), k);
    assert_valid_pair(d.path());
}

/// Spoils the pair in a dir, given another pair's key.
type Spoil = fn(&Path, &[u8]);

/// What a power cut can leave: each is replaced by a valid pair.
#[test]
fn a_broken_pair_is_replaced() {
    let other = tempfile::tempdir().unwrap();
    gen(other.path());
    let other_key = read(&other.path().join("server.key"));
    let cases: [(&str, Spoil); 5] = [
        ("empty server.key", |d, _| {
            std::fs::write(d.join("server.key"), b"").unwrap()
        }),
        ("empty server.crt", |d, _| {
            std::fs::write(d.join("server.crt"), b"").unwrap()
        }),
        ("missing server.crt", |d, _| {
            std::fs::remove_file(d.join("server.crt")).unwrap()
        }),
        ("garbage server.key", |d, _| {
            std::fs::write(d.join("server.key"), b"\0\0\0\0garbage\n").unwrap()
        }),
        // A cut between the two renames: the new key, the old certificate.
        ("key of another pair", |d, k| {
            std::fs::write(d.join("server.key"), k).unwrap()
        }),
    ];
    for (what, spoil) in cases {
        let d = tempfile::tempdir().unwrap();
        gen(d.path());
        spoil(d.path(), &other_key);
        // A temp dir an interrupted run left behind.
        std::fs::create_dir(d.path().join(".gen.ABC123")).unwrap();
        gen(d.path());
        assert_valid_pair(d.path());
        eprintln!("{what}: replaced");
    }
}

/// The unit runs the check on every boot: a ConditionPathExists on the key
/// would keep an empty key forever (ttyd then restarts in a loop).
#[test]
fn the_unit_checks_on_every_boot() {
    let unit = std::fs::read_to_string(config_dir().join("avf-ttyd-cert.service")).unwrap();
    assert!(
        !unit.lines().any(|l| l.starts_with("Condition")),
        "avf-ttyd-cert.service must run on every boot:\n{unit}"
    );
    assert!(unit.contains("ExecStart=/usr/lib/avf/ttyd-gen-cert /etc/ttyd"));
}

/// The new pair reaches the disk before it is renamed into place, and the
/// renames after: the script fsyncs the files and the directory.
#[test]
fn the_script_fsyncs_before_and_after_renaming() {
    let text = std::fs::read_to_string(config_dir().join("ttyd-gen-cert")).unwrap();
    let pos = |s: &str| {
        text.find(s)
            .unwrap_or_else(|| panic!("ttyd-gen-cert lacks {s:?}"))
    };
    assert!(pos("sync \"$tmp/server.key\" \"$tmp/server.crt\"") < pos("mv -f \"$tmp/server.crt\""));
    assert!(pos("mv -f \"$tmp/server.key\"") < text.rfind("sync \"$dir\"").unwrap());
    // The record, too: synced aside, renamed, the directory synced.
    assert!(pos("sync \"$dir/.pair.tmp\"") < pos("mv -f \"$dir/.pair.tmp\""));
}

fn directives(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(config_dir().join(unit)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(str::to_string)
        .collect()
}

/// The certificate unit runs openssl as root on every boot: sandboxed to
/// writing /etc/ttyd, with no capability and no network.
#[test]
fn the_cert_unit_is_sandboxed() {
    let d = directives("avf-ttyd-cert.service");
    for want in [
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "ReadWritePaths=/etc/ttyd",
        "PrivateNetwork=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            d.iter().any(|l| l == want),
            "avf-ttyd-cert.service lacks {want}"
        );
    }
}

/// ttyd's unit is the user's whole terminal session (su droid, sudo): no
/// directive that would take from sudo what root has on the console.
#[test]
fn the_ttyd_unit_leaves_sudo_whole() {
    let d = directives("avf-ttyd.service");
    let breaking = [
        "NoNewPrivileges",
        "RestrictSUIDSGID",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "ProtectSystem",
        "ProtectHome",
        "ProtectKernel",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateUsers",
        "RestrictNamespaces",
        "RestrictAddressFamilies",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
        "User=",
        "DynamicUser",
    ];
    for l in &d {
        assert!(
            !breaking.iter().any(|b| l.starts_with(b)),
            "avf-ttyd.service: {l} would reach the user's shell and sudo"
        );
    }
}
