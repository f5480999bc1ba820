//! Measures what the launcher's listener watcher costs when nothing happens:
//! polls this machine's sockets at the launcher's interval for a while and
//! prints the CPU time used.
//!
//!     cargo run --release -p avf-agents --example watch_cost -- [seconds]
use std::time::{Duration, Instant};

use avf_agents::launcher::POLL_INTERVAL;
use avf_agents::listeners::Watcher;

fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = match std::env::args().nth(1) {
        Some(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("argument 1: {s:?} is not a number of seconds"))?,
        None => 60,
    };
    let mut w = Watcher::system();
    let first = w.snapshot()?;
    let cpu0 = cpu_time();
    let start = Instant::now();
    let mut polls = 0u64;
    let mut last = first.clone();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(POLL_INTERVAL);
        last = w.snapshot()?;
        polls += 1;
    }
    let cpu = cpu_time() - cpu0;
    let wall = start.elapsed();
    println!(
        "{polls} polls in {:.1} s: CPU {:.1} ms ({:.3} % of one core, {:.1} µs/poll); \
         listeners at start {}, at end {}",
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        cpu.as_secs_f64() * 1e6 / polls.max(1) as f64,
        first.len(),
        last.len()
    );
    Ok(())
}
