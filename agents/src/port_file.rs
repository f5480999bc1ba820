//! Reading the DebianService port the app writes to the internal share.
//!
//! The file holds bare ASCII digits (no newline); we also accept surrounding
//! whitespace. It may be missing (the app writes it only after it found ttyd)
//! or stale (from an earlier run): callers retry, see `connect`.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PortFileError {
    #[error("port file {0} does not exist (yet)")]
    Missing(PathBuf),
    #[error("cannot read port file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("port file {0} is empty")]
    Empty(PathBuf),
    #[error("port file {path}: {content:?} is not a TCP port number (1-65535)")]
    Garbage { path: PathBuf, content: String },
}

/// Reads and validates the port once.
pub fn read_port(path: &Path) -> Result<u16, PortFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PortFileError::Missing(path.to_owned()))
        }
        Err(source) => {
            return Err(PortFileError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(PortFileError::Empty(path.to_owned()));
    }
    let garbage = || PortFileError::Garbage {
        path: path.to_owned(),
        content: trimmed.chars().take(64).collect(),
    };
    if !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(garbage());
    }
    match trimmed.parse::<u16>() {
        Ok(0) | Err(_) => Err(garbage()),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, content: &[u8]) -> PathBuf {
        let p = dir.path().join("debian_service_port");
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn bare_digits() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_port(&write(&d, b"40123")).unwrap(), 40123);
    }

    #[test]
    fn trailing_newline_tolerated() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_port(&write(&d, b" 8443\n")).unwrap(), 8443);
    }

    #[test]
    fn missing_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nope");
        let e = read_port(&p).unwrap_err();
        assert!(matches!(e, PortFileError::Missing(_)));
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn garbage_and_out_of_range_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        for bad in [
            &b"port=123"[..],
            b"-5",
            b"70000",
            b"0",
            b"12 34",
            b"\xff\xfe",
        ] {
            let p = write(&d, bad);
            let e = read_port(&p).unwrap_err();
            assert!(matches!(e, PortFileError::Garbage { .. }), "{bad:?}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(msg.contains("not a TCP port"), "{msg}");
        }
    }

    #[test]
    fn empty_is_its_own_error() {
        let d = tempfile::tempdir().unwrap();
        let e = read_port(&write(&d, b"\n")).unwrap_err();
        assert!(matches!(e, PortFileError::Empty(_)), "{e}");
    }
}
