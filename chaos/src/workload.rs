//! The workload: orders over HTTP (spread over the ingest instances, retried with the same order id until
//! accepted, as a careful client does) and as partner records on Kafka, on a stock budget smaller than the
//! demand, with declines (users the simulated provider refuses), staff cancels, idempotent staff restocks
//! (each sent twice), invalid orders that must be refused, and poison partner records that must be
//! dead-lettered. Everything it did is written down for the checker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use orderflow_schemas::OrderId;
use orderflow_schemas::partner::{self, PartnerItem, PartnerOrder};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cluster::ADMIN_TOKEN;

pub const PARTNER_ID: &str = "chaos-partner";
/// Users whose charges the simulated provider declines (passed to the payment processes).
pub const DECLINE_USERS: [&str; 3] = ["chaos-decline-0", "chaos-decline-1", "chaos-decline-2"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Http,
    Partner,
}

/// An order the workload tried to place.
#[derive(Debug, Clone)]
pub struct Planned {
    pub lines: Vec<(String, u32)>,
    pub channel: Channel,
    /// The partner's own order id (the record key), for partner orders.
    pub external: Option<String>,
    /// The intake acknowledged it (202/200 over HTTP; the broker acknowledged the partner record).
    pub accepted: bool,
    pub declined_user: bool,
    /// A staff cancel was sent; `Some(true)` if the API answered with the order CANCELLED.
    pub cancel: Option<bool>,
}

/// What the workload did, for the checker.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub orders: BTreeMap<String, Planned>,
    /// Orders that must be refused (unknown SKU, zero quantity, overflowing total): id -> HTTP status seen.
    pub invalid: BTreeMap<String, u16>,
    /// Poison partner records sent (their keys).
    pub poison_keys: Vec<String>,
    /// Per SKU: units added by restocks the API confirmed, and by restocks never confirmed (may or may
    /// not have applied).
    pub restocked: BTreeMap<String, i64>,
    pub restock_uncertain: BTreeMap<String, i64>,
    pub http_retries: u64,
    pub never_accepted: u64,
}

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub run: String,
    pub orders: usize,
    pub rate: f64,
    pub skus: Vec<String>,
    pub ingest: Vec<String>,
    pub graphql: Vec<String>,
    pub kafka: String,
    /// How long a client keeps retrying one order before it gives up (counted as never accepted).
    pub accept_timeout: Duration,
}

/// The workload's shared state.
pub struct Workload {
    pub config: WorkloadConfig,
    pub record: Mutex<Record>,
    http: reqwest::Client,
    producer: FutureProducer,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload").field("config", &self.config).finish_non_exhaustive()
    }
}

fn pick<T: Clone>(items: &[T]) -> T {
    items[fastrand::usize(..items.len())].clone()
}

