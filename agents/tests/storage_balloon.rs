//! storage_balloon_agent against a fake app, on a fake sysfs tree.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use avf_agents::balloon::{self, Balloon, FsStats, Paths, StatFs};
use avf_agents::proto::StorageBalloonRequestItem;
use common::{client, FakeApp};

const FRSIZE: u64 = 4096;

/// Like ext4_statfs: f_bavail = bfree - root reserve - reserved_clusters.
struct FakeExt4 {
    bfree: u64,
    r_blocks: u64,
    reserved: PathBuf,
}

impl StatFs for FakeExt4 {
    fn stat(&self) -> anyhow::Result<FsStats> {
        let resv: u64 = std::fs::read_to_string(&self.reserved)?.trim().parse()?;
        Ok(FsStats {
            bavail: self.bfree.saturating_sub(self.r_blocks + resv),
            frsize: FRSIZE,
        })
    }
}

fn fake_root(dir: &std::path::Path) -> Paths {
    let sys = dir.join("sys");
    std::fs::create_dir_all(sys.join("dev/block/254:2")).unwrap();
    std::fs::write(
        sys.join("dev/block/254:2/uevent"),
        "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\n",
    )
    .unwrap();
    std::fs::create_dir_all(sys.join("fs/ext4/vda2")).unwrap();
    std::fs::write(sys.join("fs/ext4/vda2/reserved_clusters"), "4096\n").unwrap();
    // Another ext4 that is not the root must be left alone.
    std::fs::create_dir_all(sys.join("fs/ext4/vda1")).unwrap();
    std::fs::write(sys.join("fs/ext4/vda1/reserved_clusters"), "7\n").unwrap();
    let mi = dir.join("mountinfo");
    std::fs::write(
        &mi,
        "21 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n\
         30 21 254:1 / /boot rw,relatime shared:2 - ext4 /dev/vda1 rw\n",
    )
    .unwrap();
    Paths {
        root: dir.into(),
        mountinfo: mi,
        sysfs: sys,
    }
}

#[tokio::test]
async fn requests_follow_the_contract_and_the_stream_end_is_clean() {
    let d = tempfile::tempdir().unwrap();
    let paths = fake_root(d.path());
    let rc = balloon::reserved_clusters_path(&paths).unwrap();
    assert!(rc.ends_with("fs/ext4/vda2/reserved_clusters"));
    let floor = balloon::kernel_reservation(&rc, d.path()).unwrap();
    assert_eq!(floor, 4096);
    let b = Balloon {
        reserved_clusters: rc.clone(),
        stat: FakeExt4 {
            bfree: 2_000_000,
            r_blocks: 100_000,
            reserved: rc.clone(),
        },
        floor,
    };
    let mut app = FakeApp::start();
    let tx = app.storage.take().unwrap();
    let mut cl = client(&app).await;
    let task = tokio::spawn(async move {
        let r = balloon::run(&mut cl, &b).await;
        (r, b)
    });
    let avail_of = |b: &Balloon<FakeExt4>| b.stat.stat().unwrap().bavail * FRSIZE;
    // 1 GiB available: hold the rest (users may get 1.9M blocks without a hold).
    tx.send(Ok(StorageBalloonRequestItem {
        available_bytes: 1 << 30,
    }))
    .await
    .unwrap();
    tx.send(Ok(StorageBalloonRequestItem {
        available_bytes: 1 << 30,
    }))
    .await
    .unwrap();
    wait_for(&rc, &(1_900_000 - (1u64 << 30) / FRSIZE).to_string()).await;
    // More room: the hold shrinks.
    tx.send(Ok(StorageBalloonRequestItem {
        available_bytes: 3 << 30,
    }))
    .await
    .unwrap();
    wait_for(&rc, &(1_900_000 - (3u64 << 30) / FRSIZE).to_string()).await;
    drop(tx);
    let (r, b) = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    r.unwrap();
    assert_eq!(avail_of(&b), 3 << 30);
    let other =
        std::fs::read_to_string(d.path().join("sys/fs/ext4/vda1/reserved_clusters")).unwrap();
    assert_eq!(other, "7\n");
}

#[tokio::test]
async fn app_dying_mid_stream_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let paths = fake_root(d.path());
    let rc = balloon::reserved_clusters_path(&paths).unwrap();
    let b = Balloon {
        reserved_clusters: rc.clone(),
        stat: FakeExt4 {
            bfree: 1000,
            r_blocks: 0,
            reserved: rc,
        },
        floor: 0,
    };
    let mut app = FakeApp::start();
    let mut cl = client(&app).await;
    let task = tokio::spawn(async move { balloon::run(&mut cl, &b).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.kill();
    let e = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("storage balloon request queue"),
        "{e:#}"
    );
}

