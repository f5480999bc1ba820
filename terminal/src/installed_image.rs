//! The app's `InstalledImage` for the root disk: sizes, the disk steps it
//! runs before every start, the settings page's minimum size, and the
//! Upgrade screen's reset (docs/terminal-app.md §3, §4).
//!
//! The app runs `/system/bin/e2fsck` and `/system/bin/resize2fs`; here the
//! host's e2fsprogs are used (from `PATH`, `/sbin`, `/usr/sbin`). As in the
//! app, every command's stderr is merged into its stdout and a non-zero
//! exit is only recorded ([`DiskStep::Run`]), never fatal. What does stop
//! a start is what throws in the app: a `posix_fallocate` error other than
//! `ENOSPC`, a failed truncate, a size of zero MiB, no `root_part`.
//!
//! One refusal the phone has no need for: `root_part` must be a regular
//! file, never a symlink (the install dir lies in the guest-writable
//! `internal` share, and these steps run as root on the host). The steps
//! run while no guest is running, so the check holds while they run; our
//! own opens use `O_NOFOLLOW` all the same.
//!
//! Sizes are `u64` bytes; the app's `long` arithmetic is done in `u128`
//! where it multiplies, with the same results for any real disk.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::image_archive::COMPLETED;
use crate::profile::PreBootDisk;

/// The root disk's file name in the install dir.
pub const ROOT_PART: &str = "root_part";
/// Where the Upgrade screen moves the old root disk.
pub const ROOT_PART_BACKUP: &str = "root_part_backup";
/// The app rounds every size up to this (`RESIZE_STEP_BYTES`, 4 MiB).
pub const RESIZE_STEP_BYTES: u64 = 4 << 20;
/// The unit `resize2fs -P` reports in, as the app reads it (it multiplies
/// by 4096 whatever the filesystem's block size is).
pub const MIN_SIZE_BLOCK: u64 = 4096;

const MIB: u64 = 1 << 20;

/// `InstalledImage.roundUp`: up to a multiple of 4 MiB. (The app does it in
/// `double`: `ceil(n / 4 MiB) * 4 MiB`, exact below 2^53 bytes.)
pub fn round_up_4mib(n: u64) -> u64 {
    n.div_ceil(RESIZE_STEP_BYTES) * RESIZE_STEP_BYTES
}

/// `VmLauncherService.calculateSparseDiskSize`: roundUp(total × percent /
/// 100) in `long`s, so the percentage is floored to a byte before rounding
/// up to 4 MiB.
pub fn sparse_disk_size(phone_storage_total_bytes: u64, share_percent: u64) -> u64 {
    round_up_4mib((phone_storage_total_bytes as u128 * share_percent as u128 / 100) as u64)
}

/// `convertToNonSparseDiskIfNecessary`'s test: the apparent size is the
/// sparse size, or the physical size is below `physical_min_percent` % of
/// the apparent size, that share floored to a byte as the app's `long`
/// division does.
pub fn needs_non_sparse_conversion(
    apparent: u64,
    physical: u64,
    sparse_size: u64,
    physical_min_percent: u64,
) -> bool {
    let floor = (physical_min_percent as u128 * apparent as u128 / 100) as u64;
    apparent == sparse_size || physical < floor
}

/// The number the app reads from `resize2fs -P`'s output: on the first line
/// that contains `Estimated minimum size of the filesystem: ` followed by
/// digits, those digits as a `long` (`None` if there is no such line, or
/// they overflow: the app then throws "Failed to get min size").
pub fn parse_min_blocks(output: &str) -> Option<u64> {
    const KEY: &str = "Estimated minimum size of the filesystem: ";
    for line in output.lines() {
        let mut from = 0;
        while let Some(i) = line[from..].find(KEY) {
            let rest = &line[from + i + KEY.len()..];
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                return rest[..digits].parse::<i64>().ok().map(|n| n as u64);
            }
            from += i + KEY.len();
        }
    }
    None
}

/// One thing the disk steps did, for a scenario to assert and print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskStep {
    /// A program run (stderr merged into stdout). `exit_code` is `None`
    /// when a signal ended it. The app only logs a non-zero exit.
    Run {
        argv: Vec<String>,
        exit_code: Option<i32>,
        output: String,
    },
    /// `posix_fallocate(root_part, 0, len)`; `error` as the OS said it.
    Fallocate { len: u64, error: Option<String> },
    /// `ftruncate(root_part, len)`.
    Truncate { len: u64 },
    /// A decision the app takes (and logs), with the numbers behind it.
    Note(String),
}

