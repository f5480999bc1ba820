//! The ttyd client against the real ttyd 1.7 (Debian sid's, chrooted; see
//! `terminal/scripts/ttyd-root.sh`), started with the contract's flags:
//! `--ssl --ssl-cert --ssl-key --ssl-ca ca.crt -W -t disableLeaveAlert=true`.
//! This is what checks our certificate against OpenSSL/libwebsockets.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use avf_terminal::cert::ClientCert;
use tokio::io::{AsyncBufReadExt, BufReader};

mod common;
use common::{assert_only_app_cert_accepted, assert_run, ready_client, server_cert};

const T: Duration = Duration::from_secs(30);
const BASH: &str = "bash --norc --noprofile";

fn ttyd_root() -> PathBuf {
    let root = std::env::var_os("AVF_TTYD_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("AVF_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/arch-avf"));
            cache.join("ttyd-sid")
        });
    assert!(
        root.join("usr/bin/ttyd").exists(),
        "no ttyd root at {} (AVF_TTYD_ROOT / AVF_CACHE): build it with terminal/scripts/ttyd-root.sh",
        root.display()
    );
    root
}

/// A ttyd running chrooted in a private mount namespace; killed on drop.
struct Ttyd {
    port: u16,
    _child: tokio::process::Child,
    dir: PathBuf,
}

impl Drop for Ttyd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_ttyd(ca: &ClientCert, command: &str) -> Ttyd {
    let root = ttyd_root();
    let rel = format!(
        "tmp/avf-terminal-test-{}-{}",
        std::process::id(),
        rand_suffix()
    );
    let dir = root.join(&rel);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = server_cert();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    ca.write_ca(&dir).unwrap();

    let script = format!(
        "set -e; r=\"$0\"; mount -t proc proc \"$r/proc\"; \
         mount -t devpts -o newinstance,ptmxmode=0666 devpts \"$r/dev/pts\"; \
         exec chroot \"$r\" ttyd --port 0 --interface lo --ssl \
           --ssl-cert /{rel}/server.crt --ssl-key /{rel}/server.key --ssl-ca /{rel}/ca.crt \
           -W -t disableLeaveAlert=true env -i TERM=xterm-256color HOME=/root {command}"
    );
    let mut child = tokio::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare (util-linux) runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let port = tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if let Some(p) = line.split("Listening on port:").nth(1) {
                return Some(p.trim().parse::<u16>().unwrap());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("ttyd did not start; its log:\n{log}"));
    // Keep draining ttyd's log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ttyd {
        port,
        _child: child,
        dir,
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

#[tokio::test]
async fn real_ttyd_accepts_the_app_cert_and_runs_commands() {
    let app = ClientCert::generate("avf-terminal").unwrap();
    let ttyd = start_ttyd(&app, BASH).await;
    let addr = ([127, 0, 0, 1], ttyd.port).into();

    let mut c = ready_client(addr, &app, T).await;
    assert!(
        c.title().is_some_and(|t| t.contains("bash")),
        "{:?}",
        c.title()
    );
    assert!(
        c.preferences()
            .is_some_and(|p| p.contains("disableLeaveAlert")),
        "{:?}",
        c.preferences()
    );

    assert_run(&mut c, "echo hello; echo oops >&2", "hello\noops\n", 0, T).await;
    assert_run(&mut c, "printf 'a\\tb'; (exit 3)", "a\tb", 3, T).await;
    // It is a real tty, with the size we asked for.
    let out = c.run("test -t 0 && stty size", T).await.unwrap();
    assert_eq!(out.output, "50 400\n");
    c.resize(100, 30).await.unwrap();
    let out = c.run("stty size", T).await.unwrap();
    assert_eq!(out.output, "30 100\n");
    c.close().await;
}

#[tokio::test]
async fn real_ttyd_refuses_missing_and_foreign_certs() {
    let app = ClientCert::generate("avf-terminal").unwrap();
    let other = ClientCert::generate("avf-terminal").unwrap();
    let ttyd = start_ttyd(&app, BASH).await;
    let addr = ([127, 0, 0, 1], ttyd.port).into();
    assert_only_app_cert_accepted(addr, &app, &other, T).await;
}

#[tokio::test]
async fn wait_ready_survives_a_login_that_discards_early_input() {
    // Like login flushing the tty before the shell starts: whatever is
    // typed in the first ~1.5 s is read and thrown away.
    let app = ClientCert::generate("avf-terminal").unwrap();
    let slow = "bash --norc --noprofile -c 'sleep 1; while read -t 0.5 -r _; do :; done; \
                exec bash --norc --noprofile'";
    let ttyd = start_ttyd(&app, slow).await;
    let addr = ([127, 0, 0, 1], ttyd.port).into();
    let mut c = ready_client(addr, &app, T).await;
    let out = c.run("echo ready", T).await.unwrap();
    assert_eq!(out.output, "ready\n");
}