async fn wait_for(path: &std::path::Path, want: &str) {
    let start = std::time::Instant::now();
    loop {
        let got = std::fs::read_to_string(path).unwrap();
        if got.trim() == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} is {got:?}, want {want}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agent(paths: &Paths, port: u16) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_storage_balloon_agent"));
    c.args(["--grpc-port", &port.to_string(), "--host-addr", "127.0.0.1"])
        .arg("--root")
        .arg(&paths.root)
        .arg("--mountinfo")
        .arg(&paths.mountinfo)
        .arg("--sysfs")
        .arg(&paths.sysfs)
        .arg("--state-dir")
        .arg(&paths.root);
    c
}

/// One agent run: each of `requests` in turn, waiting for each to land in
/// `rc` (a value different from the one before), then the app ends the
/// queue; returns what `rc` held after each request.
fn agent_run(paths: &Paths, rc: &std::path::Path, requests: &[u64]) -> Vec<u64> {
    let mut app = FakeApp::start();
    let tx = app.storage.take().unwrap();
    let mut child = agent(paths, app.addr.port()).spawn().unwrap();
    let mut seen = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let before = std::fs::read_to_string(rc).unwrap();
        tx.blocking_send(Ok(StorageBalloonRequestItem {
            available_bytes: *r,
        }))
        .unwrap();
        // The last request's value may equal the one before: give it time.
        let start = std::time::Instant::now();
        let got = loop {
            let text = std::fs::read_to_string(rc).unwrap();
            let settled = start.elapsed() > Duration::from_secs(2);
            if let Ok(v) = text.trim().parse::<u64>() {
                if text.ends_with('\n') && (text != before || settled) {
                    break v;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "request {i}: nothing written"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        seen.push(got);
    }
    drop(tx);
    assert!(child.wait().unwrap().success());
    seen
}

/// ext4 keeps a reserve of its own (set at mount: 2 % of the clusters, at
/// most 4096) to convert unwritten extents and punch holes on a full disk.
/// However much room the app reports, the balloon never takes it away, not
/// even after a restart that finds its own hold in reserved_clusters.
#[test]
fn binary_never_goes_below_ext4s_own_reservation() {
    let d = tempfile::tempdir().unwrap();
    let paths = fake_root(d.path());
    let rc = d.path().join("sys/fs/ext4/vda2/reserved_clusters");
    assert_eq!(std::fs::read_to_string(&rc).unwrap(), "4096\n");
    let free = {
        let st = balloon::StatVfs(paths.root.clone()).stat().unwrap();
        st.bavail * st.frsize
    };
    let got = agent_run(&paths, &rc, &[free / 4, u64::MAX]);
    assert!(got[0] > 4096, "no hold for a quarter of {free}: {got:?}");
    assert_eq!(
        got[1], 4096,
        "the phone has room: back to ext4's own reserve"
    );
    // A hold in place when the agent (re)starts is not ext4's reserve.
    let got = agent_run(&paths, &rc, &[free / 4, u64::MAX]);
    assert!(got[0] > 4096, "{got:?}");
    assert_eq!(got[1], 4096, "after a restart");
}

#[test]
fn binary_on_a_non_ext4_root_stops_for_good() {
    let d = tempfile::tempdir().unwrap();
    let paths = fake_root(d.path());
    std::fs::write(&paths.mountinfo, "21 1 0:30 / / rw - btrfs /dev/vda2 rw\n").unwrap();
    let out = agent(&paths, 1).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 78 is in the unit's RestartPreventExitStatus=: no restart loop.
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("btrfs, not ext4"), "{stderr}");
}

#[test]
fn binary_with_real_statvfs_writes_the_hold() {
    let d = tempfile::tempdir().unwrap();
    let paths = fake_root(d.path());
    let rc = d.path().join("sys/fs/ext4/vda2/reserved_clusters");
    std::fs::write(&rc, "0\n").unwrap();
    let mut app = FakeApp::start();
    let tx = app.storage.take().unwrap();
    let mut child = agent(&paths, app.addr.port()).spawn().unwrap();
    let st = balloon::StatVfs(paths.root.clone()).stat().unwrap();
    let free = st.bavail * st.frsize;
    // Leave a quarter of what is free: hold about three quarters.
    tx.blocking_send(Ok(StorageBalloonRequestItem {
        available_bytes: free / 4,
    }))
    .unwrap();
    let want = (free - free / 4) / st.frsize;
    let start = std::time::Instant::now();
    let got: u64 = loop {
        // A plain file (unlike sysfs) can be read mid-write: empty is "not yet".
        let text = std::fs::read_to_string(&rc).unwrap();
        if let Ok(v @ 1..) = text.trim().parse::<u64>() {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "nothing written");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Other writers share this filesystem: allow 1 % drift.
    assert!(
        got.abs_diff(want) <= want / 100 + 1,
        "wrote {got}, expected ~{want}"
    );
    tx.blocking_send(Ok(StorageBalloonRequestItem {
        available_bytes: u64::MAX,
    }))
    .unwrap();
    drop(tx);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&rc).unwrap(), "0\n");
}
