//! Payloads as the phone has them (a directory or `images.tar.gz`), located
//! in the build output and "installed" into a per-run instance directory the
//! way the Terminal app unpacks them into its files dir: root_part is then
//! written in place without touching the build output.
//!
//! Instance layout (mirrors the phone):
//! `<instance>/app/`                = $APP_DATA_DIR
//! `<instance>/app/files/`          = the `internal` share
//! `<instance>/app/files/linux/`    = $PAYLOAD_DIR
//! `<instance>/phone/storage/emulated/` = the `android` share

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

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

    /// Installs `source` (payload dir or images.tar.gz) under `root`.
    pub fn install(source: &Path, root: &Path) -> Result<Instance> {
        let app = root.join("app");
        let files = app.join("files");
        let payload = files.join("linux");
        let phone = root.join("phone");
        std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
        std::fs::create_dir_all(&phone)?;
        let tmp = files.join(".linux.partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        if source.is_dir() {
            copy_dir_sparse(source, &tmp)?;
        } else if source.is_file() {
            let f = std::fs::File::open(source)
                .with_context(|| format!("opening {}", source.display()))?;
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
            ar.set_preserve_permissions(true);
            // unpack() refuses members escaping the destination.
            ar.unpack(&tmp)
                .with_context(|| format!("unpacking {}", source.display()))?;
        } else {
            bail!("payload {}: no such directory or file", source.display());
        }
        if !tmp.join("vm_config.json").is_file() {
            bail!("payload {}: no vm_config.json in it", source.display());
        }
        let _ = std::fs::remove_dir_all(&payload);
        std::fs::rename(&tmp, &payload)?;
        Ok(Instance {
            root: root.to_owned(),
            payload_dir: payload,
            app_data_dir: app,
            phone_root: phone,
            owned: true,
        })
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
        })
    }
}

/// Sparse copy (as the app unpacks; reflink where the filesystem can).
fn copy_dir_sparse(src: &Path, dst: &Path) -> Result<()> {
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let ty = e.file_type()?;
        if !(ty.is_file() || ty.is_dir()) {
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
    fn installs_a_directory_sparsely() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("payload");
        make_payload(&src);
        let inst = Instance::install(&src, &t.path().join("inst")).unwrap();
        let root = inst.payload_dir.join("root_part");
        assert_eq!(std::fs::metadata(&root).unwrap().len(), 64 << 20);
        assert!(allocated(&root) < 8 << 20, "copy is not sparse");
        assert_eq!(inst.payload_dir, t.path().join("inst/app/files/linux"));
        assert!(!t.path().join("inst/app/files/.linux.partial").exists());
    }

    #[test]
    fn installs_a_tarball() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("payload");
        make_payload(&src);
        let tgz = t.path().join("images.tar.gz");
        let st = Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&src)
            .args(["vm_config.json", "build_id", "root_part"])
            .status()
            .unwrap();
        assert!(st.success());
        let inst = Instance::install(&tgz, &t.path().join("inst")).unwrap();
        let data = std::fs::read(inst.payload_dir.join("root_part")).unwrap();
        assert_eq!(&data[1 << 20..(1 << 20) + 8], b"ext4-ish");
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
}
