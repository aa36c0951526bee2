//! The conformance suites: behaviour every adapter of a port must have, written once. Each adapter's
//! test file calls every function here with its own adapter (see `platform/tests/`). A behaviour the
//! embedded adapter has and another lacks, or the reverse, is a bug.
//!
//! Each check uses fresh ids (a random run prefix), so several can share one real server.
//! They panic with a message on failure, like any test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod bus;
pub mod ledger;
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

fn test_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The test servers' logins as connection settings: `ORDERFLOW_TEST_KAFKA_USERNAME`, `_PASSWORD` and
/// `_SASL_MECHANISM`, `ORDERFLOW_TEST_CQL_USERNAME` and `_PASSWORD` (`scripts/test-env/up` prints them:
/// its Kafka requires SCRAM logins, its Cassandra a password). None set: no logins.
pub fn test_connections() -> crate::connection::Connections {
    crate::connection::Connections {
        kafka_sasl_mechanism: test_var("ORDERFLOW_TEST_KAFKA_SASL_MECHANISM")
            .map(|m| crate::connection::SaslMechanism::parse(&m).expect("ORDERFLOW_TEST_KAFKA_SASL_MECHANISM")),
        kafka_username: test_var("ORDERFLOW_TEST_KAFKA_USERNAME"),
        kafka_password: test_var("ORDERFLOW_TEST_KAFKA_PASSWORD").map(crate::secret::Secret::new),
        cql_username: test_var("ORDERFLOW_TEST_CQL_USERNAME"),
        cql_password: test_var("ORDERFLOW_TEST_CQL_PASSWORD").map(crate::secret::Secret::new),
        ..Default::default()
    }
}

/// How the test Kafka is logged in to (see [`test_connections`]).
pub fn test_kafka_security() -> crate::connection::KafkaSecurity {
    test_connections().kafka_security().expect("the ORDERFLOW_TEST_KAFKA_* login")
}

/// How the test CQL database is logged in to (see [`test_connections`]).
pub fn test_cql_security() -> crate::connection::CqlSecurity {
    test_connections().cql_security().expect("the ORDERFLOW_TEST_CQL_* login")
}

/// The test servers' logins as the environment of an `orderflow` process (`ORDERFLOW_KAFKA_USERNAME`,
/// `ORDERFLOW_CQL_PASSWORD`, ...), for tests that start the binary.
pub fn test_engine_env() -> Vec<(&'static str, String)> {
    [
        ("ORDERFLOW_TEST_KAFKA_SASL_MECHANISM", "ORDERFLOW_KAFKA_SASL_MECHANISM"),
        ("ORDERFLOW_TEST_KAFKA_USERNAME", "ORDERFLOW_KAFKA_USERNAME"),
        ("ORDERFLOW_TEST_KAFKA_PASSWORD", "ORDERFLOW_KAFKA_PASSWORD"),
        ("ORDERFLOW_TEST_CQL_USERNAME", "ORDERFLOW_CQL_USERNAME"),
        ("ORDERFLOW_TEST_CQL_PASSWORD", "ORDERFLOW_CQL_PASSWORD"),
    ]
    .into_iter()
    .filter_map(|(test, product)| test_var(test).map(|v| (product, v)))
    .collect()
}

/// The CA that signed the test servers' TLS certificates (`ORDERFLOW_TEST_TLS_CA`; `scripts/test-env/up`
/// makes it), when they offer TLS.
pub fn test_tls_ca() -> Option<std::path::PathBuf> {
    test_var("ORDERFLOW_TEST_TLS_CA").map(std::path::PathBuf::from)
}

/// The address of the test Kafka's TLS listener (`ORDERFLOW_TEST_KAFKA_TLS`), when it has one.
pub fn test_kafka_tls() -> Option<String> {
    test_var("ORDERFLOW_TEST_KAFKA_TLS")
}

/// Whether the test CQL database offers TLS on its port (`ORDERFLOW_TEST_CQL_TLS=1`).
pub fn test_cql_offers_tls() -> bool {
    test_var("ORDERFLOW_TEST_CQL_TLS").is_some_and(|v| v == "1")
}
