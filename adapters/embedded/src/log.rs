//! The embedded bus: a durable, partitioned log in the `log` keyspace, with consumer-group positions in
//! `cursors`. Same contract as Kafka: a key always maps to one partition, a partition is read in order by
//! one task per group, and a position is committed only after the handler returned.
//!
//! Keys: `log` = topic, 0x00, partition (u16 BE), offset (u64 BE); `cursors` = group, 0x00, topic, 0x00,
//! partition (u16 BE) -> next offset (u64 BE). Records every group has read are deleted in the
//! background, keeping the newest one so offsets never restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fjall::Readable;
use orderflow_schemas::topics::{self, Topic};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Db, from_row, to_row, unavailable};
use orderflow_platform::bus::{Assignment, Bus, BusError, BusRecord, Delivery, Handler, key_partition, policy};
use orderflow_platform::store::StoreError;

/// Records read per scan of a partition.
const SCAN_BATCH: usize = 256;
/// How often a consumer looks again without a wake-up (a safety net; publishes wake it at once).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Try to trim a partition after this many committed records.
const TRIM_EVERY: u64 = 1024;

#[derive(Serialize, Deserialize)]
struct StoredMeta {
    key: String,
    headers: Vec<(String, String)>,
}

/// The partition of `key` in a topic with `partitions` partitions (see [`key_partition`]).
pub(crate) fn partition_for(key: &str, partitions: u16) -> u16 {
    // The result is below `partitions`, so it fits.
    key_partition(key, u32::from(partitions)) as u16
}

