//! The conformance suites: behaviour every adapter of a port must have, written once. Each adapter's
//! test file calls every function here with its own adapter (see `platform/tests/`). A behaviour the
//! embedded adapter has and another lacks, or the reverse, is a bug.
//!
//! Each check uses fresh ids (a random run prefix), so several can share one real server.
//! They panic with a message on failure, like any test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod bus;
pub mod store;

/// A prefix unique to one check, for keys, ids and group names.
pub fn run_id(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
