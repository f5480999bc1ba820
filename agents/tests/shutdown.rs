//! shutdown_runner against a fake app.
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use avf_agents::proto::ShutdownRequestItem;
use avf_agents::shutdown::{run, Outcome};
use common::{client, dead_port, port_file, FakeApp};

#[tokio::test]
async fn first_item_powers_off_once() {
    let app = FakeApp::start();
    let tx = app.shutdown.clone().unwrap();
    tx.send(Ok(ShutdownRequestItem {})).await.unwrap();
    tx.send(Ok(ShutdownRequestItem {})).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut cl = client(&app).await;
    let out = run(&mut cl, || async move {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(out, Outcome::PoweredOff);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failing_poweroff_is_an_error() {
    let app = FakeApp::start();
    app.shutdown
        .clone()
        .unwrap()
        .send(Ok(ShutdownRequestItem {}))
        .await
        .unwrap();
    let mut cl = client(&app).await;
    let e = run(&mut cl, || async {
        anyhow::bail!("poweroff: no such command")
    })
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("poweroff"), "{e:#}");
}

#[tokio::test]
async fn stream_end_without_item_is_success() {
    let mut app = FakeApp::start();
    drop(app.shutdown.take()); // the app ends the stream
    let mut cl = client(&app).await;
    let out = run(&mut cl, || async { panic!("must not power off") })
        .await
        .unwrap();
    assert_eq!(out, Outcome::StreamEnded);
}

#[tokio::test]
async fn server_going_away_mid_stream_is_an_error() {
    let mut app = FakeApp::start();
    let mut cl = client(&app).await;
    let task =
        tokio::spawn(async move { run(&mut cl, || async { panic!("must not power off") }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.kill();
    let r = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let e = r.unwrap_err();
    assert!(format!("{e:#}").contains("shutdown request queue"), "{e:#}");
}

fn shutdown_runner(app: &FakeApp) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shutdown_runner"));
    c.args([
        "--grpc-port",
        &app.addr.port().to_string(),
        "--host-addr",
        "127.0.0.1",
    ]);
    c
}

#[test]
fn binary_exits_zero_when_the_stream_ends() {
    let mut app = FakeApp::start();
    drop(app.shutdown.take());
    let out = shutdown_runner(&app).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn binary_exits_non_zero_when_the_app_dies() {
    let mut app = FakeApp::start();
    let mut child = shutdown_runner(&app)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    app.kill();
    let out = child_wait(&mut child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(1));
}

#[test]
fn binary_with_a_stale_port_file_fails_naming_the_service() {
    let port = dead_port();
    let (_d, f) = port_file();
    std::fs::write(&f, port.to_string()).unwrap();
    let start = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_shutdown_runner"))
        .args(["--host-addr", "127.0.0.1", "--grpc-port-file"])
        .arg(&f)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not reachable after 10 attempts"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    // About 10 × 1 s, as the contract says.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(30),
        "{took:?}"
    );
}

fn child_wait(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("agent still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