fn partition_prefix(topic: &str, partition: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 3);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn record_key(topic: &str, partition: u16, offset: u64) -> Vec<u8> {
    let mut k = partition_prefix(topic, partition);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn offset_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// One past the partition's last record as `r` sees it (0 when it has none): its next offset, for when
/// the in-memory table does not know it yet. Trimming removes records from the front, never the last.
fn end_offset(r: &impl Readable, db: &Db, topic: &str, partition: u16) -> Result<u64, StoreError> {
    match r.prefix(&db.log, partition_prefix(topic, partition)).next_back() {
        Some(g) => Ok(offset_of(&g.key().map_err(unavailable)?).map_or(0, |o| o + 1)),
        None => Ok(0),
    }
}

fn cursor_key(group: &str, topic: &str, partition: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 4);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn encode_value(record: &BusRecord) -> Result<Vec<u8>, StoreError> {
    let meta = to_row(&StoredMeta { key: record.key.clone(), headers: record.headers.clone() })?;
    let mut v = Vec::with_capacity(4 + meta.len() + record.payload.len());
    v.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    v.extend_from_slice(&meta);
    v.extend_from_slice(&record.payload);
    Ok(v)
}

fn decode_value(v: &[u8]) -> Result<(StoredMeta, Vec<u8>), StoreError> {
    let corrupt = || StoreError::Corrupt("log record shorter than its header".into());
    let len_bytes: [u8; 4] = v.get(..4).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let meta = from_row(v.get(4..4 + len).ok_or_else(corrupt)?)?;
    Ok((meta, v.get(4 + len..).ok_or_else(corrupt)?.to_vec()))
}

/// The embedded bus adapter.
pub struct EmbeddedLog {
    db: Arc<Db>,
    /// Next offset per (topic, partition), loaded from the log on first use.
    next_offsets: Arc<Mutex<HashMap<(&'static str, u16), u64>>>,
    /// Per topic, one per partition: woken on every publish to that partition. Only that partition's
    /// consumers look again (a waker per topic woke all 32 partitions' consumers of every group for each
    /// publish, and each read its cursor and opened a range over the log to find nothing).
    wakers: HashMap<&'static str, Vec<Arc<Notify>>>,
    /// (group, topic) pairs consuming in this process: one consumer per group, like a Kafka group of one.
    active: Mutex<std::collections::HashSet<(String, String)>>,
    /// Per (topic, partition), the offset below which every record is already trimmed. Trimming starts
    /// there instead of at offset 0: the deleted records' tombstones stay in the LSM tree until
    /// compaction drops them, and walking them on every trim made its cost grow with the log's history.
    trimmed_below: Mutex<HashMap<(String, u16), u64>>,
    /// Groups with a stored position, by topic, as found at the first trim (see `groups_of`).
    known_groups: Mutex<Option<HashMap<String, Vec<String>>>>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog").finish_non_exhaustive()
    }
}

fn topic_named(name: &str) -> Result<Topic, BusError> {
    topics::ALL.into_iter().find(|t| t.name == name).ok_or_else(|| BusError::UnknownTopic(name.to_owned()))
}

impl EmbeddedLog {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        let wakers = topics::ALL
            .iter()
            .map(|t| (t.name, (0..t.partitions).map(|_| Arc::new(Notify::new())).collect()))
            .collect();
        Self {
            db,
            next_offsets: Arc::new(Mutex::new(HashMap::new())),
            wakers,
            active: Mutex::new(Default::default()),
            trimmed_below: Mutex::new(HashMap::new()),
            known_groups: Mutex::new(None),
        }
    }

    fn waker(&self, topic: &str, partition: u16) -> Result<Arc<Notify>, BusError> {
        self.wakers
            .get(topic)
            .and_then(|partitions| partitions.get(usize::from(partition)))
            .cloned()
            .ok_or_else(|| BusError::UnknownTopic(format!("{topic} partition {partition}")))
    }

    fn read_cursor(&self, group: &str, topic: &str, partition: u16) -> Result<u64, StoreError> {
        let v = self.db.cursors.get(cursor_key(group, topic, partition)).map_err(unavailable)?;
        Ok(match v {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt("cursor".into()))?)
            }
            None => 0,
        })
    }

    fn write_cursor(&self, group: &str, topic: &str, partition: u16, next: u64) -> Result<(), StoreError> {
        self.db.cursors.insert(cursor_key(group, topic, partition), next.to_be_bytes()).map_err(unavailable)
    }

    fn scan(
        &self,
        topic: &str,
        partition: u16,
        from: u64,
        assignment: &Assignment,
    ) -> Result<Vec<Delivery>, StoreError> {
        let start = record_key(topic, partition, from);
        let end = record_key(topic, partition, u64::MAX);
        let mut out = Vec::new();
        for guard in self.db.log.inner().range(start..end).take(SCAN_BATCH) {
            let (k, v) = guard.into_inner().map_err(unavailable)?;
            let offset = offset_of(&k).ok_or_else(|| StoreError::Corrupt("log key".into()))?;
            let (meta, payload) = decode_value(&v)?;
            out.push(Delivery {
                topic: topic.to_owned(),
                partition: u32::from(partition),
                offset,
                key: meta.key,
                payload,
                headers: meta.headers,
                assignment: assignment.clone(),
            });
        }
        Ok(out)
    }

    /// Every group that ever consumed `topic`: those with a stored position (read once per process, since
    /// a full walk of the often-overwritten cursor table costs more the more positions were committed)
    /// and those consuming now.
    fn groups_of(&self, topic: &str) -> Result<Vec<String>, StoreError> {
        let poisoned = || StoreError::Unavailable("group table poisoned".into());
        let mut known = self.known_groups.lock().map_err(|_| poisoned())?;
        if known.is_none() {
            let mut found: HashMap<String, Vec<String>> = HashMap::new();
            for guard in self.db.cursors.inner().iter() {
                let k = guard.key().map_err(unavailable)?;
                let mut parts = k.splitn(3, |b| *b == 0);
                if let (Some(group), Some(t)) = (parts.next(), parts.next()) {
                    let (group, t) = (String::from_utf8_lossy(group).into_owned(), String::from_utf8_lossy(t));
                    let groups = found.entry(t.into_owned()).or_default();
                    if !groups.contains(&group) {
                        groups.push(group);
                    }
                }
            }
            *known = Some(found);
        }
        let mut groups = known.as_ref().and_then(|k| k.get(topic)).cloned().unwrap_or_default();
        for (group, t) in self.active.lock().map_err(|_| poisoned())?.iter() {
            if t == topic && !groups.contains(group) {
                groups.push(group.clone());
            }
        }
        Ok(groups)
    }

    /// Deletes records of a partition that every group which ever read the topic has committed past,
    /// keeping the newest record so that the next offset can always be recovered from the log.
    fn trim(&self, topic: &str, partition: u16) -> Result<(), StoreError> {
        let mut min_next = u64::MAX;
        for group in self.groups_of(topic)? {
            if let Some(v) = self.db.cursors.get(cursor_key(&group, topic, partition)).map_err(unavailable)? {
                let next = u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt("cursor".into()))?);
                min_next = min_next.min(next);
            }
        }
        let prefix = partition_prefix(topic, partition);
        let newest = match self.db.log.inner().prefix(&prefix).next_back() {
            Some(g) => offset_of(&g.key().map_err(unavailable)?).unwrap_or(0),
            None => return Ok(()),
        };
        let upto = min_next.min(newest);
        if upto == 0 || min_next == u64::MAX {
            return Ok(());
        }
        let poisoned = || StoreError::Unavailable("trim table poisoned".into());
        let slot = (topic.to_owned(), partition);
        let from = self.trimmed_below.lock().map_err(|_| poisoned())?.get(&slot).copied();
        let from = match from {
            Some(from) => from,
            // First trim of this partition in this process: the oldest record still in the log (one walk
            // over whatever tombstones an earlier process left, then never again).
            None => match self.db.log.inner().prefix(&prefix).next() {
                Some(g) => offset_of(&g.key().map_err(unavailable)?).unwrap_or(0),
                None => return Ok(()),
            },
        };
        if from < upto {
            let keys: Vec<_> = self
                .db
                .log
                .inner()
                .range(record_key(topic, partition, from)..record_key(topic, partition, upto))
                .map(|g| g.key())
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            let mut tx = self.db.db.write_tx();
            for k in keys {
                // Each log key is written once, so a weak tombstone (dropped together with the record at
                // compaction) is enough and leaves nothing behind.
                tx.remove_weak(&self.db.log, k);
            }
            tx.commit().map_err(unavailable)?;
        }
        self.trimmed_below.lock().map_err(|_| poisoned())?.insert(slot, upto.max(from));
        Ok(())
    }

    async fn consume_partition(
        &self,
        group: &str,
        topic: Topic,
        partition: u16,
        handler: Arc<dyn Handler>,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let waker = self.waker(topic.name, partition)?;
        // One process holds the data directory, so a partition is assigned to this consumer for as long as
        // it runs: one assignment, never revoked.
        let assignment = Assignment::new(CancellationToken::new());
        let mut since_trim = 0u64;
        let store_err = |e: StoreError| BusError::Unavailable(e.to_string());
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Register for a wake-up before looking, so a publish between the scan and the wait is not missed.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = self.read_cursor(group, topic.name, partition).map_err(store_err)?;
            let batch = self.scan(topic.name, partition, next, &assignment).map_err(store_err)?;
            if batch.is_empty() {
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
                continue;
            }
            for chunk in batch.chunks(handler.max_batch().max(1)) {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                match policy::handle_batch_with_policy(self, group, handler.as_ref(), chunk, shutdown).await {
                    Ok(()) => {}
                    Err(BusError::ShuttingDown) => return Ok(()),
                    Err(e) => return Err(e),
                }
                let Some(last) = chunk.last() else { continue };
                self.write_cursor(group, topic.name, partition, last.offset + 1).map_err(store_err)?;
                since_trim += chunk.len() as u64;
            }
            if since_trim >= TRIM_EVERY {
                since_trim = 0;
                if let Err(e) = self.trim(topic.name, partition) {
                    tracing::warn!(error = %e, topic = topic.name, partition, "log trim failed; will retry later");
                }
            }
        }
    }
}

