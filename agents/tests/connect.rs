//! Waiting for the port file and reaching the service.
mod common;

use std::time::{Duration, Instant};

use avf_agents::args::{HostSource, PortSource};
use avf_agents::connect::{connect, WaitPolicy};
use common::{dead_port, port_file, write_port_later, FakeApp};

fn policy(attempts: u32) -> WaitPolicy {
    WaitPolicy {
        attempts,
        interval: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(1),
    }
}

/// The port file, with a kernel command line that does not carry the
/// port (Android 15 QPR2 and 16).
fn from_file(f: std::path::PathBuf) -> PortSource {
    let cmdline = f.with_file_name("cmdline");
    std::fs::write(&cmdline, "root=/dev/vda1 console=ttyS0\n").unwrap();
    PortSource::CmdlineOrFile { cmdline, file: f }
}

/// Android 17's gRPC mode: the port on the kernel command line wins over
/// a stale file (there is no internal share there to hold one anyway).
#[tokio::test]
async fn the_kernel_command_line_carries_the_port_in_android17() {
    let app = FakeApp::start();
    let (_d, f) = port_file();
    std::fs::write(&f, dead_port().to_string()).unwrap();
    let cmdline = f.with_file_name("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "panic=-1 root=/dev/vda1 debian_server_port={} hostname=debian\n",
            app.addr.port()
        ),
    )
    .unwrap();
    connect(
        &PortSource::CmdlineOrFile { cmdline, file: f },
        &localhost(),
        policy(1),
    )
    .await
    .unwrap();
}

fn localhost() -> HostSource {
    HostSource::Fixed("127.0.0.1".parse().unwrap())
}

#[tokio::test]
async fn missing_file_gives_up_naming_it() {
    let (_d, f) = port_file();
    let start = Instant::now();
    let e = connect(&from_file(f.clone()), &localhost(), policy(3))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("after 3 attempts"), "{msg}");
    assert!(msg.contains(&f.display().to_string()), "{msg}");
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn garbage_gives_up_with_the_content() {
    let (_d, f) = port_file();
    std::fs::write(&f, "hello").unwrap();
    let e = connect(&from_file(f), &localhost(), policy(2))
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("\"hello\" is not a TCP port"), "{msg}");
}

#[tokio::test]
async fn file_written_late_is_picked_up() {
    let app = FakeApp::start();
    let (_d, f) = port_file();
    write_port_later(f.clone(), app.addr.port(), Duration::from_millis(350));
    connect(&from_file(f), &localhost(), policy(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn stale_port_then_the_right_one() {
    let app = FakeApp::start();
    let stale = dead_port();
    let (_d, f) = port_file();
    std::fs::write(&f, stale.to_string()).unwrap();
    write_port_later(f.clone(), app.addr.port(), Duration::from_millis(350));
    connect(&from_file(f), &localhost(), policy(10))
        .await
        .unwrap();
}

#[tokio::test]
async fn gateway_source_reads_the_route_table() {
    let d = tempfile::tempdir().unwrap();
    let route = d.path().join("route");
    std::fs::write(
        &route,
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n",
    )
    .unwrap();
    let e = connect(
        &PortSource::Fixed(1),
        &HostSource::Gateway(route.clone()),
        policy(1),
    )
    .await
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("no default IPv4 route"), "{msg}");
    assert!(msg.contains(&route.display().to_string()), "{msg}");
}

/// The AIDL mode's `debian_server_port=0`: no gRPC service this boot. The
/// agents give up at once with the "not retrying" status (exit 78, which
/// their units list in RestartPreventExitStatus=) instead of restarting
/// every ~10 s for the life of the VM.
#[tokio::test]
async fn aidl_mode_port_zero_is_permanent_and_immediate() {
    let (_d, f) = port_file();
    let cmdline = f.with_file_name("cmdline");
    std::fs::write(
        &cmdline,
        "root=/dev/vda1 debian_server_port=0 hostname=debian\n",
    )
    .unwrap();
    let started = Instant::now();
    let e = connect(
        &PortSource::CmdlineOrFile { cmdline, file: f },
        &HostSource::Fixed("127.0.0.1".parse().unwrap()),
        policy(10),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "retried: {e:#}");
    assert!(e.downcast_ref::<avf_agents::Permanent>().is_some(), "{e:#}");
    assert!(format!("{e:#}").contains("debian_server_port=0"), "{e:#}");
}