impl DiskStep {
    /// The program's file name, for a [`DiskStep::Run`].
    pub fn program(&self) -> Option<&str> {
        match self {
            DiskStep::Run { argv, .. } => argv
                .first()
                .map(|a| a.rsplit('/').next().unwrap_or(a.as_str())),
            _ => None,
        }
    }

    /// The arguments after the program, for a [`DiskStep::Run`].
    pub fn args(&self) -> &[String] {
        match self {
            DiskStep::Run { argv, .. } if !argv.is_empty() => &argv[1..],
            _ => &[],
        }
    }
}

impl fmt::Display for DiskStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskStep::Run {
                argv,
                exit_code,
                output,
            } => {
                let code = exit_code.map_or("signal".to_string(), |c| c.to_string());
                write!(f, "$ {} (exit {code})", argv.join(" "))?;
                for l in output.lines() {
                    write!(f, "\n  {l}")?;
                }
                Ok(())
            }
            DiskStep::Fallocate { len, error: None } => {
                write!(f, "posix_fallocate(root_part, 0, {len})")
            }
            DiskStep::Fallocate {
                len,
                error: Some(e),
            } => write!(f, "posix_fallocate(root_part, 0, {len}): {e}"),
            DiskStep::Truncate { len } => write!(f, "ftruncate(root_part, {len})"),
            DiskStep::Note(n) => write!(f, "# {n}"),
        }
    }
}

/// What stops the steps (what throws in the app, and host set-up errors).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{name} not found in {} (install e2fsprogs)", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingTool {
        name: &'static str,
        searched: Vec<PathBuf>,
    },
    #[error("running {program}: {error}")]
    Spawn { program: PathBuf, error: io::Error },
    #[error("{}: {what}: {error}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
    #[error("{} is not a regular file (a symlink or other file there is refused: these steps run as root)", .0.display())]
    NotRegular(PathBuf),
    #[error("{}: posix_fallocate to {len} bytes failed: {error} (not ENOSPC, so the app throws)", path.display())]
    Fallocate {
        path: PathBuf,
        len: u64,
        error: io::Error,
    },
    #[error("resize to {0} bytes: size cannot be zero MB (the app throws)")]
    ZeroSize(u64),
    #[error("Failed to get min size, p={}, result={output}", path.display())]
    MinSize { path: PathBuf, output: String },
}

/// The steps up to a failure, and the failure.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PreBootFailed {
    pub steps: Vec<DiskStep>,
    #[source]
    pub error: DiskError,
}

/// The host's e2fsprogs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2fsTools {
    pub e2fsck: PathBuf,
    pub resize2fs: PathBuf,
}

impl E2fsTools {
    /// From `PATH`, then `/sbin` and `/usr/sbin`.
    pub fn find() -> Result<E2fsTools, DiskError> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in ["/sbin", "/usr/sbin"] {
            if !dirs.iter().any(|x| x == Path::new(d)) {
                dirs.push(d.into());
            }
        }
        E2fsTools::find_in(&dirs)
    }

    /// From `dirs`, in order.
    pub fn find_in(dirs: &[PathBuf]) -> Result<E2fsTools, DiskError> {
        let find = |name: &'static str| {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| {
                    std::fs::metadata(p)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
                .ok_or_else(|| DiskError::MissingTool {
                    name,
                    searched: dirs.to_vec(),
                })
        };
        Ok(E2fsTools {
            e2fsck: find("e2fsck")?,
            resize2fs: find("resize2fs")?,
        })
    }
}

/// `posix_fallocate(file, 0, len)`, injectable so a test can say `ENOSPC`.
pub type FallocateFn = dyn Fn(&File, u64) -> io::Result<()> + Send + Sync;

fn posix_fallocate(f: &File, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(nix::libc::EFBIG))?;
    Ok(nix::fcntl::posix_fallocate(f, 0, len)?)
}

