//! The Kafka bus adapter on `rdkafka` (librdkafka, built from source by `rdkafka-sys`).
//!
//! - Producer: idempotence on, `acks=all`; `publish` returns once every record is acknowledged.
//! - Consumers: one consumer per (group, topic) per process; records of each assigned partition go to
//!   that partition's worker, which handles them in order under the shared [`policy`] and *then* stores
//!   the offset (`enable.auto.offset.store=false`); stored offsets are committed every second and, on
//!   shutdown, synchronously after the in-hand records finish. Cooperative-sticky rebalancing.
//! - Topics come from [`orderflow_schemas::topics::ALL`] and are created if missing ([`KafkaBus::ensure_topics`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use orderflow_schemas::topics::{self, Topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use orderflow_platform::bus::{Assignment, Bus, BusError, BusRecord, Delivery, Handler, policy};
pub use orderflow_platform::connection::KafkaSecurity;

/// How long a publish may wait in the producer queue and for acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Records queued per partition worker; a full queue pauses fetching (back-pressure).
const PARTITION_QUEUE: usize = 256;

/// How long a readiness probe waits for cluster metadata.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness answer is reused: probes from several supervisors (or a tight loop) then cost the
/// cluster at most one metadata request per interval.
const READY_CACHE: Duration = Duration::from_secs(2);

/// Settings of the Kafka adapter.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub bootstrap: Vec<String>,
    /// Replication factor of the topics orderflow creates (use 3 on a real cluster).
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics orderflow creates (2 with 3 replicas, so that an
    /// acknowledged record survives one broker's loss); `None`: the broker's default.
    pub min_insync_replicas: Option<i32>,
    /// The deployment's namespace: every topic and consumer group on the cluster is `<namespace>.<name>`,
    /// so that several deployments share one cluster without taking each other's records. The rest of
    /// orderflow speaks the names of [`topics`]; this adapter alone adds and strips the prefix.
    pub namespace: Option<String>,
    /// How the clients log in (SASL) and check the brokers (TLS).
    pub security: KafkaSecurity,
}

impl KafkaOptions {
    /// A client configuration for the cluster: the bootstrap servers and the security settings. Every
    /// client this adapter makes starts from it.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap.join(","));
        apply_security(&mut config, &self.security);
        config
    }

    /// The name on the cluster of the topic or group `name`.
    pub fn physical(&self, name: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}.{name}"),
            None => name.to_owned(),
        }
    }

    /// The orderflow name of the cluster's topic `physical` (the namespace taken off).
    fn logical<'a>(&self, physical: &'a str) -> &'a str {
        match &self.namespace {
            Some(ns) => physical.strip_prefix(ns.as_str()).and_then(|t| t.strip_prefix('.')).unwrap_or(physical),
            None => physical,
        }
    }
}

/// The Kafka adapter of the bus port.
#[derive(Clone)]
pub struct KafkaBus {
    options: KafkaOptions,
    producer: FutureProducer<QuietLogs>,
    /// The last readiness answer and when it was taken (see [`READY_CACHE`]). A tokio mutex, held across
    /// the probe, so concurrent checks wait for one probe instead of each sending their own.
    readiness: Arc<tokio::sync::Mutex<Option<ReadyAnswer>>>,
    /// One client per group asked about in [`Bus::progress`] (made on first use, never subscribed: it
    /// reads the group's committed offsets and the partitions' ends, it does not join the group).
    progress_clients: Arc<std::sync::Mutex<HashMap<String, Arc<BaseConsumer<QuietLogs>>>>>,
    /// The partition count of each topic this process consumes, read from the cluster's metadata when
    /// consuming starts (see [`Bus::partition_of`]).
    partition_counts: Arc<std::sync::RwLock<HashMap<&'static str, u32>>>,
}

/// How long one [`Bus::progress`] request may wait for the cluster.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(5);

/// A readiness answer (`Err` carries the cause) and when it was taken.
type ReadyAnswer = (std::time::Instant, Result<(), String>);

/// How often one kind of librdkafka log line or client error is written at most; the rest are counted
/// and the count is written with the next one. An unreachable broker otherwise makes librdkafka log
/// hundreds of lines a second.
const CLIENT_LOG_EVERY: Duration = Duration::from_secs(10);

