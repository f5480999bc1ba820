//! storage_balloon_agent: hold back root filesystem space so that what the
//! guest sees as available matches what the app says the phone can spare.
//!
//! The knob is ext4's `reserved_clusters` (/sys/fs/ext4/<dev>/): clusters
//! the filesystem keeps out of reach of ordinary allocations.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tonic::transport::Channel;

use crate::proto::{DebianServiceClient, StorageBalloonQueueOpeningRequest};

/// Where the agent looks; all injectable for tests.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The filesystem to balloon ("/").
    pub root: PathBuf,
    /// /proc/self/mountinfo.
    pub mountinfo: PathBuf,
    /// /sys.
    pub sysfs: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            root: "/".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            sysfs: "/sys".into(),
        }
    }
}

/// The root mount as /proc/self/mountinfo describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct RootMount {
    pub major: u32,
    pub minor: u32,
    pub fstype: String,
    pub source: String,
}

/// Finds the mount of `/` (the last one wins: later mounts hide earlier ones).
pub fn parse_root_mount(text: &str, path: &str) -> anyhow::Result<RootMount> {
    let mut found = None;
    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let (pre, post) = line
            .split_once(" - ")
            .with_context(|| format!("{path} line {lineno}: no ' - ' separator"))?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 2 {
            bail!("{path} line {lineno}: too few fields");
        }
        if pre[4] != "/" {
            continue;
        }
        let (maj, min) = pre[2]
            .split_once(':')
            .with_context(|| format!("{path} line {lineno}: field major:minor: {:?}", pre[2]))?;
        let num = |s: &str| {
            s.parse::<u32>()
                .with_context(|| format!("{path} line {lineno}: field major:minor: {:?}", pre[2]))
        };
        found = Some(RootMount {
            major: num(maj)?,
            minor: num(min)?,
            fstype: post[0].to_owned(),
            source: post[1].to_owned(),
        });
    }
    found.with_context(|| format!("{path}: no mount on /"))
}

