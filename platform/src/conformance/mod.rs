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

/// The address of a real server for an adapter's conformance tests, from `var` (for example
/// `ORDERFLOW_TEST_KAFKA`). Unset: when `ORDERFLOW_REQUIRE_REAL_ENGINES=1` (the README test command
/// sets it) this fails the test, so CI can never silently skip the real engines; otherwise it prints
/// a loud SKIPPED line and returns `None`, so `cargo test` works on a machine without them.
pub fn real_engine(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ if std::env::var("ORDERFLOW_REQUIRE_REAL_ENGINES").is_ok_and(|v| v == "1") => {
            panic!("{var} is not set but ORDERFLOW_REQUIRE_REAL_ENGINES=1: start the servers with scripts/test-env/up")
        }
        _ => {
            eprintln!("SKIPPED: set {var}=HOST:PORT (or run ./scripts/test) to run these checks against a real server");
            None
        }
    }
}