/// librdkafka's log lines and errors, into `tracing`, rate-limited per kind (facility or error code).
#[derive(Default)]
struct QuietLogs {
    last: std::sync::Mutex<HashMap<String, (std::time::Instant, u64)>>,
}

impl QuietLogs {
    /// `Some(suppressed since the last one written)` if a line of `kind` may be written now.
    fn admit(&self, kind: &str) -> Option<u64> {
        let mut last = self.last.lock().ok()?;
        let now = std::time::Instant::now();
        match last.get_mut(kind) {
            Some((at, suppressed)) if now.duration_since(*at) < CLIENT_LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert(kind.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for QuietLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if let Some(suppressed) = self.admit(fac) {
            match level {
                RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error => {
                    tracing::error!(target: "librdkafka", fac, suppressed, "{message}")
                }
                RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, suppressed, "{message}"),
                RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                    tracing::info!(target: "librdkafka", fac, suppressed, "{message}")
                }
                RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, suppressed, "{message}"),
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let kind = error.rdkafka_error_code().map_or_else(|| "client".to_owned(), |c| format!("{c:?}"));
        if let Some(suppressed) = self.admit(&kind) {
            tracing::error!(target: "librdkafka", %error, suppressed, "{reason}");
        }
    }
}

impl ConsumerContext for QuietLogs {}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus").field("bootstrap", &self.options.bootstrap).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl KafkaBus {
    /// Connects a producer. Nothing is sent until the first publish; call [`KafkaBus::ensure_topics`]
    /// to check the cluster answers and create missing topics.
    pub fn connect(options: KafkaOptions) -> Result<Self, BusError> {
        let producer: FutureProducer<QuietLogs> = options
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            // librdkafka's default, pinned: `Bus::partition_of` computes the same (CRC-32 of the key).
            .set("partitioner", "consistent_random")
            .set("message.timeout.ms", PUBLISH_TIMEOUT.as_millis().to_string())
            .create_with_context(QuietLogs::default())
            .map_err(unavailable)?;
        Ok(Self {
            options,
            producer,
            readiness: Arc::default(),
            progress_clients: Arc::default(),
            partition_counts: Arc::default(),
        })
    }

