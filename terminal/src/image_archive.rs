//! The app's installer (`ImageArchive.installTo`), for a harness that runs
//! as root on payloads it must not trust.
//!
//! What the app does (docs/terminal-app.md §2): it reads `images.tar.gz`
//! (gzip, one member, then tar) entry by entry, resolves each name against
//! its install dir `<filesDir>/linux` without sanitising it, skips a name
//! that resolves to an existing directory, and otherwise copies the entry's
//! data into a regular file there (replacing an existing one), with the
//! app's default permissions: mode, owner and mtime in the tar are ignored.
//! Link entries carry no data, so they become empty regular files. After
//! the last entry it creates the empty marker `completed` with create-new
//! semantics; "installed" means `completed` exists.
//!
//! Here the same, except where the app would write outside its dir or
//! fail half way: those archives are refused with a typed error
//! ([`Refusal`]) before anything is visible. Differences from the phone,
//! all on purpose:
//! - The archive is unpacked into a fresh private temp dir next to the
//!   install dir, which is then renamed into place (atomically swapped
//!   with an existing one): nothing half-installed is ever visible. Files
//!   an existing install dir holds that the archive does not replace (the
//!   Upgrade screen leaves `root_part_backup`, `vm_config.json`, …) are
//!   carried over, as the app leaves them in place.
//! - Files are created with `O_NOFOLLOW | O_CREAT | O_EXCL` relative to the
//!   temp dir's descriptor: a symlink is never followed, whoever planted it
//!   (the install dir lies inside the guest-writable `internal` share).
//! - All-zero 64 KiB blocks are left as holes. The bytes are identical;
//!   only the allocation differs (the app writes every byte, so on the
//!   phone `root_part` is fully allocated after install; Android 16's
//!   every-start disk steps care, see [`crate::installed_image`]).
//! - Files get [`FILE_MODE`] (an app's files under its 077 umask), never
//!   the tar's mode: no setuid or setgid bits can come in. Owners are not
//!   changed (the files belong to whoever runs the install).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

/// The marker the app creates after the last entry (`InstalledImage.marker`).
pub const COMPLETED: &str = "completed";

/// The mode every installed file gets: an Android app's files under its
/// umask 077. Never the tar's.
pub const FILE_MODE: u32 = 0o600;

/// Zero runs at least this long (and aligned to it) are left as holes.
const HOLE_BLOCK: usize = 64 << 10;

/// The app's `isInstalled()`: `completed` exists (following a symlink, as
/// `Files.exists` does).
pub fn is_installed(dir: &Path) -> bool {
    dir.join(COMPLETED).exists()
}

/// What [`install_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The install dir.
    pub dir: PathBuf,
    /// The files written from the archive, in archive order (a name that
    /// comes twice is listed once); `completed` is not among them.
    pub files: Vec<String>,
    /// Names the install dir held before that the archive did not replace,
    /// kept in place as the app keeps them (sorted).
    pub kept: Vec<String>,
    /// Entries installed differently from what a tar tool would do, for
    /// the caller to print.
    pub warnings: Vec<InstallWarning>,
}

/// An entry the app handles in its own way, emulated here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallWarning {
    /// A symlink or hardlink entry: the app writes an empty regular file.
    #[error("entry {entry:?} is a {} to {target:?}: installed as an empty regular file, as the app does", if *.hard { "hardlink" } else { "symlink" })]
    LinkAsEmptyFile {
        entry: String,
        hard: bool,
        target: String,
    },
    /// A device or fifo entry: no data, so an empty regular file.
    #[error("entry {entry:?} is a {kind}: installed as an empty regular file, as the app does")]
    SpecialAsEmptyFile { entry: String, kind: &'static str },
    /// The tar's mode had setuid/setgid bits; the file got [`FILE_MODE`].
    #[error("entry {entry:?} has mode {mode:o} in the tar: installed with mode {FILE_MODE:o}, as the app ignores modes")]
    SetIdDropped { entry: String, mode: u32 },
    /// A name that came twice: the later entry replaced the earlier file.
    #[error("entry {entry:?} comes twice: the later one replaced the earlier, as the app does")]
    Replaced { entry: String },
    /// The install dir already held a directory of that name: the app only
    /// "creates" the directory there and writes no data.
    #[error("entry {entry:?}: the install dir already has a directory of that name; the app writes nothing there, and neither did we")]
    DirectoryInTheWay { entry: String },
}

