//! The largest record a consumer hands to its handler, per topic. A larger one is dead-lettered with
//! `record_too_large: ...` before any decoder sees it, so the cost of one record is bounded by
//! configuration rather than by what a producer chose to send.
//!
//! [`LimitedBus`] wraps any bus adapter, so the embedded log and Kafka enforce the same limits.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_schemas::topics::{self, Topic};
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, BusRecord, Delivery, Handler, HandlerError};

/// The default largest record on every topic: 1 MiB, Kafka's own default `message.max.bytes`. An order
/// of the most lines intake accepts (100) encodes to a few KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The largest record per topic: one default, and overrides by topic name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLimits {
    pub default_bytes: usize,
    pub per_topic: BTreeMap<String, usize>,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self { default_bytes: DEFAULT_MAX_RECORD_BYTES, per_topic: BTreeMap::new() }
    }
}

impl RecordLimits {
    /// The largest record allowed on `topic`.
    pub fn for_topic(&self, topic: &str) -> usize {
        self.per_topic.get(topic).copied().unwrap_or(self.default_bytes)
    }

    /// Parses one override, `TOPIC=BYTES`, for a topic orderflow knows.
    pub fn parse_override(s: &str) -> Result<(String, usize), String> {
        let (topic, bytes) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected TOPIC=BYTES"))?;
        let topic = topic.trim();
        if !topics::ALL.iter().any(|t| t.name == topic) {
            let known: Vec<&str> = topics::ALL.iter().map(|t| t.name).collect();
            return Err(format!("unknown topic {topic:?}; one of {}", known.join(", ")));
        }
        let bytes: usize =
            bytes.trim().parse().map_err(|_| format!("{s:?}: the limit must be a whole number of bytes"))?;
        if bytes == 0 {
            return Err(format!("{s:?}: the limit must be at least 1 byte"));
        }
        Ok((topic.to_owned(), bytes))
    }
}

/// A bus whose consumers dead-letter records over the topic's limit instead of handling them.
#[derive(Debug)]
pub struct LimitedBus {
    inner: Arc<dyn Bus>,
    limits: RecordLimits,
}

impl LimitedBus {
    pub fn new(inner: Arc<dyn Bus>, limits: RecordLimits) -> Self {
        Self { inner, limits }
    }
}

#[async_trait]
impl Bus for LimitedBus {
    async fn publish(&self, records: Vec<BusRecord>) -> Result<(), BusError> {
        self.inner.publish(records).await
    }

    async fn consume(
        &self,
        group: &str,
        topic: Topic,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let checked = Arc::new(SizeChecked { inner: handler, max_bytes: self.limits.for_topic(topic.name) });
        self.inner.consume(group, topic, checked, shutdown).await
    }

    async fn ready(&self) -> Result<(), BusError> {
        self.inner.ready().await
    }

    async fn progress(&self, group: &str, topic: Topic) -> Result<Vec<super::PartitionProgress>, BusError> {
        self.inner.progress(group, topic).await
    }
}

struct SizeChecked {
    inner: Arc<dyn Handler>,
    max_bytes: usize,
}

impl SizeChecked {
    fn check(&self, d: &Delivery) -> Result<(), HandlerError> {
        if d.payload.len() > self.max_bytes {
            metrics::counter!("orderflow_records_too_large_total", "topic" => d.topic.clone()).increment(1);
            return Err(HandlerError::Poison(format!(
                "record_too_large: {} bytes, more than the {} allowed on {}",
                d.payload.len(),
                self.max_bytes,
                d.topic
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for SizeChecked {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        self.check(delivery)?;
        self.inner.handle(delivery).await
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    /// A batch with an oversized record fails as a whole; the policy then handles its records one by
    /// one, which dead-letters that record and handles the rest.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<(), HandlerError> {
        deliveries.iter().try_for_each(|d| self.check(d))?;
        self.inner.handle_batch(deliveries).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendOptions, Backends};

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
        let backends = Backends::open(&crate::BackendUrl::Embedded, &crate::BackendUrl::Embedded, dir.path(), &options)
            .await
            .unwrap();
        let bus = backends.bus;
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
        let reason = dead[0].headers.iter().find(|(k, _)| k == super::super::policy::ERROR_HEADER).unwrap();
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
        let limits = RecordLimits {
            default_bytes: 10,
            per_topic: [("orderflow.orders.v1".to_owned(), 20)].into_iter().collect(),
        };
        assert_eq!(limits.for_topic("orderflow.orders.v1"), 20);
        assert_eq!(limits.for_topic("orderflow.payments.v1"), 10);
    }
}
