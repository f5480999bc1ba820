//! The tests' fake Terminal app as a program, for trying the agents by hand
//! (e.g. measuring their idle RSS): serves DebianService on 127.0.0.1, writes
//! its port to the given file, keeps every queue open and prints the port
//! reports it gets.
//!
//!     cargo run -p avf-agents --example fake_app -- /tmp/port [seconds]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port_file = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: fake_app <port-file> [seconds]"))?;
    let secs: u64 = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("argument 2: {s:?} is not a number of seconds"))?,
        None => 60,
    };
    let app = common::FakeApp::start();
    std::fs::write(&port_file, app.addr.port().to_string())?;
    eprintln!("DebianService on {}; port written to {port_file}", app.addr);
    let mut seen = 0;
    for _ in 0..secs * 10 {
        std::thread::sleep(Duration::from_millis(100));
        let reports = app.reports();
        for (_, ports) in &reports[seen..] {
            eprintln!("ReportVmActivePorts {ports:?}");
        }
        seen = reports.len();
    }
    Ok(())
}