/// Why an archive is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("absolute name: the app would write outside its install dir")]
    Absolute,
    #[error("`..` in the name: the app would write outside its install dir")]
    DotDot,
    #[error("name with `/`: the app installs flat files only (it would fail, or write into a directory it never made)")]
    Nested,
    #[error("directory entry: the app would write an empty file named like it, and entries under it would fail")]
    Directory,
    #[error("GNU sparse entry: the app's tar reader (commons-compress) does not support it")]
    GnuSparse,
    #[error("entry type {0:?}, which the app does not handle")]
    UnknownType(char),
    #[error("name is not UTF-8")]
    NotUtf8,
    #[error("named like the marker `completed`: the app would write it, then fail creating the marker, yet take the image as installed")]
    Marker,
}

/// Why an install failed. Nothing was installed then: the install dir is
/// as it was.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: entry {entry:?} refused: {reason}", archive.display())]
    Refused {
        archive: PathBuf,
        entry: String,
        reason: Refusal,
    },
    #[error("{}: {what}: {error}", archive.display())]
    Io {
        archive: PathBuf,
        what: String,
        error: io::Error,
    },
    #[error("{} is installed already ({COMPLETED} exists): the app never installs over it", dir.display())]
    AlreadyInstalled { dir: PathBuf },
}

/// Installs the gzip tar `archive` into `dir` the way the app does (see
/// the module docs for where and why this differs).
pub fn install_to(archive: &Path, dir: &Path) -> Result<Installed, ArchiveError> {
    let f = File::open(archive).map_err(|error| ArchiveError::Io {
        archive: archive.to_owned(),
        what: "opening the archive".into(),
        error,
    })?;
    install_from(f, archive, dir)
}

/// [`install_to`] on a reader of the `.tar.gz` bytes; `label` names the
/// archive in errors.
pub fn install_from(gz: impl Read, label: &Path, dir: &Path) -> Result<Installed, ArchiveError> {
    let io = |what: &str| {
        let what = what.to_string();
        let archive = label.to_owned();
        move |error: io::Error| ArchiveError::Io {
            archive,
            what,
            error,
        }
    };
    if is_installed(dir) {
        return Err(ArchiveError::AlreadyInstalled {
            dir: dir.to_owned(),
        });
    }
    let name = dir
        .file_name()
        .ok_or_else(|| io("install dir")(io::Error::other("has no file name")))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io("creating the install dir's parent"))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.install.", name.to_string_lossy()))
        .tempdir_in(parent)
        .map_err(io("creating a temp dir next to the install dir"))?;
    let tfd = open_dir(tmp.path()).map_err(io("opening the temp dir"))?;

    let mut out = Installed {
        dir: dir.to_owned(),
        files: Vec::new(),
        kept: Vec::new(),
        warnings: Vec::new(),
    };
    // GzDecoder reads one gzip member, as commons-compress does by default.
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut seen = HashSet::new();
    for entry in ar.entries().map_err(io("reading the archive"))? {
        let mut entry = entry.map_err(io("reading the archive"))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason| ArchiveError::Refused {
            archive: label.to_owned(),
            entry: shown.clone(),
            reason,
        };
        let ty = entry.header().entry_type();
        use tar::EntryType as T;
        if matches!(
            ty,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            continue; // metadata for the next entry, never a file
        }
        let Some(flat) = flat_name(&raw, ty.is_dir()).map_err(refuse)? else {
            continue; // the install dir itself (`./`): already there
        };
        if flat == COMPLETED {
            return Err(refuse(Refusal::Marker));
        }
        let mut data = true;
        match ty {
            T::Regular | T::Continuous => {}
            T::Symlink | T::Link => {
                data = false;
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                out.warnings.push(InstallWarning::LinkAsEmptyFile {
                    entry: flat.clone(),
                    hard: ty == T::Link,
                    target,
                });
            }
            T::Char | T::Block | T::Fifo => {
                data = false;
                let kind = match ty {
                    T::Char => "character device",
                    T::Block => "block device",
                    _ => "fifo",
                };
                out.warnings.push(InstallWarning::SpecialAsEmptyFile {
                    entry: flat.clone(),
                    kind,
                });
            }
            T::GNUSparse => return Err(refuse(Refusal::GnuSparse)),
            T::Directory => return Err(refuse(Refusal::Directory)),
            other => return Err(refuse(Refusal::UnknownType(other.as_byte() as char))),
        }
        if let Ok(mode) = entry.header().mode() {
            if mode & 0o6000 != 0 {
                out.warnings.push(InstallWarning::SetIdDropped {
                    entry: flat.clone(),
                    mode,
                });
            }
        }
        if !seen.insert(flat.clone()) {
            unlinkat(&tfd, flat.as_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io(&format!("replacing {flat}"))(e.into()))?;
            out.warnings.push(InstallWarning::Replaced {
                entry: flat.clone(),
            });
        } else {
            out.files.push(flat.clone());
        }
        let mut f = create_new(&tfd, &flat).map_err(io(&format!("creating {flat}")))?;
        if data {
            write_sparse(&mut entry, &mut f).map_err(io(&format!("writing {flat}")))?;
        }
        f.sync_all().map_err(io(&format!("syncing {flat}")))?;
    }

    // An existing install dir (say after the Upgrade screen): the app
    // writes into it, so what the archive does not replace stays.
    let existing = std::fs::symlink_metadata(dir).ok();
    if existing.as_ref().is_some_and(|m| m.is_dir()) {
        carry_over(dir, &tfd, &seen, &mut out)
            .map_err(io("carrying over the install dir's files"))?;
    }
    let marker = create_new(&tfd, COMPLETED).map_err(io("creating the marker completed"))?;
    marker.sync_all().map_err(io("syncing completed"))?;
    drop(marker);
    nix::unistd::fsync(&tfd).map_err(|e| io("syncing the temp dir")(e.into()))?;
    drop(tfd);

    // Into place. From here the temp dir is ours to clean up by hand.
    let tmp_path = tmp.keep();
    let placed = place(parent, &tmp_path, name, existing.is_some());
    // After an exchange the old install dir sits at tmp_path; after a
    // failure our unpacked files do. Either way it goes.
    remove_any(&tmp_path);
    placed.map_err(io("moving the unpacked files into place"))?;
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the install dir's parent"))?;
    Ok(out)
}