/// The installed image in one install dir (`<filesDir>/linux`).
#[derive(Clone)]
pub struct InstalledImage {
    dir: PathBuf,
    tools: E2fsTools,
    fallocate: Arc<FallocateFn>,
}

impl fmt::Debug for InstalledImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstalledImage")
            .field("dir", &self.dir)
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl InstalledImage {
    /// The image in `dir`, with the host's e2fsprogs ([`E2fsTools::find`]).
    pub fn new(dir: impl Into<PathBuf>) -> Result<InstalledImage, DiskError> {
        Ok(InstalledImage::with_tools(dir, E2fsTools::find()?))
    }

    pub fn with_tools(dir: impl Into<PathBuf>, tools: E2fsTools) -> InstalledImage {
        InstalledImage {
            dir: dir.into(),
            tools,
            fallocate: Arc::new(posix_fallocate),
        }
    }

    /// Replaces `posix_fallocate` (tests: `ENOSPC`).
    pub fn with_fallocate(
        mut self,
        f: impl Fn(&File, u64) -> io::Result<()> + Send + Sync + 'static,
    ) -> InstalledImage {
        self.fallocate = Arc::new(f);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root_part(&self) -> PathBuf {
        self.dir.join(ROOT_PART)
    }

    pub fn backup_file(&self) -> PathBuf {
        self.dir.join(ROOT_PART_BACKUP)
    }

    /// `isInstalled()`: `completed` exists.
    pub fn is_installed(&self) -> bool {
        crate::image_archive::is_installed(&self.dir)
    }

    /// `hasBackup()`: the extra RW disk the app adds while it exists.
    pub fn has_backup(&self) -> bool {
        self.backup_file().exists()
    }

    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> DiskError {
        let path = self.root_part();
        move |error| DiskError::Io { path, what, error }
    }

    /// `root_part`'s metadata, refusing anything but a regular file.
    fn root_meta(&self) -> Result<std::fs::Metadata, DiskError> {
        let m = std::fs::symlink_metadata(self.root_part()).map_err(self.io("stat"))?;
        if !m.is_file() {
            return Err(DiskError::NotRegular(self.root_part()));
        }
        Ok(m)
    }

    fn open_root(&self) -> Result<File, DiskError> {
        self.root_meta()?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(self.root_part())
            .map_err(self.io("open"))
    }

    /// `getApparentSize()`: the file size.
    pub fn apparent_size(&self) -> Result<u64, DiskError> {
        Ok(self.root_meta()?.len())
    }

    /// `getPhysicalSize()`: `st_blocks` × 512.
    pub fn physical_size(&self) -> Result<u64, DiskError> {
        Ok(self.root_meta()?.blocks() * 512)
    }

    fn run(&self, program: &Path, args: &[&str], log: &mut Vec<DiskStep>) -> Result<(), DiskError> {
        let spawn = |error| DiskError::Spawn {
            program: program.to_owned(),
            error,
        };
        let (mut reader, writer) = io::pipe().map_err(spawn)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(spawn)?)
            .stderr(writer);
        let mut child = cmd.spawn().map_err(spawn)?;
        drop(cmd); // our copies of the pipe's write end
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(spawn)?;
        let status = child.wait().map_err(spawn)?;
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        log.push(DiskStep::Run {
            argv,
            exit_code: status.code(),
            output: String::from_utf8_lossy(&out).into_owned(),
        });
        Ok(())
    }

    fn root_arg(&self) -> Result<String, DiskError> {
        let p = std::path::absolute(self.root_part()).map_err(self.io("absolute path"))?;
        Ok(p.to_string_lossy().into_owned())
    }

    /// `runE2fsck`: `e2fsck -y -f <root_part>`.
    fn e2fsck(&self, log: &mut Vec<DiskStep>) -> Result<(), DiskError> {
        self.root_meta()?;
        let root = self.root_arg()?;
        self.run(&self.tools.e2fsck, &["-y", "-f", &root], log)
    }

    /// `getSmallestSizePossible()`: `e2fsck -y -f`, then `resize2fs -P`;
    /// the estimate × 4096, rounded up to 4 MiB.
    pub fn min_size(&self, log: &mut Vec<DiskStep>) -> Result<u64, DiskError> {
        self.e2fsck(log)?;
        let root = self.root_arg()?;
        self.run(&self.tools.resize2fs, &["-P", &root], log)?;
        let output = match log.last() {
            Some(DiskStep::Run { output, .. }) => output.clone(),
            _ => String::new(),
        };
        parse_min_blocks(&output)
            .and_then(|n| n.checked_mul(MIN_SIZE_BLOCK))
            .map(round_up_4mib)
            .ok_or_else(|| DiskError::MinSize {
                path: self.root_part(),
                output,
            })
    }

    /// `shrinkToMinimumSize()`: `e2fsck -y -f`, `resize2fs -M`, `e2fsck
    /// -y -f` (resize2fs truncates the file itself). Returns the new
    /// apparent size.
    pub fn shrink_to_minimum_size(&self, log: &mut Vec<DiskStep>) -> Result<u64, DiskError> {
        self.e2fsck(log)?;
        let root = self.root_arg()?;
        self.run(&self.tools.resize2fs, &["-M", &root], log)?;
        self.e2fsck(log)?;
        self.apparent_size()
    }

    /// `truncate(len)`: `ftruncate`; a failure throws in the app.
    pub fn truncate(&self, len: u64, log: &mut Vec<DiskStep>) -> Result<(), DiskError> {
        self.open_root()?
            .set_len(len)
            .map_err(self.io("ftruncate"))?;
        log.push(DiskStep::Truncate { len });
        Ok(())
    }

    /// `resize(desired)`: round up to 4 MiB; `e2fsck -y -f` always; done if
    /// that is the apparent size; when growing `posix_fallocate(0, size)`
    /// (on `ENOSPC` truncate back to the old size and stop); then
    /// `resize2fs <root_part> <MiB>M`. When shrinking that is all: the app
    /// truncates nothing itself, resize2fs shortens an image file. Returns
    /// the apparent size after (the rounded size if nothing changed).
    pub fn resize(&self, desired: u64, log: &mut Vec<DiskStep>) -> Result<u64, DiskError> {
        let size = round_up_4mib(desired);
        let current = self.apparent_size()?;
        self.e2fsck(log)?;
        if size == current {
            log.push(DiskStep::Note(format!(
                "resize: {size} bytes is the current size, nothing to do"
            )));
            return Ok(size);
        }
        if size > current && !self.allocate_space(size, log)? {
            return Ok(current);
        }
        let mib = size / MIB;
        if mib == 0 {
            return Err(DiskError::ZeroSize(size));
        }
        let root = self.root_arg()?;
        self.run(&self.tools.resize2fs, &[&root, &format!("{mib}M")], log)?;
        self.apparent_size()
    }

    /// `allocateSpace(size)`: false after `ENOSPC` (the file then truncated
    /// back to its size before).
    fn allocate_space(&self, size: u64, log: &mut Vec<DiskStep>) -> Result<bool, DiskError> {
        let before = self.apparent_size()?;
        let f = self.open_root()?;
        match (self.fallocate)(&f, size) {
            Ok(()) => {
                log.push(DiskStep::Fallocate {
                    len: size,
                    error: None,
                });
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                log.push(DiskStep::Fallocate {
                    len: size,
                    error: Some(e.to_string()),
                });
                drop(f);
                self.truncate(before, log)?;
                Ok(false)
            }
            Err(error) => {
                log.push(DiskStep::Fallocate {
                    len: size,
                    error: Some(error.to_string()),
                });
                Err(DiskError::Fallocate {
                    path: self.root_part(),
                    len: size,
                    error,
                })
            }
        }
    }

    /// The release's disk steps before a start (`profile.pre_boot`), given
    /// the phone's `StatFs(filesDir).totalBytes` and the settings page's
    /// `EXTRA_DISK_SIZE` (`None`: what `MainActivity` measures, the
    /// apparent size before these steps).
    pub fn pre_boot(
        &self,
        policy: PreBootDisk,
        phone_storage_total_bytes: u64,
        extra_disk_size: Option<u64>,
    ) -> Result<Vec<DiskStep>, PreBootFailed> {
        let mut steps = Vec::new();
        match self.pre_boot_into(
            policy,
            phone_storage_total_bytes,
            extra_disk_size,
            &mut steps,
        ) {
            Ok(()) => Ok(steps),
            Err(error) => Err(PreBootFailed { steps, error }),
        }
    }

    fn pre_boot_into(
        &self,
        policy: PreBootDisk,
        total: u64,
        extra: Option<u64>,
        log: &mut Vec<DiskStep>,
    ) -> Result<(), DiskError> {
        match policy {
            PreBootDisk::Android16 {
                sparse_share_percent,
                physical_min_percent,
            } => {
                let measured = self.apparent_size()?;
                let extra = extra.unwrap_or(measured);
                // (1) convertToNonSparseDiskIfNecessary
                let apparent = self.apparent_size()?;
                let physical = self.physical_size()?;
                let sparse = sparse_disk_size(total, sparse_share_percent);
                let convert =
                    needs_non_sparse_conversion(apparent, physical, sparse, physical_min_percent);
                log.push(DiskStep::Note(format!(
                    "apparent={apparent} physical={physical} sparse size={sparse}: {}",
                    if convert {
                        "a sparse disk, shrink it to the minimum size"
                    } else {
                        "not sparse"
                    }
                )));
                if convert {
                    self.shrink_to_minimum_size(log)?;
                }
                // (2) resize(EXTRA_DISK_SIZE)
                self.resize(extra, log)?;
                Ok(())
            }
            PreBootDisk::TruncateToShare {
                sparse_share_percent,
            } => {
                // truncateDiskIfNecessary; a settings size is not applied
                // here (the newer app has no resize2fs step).
                let want = sparse_disk_size(total, sparse_share_percent);
                if self.apparent_size()? != want {
                    self.truncate(want, log)?;
                }
                Ok(())
            }
            PreBootDisk::ResizeOnRequest => {
                if let Some(want) = extra {
                    if round_up_4mib(want) != round_up_4mib(self.apparent_size()?) {
                        self.resize(want, log)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// The Upgrade screen's button (`uninstallAndBackup`): delete
    /// `completed`, then move `root_part` to `root_part_backup`, replacing
    /// an existing backup (a symlink moves as the link). The other files
    /// stay. Returns the backup's path.
    pub fn upgrade_screen_reset(&self) -> Result<PathBuf, DiskError> {
        let marker = self.dir.join(COMPLETED);
        std::fs::remove_file(&marker).map_err(|error| DiskError::Io {
            path: marker,
            what: "deleting the marker",
            error,
        })?;
        let backup = self.backup_file();
        std::fs::rename(self.root_part(), &backup)
            .map_err(self.io("moving to root_part_backup"))?;
        Ok(backup)
    }
}

#[cfg(test)]
mod truncate_tests {
    use super::*;

    /// Android 17: `root_part` becomes the 95 % share of the phone, sparse,
    /// with no e2fsprogs step; a second start changes nothing.
    #[test]
    fn android17_truncates_to_the_share_without_e2fsprogs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join(ROOT_PART);
        std::fs::File::create(&root)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let img = InstalledImage::new(d.path()).unwrap();
        let policy = PreBootDisk::TruncateToShare {
            sparse_share_percent: 95,
        };
        let steps = img.pre_boot(policy, 1 << 30, None).unwrap();
        let want = sparse_disk_size(1 << 30, 95);
        assert_eq!(std::fs::metadata(&root).unwrap().len(), want);
        assert!(
            steps.iter().all(|s| !matches!(s, DiskStep::Run { .. })),
            "{steps:?}"
        );
        assert!(img.pre_boot(policy, 1 << 30, None).unwrap().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIB;

    /// An ext4 root_part of `size` in a fresh dir; fully allocated or sparse.
    fn image(size: u64, allocated: bool) -> (tempfile::TempDir, InstalledImage) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join(ROOT_PART);
        let f = File::create(&root).unwrap();
        if allocated {
            posix_fallocate(&f, size).unwrap();
        } else {
            f.set_len(size).unwrap();
        }
        drop(f);
        let tools = E2fsTools::find().unwrap();
        let mkfs = tools.e2fsck.with_file_name("mkfs.ext4");
        let st = Command::new(mkfs)
            .args(["-q", "-F", "-b", "4096", "-E", "nodiscard"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success());
        let img = InstalledImage::with_tools(t.path(), tools);
        (t, img)
    }

    /// The filesystem's size in bytes, from dumpe2fs.
    fn fs_bytes(img: &InstalledImage) -> u64 {
        let dumpe2fs = img.tools.e2fsck.with_file_name("dumpe2fs");
        let out = Command::new(dumpe2fs)
            .arg("-h")
            .arg(img.root_part())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        field("Block count:") * field("Block size:")
    }

    fn programs(log: &[DiskStep]) -> Vec<String> {
        log.iter()
            .filter_map(|s| match s {
                DiskStep::Run { .. } => {
                    let a: Vec<_> = s
                        .args()
                        .iter()
                        .filter(|a| !a.starts_with('/'))
                        .map(String::as_str)
                        .collect();
                    Some(
                        format!("{} {}", s.program().unwrap(), a.join(" "))
                            .trim()
                            .to_string(),
                    )
                }
                DiskStep::Fallocate { len, error } => Some(format!(
                    "fallocate {}M{}",
                    len / M,
                    if error.is_some() { " failed" } else { "" }
                )),
                DiskStep::Truncate { len } => Some(format!("truncate {}M", len / M)),
                DiskStep::Note(_) => None,
            })
            .collect()
    }

    fn exits_clean(log: &[DiskStep]) {
        for s in log {
            if let DiskStep::Run { exit_code, .. } = s {
                assert_eq!(*exit_code, Some(0), "{s}");
            }
        }
    }

    #[test]
    fn rounding_as_the_app_does() {
        assert_eq!(round_up_4mib(0), 0);
        assert_eq!(round_up_4mib(1), 4 * M);
        assert_eq!(round_up_4mib(4 * M), 4 * M);
        assert_eq!(round_up_4mib(4 * M + 1), 8 * M);
        // 95 % of 100 bytes, floored, then up to 4 MiB.
        assert_eq!(sparse_disk_size(100, 95), 4 * M);
        // 95 % of 80 MiB is exactly 76 MiB: no rounding up.
        assert_eq!(sparse_disk_size(80 * M, 95), 76 * M);
        // 95 % of (80 MiB + 20 bytes) = 76 MiB + 19 bytes: the next step.
        assert_eq!(sparse_disk_size(80 * M + 20, 95), 80 * M);
        // A 256 GB phone does not overflow.
        assert_eq!(
            sparse_disk_size(256_000_000_000, 95),
            round_up_4mib(243_200_000_000)
        );
        assert_eq!(sparse_disk_size(u64::MAX / 2, 95) % (4 * M), 0);
    }

    #[test]
    fn conversion_test_floors_the_physical_share_like_the_app() {
        // 90 % of 1001 is 900.9, floored to 900: 900 is not below it.
        assert!(!needs_non_sparse_conversion(1001, 900, 0, 90));
        assert!(needs_non_sparse_conversion(1001, 899, 0, 90));
        // Fully allocated, but the apparent size is the sparse size.
        assert!(needs_non_sparse_conversion(64 * M, 64 * M, 64 * M, 90));
        assert!(!needs_non_sparse_conversion(64 * M, 64 * M, 68 * M, 90));
    }

    #[test]
    fn min_size_output_is_read_as_the_app_reads_it() {
        let out = "resize2fs 1.47.0 (5-Feb-2023)\nEstimated minimum size of the filesystem: 2076\n";
        assert_eq!(parse_min_blocks(out), Some(2076));
        assert_eq!(
            parse_min_blocks("x Estimated minimum size of the filesystem: 12 (4k)"),
            Some(12)
        );
        // The first line with digits after the text wins.
        assert_eq!(
            parse_min_blocks("Estimated minimum size of the filesystem: \nEstimated minimum size of the filesystem: 7\nEstimated minimum size of the filesystem: 9"),
            Some(7)
        );
        assert_eq!(
            parse_min_blocks("resize2fs: Bad magic number in super-block"),
            None
        );
        assert_eq!(
            parse_min_blocks("Estimated minimum size of the filesystem: 99999999999999999999"),
            None
        );
        assert_eq!(parse_min_blocks(""), None);
    }

    #[test]
    fn grows_with_fallocate_then_resize2fs() {
        let (_t, img) = image(64 * M, false);
        let mut log = Vec::new();
        // 102 MiB rounds up to 104.
        assert_eq!(img.resize(102 * M, &mut log).unwrap(), 104 * M);
        assert_eq!(
            programs(&log),
            ["e2fsck -y -f", "fallocate 104M", "resize2fs 104M"]
        );
        exits_clean(&log);
        assert_eq!(img.apparent_size().unwrap(), 104 * M);
        assert!(img.physical_size().unwrap() >= 104 * M, "not allocated");
        assert_eq!(fs_bytes(&img), 104 * M);
        // The same size again: e2fsck only.
        let mut log = Vec::new();
        assert_eq!(img.resize(104 * M, &mut log).unwrap(), 104 * M);
        assert_eq!(programs(&log), ["e2fsck -y -f"]);
    }

    #[test]
    fn shrinks_to_the_minimum_with_resize2fs_alone() {
        let (_t, img) = image(128 * M, false);
        let mut log = Vec::new();
        let min = img.min_size(&mut log).unwrap();
        assert_eq!(programs(&log), ["e2fsck -y -f", "resize2fs -P"]);
        assert!(min > 0 && min < 128 * M && min % (4 * M) == 0, "{min}");
        let mut log = Vec::new();
        assert_eq!(img.resize(min, &mut log).unwrap(), min);
        assert_eq!(
            programs(&log),
            [
                "e2fsck -y -f".to_string(),
                format!("resize2fs {}M", min / M)
            ]
        );
        exits_clean(&log);
        assert_eq!(img.apparent_size().unwrap(), min);
        assert_eq!(fs_bytes(&img), min);
        let mut log = Vec::new();
        img.e2fsck(&mut log).unwrap();
        exits_clean(&log);
    }

    #[test]
    fn enospc_truncates_back_and_skips_resize2fs() {
        let (_t, img) = image(64 * M, false);
        // A partial allocation that then runs out, as glibc's emulation can.
        let img = img.with_fallocate(|f, len| {
            f.set_len(len)?;
            Err(io::Error::from_raw_os_error(nix::libc::ENOSPC))
        });
        let mut log = Vec::new();
        assert_eq!(img.resize(256 * M, &mut log).unwrap(), 64 * M);
        assert_eq!(
            programs(&log),
            ["e2fsck -y -f", "fallocate 256M failed", "truncate 64M"]
        );
        assert_eq!(img.apparent_size().unwrap(), 64 * M);
        assert_eq!(fs_bytes(&img), 64 * M);
    }

    #[test]
    fn other_fallocate_errors_stop_the_start() {
        let (_t, img) = image(64 * M, true);
        let img = img.with_fallocate(|_, _| Err(io::Error::from_raw_os_error(nix::libc::EIO)));
        let e = img.pre_boot(HOST16, 1 << 40, Some(128 * M)).unwrap_err();
        assert!(
            matches!(e.error, DiskError::Fallocate { len, .. } if len == 128 * M),
            "{e}"
        );
        assert_eq!(
            programs(&e.steps),
            ["e2fsck -y -f", "fallocate 128M failed"]
        );
        assert_eq!(img.apparent_size().unwrap(), 64 * M);
    }

    const HOST16: PreBootDisk = PreBootDisk::Android16 {
        sparse_share_percent: 95,
        physical_min_percent: 90,
    };

    #[test]
    fn android16_profile_carries_the_policy() {
        assert_eq!(crate::profile::HostProfile::android16().pre_boot, HOST16);
    }

    #[test]
    fn pre_boot_converts_a_disk_at_the_sparse_size() {
        let (_t, img) = image(64 * M, true);
        // 95 % of 67 000 000 is 63 650 000, which rounds up to 64 MiB.
        assert_eq!(sparse_disk_size(67_000_000, 95), 64 * M);
        let steps = img.pre_boot(HOST16, 67_000_000, None).unwrap();
        assert_eq!(
            programs(&steps),
            [
                "e2fsck -y -f",
                "resize2fs -M",
                "e2fsck -y -f",
                "e2fsck -y -f",
                "fallocate 64M",
                "resize2fs 64M"
            ]
        );
        exits_clean(&steps);
        assert_eq!(img.apparent_size().unwrap(), 64 * M);
        assert_eq!(fs_bytes(&img), 64 * M);
        let shown: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        assert!(shown[0].contains("sparse size=67108864"), "{shown:?}");
    }

    #[test]
    fn pre_boot_makes_a_sparse_disk_allocated() {
        let (_t, img) = image(64 * M, false);
        assert!(img.physical_size().unwrap() < 32 * M);
        let steps = img.pre_boot(HOST16, 1 << 40, None).unwrap();
        assert_eq!(
            programs(&steps),
            [
                "e2fsck -y -f",
                "resize2fs -M",
                "e2fsck -y -f",
                "e2fsck -y -f",
                "fallocate 64M",
                "resize2fs 64M"
            ]
        );
        assert_eq!(img.apparent_size().unwrap(), 64 * M);
        assert!(img.physical_size().unwrap() >= 64 * M);
        // Now neither trigger holds: the next start only checks.
        let steps = img.pre_boot(HOST16, 1 << 40, None).unwrap();
        assert_eq!(programs(&steps), ["e2fsck -y -f"]);
    }

    #[test]
    fn pre_boot_grows_to_the_settings_size() {
        let (_t, img) = image(64 * M, true);
        let steps = img.pre_boot(HOST16, 1 << 40, Some(90 * M)).unwrap();
        assert_eq!(
            programs(&steps),
            ["e2fsck -y -f", "fallocate 92M", "resize2fs 92M"]
        );
        assert_eq!(fs_bytes(&img), 92 * M);
    }

    #[test]
    fn failing_commands_are_only_recorded() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(ROOT_PART), vec![0u8; 4 << 20]).unwrap();
        let img = InstalledImage::with_tools(t.path(), E2fsTools::find().unwrap());
        let steps = img.pre_boot(HOST16, 1 << 40, None).unwrap();
        assert_eq!(programs(&steps), ["e2fsck -y -f"]);
        assert!(
            matches!(steps[1], DiskStep::Run { exit_code: Some(c), .. } if c != 0),
            "{}",
            steps[1]
        );
        // The settings page would throw.
        let e = img.min_size(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().starts_with("Failed to get min size"), "{e}");
    }

    #[test]
    fn missing_tools_are_named() {
        let t = tempfile::tempdir().unwrap();
        let e = E2fsTools::find_in(&[t.path().to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("e2fsck not found in ") && e.contains("e2fsprogs"),
            "{e}"
        );
        let real = E2fsTools::find().unwrap();
        std::os::unix::fs::symlink(&real.e2fsck, t.path().join("e2fsck")).unwrap();
        let e = E2fsTools::find_in(&[t.path().to_owned()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("resize2fs not found in "), "{e}");
        assert!(e.contains(&t.path().display().to_string()), "{e}");
    }

    #[test]
    fn a_symlinked_root_part_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"host data").unwrap();
        let dir = t.path().join("linux");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(ROOT_PART)).unwrap();
        let img = InstalledImage::with_tools(&dir, E2fsTools::find().unwrap());
        let e = img.pre_boot(HOST16, 1 << 40, Some(64 * M)).unwrap_err();
        assert!(matches!(e.error, DiskError::NotRegular(_)), "{e}");
        assert!(e.steps.is_empty());
        assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
        let e = img.pre_boot(HOST16, 1 << 40, None).unwrap_err();
        assert!(matches!(e.error, DiskError::NotRegular(_)), "{e}");
    }

    #[test]
    fn upgrade_screen_moves_root_part_to_the_backup() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for (n, v) in [
            (COMPLETED, ""),
            (ROOT_PART, "new"),
            (ROOT_PART_BACKUP, "older"),
            ("vm_config.json", "{}"),
        ] {
            std::fs::write(d.join(n), v).unwrap();
        }
        let img = InstalledImage::with_tools(d, E2fsTools::find().unwrap());
        assert!(img.is_installed() && img.has_backup());
        assert_eq!(
            img.upgrade_screen_reset().unwrap(),
            d.join(ROOT_PART_BACKUP)
        );
        assert!(!img.is_installed());
        assert!(!d.join(ROOT_PART).exists());
        assert_eq!(
            std::fs::read_to_string(d.join(ROOT_PART_BACKUP)).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("vm_config.json")).unwrap(),
            "{}"
        );
        // Not installed: the app's Files.delete throws (a snackbar).
        let e = img.upgrade_screen_reset().unwrap_err().to_string();
        assert!(e.contains("completed"), "{e}");
    }
}
