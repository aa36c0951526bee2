//! Bus conformance: per-key order, at-least-once with commit after handling, resume after restart,
//! dead-lettering, independent groups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_schemas::topics::{self, Topic};
use tokio_util::sync::CancellationToken;

use super::run_id;
use crate::bus::{Bus, BusRecord, Delivery, Handler, HandlerError, policy};

/// The topic the checks use (any topic of the product works; this one has several partitions).
const TOPIC: Topic = topics::FULFILLMENT;

/// Records what it sees for keys starting with `prefix`; fails on demand.
struct Recorder {
    prefix: String,
    seen: Mutex<Vec<(String, Vec<u8>)>>,
    /// payload -> remaining transient failures
    fail_times: Mutex<HashMap<Vec<u8>, u32>>,
    poison: Vec<u8>,
    /// Stop (cancel) after this many successful records.
    stop_after: Option<(usize, CancellationToken)>,
}

impl Recorder {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
            seen: Mutex::default(),
            fail_times: Mutex::default(),
            poison: b"poison".to_vec(),
            stop_after: None,
        }
    }

    fn seen(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        if !d.key.starts_with(&self.prefix) {
            return Ok(());
        }
        if d.payload == self.poison {
            return Err(HandlerError::Poison("this record is poison".into()));
        }
        if d.payload == b"panic" {
            panic!("a handler bug this record triggers");
        }
        if let Some(left) = self.fail_times.lock().unwrap().get_mut(&d.payload).filter(|n| **n > 0) {
            *left -= 1;
            return Err(HandlerError::Transient("not yet".into()));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.push((d.key.clone(), d.payload.clone()));
        if let Some((n, token)) = &self.stop_after
            && seen.len() >= *n
        {
            token.cancel();
        }
        Ok(())
    }
}

fn records(prefix: &str, keys: usize, per_key: usize) -> Vec<BusRecord> {
    let mut out = Vec::new();
    for i in 0..per_key {
        for k in 0..keys {
            out.push(BusRecord::new(TOPIC, format!("{prefix}-k{k}"), format!("{k}:{i}").into_bytes()));
        }
    }
    out
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

fn spawn_consumer(
    bus: Arc<dyn Bus>,
    group: String,
    handler: Arc<dyn Handler>,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { bus.consume(&group, TOPIC, handler, token).await.expect("consumer failed") })
}

/// A [`Recorder`] that takes up to 16 records at once; a batch holding poison fails as a whole.
struct Batcher {
    inner: Recorder,
    largest: Mutex<usize>,
}

#[async_trait]
impl Handler for Batcher {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        self.inner.handle(d).await
    }

    fn max_batch(&self) -> usize {
        16
    }

    async fn handle_batch(&self, batch: &[Delivery]) -> Result<(), HandlerError> {
        if batch.iter().any(|d| d.payload == self.inner.poison) {
            return Err(HandlerError::Poison("a record of this batch is poison".into()));
        }
        {
            let mut largest = self.largest.lock().unwrap();
            *largest = (*largest).max(batch.len());
        }
        for d in batch {
            self.inner.handle(d).await?;
        }
        Ok(())
    }
}

/// A handler that takes batches gets consecutive records of a partition in order; a failed batch is
/// handled again record by record (so the poison among them is dead-lettered and the rest handled).
pub async fn batches_keep_order_and_fall_back_to_single_records(bus: Arc<dyn Bus>) {
    let prefix = run_id("batch");
    let key = format!("{prefix}-k");
    let mut recs: Vec<BusRecord> =
        (0..60).map(|i| BusRecord::new(TOPIC, key.clone(), format!("{i}").into_bytes())).collect();
    recs.insert(30, BusRecord::new(TOPIC, key.clone(), b"poison".to_vec()));
    bus.publish(recs).await.unwrap();
    let h = Arc::new(Batcher { inner: Recorder::new(&prefix), largest: Mutex::new(0) });
    let token = CancellationToken::new();
    let task = spawn_consumer(bus.clone(), prefix.clone(), h.clone(), token.clone());
    assert!(
        wait_until(Duration::from_secs(60), || h.inner.seen().len() >= 60).await,
        "only {} of 60 arrived",
        h.inner.seen().len()
    );
    token.cancel();
    task.await.unwrap();
    let got: Vec<String> = h.inner.seen().into_iter().map(|(_, p)| String::from_utf8(p).unwrap()).collect();
    let want: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "in order, each once");
    assert!(*h.largest.lock().unwrap() > 1, "records waiting together were handed over together");
}

