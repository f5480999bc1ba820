//! arch-avf harness.
