//! Image artefact checks: helpers shared by the tests in `tests/`, which open
//! the payloads `image-build/build-all.sh` produced (no boot) and run the
//! build scripts against bad inputs.

pub mod artefact;
pub mod debugfs;
pub mod exec;

pub use artefact::{Artefact, BuildInfo, Partition};
pub use exec::{repo_root, run_ok, Outcome};
