//! forwarder_guest_launcher against a fake app: port reports from the host's
//! real sockets, and forwarding items carried through the copy loop.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use avf_agents::forward::{self, Endpoint};
use avf_agents::launcher;
use avf_agents::listeners::Watcher;
use avf_agents::proto::{
    ForwardingRequestItem, ReportVmActivePortsRequest, ReportVmActivePortsRequestInt32,
};
use avf_agents::wire_form::{self, ActivePortReason, Int32Reason, PortReportForm, PROBE_DEADLINE};
use common::{channel, client, wire_fields, Era, FakeApp, CMDLINE_NO_SERVER_PORT};

/// The latest report containing / not containing `port`, after `since`.
fn seen(app: &FakeApp, port: u16, since: Instant) -> Option<(Instant, bool, String)> {
    app.reports()
        .into_iter()
        .rev()
        .find(|(t, _)| *t >= since)
        .map(|(t, ports)| {
            let hit = ports.iter().find(|p| p.port == i32::from(port));
            (
                t,
                hit.is_some(),
                hit.map(|p| p.comm.clone()).unwrap_or_default(),
            )
        })
}

async fn wait_report(app: &FakeApp, port: u16, present: bool, since: Instant) -> Duration {
    loop {
        if let Some((t, hit, _)) = seen(app, port, since) {
            if hit == present {
                return t - since;
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(3),
            "port {port} present={present} not reported; reports: {:?}",
            app.reports().iter().map(|(_, p)| p).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_appears_within_a_second_and_goes_away() {
    let app = FakeApp::start();
    let (_d, cmdline) = common::cmdline(CMDLINE_NO_SERVER_PORT);
    let ch = channel(&app).await;
    let started = Instant::now();
    let reporter = tokio::spawn(launcher::report_ports(
        ch,
        Watcher::system(),
        launcher::POLL_INTERVAL,
        cmdline,
        launcher::ReportedPorts::default(),
    ));
    // The snapshot at start comes at once, even with nothing new.
    while app.reports().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no initial report"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let initial = app.reports()[0].1.clone();
    assert!(
        initial.iter().all(|p| p.port >= 1024 && p.port != 7681),
        "{initial:?}"
    );

    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let opened = Instant::now();
    let latency = wait_report(&app, port, true, opened).await;
    assert!(
        latency <= Duration::from_secs(1),
        "appeared after {latency:?}"
    );
    let (_, _, comm) = seen(&app, port, opened).unwrap();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(comm, me.trim_end());
    drop(l);
    let closed = Instant::now();
    let latency = wait_report(&app, port, false, closed).await;
    assert!(
        latency <= Duration::from_secs(1),
        "went away after {latency:?}"
    );

    // Reports only on change: no two consecutive reports are the same
    // (other processes on this host may open ports meanwhile; that is fine).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reports = app.reports();
    for pair in reports.windows(2) {
        assert_ne!(pair[0].1, pair[1].1, "report repeated without a change");
    }
    reporter.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporter_fails_when_the_app_dies() {
    let mut app = FakeApp::start();
    let (_d, cmdline) = common::cmdline(CMDLINE_NO_SERVER_PORT);
    let ch = channel(&app).await;
    let reporter = tokio::spawn(launcher::report_ports(
        ch,
        Watcher::system(),
        Duration::from_millis(50),
        cmdline,
        launcher::ReportedPorts::default(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.kill();
    // The next change triggers an RPC, which fails.
    let _l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), reporter)
        .await
        .unwrap()
        .unwrap();
    assert!(format!("{:#}", r.unwrap_err()).contains("ReportVmActivePorts"));
}

/// Starts the reporter against `app` with a kernel command line `cmdline`
/// and a fresh listener; returns when `arrived` holds (3 s after the
/// probe's deadline at most).
async fn report_until<F>(app: &FakeApp, cmdline: &str, arrived: F) -> (Instant, u16)
where
    F: Fn(&FakeApp, u16) -> bool,
{
    let (d, cmdline) = common::cmdline(cmdline);
    let ch = channel(app).await;
    let started = Instant::now();
    let reporter = tokio::spawn(launcher::report_ports(
        ch,
        Watcher::system(),
        launcher::POLL_INTERVAL,
        cmdline,
        launcher::ReportedPorts::default(),
    ));
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    while !arrived(app, port) {
        assert!(
            started.elapsed() < PROBE_DEADLINE + Duration::from_secs(3),
            "port {port} not reported; raw reports: {:?}",
            app.raw_reports()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reporter.abort();
    drop((l, d));
    (started, port)
}

/// The ports of an `ActivePort`-form report, checking its wire form:
/// field 1, length-delimited, only.
fn active_ports(raw: &[u8]) -> Vec<i32> {
    let fields = wire_fields(raw);
    assert!(fields.iter().all(|f| *f == (1, 2)), "{fields:?}");
    let m = ReportVmActivePortsRequest::decode(raw).unwrap();
    m.ports.iter().map(|p| p.port).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_15_qpr2_app_gets_unpacked_int32_reports() {
    let app = FakeApp::start_era(Era::Java);
    let (started, port) = report_until(&app, CMDLINE_NO_SERVER_PORT, |app, port| {
        app.int32_reports()
            .iter()
            .any(|(_, p)| p.contains(&i32::from(port)))
    })
    .await;
    assert_eq!(app.balloon_opens(), 1, "one probe per connection");
    // UNIMPLEMENTED comes at once: the first report does not wait out the deadline.
    let first = app.int32_reports()[0].0;
    assert!(first - started < PROBE_DEADLINE, "{:?}", first - started);
    let raws = app.raw_reports();
    assert_eq!(raws.len(), app.int32_reports().len());
    for (raw, (_, ports)) in raws.iter().zip(app.int32_reports()) {
        // One varint (field 1, wire type 0) per port: unpacked.
        let fields = wire_fields(raw);
        assert_eq!(fields, vec![(1, 0); ports.len()], "{raw:?}");
        assert_eq!(
            ReportVmActivePortsRequestInt32::decode(&raw[..])
                .unwrap()
                .ports,
            ports
        );
        assert!(ports.iter().all(|p| *p >= 1024), "{ports:?}");
    }
    let (_, last) = app.int32_reports().last().unwrap().clone();
    assert!(last.contains(&i32::from(port)));
    assert!(app.reports().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_16_app_gets_active_port_reports() {
    let app = FakeApp::start_era(Era::ActivePort);
    let (started, port) = report_until(&app, CMDLINE_NO_SERVER_PORT, |app, port| {
        app.reports()
            .iter()
            .any(|(_, p)| p.iter().any(|a| a.port == i32::from(port)))
    })
    .await;
    assert_eq!(app.balloon_opens(), 1, "one probe per connection");
    // The queue opens at once: no wait for the deadline either.
    let first = app.reports()[0].0;
    assert!(first - started < PROBE_DEADLINE, "{:?}", first - started);
    for raw in app.raw_reports() {
        active_ports(&raw);
    }
    let (_, last) = app.reports().last().unwrap().clone();
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let mine = last.iter().find(|p| p.port == i32::from(port)).unwrap();
    assert_eq!(mine.comm, me.trim_end());
    assert!(app.int32_reports().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_balloon_queue_means_active_port_after_the_deadline() {
    let app = FakeApp::start_era(Era::SilentBalloon);
    let (started, _) = report_until(&app, CMDLINE_NO_SERVER_PORT, |app, port| {
        app.reports()
            .iter()
            .any(|(_, p)| p.iter().any(|a| a.port == i32::from(port)))
    })
    .await;
    assert_eq!(app.balloon_opens(), 1);
    let first = app.reports()[0].0 - started;
    assert!(
        first >= PROBE_DEADLINE - Duration::from_millis(100),
        "first report after {first:?}, before the probe's deadline"
    );
    for raw in app.raw_reports() {
        active_ports(&raw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_server_port_on_the_cmdline_means_active_port_without_a_probe() {
    // Even an app that would answer UNIMPLEMENTED is not asked.
    let app = FakeApp::start_era(Era::Java);
    let cmdline = "root=/dev/vda1 console=ttyS0 debian_server_port=41234 hostname=debian\n";
    let (_, port) = report_until(&app, cmdline, |app, port| {
        app.raw_reports()
            .iter()
            .any(|raw| active_ports(raw).contains(&i32::from(port)))
    })
    .await;
    assert_eq!(app.balloon_opens(), 0, "probed despite the cmdline");
    // What the int32 decoder makes of it: the ActivePort tag byte 8 shows
    // up as a "port" (why the form matters, docs/terminal-app.md §12.5).
    let (_, garbage) = app.int32_reports().last().unwrap().clone();
    assert!(garbage.contains(&8), "{garbage:?}");
    assert!(garbage.contains(&i32::from(port)), "{garbage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_the_reason_per_era() {
    let short = Duration::from_millis(300);
    let cases = [
        (
            Era::Java,
            PortReportForm::Int32(Int32Reason::BalloonQueueUnimplemented),
        ),
        (
            Era::ActivePort,
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueOpened),
        ),
        (
            Era::SilentBalloon,
            PortReportForm::ActivePort(ActivePortReason::BalloonQueueDeadline),
        ),
    ];
    for (era, want) in cases {
        let app = FakeApp::start_era(era);
        let ch = channel(&app).await;
        let started = Instant::now();
        assert_eq!(wire_form::probe(ch, short).await, want, "{era:?}");
        assert!(started.elapsed() < short + Duration::from_millis(500));
        assert_eq!(app.balloon_opens(), 1, "{era:?}");
    }
    // A dead app is "anything else": ActivePort, naming the status (or,
    // on a loaded host where reconnecting outlasts the probe, the deadline).
    let mut app = FakeApp::start_era(Era::Java);
    let ch = channel(&app).await;
    app.kill();
    let got = wire_form::probe(ch, short).await;
    assert!(
        matches!(
            got,
            PortReportForm::ActivePort(
                ActivePortReason::BalloonQueueStatus { .. }
                    | ActivePortReason::BalloonQueueDeadline
            )
        ),
        "{got:?}"
    );
}

/// An echo server standing for the guest's service.
async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    port
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_items_reach_the_guest_service() {
    let mut app = FakeApp::start();
    let guest_port = echo_server().await;
    // The host's side of vsock port V, played by a TCP listener here (this
    // host has no vsock loopback); the launcher's spawn maps vsock:2:V to it.
    let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_addr = host.local_addr().unwrap();
    let vsock_port = 40_001;
    let routes = HashMap::from([(vsock_port, host_addr)]);
    let cl = client(&app).await;
    let mut spawned = Vec::new();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let forwarding = tokio::spawn(launcher::serve_forwarding(
        cl,
        2048,
        launcher::ReportedPorts::from_ports([guest_port]),
        move |local, remote| {
            seen_tx.send((local.clone(), remote.clone())).unwrap();
            let Endpoint::Vsock { cid: 2, port } = remote else {
                anyhow::bail!("unexpected remote {remote}");
            };
            let remote = Endpoint::Tcp(*routes.get(&port).expect("known vsock port"));
            spawned.push(tokio::spawn(async move {
                forward::forward(&local, &remote).await
            }));
            Ok(())
        },
    ));
    // A bad item is skipped, the queue goes on.
    app.forwarding
        .send(Ok(ForwardingRequestItem {
            guest_tcp_port: 70_000,
            vsock_port: 1,
        }))
        .await
        .unwrap();
    app.forwarding
        .send(Ok(ForwardingRequestItem {
            guest_tcp_port: i32::from(guest_port),
            vsock_port: vsock_port as i32,
        }))
        .await
        .unwrap();
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), host.accept())
        .await
        .unwrap()
        .unwrap();
    let (local, remote) = seen_rx.recv().await.unwrap();
    assert_eq!(local, Endpoint::Tcp(([127, 0, 0, 1], guest_port).into()));
    assert_eq!(
        remote,
        Endpoint::Vsock {
            cid: 2,
            port: vsock_port
        }
    );
    assert_eq!(app.record.lock().unwrap().forwarding_cids, vec![2048]);

    let data = pattern(1 << 20);
    let (mut r, mut w) = conn.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let (_, n) = tokio::join!(send, recv);
    assert_eq!(n.unwrap(), data.len());
    assert!(back == data, "echoed bytes differ");

    // The app ends the queue: the launcher's forwarding half returns Ok.
    let tx = std::mem::replace(&mut app.forwarding, tokio::sync::mpsc::channel(1).0);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), forwarding)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A forwarder runs as nobody (when the launcher is root), with no
/// supplementary group, no capability and no_new_privs: it only needs
/// AF_VSOCK and TCP to 127.0.0.1, not the launcher's root and
/// CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarders_run_unprivileged() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    // nobody must reach the script and write its report.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = d.path().join("status");
    std::fs::write(&out, "").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = d.path().join("fake_forwarder");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat /proc/$$/status > {}\necho \"$@\" >> {}\n",
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let local = Endpoint::Tcp(([127, 0, 0, 1], 8080).into());
    let remote = Endpoint::Vsock { cid: 2, port: 5000 };
    launcher::spawn_forwarder(&script, &local, &remote).unwrap();
    let start = Instant::now();
    let status = loop {
        let s = std::fs::read_to_string(&out).unwrap();
        if s.contains("--remote") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "forwarder did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let field = |k: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no {k} in {status}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let me = std::fs::read_to_string("/proc/self/status").unwrap();
    let my_uid = me
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let want_uid = if my_uid == "0" {
        let (uid, _) = avf_agents::privdrop::lookup_user("nobody").unwrap_or((65534, 65534));
        uid.to_string()
    } else {
        my_uid
    };
    assert_eq!(field("Uid"), vec![want_uid.clone(); 4], "{status}");
    assert!(!field("Gid").contains(&"0".to_string()), "{status}");
    assert!(field("Groups").is_empty(), "{status}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(cap), vec!["0000000000000000"], "{cap}: {status}");
    }
    assert_eq!(field("NoNewPrivs"), vec!["1"], "{status}");
    assert!(status.contains("--local 127.0.0.1:8080 --remote vsock:2:5000"));
}

/// The launcher forwards only to ports it reported as active: a request
/// for any other guest port (a local service the user did not see offered,
/// bound to 127.0.0.1 only, say) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reported_ports_are_forwarded() {
    let app = FakeApp::start();
    let (_d, cmdline) = common::cmdline(CMDLINE_NO_SERVER_PORT);
    let ch = channel(&app).await;
    let listening = echo_server().await;
    // A port nothing listens on: never in a report.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawned = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = spawned.clone();
    let launcher = tokio::spawn(launcher::run(
        ch,
        2048,
        Watcher::system(),
        launcher::POLL_INTERVAL,
        cmdline,
        move |local, _remote| {
            let Endpoint::Tcp(a) = local else {
                anyhow::bail!("unexpected local {local}");
            };
            rec.lock().unwrap().push(a.port());
            Ok(())
        },
    ));
    let start = Instant::now();
    while !app
        .reports()
        .iter()
        .any(|(_, p)| p.iter().any(|a| a.port == i32::from(listening)))
    {
        assert!(
            start.elapsed() < PROBE_DEADLINE + Duration::from_secs(3),
            "port {listening} not reported"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for port in [silent, listening] {
        app.forwarding
            .send(Ok(ForwardingRequestItem {
                guest_tcp_port: i32::from(port),
                vsock_port: 40_002,
            }))
            .await
            .unwrap();
    }
    let start = Instant::now();
    while !spawned.lock().unwrap().contains(&listening) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "reported port not forwarded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *spawned.lock().unwrap(),
        vec![listening],
        "forwarded a port never reported ({silent})"
    );
    launcher.abort();
}
