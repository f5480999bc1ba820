//! Payloads as the phone has them (a directory or `images.tar.gz`), located
//! in the build output and "installed" into a per-run instance directory the
//! way the Terminal app unpacks them into its files dir: root_part is then
//! written in place without touching the build output. A tarball goes
//! through the app's installer ([`image_archive`]); a directory is copied
//! (the harness's dev convenience). Both end with the app's `completed`.
//!
//! Instance layout (mirrors the phone):
//! `<instance>/app/`                = $APP_DATA_DIR
//! `<instance>/app/files/`          = the `internal` share
//! `<instance>/app/files/linux/`    = $PAYLOAD_DIR
//! `<instance>/phone/storage/emulated/` = the `android` share

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use avf_terminal::image_archive;
use avf_terminal::installed_image::{InstalledImage, ROOT_PART, ROOT_PART_BACKUP};

use crate::spec::Expansion;

/// `${AVF_OUT:-<repo>/out}`.
pub fn out_dir() -> PathBuf {
    if let Some(o) = std::env::var_os("AVF_OUT") {
        return PathBuf::from(o);
    }
    // harness/ sits directly under the repo root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|r| r.join("out"))
        .unwrap_or_else(|| PathBuf::from("out"))
}

/// The built payload directory for `<base>-<layout>`, or an error naming
/// the command that builds it.
pub fn built_payload(base: &str, layout: &str) -> Result<PathBuf> {
    let dir = out_dir().join(format!("{base}-{layout}")).join("payload");
    if !dir.join("vm_config.json").is_file() {
        bail!(
            "payload {} is not built (no vm_config.json); build it with: image-build/build-all.sh --base {base} --layout {layout}",
            dir.display()
        );
    }
    Ok(dir)
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub root: PathBuf,
    pub payload_dir: PathBuf,
    pub app_data_dir: PathBuf,
    pub phone_root: PathBuf,
    /// Whether `root` was created by us (and so may be removed).
    pub owned: bool,
    /// Used where it lies (`--in-place`), not installed.
    pub in_place: bool,
    /// What the installer did differently from a tar tool (link entries
    /// installed as empty files, setuid bits dropped, …), printed already.
    pub install_warnings: Vec<String>,
}

impl Instance {
    pub fn expansion(&self) -> Expansion {
        Expansion {
            payload_dir: self.payload_dir.clone(),
            app_data_dir: self.app_data_dir.clone(),
            phone_root: self.phone_root.clone(),
        }
    }

    pub fn vm_config(&self) -> PathBuf {
        self.payload_dir.join("vm_config.json")
    }

    /// Installs `source` under `root`.
    ///
    /// An `images.tar.gz` goes through [`image_archive::install_to`], the
    /// app's installer made safe for a root harness: flat regular files
    /// only, mode 0600, links as empty files (each such entry is printed
    /// as a warning and kept in `install_warnings`), `completed` last.
    ///
    /// A payload *directory* (the build output) is the harness's dev
    /// convenience, not something the phone has: its regular files and
    /// subdirectories are copied sparsely (modes kept, symlinks and other
    /// files skipped, a `completed` in it ignored) into a private temp dir
    /// that gets its own fresh `completed` and is then renamed into place.
    pub fn install(source: &Path, root: &Path) -> Result<Instance> {
        let app = root.join("app");
        let files = app.join("files");
        let payload = files.join("linux");
        let phone = root.join("phone");
        std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
        std::fs::create_dir_all(&phone)?;
        let mut install_warnings = Vec::new();
        if source.is_dir() {
            install_dir(source, &files, &payload)?;
        } else if source.is_file() {
            let got = install_archive(source, &payload)?;
            for w in got.warnings {
                eprintln!("[avf] installing {}: {w}", source.display());
                install_warnings.push(w.to_string());
            }
        } else {
            bail!("payload {}: no such directory or file", source.display());
        }
        if !payload.join("vm_config.json").is_file() {
            let _ = std::fs::remove_dir_all(&payload);
            bail!("payload {}: no vm_config.json in it", source.display());
        }
        allocate_root_part(&payload)?;
        Ok(Instance {
            root: root.to_owned(),
            payload_dir: payload,
            app_data_dir: app,
            phone_root: phone,
            owned: true,
            in_place: false,
            install_warnings,
        })
    }

