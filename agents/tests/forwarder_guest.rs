//! The real forwarder_guest binary, with TCP and Unix ends (no vsock here):
//! the same generic copy loop the vsock end uses.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::Duration;

fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                std::io::copy(&mut r, &mut s).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
            });
        }
    });
    port
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 + i / 509) as u8).collect()
}

#[test]
fn unix_remote_round_trip_of_one_mebibyte() {
    let guest_port = echo_server();
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("vsock.sock_5000");
    let host = UnixListener::bind(&sock).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_forwarder_guest"))
        .args(["--local", &format!("127.0.0.1:{guest_port}"), "--remote"])
        .arg(format!("unix:{}", sock.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut conn, _) = host.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data = pattern(1 << 20);
    let mut w = conn.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
        data
    });
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    let data = writer.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    // Both sides closed: the forwarder is done and says so with 0.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn tcp_both_ends() {
    let guest_port = echo_server();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_forwarder_guest"))
        .args([
            "--local",
            &format!("127.0.0.1:{guest_port}"),
            "--remote",
            &host_addr.to_string(),
        ])
        .spawn()
        .unwrap();
    let (mut conn, _) = host.accept().unwrap();
    conn.write_all(b"hello through the forwarder").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut back = String::new();
    conn.read_to_string(&mut back).unwrap();
    assert_eq!(back, "hello through the forwarder");
    assert!(child.wait().unwrap().success());
}

#[test]
fn dead_local_service_closes_the_remote_and_fails() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_forwarder_guest"))
        .args([
            "--local",
            &format!("127.0.0.1:{dead}"),
            "--remote",
            &host_addr.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut conn, _) = host.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        conn.read_to_end(&mut buf).unwrap(),
        0,
        "remote must see EOF"
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("local end 127.0.0.1:{dead}")),
        "{stderr}"
    );
}

#[test]
fn bad_remote_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_forwarder_guest"))
        .args(["--local", "127.0.0.1:1", "--remote", "vsock:host:5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--remote"));
}
