//! The bounded fuzz runner the fuzz tests share (this crate's and the
//! harness's, through the `fuzzing` feature): a fixed budget of random
//! inputs per target under plain `cargo test`, on stable, in seconds.
//!
//! proptest drives it (a panic in the body is caught, shrunk to a small
//! input and reported); each run prints its target's executions and time.
//! `AVF_FUZZ_CASES=<n>` runs every target `n` cases instead, for a longer
//! hunt by hand.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub use proptest;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `body` on `cases` inputs from `strategy` (or `AVF_FUZZ_CASES`);
/// panics with the shrunk input if the body fails or panics on one.
/// Prints `fuzz <name>: <n> executions in <time>`; returns `n`.
pub fn run<S>(
    name: &str,
    cases: u32,
    strategy: S,
    body: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = std::env::var("AVF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let config = Config {
        cases,
        // The targets' own regression tests keep what a run found.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let execs = AtomicU64::new(0);
    let start = Instant::now();
    let got = TestRunner::new(config).run(&strategy, |v| {
        execs.fetch_add(1, Ordering::Relaxed);
        body(v)
    });
    let n = execs.load(Ordering::Relaxed);
    eprintln!("fuzz {name}: {n} executions in {:.2?}", start.elapsed());
    if let Err(e) = got {
        panic!("fuzz {name}: {e}");
    }
    n
}
