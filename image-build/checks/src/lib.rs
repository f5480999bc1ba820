//! Image artefact checks.
