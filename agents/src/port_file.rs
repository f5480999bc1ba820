//! Reading the DebianService port the app writes to the internal share, or
//! (Android 17's gRPC mode) puts on the kernel command line.
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
    #[error("{0}: debian_server_port=0: the app runs no gRPC DebianService (its AIDL mode)")]
    NoGrpcServer(PathBuf),
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

/// The kernel parameter Android 17's app passes the port in.
pub const CMDLINE_PARAM: &str = "debian_server_port";

/// The value of the last `debian_server_port=` word of a kernel command
/// line (as the kernel's own parsing, the last one wins), unparsed; `None`
/// when the parameter is absent. The one parser of the parameter: the port
/// (`cmdline_port`) and the wire-form rule (`wire_form`) both read it here.
pub fn cmdline_value(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(CMDLINE_PARAM)?.strip_prefix('='))
}

/// The port from `debian_server_port=<port>` in the kernel command line at
/// `cmdline`; `None` when the parameter is absent (the app hands the port
/// over in the file instead). `debian_server_port=0` is the AIDL mode's:
/// no gRPC server runs, which is an error for a gRPC agent.
pub fn cmdline_port(cmdline: &Path) -> Result<Option<u16>, PortFileError> {
    let text = std::fs::read_to_string(cmdline).map_err(|source| PortFileError::Io {
        path: cmdline.to_owned(),
        source,
    })?;
    let Some(value) = cmdline_value(&text) else {
        return Ok(None);
    };
    match value.parse::<u16>() {
        Ok(0) => Err(PortFileError::NoGrpcServer(cmdline.to_owned())),
        Ok(p) => Ok(Some(p)),
        Err(_) => Err(PortFileError::Garbage {
            path: cmdline.to_owned(),
            content: format!("{CMDLINE_PARAM}={value}"),
        }),
    }
}

#[cfg(test)]
mod cmdline_tests {
    use super::*;

    fn port_of(cmdline: &str) -> Result<Option<u16>, PortFileError> {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cmdline");
        std::fs::write(&f, cmdline).unwrap();
        cmdline_port(&f)
    }

    #[test]
    fn the_port_comes_from_the_kernel_command_line_when_there() {
        assert_eq!(
            port_of(
                "panic=-1 root=/dev/vda1 console=ttyS0 debian_server_port=40123 hostname=debian\n"
            )
            .unwrap(),
            Some(40123)
        );
        assert_eq!(port_of("root=/dev/vda1 console=ttyS0\n").unwrap(), None);
        assert!(matches!(
            port_of("debian_server_port=0"),
            Err(PortFileError::NoGrpcServer(_))
        ));
        assert!(matches!(
            port_of("debian_server_port=x"),
            Err(PortFileError::Garbage { .. })
        ));
        assert_eq!(port_of("xdebian_server_port=5").unwrap(), None);
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
