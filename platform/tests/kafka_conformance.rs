//! The bus conformance suite against a real Apache Kafka (`ORDERFLOW_TEST_KAFKA=host:port`; started by
//! `scripts/test-env/up`, which the README test command runs).

use std::sync::Arc;

use orderflow_platform::Bus;
use orderflow_platform::conformance::{bus, real_engine};
use orderflow_platform::kafka::{KafkaBus, KafkaOptions};

async fn kafka() -> Option<Arc<dyn Bus>> {
    let addr = real_engine("ORDERFLOW_TEST_KAFKA")?;
    let bus = KafkaBus::connect(KafkaOptions { bootstrap: vec![addr], replication_factor: 1 }).expect("connect");
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
);
