//! The bus port: append records to key-partitioned topics; consume them in consumer groups with the
//! position committed only after the handler's writes and outputs are durable (at-least-once).
//!
//! Adapters: `orderflow_embedded::EmbeddedLog` (the default) and `orderflow_kafka::KafkaBus`. Both run the same
//! [`policy`] around the handler, so retries and dead-lettering behave the same everywhere.

pub mod limits;
pub mod policy;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_schemas::topics::Topic;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("consumer group {group} is already consuming {topic} in this process")]
    AlreadyConsuming { group: String, topic: String },
    #[error("shutting down")]
    ShuttingDown,
}

/// A record to append. Records with the same key land in the same partition, in publish order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl BusRecord {
    pub fn new(topic: Topic, key: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { topic: topic.name.to_owned(), key: key.into(), payload, headers: Vec::new() }
    }
}

/// A record handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// The assignment of the partition to this consumer under which the record was read.
    pub assignment: Assignment,
}

/// One assignment of a partition to a consumer: a number unique in the process (a new one whenever the
/// partition is assigned again) and a token cancelled when the partition is taken away. A handler that
/// fences its writes claims a new epoch when it sees a new number (see [`crate::store::Fence`]), and checks
/// the token after claiming, so a consumer that already lost the partition never starts writing.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    pub id: u64,
    pub revoked: CancellationToken,
}

impl Assignment {
    /// A new assignment with a process-unique number.
    pub fn new(revoked: CancellationToken) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self { id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed), revoked }
    }
}

/// How a handler failed, which decides what the consumer does next.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again (store or bus briefly unavailable): the record is retried with backoff and the
    /// position does not move past it.
    #[error("transient: {0}")]
    Transient(String),
    /// The record can never be handled (undecodable, refers to nothing): it goes to the dead-letter
    /// topic with the reason and the consumer moves on.
    #[error("rejected: {0}")]
    Poison(String),
}

impl From<crate::store::StoreError> for HandlerError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Corrupt(m) => HandlerError::Poison(m),
            other => HandlerError::Transient(other.to_string()),
        }
    }
}

impl From<BusError> for HandlerError {
    fn from(e: BusError) -> Self {
        HandlerError::Transient(e.to_string())
    }
}

/// What a consumer does with each record. Must be idempotent: a record can arrive more than once.
#[async_trait]
pub trait Handler: Send + Sync {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;

    /// The most records of one partition this handler wants at once (1: no batching).
    fn max_batch(&self) -> usize {
        1
    }

    /// Handles consecutive records of one partition together (e.g. one store transaction for many
    /// reservations of one SKU). Any error makes the consumer handle the same records one by one
    /// under the usual policy, which idempotence makes safe even if part of the batch was applied.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<(), HandlerError> {
        for d in deliveries {
            self.handle(d).await?;
        }
        Ok(())
    }
}

#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    /// Appends `records`; returns once every one is durable. Creates nothing: topics come from
    /// [`orderflow_schemas::topics::ALL`].
    async fn publish(&self, records: Vec<BusRecord>) -> Result<(), BusError>;

    /// Consumes `topic` as a member of `group` until `shutdown` is cancelled, running `handler` under
    /// [`policy::handle_with_policy`] and committing each record's position after it returns. On
    /// shutdown it finishes the record in hand and returns.
    async fn consume(
        &self,
        group: &str,
        topic: Topic,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError>;

    /// Whether the bus answers now, for `/readyz`: one cheap round trip at most (never a scan), bounded
    /// by a short timeout; an adapter may answer from a recent probe instead, so that frequent readiness
    /// checks do not load the cluster.
    async fn ready(&self) -> Result<(), BusError>;

    /// Per partition of `topic`, the position `group` has committed and the end of the log: compared with
    /// an earlier answer, whether the group has handled every record published before it (the
    /// stalled-order sweep waits for that instead of taking a backlog for lost records). A few small
    /// requests, never a read of records.
    async fn progress(&self, group: &str, topic: Topic) -> Result<Vec<PartitionProgress>, BusError>;

    /// The partition of `topic` that records keyed `key` go to, if the adapter knows the topic's partition
    /// count now (the Kafka adapter learns it when this process starts consuming the topic). Only used to
    /// find this process's own holder of a key's partition; records are always routed by the adapter.
    fn partition_of(&self, topic: Topic, key: &str) -> Option<u32>;
}

/// The partition of `key` among `partitions`: CRC-32 (IEEE) of the key modulo the count, which is what
/// librdkafka's default partitioner (`consistent_random`) does for a non-empty key and what the embedded
/// log does for every key. Stable across versions and machines.
pub fn key_partition(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions.max(1)
}

/// How far a consumer group has got in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: u16,
    /// The offset of the next record the group will handle (0 before it committed anything).
    pub committed: u64,
    /// The offset the partition's next record will get.
    pub end: u64,
}

/// Whether `now` shows the group past every end offset of `mark` (an earlier [`Bus::progress`]): every
/// record published before `mark` was taken has been handled. A partition missing from `now` is not passed.
pub fn passed(mark: &[PartitionProgress], now: &[PartitionProgress]) -> bool {
    mark.iter().all(|m| now.iter().any(|n| n.partition == m.partition && n.committed >= m.end))
}

/// Pause before restarting a consumer that failed.
const RESTART_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `handler` as member `group` of `topic` until `shutdown`, restarting the consumer after a pause
/// whenever it fails (the bus or the store went away). This is how every role consumes.
/// `group` is usually a constant of `topics::groups`; a process that needs a group of its own (e.g. a
/// GraphQL instance following the catalog for its cache) passes a `String`.
pub async fn run_consumer(
    bus: Arc<dyn Bus>,
    group: impl Into<std::borrow::Cow<'static, str>>,
    topic: Topic,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) {
    let group = group.into();
    let group = group.as_ref();
    tracing::info!(group, topic = topic.name, "consumer started");
    loop {
        match bus.consume(group, topic, Arc::clone(&handler), shutdown.clone()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, group, "consumer failed; restarting");
                metrics::counter!("orderflow_consumer_restarts_total", "group" => group.to_owned()).increment(1);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RESTART_PAUSE) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tracing::info!(group, topic = topic.name, "consumer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: u16, committed: u64, end: u64) -> PartitionProgress {
        PartitionProgress { partition, committed, end }
    }

    #[test]
    fn a_mark_is_passed_once_every_partition_reached_its_end_then() {
        let mark = [at(0, 3, 10), at(1, 0, 0), at(2, 5, 7)];
        assert!(!passed(&mark, &[at(0, 9, 12), at(1, 0, 1), at(2, 7, 9)]), "partition 0 is still behind");
        assert!(passed(&mark, &[at(0, 10, 12), at(1, 0, 1), at(2, 7, 9)]), "records after the mark do not matter");
        assert!(!passed(&mark, &[at(0, 10, 12), at(2, 7, 9)]), "a partition not reported is not passed");
        assert!(passed(&[], &[]), "an empty topic has nothing to wait for");
    }
}