/// Records of one key arrive in publish order, and every record arrives.
pub async fn preserves_per_key_order(bus: Arc<dyn Bus>) {
    let prefix = run_id("order");
    let recs = records(&prefix, 10, 30);
    for chunk in recs.chunks(25) {
        bus.publish(chunk.to_vec()).await.unwrap();
    }
    let rec = Arc::new(Recorder::new(&prefix));
    let token = CancellationToken::new();
    let task = spawn_consumer(bus.clone(), prefix.clone(), rec.clone(), token.clone());
    assert!(
        wait_until(Duration::from_secs(60), || rec.seen().len() >= 300).await,
        "only {} of 300 arrived",
        rec.seen().len()
    );
    token.cancel();
    task.await.unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (key, payload) in rec.seen() {
        let i: i64 = String::from_utf8(payload).unwrap().split(':').nth(1).unwrap().parse().unwrap();
        let prev = last.insert(key.clone(), i).unwrap_or(-1);
        assert_eq!(i, prev + 1, "key {key}: {i} after {prev}");
    }
    assert_eq!(last.len(), 10);
}

/// A transient failure is retried until it succeeds; nothing behind it is skipped or reordered.
pub async fn retries_transient_failures_in_place(bus: Arc<dyn Bus>) {
    let prefix = run_id("retry");
    let recs = records(&prefix, 1, 5);
    let rec = Arc::new(Recorder::new(&prefix));
    rec.fail_times.lock().unwrap().insert(b"0:2".to_vec(), 3);
    bus.publish(recs).await.unwrap();
    let token = CancellationToken::new();
    let task = spawn_consumer(bus.clone(), prefix.clone(), rec.clone(), token.clone());
    assert!(wait_until(Duration::from_secs(60), || rec.seen().len() >= 5).await, "saw {:?}", rec.seen());
    token.cancel();
    task.await.unwrap();
    let order: Vec<_> = rec.seen().into_iter().map(|(_, p)| String::from_utf8(p).unwrap()).collect();
    assert_eq!(order, ["0:0", "0:1", "0:2", "0:3", "0:4"]);
}

/// A consumer stopped mid-stream and started again in the same group continues where it committed:
/// every record is handled at least once, and already-committed ones are not handed out again.
pub async fn resumes_after_restart_without_loss(bus: Arc<dyn Bus>) {
    let prefix = run_id("resume");
    bus.publish(records(&prefix, 4, 25)).await.unwrap();
    let token = CancellationToken::new();
    let mut first = Recorder::new(&prefix);
    first.stop_after = Some((30, token.clone()));
    let first = Arc::new(first);
    spawn_consumer(bus.clone(), prefix.clone(), first.clone(), token.clone()).await.unwrap();
    let seen_first = first.seen();
    assert!(seen_first.len() >= 30 && seen_first.len() < 100, "first consumer saw {}", seen_first.len());

    let second = Arc::new(Recorder::new(&prefix));
    let token = CancellationToken::new();
    let task = spawn_consumer(bus.clone(), prefix.clone(), second.clone(), token.clone());
    let want = 100;
    let all = || {
        let mut s: std::collections::HashSet<_> = seen_first.iter().cloned().collect();
        s.extend(second.seen());
        s.len()
    };
    assert!(wait_until(Duration::from_secs(60), || all() >= want).await, "only {} of {want} handled", all());
    token.cancel();
    task.await.unwrap();
    // At-least-once allows redelivering the record in hand at the stop, not a whole replay.
    assert!(
        second.seen().len() <= want - seen_first.len() + 8,
        "second consumer replayed {} records",
        second.seen().len()
    );
}

