//! Scenario files (`cases/*.toml`) and their golden snapshots
//! (`snapshots/`); the runner lives in `avf_harness::scenario`, the test
//! target (`tests/scenarios.rs`) turns each file into a nextest test.

use std::path::PathBuf;

/// `scenarios/cases/`.
pub fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cases")
}

/// `scenarios/snapshots/`, or `$AVF_SNAPSHOT_DIR` (e.g. to try a
/// throwaway payload without touching the committed goldens).
pub fn snapshots_dir() -> PathBuf {
    std::env::var_os("AVF_SNAPSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("snapshots"))
}