/// The entry's name as a flat file name; `None` for the install dir
/// itself (`./`, `.`, empty).
fn flat_name(raw: &[u8], is_dir: bool) -> Result<Option<String>, Refusal> {
    let name = std::str::from_utf8(raw).map_err(|_| Refusal::NotUtf8)?;
    if name.starts_with('/') {
        return Err(Refusal::Absolute);
    }
    if name.split('/').any(|c| c == "..") {
        return Err(Refusal::DotDot);
    }
    let mut rest = name;
    while let Some(r) = rest.strip_prefix("./") {
        rest = r.trim_start_matches('/');
    }
    if rest.is_empty() || rest == "." {
        return Ok(None);
    }
    if is_dir {
        return Err(Refusal::Directory);
    }
    if rest.contains('/') {
        return Err(Refusal::Nested);
    }
    Ok(Some(rest.to_string()))
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        nix::fcntl::AT_FDCWD,
        p,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// A new regular file `name` in `dir`, never through a link, mode
/// [`FILE_MODE`] whatever the umask.
fn create_new(dir: &impl AsFd, name: &str) -> io::Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(FILE_MODE),
    )?;
    let f = File::from(fd);
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Copies `src` into `f`, seeking over all-zero blocks, then sets the
/// length (a trailing hole). Returns the bytes copied.
fn write_sparse(src: &mut impl Read, f: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; HOLE_BLOCK];
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let block = &buf[..n];
        if block.iter().all(|&b| b == 0) {
            f.seek(SeekFrom::Current(n as i64))?;
        } else {
            f.write_all(block)?;
        }
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    f.set_len(total)?;
    Ok(total)
}