/// A poison record goes to the dead-letter topic with the reason, and the records after it flow on.
pub async fn dead_letters_poison_and_moves_on(bus: Arc<dyn Bus>) {
    let prefix = run_id("poison");
    let key = format!("{prefix}-k");
    let mut poison = BusRecord::new(TOPIC, key.clone(), b"poison".to_vec());
    // A producer's headers go along to the dead letter, except any that pose as ours.
    poison.headers = vec![
        ("trace-id".into(), "t-1".into()),
        (policy::ERROR_HEADER.into(), "forged".into()),
        (policy::SOURCE_TOPIC_HEADER.into(), "forged".into()),
    ];
    bus.publish(vec![
        BusRecord::new(TOPIC, key.clone(), b"before".to_vec()),
        poison,
        BusRecord::new(TOPIC, key.clone(), b"after".to_vec()),
    ])
    .await
    .unwrap();
    let rec = Arc::new(Recorder::new(&prefix));
    let token = CancellationToken::new();
    let task = spawn_consumer(bus.clone(), prefix.clone(), rec.clone(), token.clone());
    assert!(wait_until(Duration::from_secs(60), || rec.seen().len() >= 2).await);
    token.cancel();
    task.await.unwrap();
    assert_eq!(rec.seen().into_iter().map(|(_, p)| p).collect::<Vec<_>>(), [b"before".to_vec(), b"after".to_vec()]);

    // The dead-letter topic holds the record with its reason and origin.
    let dead: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    struct Collect(String, Arc<Mutex<Vec<Delivery>>>);
    #[async_trait]
    impl Handler for Collect {
        async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
            if d.key == self.0 {
                self.1.lock().unwrap().push(d.clone());
            }
            Ok(())
        }
    }
    let token = CancellationToken::new();
    let handler = Arc::new(Collect(key.clone(), dead.clone()));
    let (b, t) = (bus.clone(), token.clone());
    let task =
        tokio::spawn(
            async move { b.consume(&format!("{prefix}-dlq"), topics::DEAD_LETTER, handler, t).await.unwrap() },
        );
    assert!(wait_until(Duration::from_secs(60), || !dead.lock().unwrap().is_empty()).await, "nothing dead-lettered");
    token.cancel();
    task.await.unwrap();
    let d = dead.lock().unwrap()[0].clone();
    assert_eq!(d.payload, b"poison");
    let header = |name: &str| d.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header(policy::ERROR_HEADER).as_deref(), Some("this record is poison"));
    assert_eq!(header(policy::SOURCE_TOPIC_HEADER).as_deref(), Some(TOPIC.name));
    assert_eq!(header("trace-id").as_deref(), Some("t-1"), "the producer's own header is kept");
    let ours = |k: &str| d.headers.iter().filter(|(name, _)| name == k).count();
    assert_eq!((ours(policy::ERROR_HEADER), ours(policy::SOURCE_TOPIC_HEADER)), (1, 1), "{:?}", d.headers);
}

/// A handler that panics on a record costs that record (dead-lettered), not the partition's consumer.
pub async fn contains_a_panicking_handler_and_moves_on(bus: Arc<dyn Bus>) {
    let prefix = run_id("panic");
    let key = format!("{prefix}-k");
    bus.publish(vec![
        BusRecord::new(TOPIC, key.clone(), b"before".to_vec()),
        BusRecord::new(TOPIC, key.clone(), b"panic".to_vec()),
        BusRecord::new(TOPIC, key.clone(), b"after".to_vec()),
        BusRecord::new(TOPIC, key.clone(), b"later".to_vec()),
    ])
    .await
    .unwrap();
    let rec = Arc::new(Recorder::new(&prefix));
    let token = CancellationToken::new();
    let task = spawn_consumer(bus.clone(), prefix.clone(), rec.clone(), token.clone());
    assert!(
        wait_until(Duration::from_secs(60), || rec.seen().len() >= 3).await,
        "the partition stopped at the panicking record: {:?}",
        rec.seen()
    );
    token.cancel();
    task.await.unwrap();
    assert_eq!(
        rec.seen().into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
        [b"before".to_vec(), b"after".to_vec(), b"later".to_vec()]
    );
}

