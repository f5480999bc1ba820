//! The ttyd client against an in-test stand-in for ttyd: TLS that requires a
//! client certificate signed by `ca.crt`, WebSocket subprotocol `tty` on
//! `/ws`, ttyd 1.7 framing, and a real `bash` behind it with tty-like echo,
//! colour escapes and output split into tiny frames.

use std::time::Duration;

use avf_terminal::cert::ClientCert;
use avf_terminal::ttyd::{probe, TtydClient, TtydError};
use avf_terminal::GuestNet;
use tokio::net::TcpListener;

mod common;
use common::{assert_only_app_cert_accepted, assert_run, fake_ttyd, ready_client};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn runs_commands_and_reports_exit_codes() {
    let app = ClientCert::generate("avf-terminal").unwrap();
    let (addr, seen) = fake_ttyd(app.cert_der().clone()).await;
    let mut c = ready_client(addr, &app, T).await;

    let hello = seen.lock().unwrap().hello.clone().unwrap();
    assert_eq!(hello["AuthToken"], "");
    assert_eq!(hello["columns"], 400);
    assert_eq!(hello["rows"], 50);
    assert_eq!(c.title(), Some("bash (avf-guest)"));
    assert_eq!(c.preferences(), Some("{}"));

    assert_run(&mut c, "echo hello; echo oops >&2", "hello\noops\n", 0, T).await;
    assert_run(&mut c, "printf 'no newline'; false", "no newline", 1, T).await;
    assert_run(
        &mut c,
        "echo 'single quotes' \"and AVFE_1:0\"; (exit 42)",
        "single quotes and AVFE_1:0\n",
        42,
        T,
    )
    .await;

    let out = c.run("sleep 0 & wait # trailing comment", T).await.unwrap();
    assert_eq!(
        out,
        avf_terminal::ttyd::CommandOutput {
            output: String::new(),
            exit_code: 0
        }
    );

    c.resize(120, 40).await.unwrap();
    let out = c.run("true", T).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(
        seen.lock().unwrap().resizes,
        vec![serde_json::json!({"columns": 120, "rows": 40})]
    );
    assert!(c.transcript().contains("hello"));

    let err = c
        .run("sleep 5", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, TtydError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("sleep 5"), "{err}");
    c.close().await;
}

#[tokio::test]
async fn refuses_missing_or_foreign_client_certificates() {
    let app = ClientCert::generate("avf-terminal").unwrap();
    let other = ClientCert::generate("avf-terminal").unwrap();
    let (addr, _) = fake_ttyd(app.cert_der().clone()).await;

    assert_only_app_cert_accepted(addr, &app, &other, T).await;

    let err = TtydClient::connect(&GuestNet::Current, addr, &other, T).await;
    match err {
        Err(TtydError::TlsRefused { .. }) => {}
        Err(e) => panic!("expected a TLS refusal, got {e}"),
        Ok(_) => panic!("a foreign certificate was let in"),
    }
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error_not_a_refusal() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let app = ClientCert::generate("x").unwrap();
    let err = probe(&GuestNet::Current, addr, Some(&app), T)
        .await
        .unwrap_err();
    assert!(matches!(err, TtydError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
