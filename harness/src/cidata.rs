//! The Terminal app's bundled `cidata.iso` as the harness plays it: our own
//! NoCloud seed of the app's shape (docs/android-releases.md §5), written
//! from the published item list, not copied: label `cidata`; `meta-data`
//! with an instance id hashed over the content (as the app's build does);
//! `user-data` making `droid` (uid 1000, passwordless sudo) and running
//! `init.sh` from the mounted disk; `network-config` v2 (DHCP on `en*`);
//! `init.sh`, which installs `localdebs/*.deb` with dpkg when there are
//! any. Built as a vfat image with mkfs.vfat and mtools, as image-build
//! makes the payload's own `cidata.iso` (no ISO-9660 tool on the hosts);
//! NoCloud reads either by label.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The seed's volume label (NoCloud's).
pub const LABEL: &str = "cidata";
/// Where the app keeps it in the image dir, attached as the second disk.
pub const FILE: &str = "cidata.iso";
/// The app copies this next to it; its presence marks the AIDL kind.
pub const BUILD_ID_FILE: &str = "cidata.build_id";
/// What our bundled seed's `cidata.build_id` says.
pub const BUNDLED_BUILD_ID: &str = "arch-avf-harness-1\n";
/// Fixed volume id: the same content gives the same image.
const VOLUME_ID: &str = "c1da7a00";
/// Size in KiB.
const SIZE_KIB: &str = "1024";

const USER_DATA: &str = "#cloud-config
users:
  - default
  - name: droid
    uid: 1000
    no_user_group: true
    groups: [sudo, video, render]
    sudo: ALL=(ALL) NOPASSWD:ALL
    shell: /usr/bin/bash
    lock_passwd: false
runcmd:
  - mkdir -p /mnt/cidata
  - mount -o ro /dev/vdb /mnt/cidata
  - /mnt/cidata/init.sh
  - umount /mnt/cidata
";

const NETWORK_CONFIG: &str = "version: 2
ethernets:
  all-en:
    match:
      name: \"en*\"
    dhcp4: true
    dhcp6: true
    dhcp4-overrides:
      use-domains: true
    dhcp6-overrides:
      use-domains: true
";

const INIT_SH: &str = "#!/bin/sh
# Runs from the mounted seed (cloud-init runcmd): local packages first.
set -ex
cd \"$(dirname \"$0\")\"
if ls localdebs/*.deb >/dev/null 2>&1; then
  dpkg -i localdebs/*.deb
fi
if [ -d root_files ]; then
  cp -vR root_files/. /
fi
";

/// The seed's files, `meta-data` last (its id hashes the others).
pub fn files() -> Vec<(&'static str, String)> {
    let mut files = vec![
        ("user-data", USER_DATA.to_string()),
        ("network-config", NETWORK_CONFIG.to_string()),
        ("init.sh", INIT_SH.to_string()),
    ];
    let mut h = Sha256::new();
    for (name, text) in &files {
        h.update(name.as_bytes());
        h.update(text.as_bytes());
    }
    let id: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    files.push((
        "meta-data",
        format!("instance-id: {id}\nlocal-hostname: debian\n"),
    ));
    files
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (dosfstools, mtools)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the seed image to `out` (replacing it).
pub fn write(out: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _ = std::fs::remove_file(out);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", LABEL, "-i", VOLUME_ID])
        .arg(out)
        .arg(SIZE_KIB))?;
    for (name, text) in files() {
        let p = dir.path().join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        if name == "init.sh" {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        run(Command::new("mcopy")
            .arg("-i")
            .arg(out)
            .arg(&p)
            .arg(format!("::/{name}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_has_the_apps_shape() {
        let d = tempfile::tempdir().unwrap();
        let iso = d.path().join(FILE);
        write(&iso).unwrap();
        let out = Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&iso)
            .arg("::/")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout).to_lowercase();
        for f in ["meta-data", "user-data", "network-config", "init.sh"] {
            assert!(listing.contains(f), "{f} missing: {listing}");
        }
        let label = Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&iso)
            .arg("::")
            .output()
            .unwrap();
        let label = String::from_utf8_lossy(&label.stdout).to_lowercase();
        assert!(label.contains("cidata"), "{label}");
        let f = files();
        assert!(f[0].1.contains("uid: 1000") && f[0].1.contains("NOPASSWD:ALL"));
        assert!(f[2].1.contains("dpkg -i localdebs/*.deb"));
        assert!(f[1].1.starts_with("version: 2"));
        // Same content, same instance id.
        assert_eq!(files()[3], f[3]);
    }
}