/// Moves what `dir` holds and the archive did not write into the temp dir
/// (`tfd`). A directory (or a link to one) where the archive wrote a file
/// wins, as the app writes nothing there.
fn carry_over(
    dir: &Path,
    tfd: &OwnedFd,
    written: &HashSet<String>,
    out: &mut Installed,
) -> io::Result<()> {
    let dfd = open_dir(dir)?;
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let shown = name.to_string_lossy().into_owned();
        if written.contains(shown.as_str()) {
            // Files.isDirectory follows links; a stat is harmless.
            let is_dir =
                nix::sys::stat::fstatat(&dfd, name.as_os_str(), nix::fcntl::AtFlags::empty())
                    .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR);
            if !is_dir {
                continue; // replaced by ours
            }
            unlinkat(tfd, shown.as_str(), UnlinkatFlags::NoRemoveDir)?;
            out.files.retain(|f| *f != shown);
            out.warnings.push(InstallWarning::DirectoryInTheWay {
                entry: shown.clone(),
            });
        }
        match renameat(&dfd, name.as_os_str(), tfd, name.as_os_str()) {
            Ok(()) => out.kept.push(shown),
            Err(Errno::ENOENT) => {} // gone meanwhile
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Renames `tmp` (in `parent`) to `name`: without replacing anything if
/// nothing was there, by an atomic exchange otherwise (the old one is then
/// at `tmp`).
fn place(parent: &Path, tmp: &Path, name: &std::ffi::OsStr, exists: bool) -> io::Result<()> {
    let pfd = open_dir(parent)?;
    let tmp_name = tmp.file_name().unwrap_or_default();
    let flags = if exists {
        RenameFlags::RENAME_EXCHANGE
    } else {
        RenameFlags::RENAME_NOREPLACE
    };
    match renameat2(&pfd, tmp_name, &pfd, name, flags) {
        Ok(()) => Ok(()),
        // A filesystem without renameat2 flags: the same in two steps.
        Err(Errno::EINVAL) => {
            let mut aside = tmp_name.to_owned();
            aside.push(".old");
            if exists {
                renameat(&pfd, name, &pfd, aside.as_os_str())?;
            }
            renameat(&pfd, tmp_name, &pfd, name)?;
            if exists {
                renameat(&pfd, aside.as_os_str(), &pfd, tmp_name)?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes a dir tree, a file or a link at `p` (never following a link).
fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn allocated_bytes(p: &Path) -> io::Result<u64> {
        Ok(std::fs::symlink_metadata(p)?.blocks() * 512)
    }

    /// One entry, with the name and link name written raw (the tar crate's
    /// setters refuse `..` and the like, which these tests need).
    struct E<'a> {
        name: &'a [u8],
        ty: tar::EntryType,
        mode: u32,
        data: &'a [u8],
        link: &'a [u8],
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
        E {
            name: name.as_bytes(),
            ty: tar::EntryType::Regular,
            mode: 0o644,
            data,
            link: b"",
        }
    }

    fn of<'a>(name: &'a str, ty: tar::EntryType, link: &'a str) -> E<'a> {
        E {
            name: name.as_bytes(),
            ty,
            mode: 0o777,
            data: b"",
            link: link.as_bytes(),
        }
    }

    fn targz(path: &Path, entries: &[E]) {
        let gz =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
            h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
            h.set_entry_type(e.ty);
            h.set_mode(e.mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(e.data.len() as u64);
            h.set_cksum();
            b.append(&h, e.data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn installs_flat_files_with_the_apps_mode_then_the_marker() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("images.tar.gz");
        targz(
            &a,
            &[
                of("./", tar::EntryType::Directory, ""),
                file("./build_id", b"2099\n"),
                file("vm_config.json", b"{}"),
                file("././root_part", b"ext4"),
            ],
        );
        let dir = t.path().join("files/linux");
        assert!(!is_installed(&dir));
        let got = install_to(&a, &dir).unwrap();
        assert_eq!(got.files, ["build_id", "vm_config.json", "root_part"]);
        assert!(got.warnings.is_empty() && got.kept.is_empty(), "{got:?}");
        assert!(is_installed(&dir));
        assert_eq!(
            names(&dir),
            ["build_id", "completed", "root_part", "vm_config.json"]
        );
        for n in names(&dir) {
            let p = dir.join(&n);
            assert!(std::fs::symlink_metadata(&p).unwrap().is_file(), "{n}");
            assert_eq!(mode(&p), FILE_MODE, "{n}");
        }
        assert_eq!(std::fs::read(dir.join("build_id")).unwrap(), b"2099\n");
        assert_eq!(std::fs::read(dir.join("completed")).unwrap(), b"");
        // Nothing but the install dir is left next to it.
        assert_eq!(names(&t.path().join("files")), ["linux"]);
    }

    #[test]
    fn links_become_empty_regular_files_and_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, b"host data").unwrap();
        let a = t.path().join("images.tar.gz");
        let target = secret.to_str().unwrap();
        targz(
            &a,
            &[
                file("vm_config.json", b"{}"),
                of("root_part", tar::EntryType::Symlink, target),
                of("efi_part", tar::EntryType::Link, "vm_config.json"),
                of("fifo", tar::EntryType::Fifo, ""),
            ],
        );
        let dir = t.path().join("linux");
        let got = install_to(&a, &dir).unwrap();
        for n in ["root_part", "efi_part", "fifo"] {
            let m = std::fs::symlink_metadata(dir.join(n)).unwrap();
            assert!(m.is_file(), "{n} is not a regular file");
            assert_eq!(m.len(), 0, "{n}");
            assert_eq!(m.nlink(), 1, "{n}");
            assert_eq!(mode(&dir.join(n)), FILE_MODE);
        }
        assert_eq!(std::fs::read(&secret).unwrap(), b"host data");
        assert_eq!(std::fs::read(dir.join("vm_config.json")).unwrap(), b"{}");
        assert_eq!(
            got.warnings,
            [
                InstallWarning::LinkAsEmptyFile {
                    entry: "root_part".into(),
                    hard: false,
                    target: target.into()
                },
                InstallWarning::LinkAsEmptyFile {
                    entry: "efi_part".into(),
                    hard: true,
                    target: "vm_config.json".into()
                },
                InstallWarning::SpecialAsEmptyFile {
                    entry: "fifo".into(),
                    kind: "fifo"
                },
            ]
        );
        let shown = got.warnings[0].to_string();
        assert!(
            shown.contains("root_part") && shown.contains("empty regular file"),
            "{shown}"
        );
    }

    #[test]
    fn setuid_and_setgid_never_come_in() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("images.tar.gz");
        let mut e = file("tool", b"#!/bin/sh\n");
        e.mode = 0o6755;
        targz(&a, &[e]);
        let dir = t.path().join("linux");
        let got = install_to(&a, &dir).unwrap();
        assert_eq!(mode(&dir.join("tool")), FILE_MODE);
        assert_eq!(
            got.warnings,
            [InstallWarning::SetIdDropped {
                entry: "tool".into(),
                mode: 0o6755
            }]
        );
    }

    #[test]
    fn refuses_what_the_app_would_escape_with_or_fail_on() {
        use tar::EntryType as T;
        let cases: Vec<(E, Refusal)> = vec![
            (file("/etc/passwd", b"x"), Refusal::Absolute),
            (file("../escape", b"x"), Refusal::DotDot),
            (file("./a/../../b", b"x"), Refusal::DotDot),
            (file("..", b"x"), Refusal::DotDot),
            (file("sub/x", b"x"), Refusal::Nested),
            (of("sub/", T::Directory, ""), Refusal::Directory),
            (of("sub", T::Directory, ""), Refusal::Directory),
            (file("completed", b""), Refusal::Marker),
            (of("s", T::GNUSparse, ""), Refusal::GnuSparse),
            (of("odd", T::new(b'Z'), ""), Refusal::UnknownType('Z')),
            (
                E {
                    name: b"bad\xff",
                    ..file("", b"")
                },
                Refusal::NotUtf8,
            ),
        ];
        for (e, want) in cases {
            let t = tempfile::tempdir().unwrap();
            let a = t.path().join("images.tar.gz");
            let shown = String::from_utf8_lossy(e.name).into_owned();
            targz(&a, &[file("vm_config.json", b"{}"), e]);
            let dir = t.path().join("linux");
            let err = install_to(&a, &dir).unwrap_err();
            match &err {
                ArchiveError::Refused {
                    archive,
                    entry,
                    reason,
                } => {
                    assert_eq!(archive, &a);
                    assert_eq!(entry, &shown);
                    assert_eq!(reason, &want, "{shown}");
                }
                // The tar crate itself may reject a malformed sparse map.
                other if want == Refusal::GnuSparse => {
                    assert!(matches!(other, ArchiveError::Io { .. }), "{other}")
                }
                other => panic!("{shown}: {other}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&a.display().to_string()), "{msg}");
            // Nothing installed, no temp dir left, nothing written outside.
            assert_eq!(names(t.path()), ["images.tar.gz"], "{shown}");
        }
    }

    #[test]
    fn zero_blocks_become_holes_with_the_same_bytes() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("images.tar.gz");
        // 8 MiB + 100 bytes: data at 1 MiB, a nonzero byte at the end of a
        // partial last block, and zero runs around.
        let mut data = vec![0u8; (8 << 20) + 100];
        data[(1 << 20)..(1 << 20) + 8].copy_from_slice(b"ext4-ish");
        *data.last_mut().unwrap() = 7;
        let mut trailing = vec![0u8; 4 << 20];
        trailing[0] = 1;
        targz(
            &a,
            &[file("root_part", &data), file("trailing_hole", &trailing)],
        );
        let dir = t.path().join("linux");
        install_to(&a, &dir).unwrap();
        let root = dir.join("root_part");
        assert_eq!(std::fs::read(&root).unwrap(), data);
        assert!(allocated_bytes(&root).unwrap() < 1 << 20, "not sparse");
        let tr = dir.join("trailing_hole");
        assert_eq!(std::fs::read(&tr).unwrap(), trailing);
        assert!(allocated_bytes(&tr).unwrap() < 1 << 20, "not sparse");
    }

    #[test]
    fn a_name_twice_keeps_the_later_one() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("images.tar.gz");
        targz(&a, &[file("build_id", b"1"), file("./build_id", b"2")]);
        let dir = t.path().join("linux");
        let got = install_to(&a, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("build_id")).unwrap(), b"2");
        assert_eq!(got.files, ["build_id"]);
        assert_eq!(
            got.warnings,
            [InstallWarning::Replaced {
                entry: "build_id".into()
            }]
        );
    }

    /// After the Upgrade screen: `completed` gone, `root_part` moved to
    /// `root_part_backup`. The installer runs again into the same dir.
    #[test]
    fn reinstall_keeps_the_backup_and_replaces_planted_links() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"host data").unwrap();
        let dir = t.path().join("linux");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("root_part_backup"), b"old disk").unwrap();
        std::fs::write(dir.join("vm_config.json"), b"old").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("root_part")).unwrap();
        std::fs::create_dir(dir.join("efi_part")).unwrap();
        let a = t.path().join("images.tar.gz");
        targz(
            &a,
            &[
                file("vm_config.json", b"new"),
                file("root_part", b"new disk"),
                file("efi_part", b"efi"),
            ],
        );
        let got = install_to(&a, &dir).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
        assert!(!std::fs::symlink_metadata(dir.join("root_part"))
            .unwrap()
            .is_symlink());
        assert_eq!(std::fs::read(dir.join("root_part")).unwrap(), b"new disk");
        assert_eq!(std::fs::read(dir.join("vm_config.json")).unwrap(), b"new");
        assert_eq!(
            std::fs::read(dir.join("root_part_backup")).unwrap(),
            b"old disk"
        );
        // The app only "creates" an existing directory: no data there.
        assert!(dir.join("efi_part").is_dir());
        assert_eq!(got.kept, ["efi_part", "root_part_backup"]);
        assert_eq!(got.files, ["vm_config.json", "root_part"]);
        assert_eq!(
            got.warnings,
            [InstallWarning::DirectoryInTheWay {
                entry: "efi_part".into()
            }]
        );
        assert!(is_installed(&dir));
        assert_eq!(names(t.path()), ["images.tar.gz", "linux", "victim"]);
    }

    #[test]
    fn never_installs_over_an_installed_dir() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("linux");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(COMPLETED), b"").unwrap();
        let a = t.path().join("images.tar.gz");
        targz(&a, &[file("root_part", b"x")]);
        let e = install_to(&a, &dir).unwrap_err();
        assert!(matches!(e, ArchiveError::AlreadyInstalled { .. }), "{e}");
        assert_eq!(names(&dir), ["completed"]);
    }

    #[test]
    fn a_corrupt_archive_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("images.tar.gz");
        targz(&a, &[file("root_part", &vec![1u8; 1 << 20])]);
        let bytes = std::fs::read(&a).unwrap();
        std::fs::write(&a, &bytes[..bytes.len() / 2]).unwrap();
        let e = install_to(&a, &t.path().join("linux")).unwrap_err();
        assert!(matches!(e, ArchiveError::Io { .. }), "{e}");
        assert_eq!(names(t.path()), ["images.tar.gz"]);
        let e = install_to(&t.path().join("nope"), &t.path().join("linux")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn flat_names() {
        assert_eq!(flat_name(b"./", true), Ok(None));
        assert_eq!(flat_name(b".", true), Ok(None));
        assert_eq!(flat_name(b"", false), Ok(None));
        assert_eq!(flat_name(b".//x", false), Ok(Some("x".into())));
        assert_eq!(flat_name(b"x", false), Ok(Some("x".into())));
        assert_eq!(flat_name(b"..x", false), Ok(Some("..x".into())));
        assert_eq!(flat_name(b"x/", false), Err(Refusal::Nested));
        assert_eq!(flat_name(b"./x/", true), Err(Refusal::Directory));
    }

    /// A name the fuzz entries draw from: the hostile ones, or random.
    fn fuzz_name() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use crate::fuzzing::proptest::prelude::*;
        let hostile: Vec<&[u8]> = vec![
            b"root_part",
            b"./root_part",
            b"vm_config.json",
            b"completed",
            b"../x",
            b"../../../../escape",
            b"./a/../../b",
            b"..",
            b".",
            b"./",
            b"",
            b"/etc/passwd",
            b"/tmp/avf-fuzz-absolute",
            b"sub/",
            b"sub/x",
            b".//x",
            b"..x",
            b"bad\xff",
            b"planted",
            b"keep",
        ];
        prop_oneof![
            3 => proptest::sample::select(hostile).prop_map(|b| b.to_vec()),
            1 => proptest::collection::vec(
                prop_oneof![Just(b'.'), Just(b'/'), Just(b'a'), any::<u8>()],
                0..12
            ),
        ]
    }

    /// Fuzz: whatever bytes `images.tar.gz` holds, the installer never
    /// panics, writes nothing outside its dir (the dir sits four levels
    /// down a private tree: a `..` escape up to four levels would show),
    /// leaves no temp dir, never touches what a planted link points at,
    /// and on success installs only regular files of mode [`FILE_MODE`];
    /// on failure the install dir is as it was.
    #[test]
    fn fuzz_installer() {
        use crate::fuzzing::{proptest::prelude::*, run};
        use std::io::Write as _;

        /// How many fuzz inputs installed (the rest were refused).
        static INSTALLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

        /// Runs one install of `gz` and checks the invariants.
        fn check(gz: &[u8], preexisting: bool) -> Result<(), TestCaseError> {
            let base = Path::new("/dev/shm");
            let t = if base.is_dir() {
                tempfile::tempdir_in(base)
            } else {
                tempfile::tempdir()
            }
            .unwrap();
            let sentinel = t.path().join("sentinel");
            std::fs::write(&sentinel, b"host data").unwrap();
            let files = t.path().join("a/b/files");
            let dir = files.join("linux");
            std::fs::create_dir_all(&files).unwrap();
            if preexisting {
                std::fs::create_dir(&dir).unwrap();
                std::fs::write(dir.join("keep"), b"kept").unwrap();
                std::os::unix::fs::symlink(&sentinel, dir.join("planted")).unwrap();
            }
            let before = std::fs::read_dir(&files).map(|_| tree(&files)).unwrap();
            let got = install_from(gz, Path::new("fuzz.tar.gz"), &dir);
            if got.is_ok() {
                INSTALLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            prop_assert_eq!(std::fs::read(&sentinel).unwrap(), b"host data");
            prop_assert!(!Path::new("/tmp/avf-fuzz-absolute").exists());
            // Nothing but the tree we made (and the install dir).
            let mut all = tree(t.path());
            all.retain(|p| !p.starts_with(&dir));
            let want: Vec<PathBuf> = ["a", "a/b", "a/b/files", "sentinel"]
                .iter()
                .map(|p| t.path().join(p))
                .collect();
            prop_assert_eq!(&all, &want, "{:?}", got);
            prop_assert_eq!(dir.is_dir(), got.is_ok() || preexisting);
            match got {
                Err(_) => prop_assert_eq!(tree(&files), before),
                Ok(out) => {
                    prop_assert!(is_installed(&dir));
                    for f in out.files.iter().chain([&COMPLETED.to_string()]) {
                        let m = std::fs::symlink_metadata(dir.join(f)).unwrap();
                        prop_assert!(m.is_file(), "{f}");
                        prop_assert_eq!(m.mode() & 0o7777, FILE_MODE, "{}", f);
                        prop_assert_eq!(m.nlink(), 1);
                    }
                    for name in names(&dir) {
                        let known = out.files.contains(&name)
                            || out.kept.contains(&name)
                            || name == COMPLETED;
                        prop_assert!(known, "{name} neither written nor kept");
                    }
                }
            }
            Ok(())
        }

        fn tree(dir: &Path) -> Vec<PathBuf> {
            let mut out = Vec::new();
            let Ok(rd) = std::fs::read_dir(dir) else {
                return out;
            };
            for e in rd {
                let p = e.unwrap().path();
                out.push(p.clone());
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    out.extend(tree(&p));
                }
            }
            out.sort();
            out
        }

        fn gzip(tar: &[u8]) -> Vec<u8> {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }

        // Raw bytes where the gzip stream should be.
        run(
            "image_archive::install_from (gz bytes)",
            2_000,
            (
                proptest::collection::vec(any::<u8>(), 0..600),
                any::<bool>(),
            ),
            |(bytes, pre)| check(&bytes, pre),
        );
        // Valid gzip of random bytes: the tar reader gets them.
        run(
            "image_archive::install_from (tar bytes)",
            2_000,
            (
                proptest::collection::vec(any::<u8>(), 0..2048),
                any::<bool>(),
            ),
            |(bytes, pre)| check(&gzip(&bytes), pre),
        );
        // Entries with raw headers: hostile names, any type byte, any
        // mode, link names, GNU long names; then some header bytes flipped.
        let entry = (
            fuzz_name(),
            prop_oneof![
                4 => proptest::sample::select(b"0123456712LKSxgV".to_vec()),
                1 => any::<u8>(),
            ],
            prop_oneof![Just(0o644u32), Just(0o4755), Just(0o6777), any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..300),
            fuzz_name(),
        );
        let archive = (
            proptest::collection::vec(entry, 0..6),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<bool>(),
        );
        run(
            "image_archive::install_from (entries)",
            3_000,
            archive,
            |(entries, flips, pre)| {
                let mut b = tar::Builder::new(Vec::new());
                for (name, ty, mode, data, link) in &entries {
                    let mut h = tar::Header::new_gnu();
                    let name = &name[..name.len().min(100)];
                    let link = &link[..link.len().min(100)];
                    h.as_old_mut().name[..name.len()].copy_from_slice(name);
                    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
                    h.set_entry_type(tar::EntryType::new(*ty));
                    h.set_mode(*mode);
                    // A long-name entry's data is the next entry's name.
                    let data = if *ty == b'L' { link } else { &data[..] };
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, data).unwrap();
                }
                let mut tar = b.into_inner().unwrap();
                for (at, x) in flips {
                    let i = at.index(tar.len().max(1));
                    if let Some(byte) = tar.get_mut(i) {
                        *byte ^= x;
                    }
                }
                check(&gzip(&tar), pre)
            },
        );
        // The hostile fixtures, decompressed, with bytes flipped.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hostile");
        let mut seeds = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.to_string_lossy().ends_with(".tar.gz") {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(File::open(&p).unwrap())
                    .read_to_end(&mut tar)
                    .unwrap();
                seeds.push(tar);
            }
        }
        assert!(seeds.len() >= 10, "the fixtures in {}", dir.display());
        run(
            "image_archive::install_from (hostile fixtures, mutated)",
            2_000,
            (
                proptest::sample::select(seeds),
                proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
                any::<bool>(),
            ),
            |(mut tar, flips, pre)| {
                for (at, x) in flips {
                    let i = at.index(tar.len());
                    tar[i] ^= x;
                }
                check(&gzip(&tar), pre)
            },
        );
        eprintln!(
            "fuzz image_archive::install_from: {} inputs installed, the rest refused",
            INSTALLED.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    /// The hostile fixtures as they are: refused, or installed as regular
    /// files only (the harness's `payload::tests::hostile_fixtures` goes on
    /// to the spec).
    #[test]
    fn hostile_fixtures_install_safely() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hostile");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if !p.to_string_lossy().ends_with(".tar.gz") {
                continue;
            }
            n += 1;
            let t = tempfile::tempdir().unwrap();
            let inst = t.path().join("a/b/linux");
            match install_to(&p, &inst) {
                Err(e) => {
                    assert!(matches!(e, ArchiveError::Refused { .. }), "{e}");
                    assert_eq!(names(t.path()), ["a"], "{}", p.display());
                }
                Ok(got) => {
                    for f in names(&inst) {
                        let m = std::fs::symlink_metadata(inst.join(&f)).unwrap();
                        assert!(m.is_file() && m.mode() & 0o7777 == FILE_MODE, "{f}");
                    }
                    assert!(got.kept.is_empty());
                }
            }
        }
        assert!(n >= 10);
    }
}