    /// The settings it was made with.
    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }

    /// Creates every topic of [`topics::ALL`] that does not exist yet; returns the names created (as
    /// the cluster names them: with the namespace).
    pub async fn ensure_topics(&self) -> Result<Vec<String>, BusError> {
        let admin: AdminClient<DefaultClientContext> = self.options.client_config().create().map_err(unavailable)?;
        let min_insync = self.options.min_insync_replicas.map(|n| n.to_string());
        let names: Vec<(String, Topic)> = topics::ALL.iter().map(|t| (self.options.physical(t.name), *t)).collect();
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|(name, t)| {
                let topic = NewTopic::new(
                    name,
                    i32::from(t.partitions),
                    TopicReplication::Fixed(self.options.replication_factor),
                );
                match &min_insync {
                    Some(n) => topic.set("min.insync.replicas", n),
                    None => topic,
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics(&new, &opts).await.map_err(unavailable)?;
        let mut created = Vec::new();
        for r in results {
            match r {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(BusError::Unavailable(format!("creating topic {name}: {code}"))),
            }
        }
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created Kafka topics");
        }
        Ok(created)
    }

    /// Reads `topic`'s partition count from the cluster (one metadata request) for [`Bus::partition_of`].
    /// Without an answer, keys of the topic have no known partition: nothing breaks, owners just read more.
    async fn learn_partition_count(&self, topic: Topic) {
        let producer = self.producer.clone();
        let physical = self.options.physical(topic.name);
        // `fetch_metadata` blocks its thread until the broker answers or the timeout passes.
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&physical), Timeout::After(PROGRESS_TIMEOUT))
                .map(|m| m.topics().iter().find(|t| t.name() == physical).map(|t| t.partitions().len()))
        })
        .await;
        match metadata {
            Ok(Ok(Some(n))) if n > 0 => {
                if n != usize::from(topic.partitions) {
                    tracing::warn!(
                        topic = topic.name,
                        partitions = n,
                        expected = topic.partitions,
                        "topic has an unexpected partition count"
                    );
                }
                if let (Ok(n), Ok(mut counts)) = (u32::try_from(n), self.partition_counts.write()) {
                    counts.insert(topic.name, n);
                }
            }
            other => {
                tracing::warn!(topic = topic.name, outcome = ?other.map(|r| r.map_err(|e| e.to_string())), "partition count unknown")
            }
        }
    }

    /// The client that answers [`Bus::progress`] about `group`.
    fn progress_client(&self, group: &str) -> Result<Arc<BaseConsumer<QuietLogs>>, BusError> {
        let mut clients = self.progress_clients.lock().map_err(|_| unavailable("progress clients poisoned"))?;
        if let Some(c) = clients.get(group) {
            return Ok(Arc::clone(c));
        }
        let client: BaseConsumer<QuietLogs> = self
            .options
            .client_config()
            .set("group.id", self.options.physical(group))
            .set("enable.auto.commit", "false")
            .create_with_context(QuietLogs::default())
            .map_err(unavailable)?;
        let client = Arc::new(client);
        clients.insert(group.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    fn consumer(&self, group: &str, context: Assignments) -> Result<GroupConsumer, BusError> {
        self.options
            .client_config()
            .set("group.id", self.options.physical(group))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by the worker after the handler returned, never before.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .create_with_context(context)
            .map_err(unavailable)
    }
}

type GroupConsumer = StreamConsumer<Assignments>;

/// Tracks which partitions this consumer is assigned, each under an [`Assignment`] of its own: a new one
/// when a partition is assigned, its token cancelled as soon as the partition is revoked (before the
/// revocation completes), so its worker stops taking records and a fencing handler never claims an epoch
/// for a partition it no longer holds.
struct Assignments {
    current: std::sync::Mutex<HashMap<i32, Assignment>>,
    /// Parent of every assignment's token: shutting down revokes everything.
    shutdown: CancellationToken,
    logs: QuietLogs,
}

impl Assignments {
    fn new(shutdown: CancellationToken) -> Self {
        Self { current: std::sync::Mutex::new(HashMap::new()), shutdown, logs: QuietLogs::default() }
    }

    fn of(&self, partition: i32) -> Option<Assignment> {
        self.current.lock().ok()?.get(&partition).cloned()
    }
}

impl ClientContext for Assignments {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logs.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }
}

impl ConsumerContext for Assignments {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(list), Ok(mut current)) = (rebalance, self.current.lock()) {
            for e in list.elements() {
                if let Some(a) = current.remove(&e.partition()) {
                    a.revoked.cancel();
                }
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(list), Ok(mut current)) = (rebalance, self.current.lock()) {
            for e in list.elements() {
                let fresh = Assignment::new(self.shutdown.child_token());
                if let Some(old) = current.insert(e.partition(), fresh) {
                    old.revoked.cancel();
                }
            }
        }
    }
}