/// Two groups each get every record.
pub async fn groups_are_independent(bus: Arc<dyn Bus>) {
    let prefix = run_id("groups");
    bus.publish(records(&prefix, 3, 10)).await.unwrap();
    let (a, b) = (Arc::new(Recorder::new(&prefix)), Arc::new(Recorder::new(&prefix)));
    let token = CancellationToken::new();
    let ta = spawn_consumer(bus.clone(), format!("{prefix}-a"), a.clone(), token.clone());
    let tb = spawn_consumer(bus.clone(), format!("{prefix}-b"), b.clone(), token.clone());
    assert!(wait_until(Duration::from_secs(60), || a.seen().len() >= 30 && b.seen().len() >= 30).await);
    token.cancel();
    ta.await.unwrap();
    tb.await.unwrap();
}

/// Publishing to a topic the product does not define is an error, not a silent drop.
pub async fn refuses_unknown_topics(bus: Arc<dyn Bus>) {
    let r = BusRecord { topic: "no.such.topic".into(), key: "k".into(), payload: vec![1], headers: vec![] };
    assert!(bus.publish(vec![r]).await.is_err());
}

/// A bus that is up says so, quickly, and keeps saying so (a readiness probe is called every few seconds).
pub async fn reports_ready_quickly(bus: Arc<dyn Bus>) {
    for _ in 0..3 {
        let started = std::time::Instant::now();
        bus.ready().await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "ready() took {:?}", started.elapsed());
    }
}

/// Records what partition each key arrived on.
struct Placements {
    prefix: String,
    seen: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl Handler for Placements {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        if d.key.starts_with(&self.prefix) {
            self.seen.lock().unwrap().insert(d.key.clone(), d.partition);
        }
        Ok(())
    }
}

/// Once this process consumes a topic, [`Bus::partition_of`] names the partition each key's records
/// arrive on (owners in the same process are found by it).
pub async fn knows_the_partition_of_a_key(bus: Arc<dyn Bus>) {
    let prefix = run_id("where");
    let keys: Vec<String> = (0..64).map(|k| format!("{prefix}-{k}")).collect();
    let placements = Arc::new(Placements { prefix: prefix.clone(), seen: Mutex::default() });
    let token = CancellationToken::new();
    let task = spawn_consumer(bus.clone(), prefix.clone(), placements.clone(), token.clone());
    bus.publish(keys.iter().map(|k| BusRecord::new(TOPIC, k.clone(), b"x".to_vec())).collect()).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || placements.seen.lock().unwrap().len() >= keys.len()).await,
        "only {} of {} arrived",
        placements.seen.lock().unwrap().len(),
        keys.len()
    );
    token.cancel();
    task.await.unwrap();
    let seen = placements.seen.lock().unwrap().clone();
    let partitions: std::collections::HashSet<u32> = seen.values().copied().collect();
    assert!(partitions.len() > 1, "64 keys all landed on one partition: {partitions:?}");
    for key in &keys {
        assert_eq!(bus.partition_of(TOPIC, key), Some(seen[key]), "key {key}");
    }
}

/// Runs every bus check against buses made by `make` (one fresh bus per check where the adapter
/// needs it; a shared one is fine since the checks use fresh keys and groups).
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Bus>>,
{
    preserves_per_key_order(make().await).await;
    batches_keep_order_and_fall_back_to_single_records(make().await).await;
    retries_transient_failures_in_place(make().await).await;
    resumes_after_restart_without_loss(make().await).await;
    dead_letters_poison_and_moves_on(make().await).await;
    contains_a_panicking_handler_and_moves_on(make().await).await;
    groups_are_independent(make().await).await;
    refuses_unknown_topics(make().await).await;
    reports_ready_quickly(make().await).await;
    knows_the_partition_of_a_key(make().await).await;
}