    /// Reads `archive` entry by entry as the app's installer does, into a
    /// private dir under `scratch` (holes kept: nothing is allocated), and
    /// uses the result in place: `avf-harness check` on an
    /// `images.tar.gz`, which must read to its end, as on the phone.
    pub fn unpacked(
        archive: &Path,
        scratch: &Path,
    ) -> Result<(Instance, image_archive::Installed)> {
        let dir = scratch.join("linux");
        let got = install_archive(archive, &dir)?;
        let inst = Instance::in_place(&dir, &scratch.join("scratch"))?;
        Ok((inst, got))
    }

    /// Whether the app would call this image installed (`completed`); a
    /// payload used in place counts as installed.
    pub fn is_installed(&self) -> bool {
        self.in_place || image_archive::is_installed(&self.payload_dir)
    }

    /// The Upgrade screen's button, then the installer again from `source`
    /// (the app relaunches into it): `root_part` becomes
    /// `root_part_backup`, which the new install keeps.
    pub fn upgrade_reset(&self, source: &Path) -> Result<()> {
        InstalledImage::new(&self.payload_dir)
            .and_then(|i| i.upgrade_screen_reset())
            .with_context(|| {
                format!(
                    "the Upgrade screen's reset in {}",
                    self.payload_dir.display()
                )
            })?;
        let files = self
            .payload_dir
            .parent()
            .context("the install dir has no parent")?;
        if source.is_dir() {
            install_dir(source, files, &self.payload_dir)?;
        } else {
            install_archive(source, &self.payload_dir)?;
        }
        allocate_root_part(&self.payload_dir)
    }

    /// Uses `payload` where it lies (`--in-place`): its files are written.
    pub fn in_place(payload: &Path, scratch: &Path) -> Result<Instance> {
        if !payload.join("vm_config.json").is_file() {
            bail!("payload {}: no vm_config.json in it", payload.display());
        }
        let app = scratch.join("app");
        std::fs::create_dir_all(app.join("files"))?;
        Ok(Instance {
            root: scratch.to_owned(),
            payload_dir: payload.canonicalize()?,
            app_data_dir: app,
            phone_root: scratch.join("phone"),
            owned: true,
            in_place: true,
            install_warnings: Vec::new(),
        })
    }
}
/// The app's installer on `archive` (see [`image_archive`]); a read
/// error says what Android 17's installer would do with it.
fn install_archive(archive: &Path, dir: &Path) -> Result<image_archive::Installed> {
    image_archive::install_to(archive, dir).map_err(|e| {
        let note = match &e {
            image_archive::ArchiveError::Io { .. } => {
                "\n(Android 17's installer retries a read error like this forever — only \
                 \"file not found\", \"access denied\" and \"no space left\" end it — so its \
                 progress screen would never finish; check the archive's sha256 before copying it)"
            }
            _ => "",
        };
        anyhow::anyhow!("installing {}: {e}{note}", archive.display())
    })
}

/// A payload directory into `payload` (under `files`): copied into a
/// private temp dir there, given `completed`, then renamed into place.
fn install_dir(source: &Path, files: &Path, payload: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".linux.install.")
        .tempdir_in(files)
        .with_context(|| format!("creating a temp dir in {}", files.display()))?;
    copy_dir_sparse(source, tmp.path())?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp.path().join(image_archive::COMPLETED))
        .context("creating completed")?;
    // What the Upgrade screen left stays, as in the app's install dir.
    let backup = payload.join(ROOT_PART_BACKUP);
    if backup.is_file() {
        std::fs::rename(&backup, tmp.path().join(ROOT_PART_BACKUP))
            .with_context(|| format!("keeping {}", backup.display()))?;
    }
    let _ = std::fs::remove_dir_all(payload);
    std::fs::rename(tmp.path(), payload)
        .with_context(|| format!("moving the copy to {}", payload.display()))?;
    // The temp dir is the payload dir now; nothing is left to remove.
    let _ = tmp.keep();
    Ok(())
}

