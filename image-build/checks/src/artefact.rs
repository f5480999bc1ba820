//! Locating a built payload and reading what the build recorded.

use std::path::PathBuf;

use serde::Deserialize;

use crate::exec::repo_root;

/// `build-info.json` as written by stage 50.
#[derive(Debug, Deserialize)]
pub struct BuildInfo {
    pub base: String,
    pub layout: String,
    pub build_id: String,
    /// Readable: `<base>/<arch>/<version>-<n>-<date>`.
    pub version: String,
    pub kernel_release: String,
    pub kernel_params: String,
    pub partitions: Vec<Partition>,
    pub packages: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Partition {
    pub label: String,
    pub guid: String,
    pub size_bytes: u64,
}

/// One built `<base>-<layout>` output directory.
#[derive(Debug)]
pub struct Artefact {
    pub base: String,
    pub layout: String,
    pub dir: PathBuf,
    pub info: BuildInfo,
}

/// `$AVF_OUT`, or `<repo>/out`.
pub fn out_dir() -> PathBuf {
    std::env::var_os("AVF_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("out"))
}

/// The command that builds the artefact a test needs.
pub fn build_command(base: &str, layout: &str) -> String {
    format!("image-build/build-all.sh --base {base} --layout {layout}")
}

impl Artefact {
    /// Opens `$AVF_OUT/<base>-<layout>`; a missing piece is an error that
    /// names the command which builds it (tests never skip silently).
    pub fn open(base: &str, layout: &str) -> Result<Self, String> {
        let dir = out_dir().join(format!("{base}-{layout}"));
        for need in ["images.tar.gz", "build-info.json", "payload/root_part"] {
            if !dir.join(need).exists() {
                return Err(format!(
                    "{} is missing: build it with `{}`",
                    dir.join(need).display(),
                    build_command(base, layout)
                ));
            }
        }
        let path = dir.join("build-info.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let info: BuildInfo =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            base: base.into(),
            layout: layout.into(),
            dir,
            info,
        })
    }

    pub fn payload(&self, name: &str) -> PathBuf {
        self.dir.join("payload").join(name)
    }

    pub fn tarball(&self) -> PathBuf {
        self.dir.join("images.tar.gz")
    }

    /// The GUID the build recorded for a partition label.
    pub fn guid(&self, label: &str) -> Result<&str, String> {
        self.info
            .partitions
            .iter()
            .find(|p| p.label == label)
            .map(|p| p.guid.as_str())
            .ok_or_else(|| format!("{}: no partition {label}", self.dir.display()))
    }
}

/// The tests' shorthand: open or panic with the build command.
pub fn need(base: &str, layout: &str) -> Artefact {
    Artefact::open(base, layout).unwrap_or_else(|e| panic!("{e}"))
}
