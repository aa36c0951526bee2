//! The bus conformance suite against a real Apache Kafka (`ORDERFLOW_TEST_KAFKA=host:port`; started by
//! `scripts/test-env/up`, which the README test command runs).

use std::sync::Arc;

use orderflow_kafka::{KafkaBus, KafkaOptions, KafkaSecurity};
use orderflow_platform::Bus;
use orderflow_platform::conformance::{bus, real_engine, test_kafka_security};

/// A bus on the broker at `addr`, connecting as `security` says.
fn bus_at(addr: &str, security: KafkaSecurity) -> KafkaBus {
    KafkaBus::connect(KafkaOptions {
        bootstrap: vec![addr.to_owned()],
        replication_factor: 1,
        min_insync_replicas: None,
        namespace: None,
        security,
    })
    .expect("connect")
}

async fn kafka() -> Option<Arc<dyn Bus>> {
    let addr = real_engine("ORDERFLOW_TEST_KAFKA")?;
    let bus = bus_at(&addr, test_kafka_security());
    bus.ensure_topics().await.expect("Kafka answers and topics exist");
    Some(Arc::new(bus))
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(bus) = kafka().await else { return };
                bus::$name(bus).await;
            }
        )*
    };
}

checks!(
    preserves_per_key_order,
    batches_keep_order_and_fall_back_to_single_records,
    retries_transient_failures_in_place,
    resumes_after_restart_without_loss,
    dead_letters_poison_and_moves_on,
    contains_a_panicking_handler_and_moves_on,
    groups_are_independent,
    refuses_unknown_topics,
    reports_ready_quickly,
    knows_the_partition_of_a_key,
);

/// With no broker answering, the readiness probe says so within its timeout instead of hanging, and
/// the next probes within the cache interval answer at once from the cached result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_fast_when_no_broker_answers() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let bus = bus_at(&format!("127.0.0.1:{port}"), KafkaSecurity::default());
    let started = std::time::Instant::now();
    assert!(bus.ready().await.is_err(), "no broker, yet ready");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "took {:?}", started.elapsed());
    let again = std::time::Instant::now();
    assert!(bus.ready().await.is_err());
    assert!(again.elapsed() < std::time::Duration::from_millis(500), "not cached: took {:?}", again.elapsed());
}

/// The test Kafka (`scripts/test-env/up`) requires a SCRAM login, as a production cluster does: a client
/// without one, or with a wrong password, is not served, and one with the right login is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_serves_only_clients_that_log_in() {
    let Some(addr) = real_engine("ORDERFLOW_TEST_KAFKA") else { return };
    let security = test_kafka_security();
    let Some(sasl) = security.sasl.clone() else {
        eprintln!("SKIPPED: ORDERFLOW_TEST_KAFKA_USERNAME is not set: this Kafka takes clients without a login");
        return;
    };
    let bus_with = |security| bus_at(&addr, security);
    let mut wrong = sasl.clone();
    wrong.login.password = orderflow_platform::secret::Secret::new("not-the-password");
    let wrong = KafkaSecurity { sasl: Some(wrong), tls: None };
    assert!(bus_with(Default::default()).ready().await.is_err(), "served a client without a login");
    assert!(bus_with(wrong).ready().await.is_err(), "served a client with a wrong password");
    bus_with(security).ready().await.expect("the right login is served");
}

/// Over TLS (SASL_SSL, the test Kafka's second listener): a client that checks the broker's certificate
/// against the test CA logs in and is served; one that trusts only the system's roots refuses the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_check_the_brokers_certificate() {
    use orderflow_platform::connection::Tls;
    let Some(_) = real_engine("ORDERFLOW_TEST_KAFKA") else { return };
    let (Some(addr), Some(ca)) =
        (orderflow_platform::conformance::test_kafka_tls(), orderflow_platform::conformance::test_tls_ca())
    else {
        eprintln!(
            "SKIPPED: ORDERFLOW_TEST_KAFKA_TLS / ORDERFLOW_TEST_TLS_CA are not set: this Kafka has no TLS listener"
        );
        return;
    };
    let bus_with = |tls: Tls| bus_at(&addr, KafkaSecurity { sasl: test_kafka_security().sasl, tls: Some(tls) });
    let checked = bus_with(Tls { ca: Some(ca) });
    assert_eq!(checked.options().security.protocol(), "SASL_SSL");
    checked.ready().await.expect("served over TLS with the test CA");
    checked.ensure_topics().await.expect("admin requests over TLS");
    assert!(bus_with(Tls { ca: None }).ready().await.is_err(), "a broker with an untrusted certificate was used");
}
