//! Small file helpers shared by the modules that write into the internal share.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temp file in the same directory and a
/// rename, so a reader in the guest never sees a partial file; then syncs
/// the directory so the rename survives a power cut. The share is writable
/// by the guest's root: the temp file gets an unpredictable name and is
/// created exclusively (`O_EXCL`), so a symlink the guest planted is never
/// followed, and the rename replaces a planted link instead of writing
/// through it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_planted_symlink_instead_of_writing_through_it() {
        let share = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        std::fs::write(&victim, b"host data").unwrap();
        let target = share.path().join("ca.crt");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
        assert!(!std::fs::symlink_metadata(&target).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // Nothing but the file itself is left in the share.
        let names: Vec<_> = std::fs::read_dir(share.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ca.crt"]);
    }

    /// A guest can guess a temp name built from the pid and a counter and
    /// plant a link there; ours are random and created with O_EXCL.
    #[test]
    fn a_link_planted_at_a_guessable_temp_name_is_not_followed() {
        let share = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        std::fs::write(&victim, b"host data").unwrap();
        let pid = std::process::id();
        for seq in 0..64 {
            let guess = share.path().join(format!(".ca.crt.tmp.{pid}.{seq}"));
            std::os::unix::fs::symlink(&victim, guess).unwrap();
        }
        write_atomic(&share.path().join("ca.crt"), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"host data");
        assert_eq!(std::fs::read(share.path().join("ca.crt")).unwrap(), b"new");
    }
}
