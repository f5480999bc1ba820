//! Dropping privileges for the forwarders the launcher spawns: a forwarder
//! only needs an AF_VSOCK socket and a TCP connection to 127.0.0.1, while
//! the launcher runs as root with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
//! (for the socket owners' names). A forwarder moves bytes chosen by the
//! host and the guest's services: it should hold none of that.
use std::ffi::CString;

/// The user forwarders run as.
pub const FORWARDER_USER: &str = "nobody";
/// The kernel's overflow ids, used when `nobody` is not in the user database.
pub const OVERFLOW_ID: u32 = 65534;

/// Uid and gid of `name` from the user database (getpwnam_r: thread-safe).
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain old data; getpwnam_r fills it and points its
    // strings into buf, which outlives the reads below.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

/// Who a forwarder runs as: `nobody` (or the overflow ids) when the
/// launcher is root; `None` (its own, already unprivileged, ids) otherwise.
/// Looked up once per process.
pub fn forwarder_identity() -> Option<(u32, u32)> {
    static ID: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        Some(lookup_user(FORWARDER_USER).unwrap_or((OVERFLOW_ID, OVERFLOW_ID)))
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// In the child, after the uid/gid change and before exec: clears every
/// capability (effective, permitted, inheritable, ambient) and sets
/// no_new_privs, so nothing the launcher holds or could regain reaches the
/// forwarder. Only async-signal-safe calls (raw syscalls, prctl).
pub fn clear_capabilities() -> std::io::Result<()> {
    let hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset with a valid v3 header and two data structs; lowering
    // capabilities needs no privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_the_user_database() {
        assert_eq!(lookup_user("root"), Some((0, 0)));
        assert_eq!(lookup_user("no-such-user-avf"), None);
    }
}
