//! Scenario definitions.