fn delivery_of(msg: &OwnedMessage, assignment: &Assignment, options: &KafkaOptions) -> Delivery {
    let headers = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|Header { key, value }| {
                    (key.to_owned(), String::from_utf8_lossy(value.unwrap_or_default()).into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    Delivery {
        topic: options.logical(msg.topic()).to_owned(),
        partition: u32::try_from(msg.partition()).unwrap_or(0),
        offset: u64::try_from(msg.offset()).unwrap_or(0),
        key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
        payload: msg.payload().unwrap_or_default().to_vec(),
        headers,
        assignment: assignment.clone(),
    }
}

/// Handles one partition's records in order, for one assignment of the partition; stores each offset
/// after its handler returned. Records already queued when the worker is free are taken together, up to
/// the handler's batch size. Stops when the partition is revoked (or the process shuts down): records
/// still queued are left to the partition's next owner, which reads from the last stored offset.
async fn partition_worker(
    bus: KafkaBus,
    consumer: Arc<GroupConsumer>,
    group: String,
    handler: Arc<dyn Handler>,
    assignment: Assignment,
    mut queue: mpsc::Receiver<OwnedMessage>,
) {
    let max_batch = handler.max_batch().clamp(1, PARTITION_QUEUE);
    let stop = &assignment.revoked;
    let mut msgs = Vec::with_capacity(max_batch);
    loop {
        let msg = tokio::select! {
            m = queue.recv() => match m { Some(m) => m, None => return },
            () = stop.cancelled() => return,
        };
        msgs.clear();
        msgs.push(msg);
        while msgs.len() < max_batch {
            match queue.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        if stop.is_cancelled() {
            return;
        }
        let batch: Vec<Delivery> = msgs.iter().map(|m| delivery_of(m, &assignment, &bus.options)).collect();
        match policy::handle_batch_with_policy(&bus, &group, handler.as_ref(), &batch, stop).await {
            Ok(()) => {
                // rdkafka's `store_offset` calls librdkafka's legacy `rd_kafka_offset_store`, which
                // itself stores `offset + 1` (the next record to read): pass the handled record's own
                // offset. (Passing offset + 1 skipped a record after a restart; the conformance
                // check `resumes_after_restart_without_loss` caught it.) The batch is one partition's
                // consecutive records, so storing the last one's covers them all.
                // Fails if the partition was revoked meanwhile; its new owner re-reads from the last
                // committed offset and the handler's idempotence absorbs the repeat.
                if let Some(last) = msgs.last()
                    && let Err(e) = consumer.store_offset(last.topic(), last.partition(), last.offset())
                {
                    tracing::debug!(error = %e, partition = last.partition(), "offset not stored (partition revoked?)");
                }
            }
            Err(_) => return,
        }
    }
}

#[async_trait]
impl Bus for KafkaBus {
    /// Metadata of one topic from the cluster (one small request, answered by any broker), through the
    /// producer's connections, reused for [`READY_CACHE`].
    async fn ready(&self) -> Result<(), BusError> {
        let mut last = self.readiness.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < READY_CACHE
        {
            return answer.clone().map_err(BusError::Unavailable);
        }
        let producer = self.producer.clone();
        let orders = self.options.physical(topics::ORDERS.name);
        // `fetch_metadata` blocks its thread until the broker answers or the timeout passes.
        let probe = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&orders), Timeout::After(READY_TIMEOUT))
        })
        .await;
        let answer = match probe {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("no cluster metadata within {READY_TIMEOUT:?}: {e}")),
            Err(e) => Err(format!("metadata probe failed: {e}")),
        };
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer.map_err(BusError::Unavailable)
    }

    /// The group's committed offsets (one OffsetFetch) and each partition's high watermark.
    async fn progress(
        &self,
        group: &str,
        topic: Topic,
    ) -> Result<Vec<orderflow_platform::bus::PartitionProgress>, BusError> {
        let client = self.progress_client(group)?;
        let name = self.options.physical(topic.name);
        tokio::task::spawn_blocking(move || {
            let mut wanted = TopicPartitionList::new();
            for p in 0..topic.partitions {
                wanted.add_partition(&name, i32::from(p));
            }
            let committed = client.committed_offsets(wanted, Timeout::After(PROGRESS_TIMEOUT)).map_err(unavailable)?;
            let mut out = Vec::with_capacity(usize::from(topic.partitions));
            for partition in 0..topic.partitions {
                let (_, high) = client
                    .fetch_watermarks(&name, i32::from(partition), Timeout::After(PROGRESS_TIMEOUT))
                    .map_err(unavailable)?;
                let at = committed.find_partition(&name, i32::from(partition)).map(|e| e.offset());
                let committed = match at {
                    Some(Offset::Offset(o)) => u64::try_from(o).unwrap_or(0),
                    _ => 0,
                };
                out.push(orderflow_platform::bus::PartitionProgress {
                    partition,
                    committed,
                    end: u64::try_from(high).unwrap_or(0),
                });
            }
            // Hand client events (errors, logs) to the context so they do not queue up.
            let _ = client.poll(Duration::ZERO);
            Ok(out)
        })
        .await
        .map_err(unavailable)?
    }

    /// CRC-32 of the key modulo the topic's partition count, as the producer's `consistent_random`
    /// partitioner places it; known once this process consumes the topic.
    fn partition_of(&self, topic: Topic, key: &str) -> Option<u32> {
        let count = *self.partition_counts.read().ok()?.get(topic.name)?;
        Some(orderflow_platform::bus::key_partition(key, count))
    }

    async fn publish(&self, records: Vec<BusRecord>) -> Result<(), BusError> {
        // The cluster's names, declared first: the sends below borrow them until they complete.
        let names: Vec<String> = records.iter().map(|r| self.options.physical(&r.topic)).collect();
        let mut pending = Vec::with_capacity(records.len());
        for (r, name) in records.iter().zip(&names) {
            if !topics::ALL.iter().any(|t| t.name == r.topic) {
                return Err(BusError::UnknownTopic(r.topic.clone()));
            }
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let record = FutureRecord::to(name).key(&r.key).payload(&r.payload).headers(headers);
            pending.push(self.producer.send(record, Timeout::After(PUBLISH_TIMEOUT)));
        }
        for outcome in futures::future::join_all(pending).await {
            if let Err((e, _)) = outcome {
                return Err(unavailable(format!("publish failed: {e}")));
            }
        }
        metrics::counter!("orderflow_bus_records_published_total", "backend" => "kafka")
            .increment(records.len() as u64);
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
        let consumer = Arc::new(self.consumer(group, Assignments::new(shutdown.clone()))?);
        consumer.subscribe(&[&self.options.physical(topic.name)]).map_err(unavailable)?;
        self.learn_partition_count(topic).await;
        // One worker per partition and assignment: a partition assigned again gets a fresh worker.
        let mut workers: HashMap<i32, (u64, mpsc::Sender<OwnedMessage>)> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let outcome = loop {
            let msg = tokio::select! {
                m = consumer.recv() => m,
                () = shutdown.cancelled() => break Ok(()),
            };
            let msg = match msg {
                Ok(m) => m.detach(),
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, group, "Kafka consumer error");
                    if matches!(e, KafkaError::Subscription(_) | KafkaError::ClientCreation(_)) {
                        break Err(unavailable(e));
                    }
                    continue;
                }
            };
            let partition = msg.partition();
            // A record of a partition no longer assigned (fetched just before a revocation) is left to its
            // new owner.
            let Some(assignment) = consumer.context().of(partition) else { continue };
            if workers.get(&partition).is_none_or(|(id, _)| *id != assignment.id) {
                let (tx, rx) = mpsc::channel(PARTITION_QUEUE);
                tasks.spawn(partition_worker(
                    self.clone(),
                    Arc::clone(&consumer),
                    group.to_owned(),
                    Arc::clone(&handler),
                    assignment.clone(),
                    rx,
                ));
                workers.insert(partition, (assignment.id, tx));
            }
            let Some((_, sender)) = workers.get(&partition) else { continue };
            tokio::select! {
                sent = sender.send(msg) => if sent.is_err() { workers.remove(&partition); },
                () = assignment.revoked.cancelled() => { workers.remove(&partition); }
                () = shutdown.cancelled() => break Ok(()),
            }
            // Reap workers that ended (revoked partitions) so the set does not grow.
            while let Some(Some(_)) = tasks.join_next().now_or_never() {}
        };
        // Let workers finish the record in hand, then commit what they stored.
        drop(workers);
        while tasks.join_next().await.is_some() {}
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit is reported as an error too; not a problem.
            tracing::debug!(error = %e, group, "final offset commit");
        }
        consumer.unsubscribe();
        outcome
    }
}

/// Sets librdkafka's security properties for `security`: the protocol, the SASL login, the CA file.
pub fn apply_security<'a>(config: &'a mut ClientConfig, security: &KafkaSecurity) -> &'a mut ClientConfig {
    config.set("security.protocol", security.protocol());
    if let Some(sasl) = &security.sasl {
        config
            .set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", &sasl.login.username)
            .set("sasl.password", sasl.login.password.expose());
    }
    if let Some(ca) = security.tls.as_ref().and_then(|t| t.ca.as_ref()) {
        config.set("ssl.ca.location", ca.to_string_lossy());
    }
    config
}
