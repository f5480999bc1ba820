//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use avf_image_checks::exec::run;

/// A small tmpfs mounted on a fresh temp dir (a disk that fills up);
/// unmounted, then the dir removed, on drop. Needs root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB (mode 0755).
    pub fn mount(mib: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let o = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "avf-full-disk-test",
            ])
            .arg(dir.path()))
        .unwrap();
        assert_eq!(o.code, Some(0), "mount tmpfs: {}", o.stderr);
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
