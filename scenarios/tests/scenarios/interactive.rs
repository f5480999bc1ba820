//! `avf-harness boot --app` as a person uses it, in process: keys in,
//! screen and notes out. Under Android 17's AIDL mode: the app's terminal
//! tab (ttyd through the bridge) is the screen, a port the shell opens is
//! forwarded to the host and carries bytes both ways, `sudo systemctl
//! reboot` makes the app start the VM again (a new boot, a new tab), and
//! the tab's × (the keys `terminal_close.js` types) ends the shell, which
//! closes the app's last tab, so the app stops the VM
//! (`terminal_disconnect.js` → `closeTab` → no sessions left → `stopVm`).
//! Under Android 15 QPR2's Java app, which injects nothing, a shell that
//! exits leaves ttyd's "Press ⏎ to Reconnect", and Ctrl-] closes the app.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use avf_harness::interactive::{self, BootRequest, Person};
use avf_harness::plan::{NetMode, Options, VcpuModel};
use avf_harness::timeouts::{wait_until, Check, Scaled};
use avf_harness::vm::LaunchRequest;
use avf_terminal::HostProfile;
use tokio::sync::mpsc;

/// What the person sees: a buffer the harness writes and the test reads.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until `needle` has appeared `count` times; returns the text.
    async fn wait(&self, needle: &str, count: usize, secs: u64) -> Result<String> {
        let what = format!("{needle:?} (×{count}) seen");
        wait_until(&what, Scaled::secs(secs).get(), POLL, || async {
            let text = self.text();
            Ok(match text.matches(needle).count() >= count {
                true => Check::Done(text),
                false => Check::NotYet(format!("so far:\n{text}")),
            })
        })
        .await
    }
}

/// The note of the app closing the tab whose connection ended.
const LAST_TAB: &str = "it was the last one, so the app stops the VM";

/// How often the test looks at what the person sees.
const POLL: Duration = Duration::from_millis(100);

/// The guest's boot id as the shell in the tab prints it, the `n`-th time.
async fn boot_id(screen: &Shared, keys: &mpsc::Sender<Vec<u8>>, n: usize) -> Result<String> {
    keys.send(b"echo BOOTID=$(cat /proc/sys/kernel/random/boot_id)\r".to_vec())
        .await?;
    // The echoed command line holds "BOOTID=$(", the output a uuid.
    let re = regex::Regex::new(r"BOOTID=([0-9a-f-]{36})")?;
    let what = format!("boot id #{n} in the tab");
    wait_until(&what, Scaled::secs(30).get(), POLL, || async {
        let text = screen.text();
        Ok(match re.captures_iter(&text).nth(n - 1) {
            Some(c) => Check::Done(c[1].to_string()),
            None => Check::NotYet(text),
        })
    })
    .await
}

/// Bytes through the host listener the app made for guest port 8080.
fn roundtrip(notes: &str) -> Result<()> {
    let re = regex::Regex::new(r"guest port 8080 forwarded to (127\.0\.0\.1:\d+)")?;
    let addr: SocketAddr = re
        .captures(notes)
        .context("no 127.0.0.1 listener for port 8080 in the notes")?[1]
        .parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let data = b"through the app's forwarding and back\n";
    s.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)?;
    if back != data {
        bail!("the echo came back as {back:?}");
    }
    Ok(())
}

/// An echo server for droid (perl, in the image), in the background.
const ECHO: &[u8] = b"perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => \"0.0.0.0:8080\", Listen => 4, ReuseAddr => 1) or die; while ($c = $s->accept) { while (sysread($c, $b, 4096)) { syswrite($c, $b) } close $c }' &\r";

/// Boots our direct payload under `profile` for a person whose keys
/// `drive` sends, in process; then the app's stop must have powered the
/// guest off in its grace, and nothing of the run may be left.
fn interactive_run<F, Fut>(name: &str, options: Options, drive: F) -> Result<()>
where
    F: FnOnce(mpsc::Sender<Vec<u8>>, Shared, Shared) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let payload = avf_harness::payload::built_payload("debian", "direct")?;
    let req = BootRequest {
        launch: LaunchRequest {
            payload,
            in_place: false,
            options,
            artefacts: avf_harness::scenario::artefacts_dir(name),
            keep_instance: false,
        },
        keep: false,
        app: true,
    };
    let (tx, rx) = mpsc::channel(16);
    let (screen, notes) = (Shared::default(), Shared::default());
    let mut person = Person {
        keys: rx,
        screen: Box::new(screen.clone()),
        notes: Box::new(notes.clone()),
    };
    // tx moves into the drive: when it ends, early or not, the keys end
    // and the person has left (the app's stop).
    let drive = drive(tx, screen, notes.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (booted, drove) =
        rt.block_on(async { tokio::join!(Box::pin(interactive::boot(req, &mut person)), drive) });
    let notes = notes.text();
    println!("{notes}");
    drove.with_context(|| format!("notes:\n{notes}"))?;
    booted?;
    let stop = regex::Regex::new(r"powered off [0-9.]+ s after the request \(guest-shutdown\)")?;
    if !stop.is_match(&notes) {
        bail!("the app's stop did not power the guest off in its grace:\n{notes}");
    }
    let leaked = avf_harness::procs::leaked_processes();
    if !leaked.is_empty() {
        bail!("left running: {leaked:?}");
    }
    Ok(())
}