/// The kernel's name of block device `major:minor` (e.g. `vda1`), from
/// `<sysfs>/dev/block/M:m/uevent`'s DEVNAME; ext4 names its sysfs directory
/// after it.
pub fn block_device_name(sysfs: &Path, major: u32, minor: u32) -> anyhow::Result<String> {
    let uevent = sysfs.join(format!("dev/block/{major}:{minor}/uevent"));
    let text = std::fs::read_to_string(&uevent)
        .with_context(|| format!("reading {}", uevent.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .with_context(|| format!("{}: no usable DEVNAME field", uevent.display()))
}

/// `<sysfs>/fs/ext4/<dev>/reserved_clusters` of the root filesystem.
pub fn reserved_clusters_path(paths: &Paths) -> anyhow::Result<PathBuf> {
    let mi = paths.mountinfo.display().to_string();
    let text =
        std::fs::read_to_string(&paths.mountinfo).with_context(|| format!("reading {mi}"))?;
    let root = parse_root_mount(&text, &mi)?;
    if root.fstype != "ext4" {
        bail!(
            "{mi}: the root filesystem ({}) is {}, not ext4; reserved_clusters is ext4's",
            root.source,
            root.fstype
        );
    }
    let dev = block_device_name(&paths.sysfs, root.major, root.minor)?;
    let p = paths
        .sysfs
        .join("fs/ext4")
        .join(&dev)
        .join("reserved_clusters");
    if !p.exists() {
        bail!("{} does not exist (root device {dev})", p.display());
    }
    Ok(p)
}

/// What statvfs says, in the units we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// f_bavail: blocks an unprivileged user may still allocate.
    pub bavail: u64,
    /// f_frsize.
    pub frsize: u64,
}

pub trait StatFs {
    fn stat(&self) -> anyhow::Result<FsStats>;
}

/// statvfs(2) on a path.
pub struct StatVfs(pub PathBuf);

impl StatFs for StatVfs {
    fn stat(&self) -> anyhow::Result<FsStats> {
        let s = nix::sys::statvfs::statvfs(&self.0)
            .with_context(|| format!("statvfs({})", self.0.display()))?;
        #[allow(clippy::useless_conversion)] // the widths differ between targets
        Ok(FsStats {
            bavail: u64::from(s.blocks_available()),
            frsize: u64::from(s.fragment_size()),
        })
    }
}

/// The contract's arithmetic: hold = free - min(free, available);
/// clusters = ceil(hold / frsize).
pub fn clusters_to_hold(free_bytes: u64, available_bytes: u64, frsize: u64) -> u64 {
    let hold = free_bytes - free_bytes.min(available_bytes);
    hold.div_ceil(frsize.max(1))
}

/// Reads a `reserved_clusters` value.
fn read_clusters(p: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: {:?} is not a cluster count", p.display(), text.trim()))
}

/// Where the agent records ext4's own reservation for this boot: the
/// unit's RuntimeDirectory (kept across restarts, gone at reboot).
pub const DEFAULT_STATE_DIR: &str = "/run/storage_balloon_agent";

/// ext4's own reservation of the filesystem behind `reserved_clusters`:
/// the value the kernel set at mount (2 % of the clusters, at most 4096),
/// which ext4 needs to convert unwritten extents and punch holes on a full
/// disk. The balloon never goes below it.
///
/// The first start after boot reads it from `reserved_clusters` and
/// records it in `state_dir`; a restart (by then the file may hold our own
/// hold) reads the record instead. Without a usable `state_dir` the value
/// read now is the floor (said once on stderr).
pub fn kernel_reservation(reserved_clusters: &Path, state_dir: &Path) -> anyhow::Result<u64> {
    let dev = reserved_clusters
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let record = state_dir.join(format!("{dev}.kernel_reserved_clusters"));
    if record.exists() {
        return read_clusters(&record);
    }
    let now = read_clusters(reserved_clusters)?;
    let tmp = state_dir.join(format!(".{dev}.tmp"));
    let saved =
        std::fs::write(&tmp, format!("{now}\n")).and_then(|()| std::fs::rename(&tmp, &record));
    if let Err(e) = saved {
        eprintln!(
            "cannot record ext4's reservation in {}: {e}; a restart will take the current value as the floor",
            record.display()
        );
    }
    Ok(now)
}

/// The balloon for one filesystem.
pub struct Balloon<S> {
    pub reserved_clusters: PathBuf,
    pub stat: S,
    /// ext4's own reservation ([`kernel_reservation`]): never written below.
    pub floor: u64,
}

impl<S: StatFs> Balloon<S> {
    fn current_reservation(&self) -> anyhow::Result<u64> {
        read_clusters(&self.reserved_clusters)
    }

    /// Applies one request; returns the number of clusters written.
    pub fn apply(&self, available_bytes: u64) -> anyhow::Result<u64> {
        let st = self.stat.stat()?;
        // "free" must not depend on our own earlier hold. ext4_statfs gives
        // f_bavail = f_bfree - root's reserve - reserved_clusters, while
        // f_bfree ignores reserved_clusters but counts root's reserve, which
        // users cannot have. So free = f_bavail + the current reservation:
        // what users could allocate with no balloon. With f_bavail alone a
        // repeated request would release the hold it set (and oscillate);
        // with f_bfree the user-visible space would end up root's reserve
        // short of what the app asked for.
        // The balloon is on top of ext4's own reservation (the floor),
        // which stays whatever the app says: "free" is what users could
        // allocate with only that in place.
        let held = self.current_reservation()?;
        let free = st
            .bavail
            .saturating_add(held)
            .saturating_sub(self.floor)
            .saturating_mul(st.frsize);
        let clusters = self.floor + clusters_to_hold(free, available_bytes, st.frsize);
        let p = &self.reserved_clusters;
        std::fs::write(p, format!("{clusters}\n"))
            .with_context(|| format!("writing {clusters} to {}", p.display()))?;
        Ok(clusters)
    }
}

/// Serves the storage-balloon queue until the host ends it.
pub async fn run<S: StatFs>(
    client: &mut DebianServiceClient<Channel>,
    balloon: &Balloon<S>,
) -> anyhow::Result<()> {
    let mut stream = client
        .open_storage_balloon_request_queue(StorageBalloonQueueOpeningRequest {})
        .await
        .context("opening the storage balloon request queue")?
        .into_inner();
    while let Some(item) = stream
        .message()
        .await
        .context("reading the storage balloon request queue")?
    {
        let clusters = balloon.apply(item.available_bytes)?;
        eprintln!(
            "available_bytes {} → reserved_clusters {clusters}",
            item.available_bytes
        );
    }
    eprintln!("the Terminal app closed the storage balloon queue");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
30 22 0:40 / /mnt/internal rw,relatime shared:12 - virtiofs internal rw
";

    #[test]
    fn arithmetic() {
        assert_eq!(
            clusters_to_hold(10 << 30, 4 << 30, 4096),
            (6u64 << 30) / 4096
        );
        // Asking for more than is free holds nothing.
        assert_eq!(clusters_to_hold(1 << 30, 5 << 30, 4096), 0);
        // Rounds up: never leaves more than asked for.
        assert_eq!(clusters_to_hold(4096 * 10, 4096 * 3 + 1, 4096), 7);
        assert_eq!(clusters_to_hold(4096 * 10, 4096 * 3 - 1, 4096), 8);
        assert_eq!(clusters_to_hold(0, 0, 4096), 0);
    }

    #[test]
    fn root_mount() {
        let m = parse_root_mount(MOUNTINFO, "mi").unwrap();
        assert_eq!(
            m,
            RootMount {
                major: 254,
                minor: 1,
                fstype: "ext4".into(),
                source: "/dev/vda1".into()
            }
        );
        // An overmount of / wins.
        let over = format!("{MOUNTINFO}40 22 259:2 / / rw - ext4 /dev/vdb2 rw\n");
        assert_eq!(parse_root_mount(&over, "mi").unwrap().minor, 2);
        let e = parse_root_mount("1 2 x / / rw - ext4 a rw\n", "/proc/self/mountinfo").unwrap_err();
        assert!(format!("{e:#}").contains("major:minor"), "{e:#}");
        let e = parse_root_mount("garbage\n", "/proc/self/mountinfo").unwrap_err();
        assert!(
            format!("{e:#}").contains("/proc/self/mountinfo line 1"),
            "{e:#}"
        );
    }

    /// A fake /sys and mountinfo, with the root on `dev`.
    pub(crate) fn fake_tree(
        dev: &str,
        major: u32,
        minor: u32,
        fstype: &str,
    ) -> (tempfile::TempDir, Paths) {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        let block = sys.join(format!("dev/block/{major}:{minor}"));
        std::fs::create_dir_all(&block).unwrap();
        std::fs::write(
            block.join("uevent"),
            format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={dev}\nDEVTYPE=partition\n"),
        )
        .unwrap();
        let ext4 = sys.join("fs/ext4").join(dev);
        std::fs::create_dir_all(&ext4).unwrap();
        std::fs::write(ext4.join("reserved_clusters"), "4096\n").unwrap();
        let mi = d.path().join("mountinfo");
        std::fs::write(
            &mi,
            format!("22 1 {major}:{minor} / / rw,relatime - {fstype} /dev/{dev} rw\n"),
        )
        .unwrap();
        let paths = Paths {
            root: d.path().into(),
            mountinfo: mi,
            sysfs: sys,
        };
        (d, paths)
    }

    #[test]
    fn device_discovery_follows_the_root_device() {
        for (dev, maj, min) in [("vda1", 254, 1), ("vda2", 254, 2), ("nvme0n1p3", 259, 3)] {
            let (_d, paths) = fake_tree(dev, maj, min, "ext4");
            let p = reserved_clusters_path(&paths).unwrap();
            assert!(
                p.ends_with(format!("fs/ext4/{dev}/reserved_clusters")),
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn non_ext4_root_is_a_clear_error() {
        let (_d, paths) = fake_tree("vda1", 254, 1, "btrfs");
        let e = reserved_clusters_path(&paths).unwrap_err();
        assert!(format!("{e:#}").contains("btrfs, not ext4"), "{e:#}");
    }

    #[test]
    fn missing_uevent_names_the_file() {
        let (_d, paths) = fake_tree("vda1", 254, 1, "ext4");
        std::fs::write(&paths.mountinfo, "22 1 254:9 / / rw - ext4 /dev/vda9 rw\n").unwrap();
        let e = reserved_clusters_path(&paths).unwrap_err();
        assert!(format!("{e:#}").contains("dev/block/254:9/uevent"), "{e:#}");
    }

    /// Behaves like ext4_statfs: f_bavail = bfree - r_blocks - reserved_clusters.
    pub(crate) struct FakeExt4 {
        pub bfree: u64,
        pub r_blocks: u64,
        pub reserved: PathBuf,
    }

    impl StatFs for FakeExt4 {
        fn stat(&self) -> anyhow::Result<FsStats> {
            let resv: u64 = std::fs::read_to_string(&self.reserved)?.trim().parse()?;
            Ok(FsStats {
                bavail: self.bfree.saturating_sub(self.r_blocks + resv),
                frsize: 4096,
            })
        }
    }

    #[test]
    fn apply_is_stable_and_reaches_the_target() {
        let (_d, paths) = fake_tree("vda1", 254, 1, "ext4");
        let rc = reserved_clusters_path(&paths).unwrap();
        let b = Balloon {
            reserved_clusters: rc.clone(),
            stat: FakeExt4 {
                bfree: 1_000_000,
                r_blocks: 50_000,
                reserved: rc.clone(),
            },
            floor: 4096,
        };
        let avail = |b: &Balloon<FakeExt4>| b.stat.stat().unwrap().bavail * 4096;
        let x = 2_000_000_000u64; // not a multiple of 4096
        let c1 = b.apply(x).unwrap();
        let c2 = b.apply(x).unwrap();
        assert_eq!(c1, c2, "repeating a request must not change the hold");
        assert!(
            avail(&b) <= x && x - avail(&b) < 4096,
            "avail {} vs {x}",
            avail(&b)
        );
        assert_eq!(std::fs::read_to_string(&rc).unwrap(), format!("{c1}\n"));
        // More room: the hold shrinks; more than exists: no hold at all.
        let c3 = b.apply(3_000_000_000).unwrap();
        assert!(c3 < c1);
        assert_eq!(b.apply(u64::MAX).unwrap(), 4096);
        assert_eq!(avail(&b), (950_000 - 4096) * 4096);
    }

    #[test]
    fn statvfs_of_a_real_path() {
        let st = StatVfs(PathBuf::from("/")).stat().unwrap();
        assert!(st.frsize >= 512);
        let e = StatVfs(PathBuf::from("/no/such/dir")).stat().unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/dir"));
    }
}
