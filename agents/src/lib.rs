//! Guest agents.