/// The note that the app's terminal tab opened.
const TAB: &str = "the terminal tab is open";

/// The app's first tab opens (in the boot's time) on droid's shell.
async fn first_tab_is_droids(
    keys: &mpsc::Sender<Vec<u8>>,
    screen: &Shared,
    notes: &Shared,
) -> Result<()> {
    notes.wait(TAB, 1, 180).await?;
    keys.send(b"id\r".to_vec()).await?;
    screen.wait("uid=1000(droid)", 1, 30).await?;
    Ok(())
}

pub fn boot_app_android17() -> Result<()> {
    let options = Options {
        profile: HostProfile::android17_aidl(),
        // Our payload carries its own cidata.iso (gRPC mode); a
        // debuggable phone's /sdcard/linux/cidata.iso forces AIDL.
        cidata_override: true,
        // The harness's console is under test, not the CPU.
        vcpu: VcpuModel::NoPauth,
        ..Options::default()
    };
    interactive_run(
        "interactive_boot_app_android17",
        options,
        |keys, screen, notes| async move {
            first_tab_is_droids(&keys, &screen, &notes).await?;
            let first = boot_id(&screen, &keys, 1).await?;
            keys.send(ECHO.to_vec()).await?;
            let seen = notes.wait("guest port 8080 forwarded to", 1, 60).await?;
            tokio::task::spawn_blocking(move || roundtrip(&seen)).await??;
            // The tab's connection ends as the guest goes down: the guest's
            // own reboot is what the app answers.
            keys.send(b"sudo systemctl reboot\r".to_vec()).await?;
            notes.wait("the app starts the VM again", 1, 120).await?;
            notes.wait(TAB, 2, 180).await?;
            let second = boot_id(&screen, &keys, 2).await?;
            if first == second {
                bail!("the same boot id {first} after the app's restart");
            }
            // The tab's ×: the app types what terminal_close.js types (^C,
            // ^Z 100 ms later, ^D ^D 100 ms after that); the login shell
            // must end on it, and the app then closes its last tab and
            // stops the VM.
            let seen = notes.text().matches(LAST_TAB).count();
            for k in [&b"\x03"[..], b"\x1a", b"\x04\x04"] {
                keys.send(k.to_vec()).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            notes.wait(LAST_TAB, seen + 1, 30).await?;
            notes.wait("the app closes: its stop", 1, 30).await?;
            Ok(())
        },
    )
}

/// Android 15 QPR2's Java app injects nothing into ttyd's page: a shell
/// that exits leaves "Press ⏎ to Reconnect", Enter gives a new login, and
/// Ctrl-] is the person closing the app (its shutdown request).
pub fn boot_app_android15() -> Result<()> {
    let options = Options {
        profile: HostProfile::android15_qpr2(),
        net: NetMode::Tap,
        vcpu: VcpuModel::NoPauth,
        ..Options::default()
    };
    interactive_run(
        "interactive_boot_app_android15",
        options,
        |keys, screen, notes| async move {
            first_tab_is_droids(&keys, &screen, &notes).await?;
            keys.send(b"exit\r".to_vec()).await?;
            notes.wait("press Enter to connect again", 1, 30).await?;
            keys.send(b"\r".to_vec()).await?;
            notes.wait("the terminal connected again", 1, 60).await?;
            notes.wait(TAB, 2, 5).await?;
            keys.send(b"echo again-$((6*7))\r".to_vec()).await?;
            screen.wait("again-42", 1, 30).await?;
            if notes.text().contains(LAST_TAB) {
                bail!("the Java app closed a tab");
            }
            keys.send(vec![0x1d]).await?;
            notes.wait("the app closes: its stop", 1, 30).await?;
            Ok(())
        },
    )
}