impl Workload {
    pub fn new(config: WorkloadConfig) -> anyhow::Result<Arc<Workload>> {
        let producer: FutureProducer = orderflow_kafka::apply_security(
            ClientConfig::new().set("bootstrap.servers", &config.kafka),
            &orderflow_platform::conformance::test_kafka_security(),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "120000")
        .create()
        .context("creating the partner producer")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
        Ok(Arc::new(Workload { config, record: Mutex::new(Record::default()), http, producer }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Staff GraphQL against a random GraphQL instance; `Err` for transport failures and non-JSON answers.
    pub async fn gql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}/graphql", pick(&self.config.graphql)))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await?;
        Ok(r.json().await?)
    }

    /// Creates the run's products with `stock` units each, retrying until GraphQL confirms.
    pub async fn create_products(&self, stock: i64) -> anyhow::Result<()> {
        for sku in &self.config.skus {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let v = self
                    .gql(
                        "mutation($s: String!, $n: Int!){ createProduct(input: {sku: $s, name: \"chaos\", price: \"2.50\", stock: $n}){ sku } }",
                        json!({"s": sku, "n": stock}),
                    )
                    .await;
                if matches!(&v, Ok(v) if v["data"]["createProduct"]["sku"] == *sku) {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "could not create {sku}: {v:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// Places orders at the configured rate until the configured count, with at most `in_flight` clients
    /// waiting at once (a slow or absent intake slows the workload down rather than piling it up).
    pub async fn run_orders(self: &Arc<Self>, in_flight: usize) {
        let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / self.config.rate.max(0.1)));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..self.config.orders {
            tick.tick().await;
            let Ok(permit) = Arc::clone(&gate).acquire_owned().await else { break };
            let me = Arc::clone(self);
            tasks.spawn(async move {
                me.one(n).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The n-th action of the workload: mostly an order, now and then bad input.
    async fn one(&self, n: usize) {
        let id = format!("ch-{}-{n}", self.config.run);
        let roll = fastrand::u32(..100);
        if roll < 2 {
            return self.invalid_order(&id, n).await;
        }
        if roll < 3 {
            return self.poison_partner_record(n).await;
        }
        let lines = self.lines();
        let declined_user = fastrand::u32(..100) < 8;
        let user = if declined_user { pick(&DECLINE_USERS).to_owned() } else { format!("chaos-user-{}", n % 97) };
        if roll < 18 {
            self.partner_order(n, user, lines, declined_user).await;
        } else {
            self.http_order(id, user, lines, declined_user).await;
        }
    }

    /// One to three lines; a fifth of the orders span two SKUs.
    fn lines(&self) -> Vec<(String, u32)> {
        let first = pick(&self.config.skus);
        let mut lines = vec![(first.clone(), fastrand::u32(1..=3))];
        if fastrand::u32(..5) == 0 {
            let second = pick(&self.config.skus);
            if second != first {
                lines.push((second, fastrand::u32(1..=2)));
            }
        }
        lines
    }

    async fn http_order(&self, id: String, user: String, lines: Vec<(String, u32)>, declined_user: bool) {
        self.lock().orders.insert(
            id.clone(),
            Planned {
                lines: lines.clone(),
                channel: Channel::Http,
                external: None,
                accepted: false,
                declined_user,
                cancel: None,
            },
        );
        let items: Vec<Value> = lines.iter().map(|(s, q)| json!({"sku": s, "quantity": q})).collect();
        let body = json!({"order_id": id, "user_id": user, "items": items});
        let deadline = Instant::now() + self.config.accept_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let base = pick(&self.config.ingest);
            let answer = self.http.post(format!("{base}/v1/orders")).json(&body).send().await;
            match answer.map(|r| r.status().as_u16()) {
                Ok(200..=202) => {
                    if let Some(o) = self.lock().orders.get_mut(&id) {
                        o.accepted = true;
                    }
                    break;
                }
                // A refusal of a valid order would be a bug; the checker reports it as never accepted.
                Ok(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                    eprintln!("chaos: order {id} refused with {s}");
                    self.lock().never_accepted += 1;
                    return;
                }
                _ => {}
            }
            if Instant::now() > deadline {
                self.lock().never_accepted += 1;
                return;
            }
            self.lock().http_retries += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        if fastrand::u32(..100) < 10 {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1500))).await;
            self.cancel(&id).await;
        }
    }

    async fn cancel(&self, id: &str) {
        let v = self
            .gql("mutation($id: ID!){ cancelOrder(id: $id, reason: \"chaos\"){ status } }", json!({"id": id}))
            .await;
        let acknowledged = matches!(&v, Ok(v) if v["data"]["cancelOrder"]["status"] == "CANCELLED");
        if let Some(o) = self.lock().orders.get_mut(id) {
            o.cancel = Some(acknowledged);
        }
    }

    async fn partner_order(&self, n: usize, user: String, lines: Vec<(String, u32)>, declined_user: bool) {
        let external = format!("{}-{n}", self.config.run);
        let id = OrderId::from_partner(PARTNER_ID, &external).to_string();
        self.lock().orders.insert(
            id.clone(),
            Planned {
                lines: lines.clone(),
                channel: Channel::Partner,
                external: Some(external.clone()),
                accepted: false,
                declined_user,
                cancel: None,
            },
        );
        let order = PartnerOrder {
            partner_id: PARTNER_ID.to_owned(),
            external_order_id: external.clone(),
            user_id: user,
            items: lines.iter().map(|(sku, q)| PartnerItem { sku: sku.clone(), quantity: i64::from(*q) }).collect(),
            total_amount: None,
            placed_at_ms: None,
        };
        let Ok(payload) = partner::encode(&order) else {
            eprintln!("chaos: could not encode partner order {external}");
            return;
        };
        if self.send_partner(&external, &payload).await {
            if let Some(o) = self.lock().orders.get_mut(&id) {
                o.accepted = true;
            }
        } else {
            self.lock().never_accepted += 1;
        }
    }

    /// A record no intake can turn into an order: garbage bytes, or an Avro order whose total overflows.
    async fn poison_partner_record(&self, n: usize) {
        let key = format!("{}-poison-{n}", self.config.run);
        let payload = if n.is_multiple_of(2) {
            b"\xc3\x01 not avro at all".to_vec()
        } else {
            let order = PartnerOrder {
                partner_id: PARTNER_ID.to_owned(),
                external_order_id: key.clone(),
                user_id: "chaos-poison".to_owned(),
                items: vec![PartnerItem { sku: self.config.skus[0].clone(), quantity: 1 }],
                total_amount: Some("999999999999999999999999999".to_owned()),
                placed_at_ms: None,
            };
            match partner::encode(&order) {
                Ok(p) => p,
                Err(_) => return,
            }
        };
        if self.send_partner(&key, &payload).await {
            self.lock().poison_keys.push(key);
        }
    }

    async fn send_partner(&self, key: &str, payload: &[u8]) -> bool {
        let deadline = Instant::now() + self.config.accept_timeout;
        loop {
            let record = FutureRecord::to(orderflow_schemas::topics::PARTNER_ORDERS.name).key(key).payload(payload);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return true,
                Err((e, _)) if Instant::now() > deadline => {
                    eprintln!("chaos: partner record {key} not acknowledged: {e}");
                    return false;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Orders that must be refused with a 4xx and never become orders.
    async fn invalid_order(&self, id: &str, n: usize) {
        let sku = pick(&self.config.skus);
        let body = match n % 3 {
            0 => {
                json!({"order_id": id, "user_id": "chaos-bad", "items": [{"sku": "NO-SUCH-SKU-CHAOS", "quantity": 1}]})
            }
            1 => json!({"order_id": id, "user_id": "chaos-bad", "items": [{"sku": sku, "quantity": -2}]}),
            _ => json!({"order_id": id, "user_id": "chaos-bad", "items": [{"sku": sku, "quantity": 1}],
                        "total_amount": "999999999999999999999999999"}),
        };
        let deadline = Instant::now() + self.config.accept_timeout;
        loop {
            let base = pick(&self.config.ingest);
            if let Ok(r) = self.http.post(format!("{base}/v1/orders")).json(&body).send().await {
                let s = r.status().as_u16();
                if s < 500 && s != 408 && s != 429 {
                    self.lock().invalid.insert(id.to_owned(), s);
                    return;
                }
            }
            if Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Staff restocks while orders run, each with an idempotency key and sent twice (a client retrying
    /// after a lost response): every key must apply once.
    pub async fn run_restocks(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut k = 0u32;
        while !stop.is_cancelled() {
            tokio::time::sleep(every).await;
            let sku = pick(&self.config.skus);
            let delta = fastrand::i64(2..=6);
            let key = format!("chaos-{}-restock-{k}", self.config.run);
            k += 1;
            let mut confirmed = false;
            let deadline = Instant::now() + self.config.accept_timeout;
            let mut sent = 0;
            while sent < 2 && Instant::now() < deadline {
                let v = self
                    .gql(
                        "mutation($s: String!, $d: Int!, $k: String!){ adjustStock(sku: $s, delta: $d, reason: \"chaos restock\", idempotencyKey: $k){ available } }",
                        json!({"s": sku, "d": delta, "k": key}),
                    )
                    .await;
                if matches!(&v, Ok(v) if v["data"]["adjustStock"]["available"].is_number()) {
                    confirmed = true;
                    sent += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            let mut rec = self.lock();
            let book = if confirmed { &mut rec.restocked } else { &mut rec.restock_uncertain };
            *book.entry(sku).or_default() += delta;
        }
    }
}
