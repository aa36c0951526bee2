//! The record-size limits ([`LimitedBus`]) on the embedded log: an oversized record is dead-lettered with
//! its reason and the records around it are handled.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::backend::BackendOptions;
use orderflow_platform::bus::limits::{LimitedBus, RecordLimits};
use orderflow_platform::bus::{Bus, BusRecord, Delivery, Handler, HandlerError, policy};
use orderflow_schemas::topics::{self, Topic};
use tokio_util::sync::CancellationToken;

struct Collect(std::sync::Mutex<Vec<Delivery>>);

#[async_trait]
impl Handler for Collect {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        self.0.lock().map_err(|_| HandlerError::Poison("poisoned lock".into()))?.push(d.clone());
        Ok(())
    }
}

async fn collect(bus: &Arc<dyn Bus>, group: &str, topic: Topic, want: usize) -> Vec<Delivery> {
    let seen = Arc::new(Collect(Default::default()));
    let stop = CancellationToken::new();
    let consumer = tokio::spawn({
        let (bus, group, seen, stop) = (Arc::clone(bus), group.to_owned(), Arc::clone(&seen), stop.clone());
        async move { bus.consume(&group, topic, seen, stop).await }
    });
    for _ in 0..500 {
        if seen.0.lock().unwrap().len() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.cancel();
    consumer.await.unwrap().unwrap();
    seen.0.lock().unwrap().clone()
}

#[tokio::test]
async fn a_record_over_its_topics_limit_is_dead_lettered_and_the_rest_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let options = BackendOptions {
        record_limits: RecordLimits {
            default_bytes: 1000,
            per_topic: [(topics::ORDERS.name.to_owned(), 8)].into_iter().collect(),
        },
        ..BackendOptions::default()
    };
    let embedded = orderflow_embedded::open(dir.path(), &options).unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LimitedBus::new(embedded.bus, options.record_limits.clone()));
    let record = |topic, payload: &[u8]| BusRecord::new(topic, "k", payload.to_vec());
    bus.publish(vec![
        record(topics::ORDERS, b"small"),
        record(topics::ORDERS, b"nine bytes"),
        record(topics::ORDERS, b"eight b."),
        record(topics::PAYMENTS, b"nine bytes"),
    ])
    .await
    .unwrap();
    let handled = collect(&bus, "g-orders", topics::ORDERS, 2).await;
    let payloads: Vec<&[u8]> = handled.iter().map(|d| d.payload.as_slice()).collect();
    assert_eq!(payloads, [b"small".as_slice(), b"eight b."], "the oversized record was handed over");
    // The default applies where no override is set.
    assert_eq!(collect(&bus, "g-payments", topics::PAYMENTS, 1).await.len(), 1);
    let dead = collect(&bus, "g-dead", topics::DEAD_LETTER, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"nine bytes");
    let reason = dead[0].headers.iter().find(|(k, _)| k == policy::ERROR_HEADER).unwrap();
    assert_eq!(reason.1, "record_too_large: 10 bytes, more than the 8 allowed on orderflow.orders.v1");
}

#[test]
fn overrides_name_known_topics_and_positive_sizes() {
    assert_eq!(
        RecordLimits::parse_override("orderflow.partner-orders.v1=65536"),
        Ok(("orderflow.partner-orders.v1".to_owned(), 65536))
    );
    assert!(RecordLimits::parse_override("orderflow.nope.v1=1").unwrap_err().contains("unknown topic"));
    assert!(RecordLimits::parse_override("orderflow.orders.v1=0").is_err());
    assert!(RecordLimits::parse_override("orderflow.orders.v1").is_err());
    assert!(RecordLimits::parse_override("orderflow.orders.v1=1MiB").is_err());
    let limits =
        RecordLimits { default_bytes: 10, per_topic: [("orderflow.orders.v1".to_owned(), 20)].into_iter().collect() };
    assert_eq!(limits.for_topic("orderflow.orders.v1"), 20);
    assert_eq!(limits.for_topic("orderflow.payments.v1"), 10);
}
