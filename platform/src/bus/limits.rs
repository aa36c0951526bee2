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

    fn partition_of(&self, topic: Topic, key: &str) -> Option<u32> {
        self.inner.partition_of(topic, key)
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