/// The app writes every byte of `root_part` (its installer keeps no
/// holes), so on the phone the file is fully allocated; its every-start
/// disk steps read that. `posix_fallocate` gives the same allocation
/// without writing zeros.
fn allocate_root_part(payload: &Path) -> Result<()> {
    let p = payload.join(ROOT_PART);
    let f = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", p.display())),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a plain syscall on an open fd.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
    if r != 0 {
        bail!(
            "allocating {} ({len} bytes): {}",
            p.display(),
            std::io::Error::from_raw_os_error(r)
        );
    }
    Ok(())
}

/// Sparse copy (reflink where the filesystem can); symlinks and special
/// files are skipped, and so is a `completed` marker.
fn copy_dir_sparse(src: &Path, dst: &Path) -> Result<()> {
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let ty = e.file_type()?;
        if !(ty.is_file() || ty.is_dir()) || e.file_name() == image_archive::COMPLETED {
            continue;
        }
        let st = Command::new("cp")
            .args(["-r", "--sparse=always", "--reflink=auto", "--preserve=mode"])
            .arg(e.path())
            .arg(dst)
            .status()
            .context("running cp")?;
        if !st.success() {
            bail!("copying {} to {} failed", e.path().display(), dst.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_payload(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("vm_config.json"), b"{}").unwrap();
        std::fs::write(dir.join("build_id"), b"2027\n").unwrap();
        // A sparse 64 MiB root_part with data at 1 MiB.
        let f = std::fs::File::create(dir.join("root_part")).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"ext4-ish", 1 << 20).unwrap();
    }

    fn allocated(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    }

    #[test]
    fn installs_a_directory_fully_allocated() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("payload");
        make_payload(&src);
        let inst = Instance::install(&src, &t.path().join("inst")).unwrap();
        let root = inst.payload_dir.join("root_part");
        assert_eq!(std::fs::metadata(&root).unwrap().len(), 64 << 20);
        // As the app leaves it: every byte allocated.
        assert!(allocated(&root) >= 64 << 20, "root_part is not allocated");
        assert_eq!(inst.payload_dir, t.path().join("inst/app/files/linux"));
        assert!(image_archive::is_installed(&inst.payload_dir));
        let left: Vec<_> = std::fs::read_dir(t.path().join("inst/app/files"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["linux"]);
    }

    /// `make_payload`'s files as `<dir>/images.tar.gz` (tar, as a user
    /// would pack them).
    fn payload_tarball(dir: &Path) -> PathBuf {
        let src = dir.join("payload");
        make_payload(&src);
        let tgz = dir.join("images.tar.gz");
        let st = Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&src)
            .args(["vm_config.json", "build_id", "root_part"])
            .status()
            .unwrap();
        assert!(st.success());
        tgz
    }

    #[test]
    fn installs_a_tarball() {
        let t = tempfile::tempdir().unwrap();
        let tgz = payload_tarball(t.path());
        let inst = Instance::install(&tgz, &t.path().join("inst")).unwrap();
        let root = inst.payload_dir.join("root_part");
        let data = std::fs::read(&root).unwrap();
        assert_eq!(&data[1 << 20..(1 << 20) + 8], b"ext4-ish");
        assert_eq!(data.len(), 64 << 20);
        // The phone writes every byte: allocated as there.
        assert!(allocated(&root) >= 64 << 20, "root_part is not allocated");
        assert!(image_archive::is_installed(&inst.payload_dir));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, image_archive::FILE_MODE);
        assert!(inst.install_warnings.is_empty());
        let mut left: Vec<_> = std::fs::read_dir(t.path().join("inst/app/files"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["linux"]);
    }

    #[test]
    fn check_reads_an_archive_to_its_end_and_names_the_17_installers_loop() {
        let t = tempfile::tempdir().unwrap();
        let tgz = payload_tarball(t.path());
        let scratch = t.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let (inst, got) = Instance::unpacked(&tgz, &scratch).unwrap();
        assert_eq!(got.files, ["vm_config.json", "build_id", "root_part"]);
        assert!(inst.vm_config().is_file());
        // Nothing allocated for the check: root_part stays sparse.
        assert!(allocated(&inst.payload_dir.join("root_part")) < 8 << 20);
        let bytes = std::fs::read(&tgz).unwrap();
        let cut = t.path().join("cut.tar.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let again = t.path().join("again");
        std::fs::create_dir(&again).unwrap();
        let e = format!("{:#}", Instance::unpacked(&cut, &again).unwrap_err());
        assert!(
            e.contains("cut.tar.gz") && e.contains("retries a read error like this forever"),
            "{e}"
        );
    }

    /// A gzip tar with raw headers (the tar crate's setters would refuse
    /// some of what these tests need).
    fn targz(path: &Path, entries: &[(&str, tar::EntryType, u32, &[u8], &str)]) {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, ty, mode, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*ty);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn a_symlink_entry_installs_an_empty_regular_file() {
        let t = tempfile::tempdir().unwrap();
        let tgz = t.path().join("images.tar.gz");
        targz(
            &tgz,
            &[
                ("vm_config.json", tar::EntryType::Regular, 0o644, b"{}", ""),
                (
                    "root_part",
                    tar::EntryType::Symlink,
                    0o777,
                    b"",
                    "/etc/shadow",
                ),
            ],
        );
        let inst = Instance::install(&tgz, &t.path().join("inst")).unwrap();
        let root = inst.payload_dir.join("root_part");
        let m = std::fs::symlink_metadata(&root).unwrap();
        assert!(m.is_file(), "root_part is not a regular file: {m:?}");
        // Empty: /etc/shadow was neither linked to nor read.
        assert_eq!(m.len(), 0);
        assert_eq!(std::fs::read(&root).unwrap(), b"");
        assert_eq!(
            inst.install_warnings.len(),
            1,
            "{:?}",
            inst.install_warnings
        );
        assert!(
            inst.install_warnings[0].contains("/etc/shadow"),
            "{:?}",
            inst.install_warnings
        );
        assert!(image_archive::is_installed(&inst.payload_dir));
    }

    #[test]
    fn a_setuid_entry_loses_its_setuid_bit() {
        let t = tempfile::tempdir().unwrap();
        let tgz = t.path().join("images.tar.gz");
        targz(
            &tgz,
            &[
                ("vm_config.json", tar::EntryType::Regular, 0o644, b"{}", ""),
                ("root_part", tar::EntryType::Regular, 0o4755, b"\x7fELF", ""),
            ],
        );
        let inst = Instance::install(&tgz, &t.path().join("inst")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(inst.payload_dir.join("root_part"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600, "mode {mode:o}");
        assert!(
            inst.install_warnings[0].contains("4755"),
            "{:?}",
            inst.install_warnings
        );
    }

    #[test]
    fn a_tarball_that_escapes_is_refused_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let tgz = t.path().join("images.tar.gz");
        targz(
            &tgz,
            &[
                ("vm_config.json", tar::EntryType::Regular, 0o644, b"{}", ""),
                ("../../escape", tar::EntryType::Regular, 0o644, b"x", ""),
            ],
        );
        let e = format!(
            "{:#}",
            Instance::install(&tgz, &t.path().join("inst")).unwrap_err()
        );
        assert!(
            e.contains("../../escape") && e.contains("images.tar.gz"),
            "{e}"
        );
        assert!(!t.path().join("inst/app/files/linux").exists());
        assert!(!t.path().join("escape").exists());
        assert!(!t.path().join("inst/escape").exists());
        // A tarball without vm_config.json is not left installed either.
        targz(
            &tgz,
            &[("root_part", tar::EntryType::Regular, 0o644, b"x", "")],
        );
        let e = Instance::install(&tgz, &t.path().join("inst")).unwrap_err();
        assert!(e.to_string().contains("no vm_config.json"), "{e}");
        assert!(!t.path().join("inst/app/files/linux").exists());
    }

    #[test]
    fn rejects_payload_without_config() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("p")).unwrap();
        let e = Instance::install(&t.path().join("p"), &t.path().join("i")).unwrap_err();
        assert!(e.to_string().contains("no vm_config.json"), "{e}");
        let e = Instance::install(&t.path().join("nope"), &t.path().join("i")).unwrap_err();
        assert!(e.to_string().contains("no such directory or file"), "{e}");
    }

    #[test]
    fn missing_build_names_the_command() {
        std::env::set_var("AVF_OUT", "/nonexistent-avf-out");
        let e = built_payload("debian", "direct").unwrap_err().to_string();
        std::env::remove_var("AVF_OUT");
        assert!(
            e.contains("image-build/build-all.sh --base debian --layout direct"),
            "{e}"
        );
    }

    /// The hostile payloads in fixtures/hostile (see its make.py and
    /// expect.txt): each is refused by the installer or by the spec, or
    /// installs into a spec whose every file is a regular file in the
    /// payload dir; nothing lands outside the instance.
    #[test]
    fn hostile_fixtures() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hostile");
        let expect = std::fs::read_to_string(dir.join("expect.txt")).unwrap();
        let mut n = 0;
        for line in expect
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut w = line.split_whitespace();
            let (name, outcome) = (w.next().unwrap(), w.next().unwrap());
            let needle = w.collect::<Vec<_>>().join(" ");
            n += 1;
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("a/b/inst");
            let got = Instance::install(&dir.join(name), &root);
            let outside: Vec<_> = walk(t.path())
                .into_iter()
                .filter(|p| !p.starts_with(&root) && !root.starts_with(p))
                .collect();
            assert!(outside.is_empty(), "{name}: wrote {outside:?}");
            assert!(!Path::new("/tmp/avf-hostile-absolute").exists(), "{name}");
            if outcome == "install-refused" {
                let e = format!("{:#}", got.expect_err(name));
                assert!(e.contains(&needle) && e.contains(name), "{name}: {e}");
                assert!(!root.join("app/files/linux").exists(), "{name}");
                continue;
            }
            let inst = got.unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let spec = crate::spec::VmSpec::load(&inst.vm_config(), &inst.expansion());
            if let Some(field) = outcome.strip_prefix("spec-refused:") {
                let e = spec.expect_err(name);
                assert_eq!(e.field, field, "{name}: {e}");
                assert!(e.problem.contains(&needle), "{name}: {e}");
                continue;
            }
            assert_eq!(outcome, "installed", "{name}: unknown outcome");
            assert!(
                inst.install_warnings.iter().any(|w| w.contains(&needle)),
                "{name}: {:?}",
                inst.install_warnings
            );
            let spec = spec.unwrap_or_else(|e| panic!("{name}: {e}"));
            let files = spec.disks.iter().flat_map(|d| match d {
                crate::spec::Disk::Composite { partitions, .. } => {
                    partitions.iter().map(|p| p.path.clone()).collect()
                }
                crate::spec::Disk::Image { path, .. } => vec![path.clone()],
            });
            for f in files {
                assert!(f.starts_with(&inst.payload_dir), "{name}: {}", f.display());
                let m = std::fs::symlink_metadata(&f).unwrap();
                assert!(m.is_file(), "{name}: {} is not a regular file", f.display());
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(m.permissions().mode() & 0o7777, image_archive::FILE_MODE);
            }
        }
        assert!(n >= 10, "expected the fixtures in {}", dir.display());
    }

    /// Every path under `dir` (not following links).
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }
}
