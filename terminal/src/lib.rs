//! The Terminal app, played on the host.