#[async_trait]
impl Bus for EmbeddedLog {
    /// The log lives in this process: it is ready as long as the process runs.
    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// The group's stored cursor and the partition's next offset, per partition: point reads and one
    /// seek to a partition's last record (trimmed records are gone from the front, never from the end).
    async fn progress(
        &self,
        group: &str,
        topic: Topic,
    ) -> Result<Vec<orderflow_platform::bus::PartitionProgress>, BusError> {
        let store_err = |e: StoreError| BusError::Unavailable(e.to_string());
        let mut out = Vec::with_capacity(usize::from(topic.partitions));
        for partition in 0..topic.partitions {
            let committed = self.read_cursor(group, topic.name, partition).map_err(store_err)?;
            let known = self.next_offsets.lock().ok().and_then(|n| n.get(&(topic.name, partition)).copied());
            let end = match known {
                Some(next) => next,
                None => end_offset(&self.db.db.read_tx(), &self.db, topic.name, partition).map_err(store_err)?,
            };
            out.push(orderflow_platform::bus::PartitionProgress { partition, committed, end });
        }
        Ok(out)
    }

    fn partition_of(&self, topic: Topic, key: &str) -> Option<u32> {
        Some(u32::from(partition_for(key, topic.partitions)))
    }

    async fn publish(&self, records: Vec<BusRecord>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut placed = Vec::with_capacity(records.len());
        for r in records {
            let topic = topic_named(&r.topic)?;
            let value = encode_value(&r).map_err(|e| BusError::Unavailable(e.to_string()))?;
            placed.push((topic, partition_for(&r.key, topic.partitions), value));
        }
        let count = placed.len() as u64;
        let mut woken: Vec<(&'static str, u16)> = placed.iter().map(|(t, p, _)| (t.name, *p)).collect();
        woken.sort_unstable();
        woken.dedup();
        let next_offsets = Arc::clone(&self.next_offsets);
        // Offsets are assigned under the write-transaction lock, so they are dense and in commit order.
        self.db
            .writing(move |db| -> Result<(), StoreError> {
                let mut tx = db.db.write_tx().durability(db.durability);
                let mut next =
                    next_offsets.lock().map_err(|_| StoreError::Unavailable("offset table poisoned".into()))?;
                let mut assigned = Vec::with_capacity(placed.len());
                for (topic, partition, value) in placed {
                    let slot = (topic.name, partition);
                    let offset = match next.get(&slot) {
                        Some(o) => *o,
                        None => end_offset(&tx, db, topic.name, partition)?,
                    };
                    tx.insert(&db.log, record_key(topic.name, partition, offset), value);
                    assigned.push(slot);
                    next.insert(slot, offset + 1);
                }
                if let Err(e) = tx.commit() {
                    // Forget the offsets handed out to the failed commit; they are re-read from the log.
                    for slot in assigned {
                        next.remove(&slot);
                    }
                    return Err(unavailable(e));
                }
                Ok(())
            })
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        for (name, partition) in woken {
            if let Ok(w) = self.waker(name, partition) {
                w.notify_waiters();
            }
        }
        metrics::counter!("orderflow_bus_records_published_total", "backend" => "embedded").increment(count);
        Ok(())
    }

    #[tracing::instrument(skip(self, handler, shutdown), fields(topic = topic.name))]
    async fn consume(
        &self,
        group: &str,
        topic: Topic,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let member = (group.to_owned(), topic.name.to_owned());
        {
            let mut active = self.active.lock().map_err(|_| BusError::Unavailable("consumer table poisoned".into()))?;
            if !active.insert(member.clone()) {
                return Err(BusError::AlreadyConsuming { group: member.0, topic: member.1 });
            }
        }
        // Once it has consumed, the group holds back trimming even after it stops (as its stored cursor does).
        if let Ok(mut known) = self.known_groups.lock()
            && let Some(known) = known.as_mut()
        {
            let groups = known.entry(member.1.clone()).or_default();
            if !groups.contains(&member.0) {
                groups.push(member.0.clone());
            }
        }
        // Every partition is read by its own future; they run concurrently within this task.
        let partitions =
            (0..topic.partitions).map(|p| self.consume_partition(group, topic, p, Arc::clone(&handler), &shutdown));
        let result = futures::future::try_join_all(partitions).await.map(|_| ());
        if let Ok(mut active) = self.active.lock() {
            active.remove(&member);
        }
        result
    }
}
