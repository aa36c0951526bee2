//! Running a scenario: seeding the catalog, the closed or open load loop, then sampling placed orders
//! for their end-to-end processing time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use orderflow_schemas::order::OrderStatus;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Api, Failure};
use crate::cpu::{CpuReport, CpuWatch};
use crate::stats::{LatencyMs, Recorder, StatsReport, histogram, micros};

/// What the simulated users do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Only `POST /v1/orders` (1-3 random seeded SKUs).
    Place,
    /// Only catalog reads over GraphQL: `product(sku)` and `products(first: 20)`.
    Browse,
    /// Browsing, ordering and following orders: 30% products, 30% product, 25% place, 15% track.
    Mixed,
    /// Everyone orders one unit of one SKU with limited stock (`--flash-stock`).
    Flash,
    /// Only `product(sku)` over GraphQL (a random seeded SKU each time).
    Product,
    /// Only `products(first: 20)` over GraphQL.
    Products,
    /// Only `GET /v1/products/{sku}`: for the bare baseline server (`bare-server`), the plain-axum
    /// comparison of `product`.
    BareProduct,
    /// A shopper who waits for the verdict: `POST /v1/orders` (one random seeded SKU) on the user's own
    /// pre-opened keep-alive connection, then `GET /v1/orders/{id}` every `--poll-interval` until the order
    /// is CONFIRMED, REJECTED or CANCELLED (or `--checkout-timeout` passes), then the next order. Closed
    /// loop only.
    Checkout,
}

/// Closed loop (a fixed number of users, each sending as soon as its previous answer came) or open
/// loop (a fixed arrival rate, whatever the answers do).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    Closed {
        users: usize,
        /// Per-user iteration cap (`None`: until the duration ends).
        iterations: Option<u64>,
        /// Mean pause between a user's requests (think time); see [`RunConfig::think_jitter`].
        think_ms: u64,
    },
    Open {
        rate_per_s: f64,
        /// Requests allowed in flight; past it, sends queue (and their latency, measured from the
        /// intended send time, shows it).
        max_in_flight: usize,
    },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub target: String,
    pub admin_token: Option<String>,
    pub scenario: Scenario,
    pub load: Load,
    pub duration: Duration,
    /// Products created with unique SKUs before the run (0 with `seed == false`).
    pub seed_products: usize,
    /// `false` against the bare baseline server: no catalog, no order sampling.
    pub seed: bool,
    pub flash_stock: u32,
    /// Placed orders sampled (uniformly) for end-to-end times.
    pub sample_orders: usize,
    /// Longest wait for sampled orders to finish after the load stops (and, again, for the pipeline to
    /// finish every order the run placed).
    pub e2e_wait: Duration,
    pub request_timeout: Duration,
    pub progress: bool,
    /// Closed loop with a think time: each pause is drawn uniformly from `think_ms x (1 +- think_jitter)`
    /// (0: exactly `think_ms`; clamped to 0..=1).
    pub think_jitter: f64,
    /// At most this many orders placed in the whole run, over every user (`None`: no cap). The run ends
    /// when they are all placed (or the duration ends first).
    pub max_orders: Option<u64>,
    /// `checkout`: time between two reads of an order that is not final yet.
    pub poll_interval: Duration,
    /// `checkout`: an order not final this long after it was sent counts as a timed-out checkout (an
    /// error), and the user moves on to its next order.
    pub checkout_timeout: Duration,
    /// Processes whose CPU time is measured during the load: `(label, pid)`.
    pub cpu_pids: Vec<(String, u32)>,
    /// Idle window before the load that gives each watched process its background CPU rate (0: none).
    pub cpu_idle: Duration,
    /// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
    pub clk_tck: u64,
}

impl RunConfig {
    /// Defaults for a target: closed loop, 8 users, 10 s, `place`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            admin_token: None,
            scenario: Scenario::Place,
            load: Load::Closed { users: 8, iterations: None, think_ms: 0 },
            duration: Duration::from_secs(10),
            seed_products: 50,
            seed: true,
            flash_stock: 100,
            sample_orders: 200,
            e2e_wait: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            progress: true,
            think_jitter: 0.5,
            max_orders: None,
            poll_interval: Duration::from_millis(25),
            checkout_timeout: Duration::from_secs(30),
            cpu_pids: Vec::new(),
            cpu_idle: Duration::ZERO,
            clk_tck: 100,
        }
    }
}

/// End-to-end processing time (placed -> CONFIRMED/REJECTED) of sampled orders, from their timelines.
#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    pub sampled: usize,
    pub confirmed: usize,
    pub rejected: usize,
    /// Still not CONFIRMED/REJECTED when the bounded wait ended (or unreadable): lost or backlogged.
    pub not_terminal: usize,
    /// Over the orders that finished.
    pub latency_ms: LatencyMs,
    pub waited_s: f64,
}

/// Orders the pipeline finished, from the `metrics` query before and after.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub accepted_orders: u64,
    pub processed_during_load: u64,
    pub processed_per_s_during_load: f64,
    pub processed_after_drain: u64,
}

/// `checkout`: what became of the orders the users placed and waited for.
#[derive(Debug, Clone, Serialize)]
pub struct CheckoutReport {
    /// Orders sent (`POST /v1/orders`).
    pub started: u64,
    /// Orders seen CONFIRMED, REJECTED or CANCELLED during the run.
    pub completed: u64,
    /// `completed` / the run's length (`elapsed_s`).
    pub completed_per_s: f64,
    /// CONFIRMED (or already past it: PREPARING, OUT_FOR_DELIVERY, DELIVERED).
    pub confirmed: u64,
    pub rejected: u64,
    pub cancelled: u64,
    /// Not final within the checkout timeout: an error.
    pub timed_out: u64,
    /// The `POST` failed: an error (also counted in the `place_order` operation).
    pub place_failed: u64,
    /// Still waiting for its verdict when the run ended: neither completed nor an error.
    pub unfinished_at_end: u64,
    /// `timed_out + place_failed`.
    pub errors: u64,
    /// `errors` over the checkouts that had an outcome (`completed + errors`), in percent.
    pub error_rate_pct: f64,
    pub poll_interval_ms: f64,
    pub timeout_s: f64,
    /// Placed -> final, client clock: from sending the `POST` to the answer of the poll that saw the final
    /// status (so it includes up to one poll interval of waiting).
    pub latency_ms: LatencyMs,
    /// Placed -> confirmed/rejected from the order's own timeline (server clock), completed orders only.
    pub server_latency_ms: LatencyMs,
    /// `GET /v1/orders/{id}` answers per completed checkout.
    pub polls_per_checkout: f64,
}

/// `--max-orders`: when the n-th order's placement answer came, for every 1 % of the cap.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProgressPoint {
    pub orders: u64,
    /// Seconds since the load started.
    pub at_s: f64,
}

/// A run's result (the JSON written by `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub scenario: Scenario,
    pub load: Load,
    /// Wall clock at the start of the load phase, ms since the Unix epoch (to line up samples taken by other
    /// tools during the run).
    pub started_unix_ms: u64,
    pub max_orders: Option<u64>,
    /// The think-time jitter of a closed loop with a think time (0 otherwise).
    pub think_jitter: f64,
    pub duration_s: f64,
    /// Length of the load phase, start to last answer.
    pub elapsed_s: f64,
    pub seeded_skus: usize,
    #[serde(flatten)]
    pub stats: StatsReport,
    pub e2e: Option<E2eReport>,
    pub pipeline: Option<PipelineReport>,
    /// `checkout` only.
    pub checkout: Option<CheckoutReport>,
    /// CPU of the processes given with `--cpu-pid` (empty without).
    pub cpu: Vec<CpuReport>,
    /// With `--max-orders`: placement answers over time (empty without).
    pub placement_progress: Vec<ProgressPoint>,
}

impl Report {
    /// The figures of one operation, if it ran.
    pub fn op(&self, name: &str) -> Option<&crate::stats::OpReport> {
        self.stats.ops.iter().find(|o| o.op == name)
    }
}

const OP_PLACE: &str = "place_order";
const OP_PRODUCT: &str = "product";
const OP_PRODUCTS: &str = "products";
const OP_TRACK: &str = "track_order";
const OP_BARE_PRODUCT: &str = "get_product";
const OP_GET_ORDER: &str = "get_order";

/// Recently placed order ids kept for `track_order`.
const RECENT_ORDERS: usize = 1024;
/// Concurrent order polls while sampling.
const SAMPLE_CONCURRENCY: usize = 16;
/// Polling interval for an order that is not finished yet.
const SAMPLE_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Placed {
    count: u64,
    /// Uniform reservoir sample of placed ids.
    sample: Vec<String>,
    recent: VecDeque<String>,
}

/// How one checkout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Confirmed,
    Rejected,
    Cancelled,
}

/// A final status: the order will not change by itself any more (CONFIRMED may still go on to delivery,
/// which staff drive, and counts as confirmed).
fn verdict(order: &Value) -> Option<Verdict> {
    let status: OrderStatus = serde_json::from_value(order.get("status")?.clone()).ok()?;
    match status {
        OrderStatus::Pending | OrderStatus::Processing => None,
        OrderStatus::Rejected => Some(Verdict::Rejected),
        OrderStatus::Cancelled => Some(Verdict::Cancelled),
        OrderStatus::Confirmed | OrderStatus::Preparing | OrderStatus::OutForDelivery | OrderStatus::Delivered => {
            Some(Verdict::Confirmed)
        }
    }
}

#[derive(Debug)]
struct CheckoutStats {
    started: u64,
    confirmed: u64,
    rejected: u64,
    cancelled: u64,
    timed_out: u64,
    place_failed: u64,
    unfinished: u64,
    polls: u64,
    latency_us: Histogram<u64>,
    server_latency_us: Histogram<u64>,
}

impl CheckoutStats {
    fn new() -> Self {
        Self {
            started: 0,
            confirmed: 0,
            rejected: 0,
            cancelled: 0,
            timed_out: 0,
            place_failed: 0,
            unfinished: 0,
            polls: 0,
            latency_us: histogram(),
            server_latency_us: histogram(),
        }
    }

    fn report(&self, elapsed: Duration, poll_interval: Duration, timeout: Duration) -> CheckoutReport {
        let completed = self.confirmed + self.rejected + self.cancelled;
        let errors = self.timed_out + self.place_failed;
        let decided = completed + errors;
        CheckoutReport {
            started: self.started,
            completed,
            completed_per_s: completed as f64 / elapsed.as_secs_f64().max(1e-9),
            confirmed: self.confirmed,
            rejected: self.rejected,
            cancelled: self.cancelled,
            timed_out: self.timed_out,
            place_failed: self.place_failed,
            unfinished_at_end: self.unfinished,
            errors,
            error_rate_pct: if decided == 0 { 0.0 } else { 100.0 * errors as f64 / decided as f64 },
            poll_interval_ms: poll_interval.as_secs_f64() * 1000.0,
            timeout_s: timeout.as_secs_f64(),
            latency_ms: LatencyMs::of(&self.latency_us),
            server_latency_ms: LatencyMs::of(&self.server_latency_us),
            polls_per_checkout: if completed == 0 { 0.0 } else { self.polls as f64 / completed as f64 },
        }
    }
}

#[derive(Debug)]
struct Shared {
    api: Api,
    scenario: Scenario,
    skus: Vec<String>,
    run_id: String,
    next_order: AtomicU64,
    recorder: Mutex<Recorder>,
    placed: Mutex<Placed>,
    sample_orders: usize,
    started: Instant,
    /// `--max-orders`: the cap, placements claimed so far, placement answers so far and their progress.
    max_orders: Option<u64>,
    orders_claimed: AtomicU64,
    placements_done: AtomicU64,
    progress: Mutex<Vec<ProgressPoint>>,
    /// `checkout`: one pre-opened client (one keep-alive connection) per user.
    user_apis: Vec<Api>,
    poll_interval: Duration,
    checkout_timeout: Duration,
    checkouts: Mutex<CheckoutStats>,
}

impl Shared {
    fn record(&self, op: &'static str, latency: Duration, outcome: Result<(), Failure>) {
        let error = outcome.err().map(|f| f.parts());
        if let Ok(mut r) = self.recorder.lock() {
            r.record(op, Instant::now(), latency, error);
        }
        if op == OP_PLACE
            && let Some(cap) = self.max_orders
        {
            let n = self.placements_done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of((cap / 100).max(1)) || n == cap {
                let point = ProgressPoint { orders: n, at_s: self.started.elapsed().as_secs_f64() };
                if let Ok(mut p) = self.progress.lock() {
                    p.push(point);
                }
            }
        }
    }

    /// Takes one order from the `--max-orders` budget; `false` once it is spent.
    fn claim_order(&self) -> bool {
        self.max_orders.is_none_or(|cap| self.orders_claimed.fetch_add(1, Ordering::Relaxed) < cap)
    }

    fn checkout_stats(&self, update: impl FnOnce(&mut CheckoutStats)) {
        if let Ok(mut c) = self.checkouts.lock() {
            update(&mut c);
        }
    }

    /// One checkout of `checkout`: place an order on the user's own connection, then read it every poll
    /// interval until it is final, the checkout times out, or the run ends.
    async fn checkout(&self, user: u64, rng: &mut fastrand::Rng, deadline: Instant) {
        let Some(api) = usize::try_from(user).ok().and_then(|u| self.user_apis.get(u)) else {
            return;
        };
        let (id, body) = self.order_body(user, rng);
        self.checkout_stats(|c| c.started += 1);
        let t0 = Instant::now();
        let placed = api.place_order(&body).await.map(|_| ());
        let failed = placed.is_err();
        self.record(OP_PLACE, t0.elapsed(), placed);
        if failed {
            self.checkout_stats(|c| c.place_failed += 1);
            return;
        }
        self.remember(id.clone(), rng);
        let give_up = t0 + self.checkout_timeout;
        let mut next_poll = Instant::now() + self.poll_interval;
        loop {
            tokio::time::sleep_until(next_poll.min(give_up).min(deadline).into()).await;
            let now = Instant::now();
            if now >= give_up.min(deadline) {
                if give_up <= deadline {
                    self.checkout_stats(|c| c.timed_out += 1);
                } else {
                    self.checkout_stats(|c| c.unfinished += 1);
                }
                return;
            }
            let answer = api.get_order(&id).await;
            let polled = now.elapsed();
            match answer {
                Ok(order) => {
                    self.record(OP_GET_ORDER, polled, Ok(()));
                    self.checkout_stats(|c| c.polls += 1);
                    if let Some(v) = verdict(&order) {
                        let latency = micros(t0.elapsed());
                        let server = terminal(&order).map(|(_, ms)| micros(Duration::from_millis(ms)));
                        self.checkout_stats(|c| {
                            match v {
                                Verdict::Confirmed => c.confirmed += 1,
                                Verdict::Rejected => c.rejected += 1,
                                Verdict::Cancelled => c.cancelled += 1,
                            }
                            c.latency_us.saturating_record(latency);
                            if let Some(us) = server {
                                c.server_latency_us.saturating_record(us);
                            }
                        });
                        return;
                    }
                }
                // A failed read is a failed request; the checkout goes on until its timeout.
                Err(f) => self.record(OP_GET_ORDER, polled, Err(f)),
            }
            // Every poll interval from the first poll; straight away when a read took longer than that.
            next_poll = (next_poll + self.poll_interval).max(Instant::now());
        }
    }

    fn remember(&self, id: String, rng: &mut fastrand::Rng) {
        let Ok(mut p) = self.placed.lock() else { return };
        p.count += 1;
        if p.sample.len() < self.sample_orders {
            p.sample.push(id.clone());
        } else if let Ok(count) = usize::try_from(p.count) {
            let j = rng.usize(..count);
            if let Some(slot) = p.sample.get_mut(j) {
                *slot = id.clone();
            }
        }
        if p.recent.len() >= RECENT_ORDERS {
            p.recent.pop_front();
        }
        p.recent.push_back(id);
    }

    fn recent_order(&self, rng: &mut fastrand::Rng) -> Option<String> {
        let p = self.placed.lock().ok()?;
        if p.recent.is_empty() {
            return None;
        }
        p.recent.get(rng.usize(..p.recent.len())).cloned()
    }

    fn choose(&self, rng: &mut fastrand::Rng) -> &'static str {
        match self.scenario {
            Scenario::Place | Scenario::Flash | Scenario::Checkout => OP_PLACE,
            Scenario::Browse => {
                if rng.u8(..100) < 50 {
                    OP_PRODUCT
                } else {
                    OP_PRODUCTS
                }
            }
            Scenario::Product => OP_PRODUCT,
            Scenario::Products => OP_PRODUCTS,
            Scenario::BareProduct => OP_BARE_PRODUCT,
            Scenario::Mixed => match rng.u8(..100) {
                0..30 => OP_PRODUCTS,
                30..60 => OP_PRODUCT,
                60..85 => OP_PLACE,
                _ => OP_TRACK,
            },
        }
    }

    fn order_body(&self, user: u64, rng: &mut fastrand::Rng) -> (String, Value) {
        let n = self.next_order.fetch_add(1, Ordering::Relaxed);
        let id = format!("ld-{}-{n}", self.run_id);
        let items: Vec<Value> = if self.scenario == Scenario::Flash || self.skus.len() < 2 {
            let sku = self.skus.first().map_or("SKU-NONE", String::as_str);
            vec![json!({"sku": sku, "quantity": 1})]
        } else if self.scenario == Scenario::Checkout {
            let sku = self.skus.get(rng.usize(..self.skus.len())).map_or("SKU-NONE", String::as_str);
            vec![json!({"sku": sku, "quantity": rng.u8(1..=2)})]
        } else {
            let lines = rng.usize(1..=3.min(self.skus.len()));
            let first = rng.usize(..self.skus.len());
            (0..lines)
                .filter_map(|i| self.skus.get((first + i) % self.skus.len()))
                .map(|sku| json!({"sku": sku, "quantity": rng.u8(1..=2)}))
                .collect()
        };
        let body = json!({"order_id": id, "user_id": format!("load-user-{user}"), "items": items});
        (id, body)
    }

    /// Runs one operation; the caller measures and records it.
    async fn execute(&self, op: &'static str, user: u64, rng: &mut fastrand::Rng) -> Result<(), Failure> {
        match op {
            OP_PLACE => {
                let (id, body) = self.order_body(user, rng);
                self.api.place_order(&body).await?;
                self.remember(id, rng);
                Ok(())
            }
            OP_PRODUCT => {
                let sku = self.skus.get(rng.usize(..self.skus.len().max(1))).cloned().unwrap_or_default();
                let v = self
                    .api
                    .graphql(
                        "query($s: String!){ product(sku: $s){ sku name price availability } }",
                        json!({"s": sku}),
                        false,
                    )
                    .await?;
                if v.pointer("/data/product/sku").is_none() {
                    return Err(Failure::Decode(format!("product {sku} missing from the answer")));
                }
                Ok(())
            }
            OP_BARE_PRODUCT => {
                let sku = self.skus.get(rng.usize(..self.skus.len().max(1))).cloned().unwrap_or_default();
                let v = self.api.get_product(&sku).await?;
                if v.get("sku").is_none() {
                    return Err(Failure::Decode(format!("product {sku} missing from the answer")));
                }
                Ok(())
            }
            OP_PRODUCTS => {
                let v = self
                    .api
                    .graphql(
                        "{ products(first: 20) { edges { cursor node { sku name price availability } } pageInfo { hasNextPage endCursor } } }",
                        json!({}),
                        false,
                    )
                    .await?;
                if v.pointer("/data/products/edges").is_none() {
                    return Err(Failure::Decode("products.edges missing from the answer".into()));
                }
                Ok(())
            }
            _ => {
                let Some(id) = self.recent_order(rng) else {
                    // Nothing placed yet: browse instead, still counted as a track request.
                    return self
                        .api
                        .graphql("{ products(first: 20) { edges { cursor } } }", json!({}), false)
                        .await
                        .map(|_| ());
                };
                let v = self
                    .api
                    .graphql(
                        "query($id: ID!){ order(id: $id){ status timeline { at type } } }",
                        json!({"id": id}),
                        false,
                    )
                    .await?;
                if v.pointer("/data/order/status").is_none() {
                    return Err(Failure::Decode(format!("order {id} missing from the answer")));
                }
                Ok(())
            }
        }
    }
}

/// Creates the run's own products (unique SKUs) through the staff `createProduct` mutation.
async fn seed_catalog(api: &Api, cfg: &RunConfig, run_id: &str) -> anyhow::Result<Vec<String>> {
    if cfg.admin_token.is_none() {
        bail!(
            "seeding the catalog needs the server's admin token in ORDERFLOW_ADMIN_TOKEN: createProduct is a staff operation"
        );
    }
    let (count, stock) = match cfg.scenario {
        Scenario::Flash => (1, i64::from(cfg.flash_stock)),
        _ => (cfg.seed_products.max(1), 1_000_000_000),
    };
    let mut skus = Vec::with_capacity(count);
    for i in 0..count {
        let sku = format!("LD-{run_id}-{i}");
        let price = format!("{}.{:02}", 1 + i % 20, (i * 25) % 100);
        let input = json!({"sku": sku, "name": format!("Load product {i}"), "price": price, "stock": stock});
        // The initial stock is keyed, so the create is safe to repeat: again while the inventory processor
        // (a fresh Kafka consumer group may take seconds to join) has not applied it.
        let started = std::time::Instant::now();
        loop {
            let created = api
                .graphql(
                    "mutation($p: CreateProductInput!){ createProduct(input: $p){ sku } }",
                    json!({"p": input}),
                    true,
                )
                .await;
            match created {
                Ok(_) => break,
                Err(f)
                    if f.parts().1.contains("stock_change_pending") && started.elapsed() < Duration::from_secs(60) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(f) => bail!("createProduct {sku}: {}", f.parts().1),
            }
        }
        skus.push(sku);
    }
    // The catalog is CQRS: reads see a new product once the projector has stored it (milliseconds).
    // Wait for the last one so the run does not count that moment as errors.
    if let Some(last) = skus.last() {
        let started = std::time::Instant::now();
        loop {
            let v = api.graphql("query($s: String!){ product(sku: $s){ sku } }", json!({"s": last}), false).await;
            if v.is_ok_and(|v| v.pointer("/data/product/sku").is_some()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("seeded product {last} is not readable after 30 s: is the catalog projector running?");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(skus)
}

fn progress_bar(cfg: &RunConfig) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(cfg.duration.as_secs().max(1)),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len}s {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(format!("{:?}", cfg.scenario).to_lowercase());
    pb
}

/// One client per user, each with its keep-alive connection opened before the load starts.
async fn open_user_connections(cfg: &RunConfig, users: usize) -> anyhow::Result<Vec<Api>> {
    let apis =
        (0..users).map(|_| Api::dedicated(&cfg.target, cfg.request_timeout)).collect::<anyhow::Result<Vec<_>>>()?;
    let opened = futures::future::join_all(apis.iter().map(Api::open)).await;
    for (user, result) in opened.into_iter().enumerate() {
        result.map_err(|f| anyhow::anyhow!("opening user {user}'s connection: {}", f.parts().1))?;
    }
    Ok(apis)
}

/// Runs one scenario against `cfg.target` and returns the figures.
pub async fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    if cfg.scenario == Scenario::Checkout && !matches!(cfg.load, Load::Closed { .. }) {
        bail!("checkout is a closed-loop scenario: give --users, not --rate");
    }
    if cfg.scenario == Scenario::Checkout && !cfg.seed {
        bail!("checkout needs an orderflow server (it reads the orders back)");
    }
    if cfg.poll_interval.is_zero() {
        bail!("--poll-interval must be positive");
    }
    let mut cpu = CpuWatch::new(&cfg.cpu_pids, cfg.clk_tck)?;
    let api = Api::new(&cfg.target, cfg.admin_token.clone(), cfg.request_timeout)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string().chars().take(8).collect::<String>();
    let skus = if cfg.seed {
        seed_catalog(&api, cfg, &run_id).await.context("seeding the catalog")?
    } else {
        (0..cfg.seed_products.max(1)).map(|i| format!("SKU-BARE-{i}")).collect()
    };
    let user_apis = match (cfg.scenario, cfg.load) {
        (Scenario::Checkout, Load::Closed { users, .. }) => {
            open_user_connections(cfg, users).await.context("opening the users' connections")?
        }
        _ => Vec::new(),
    };
    let processed_before = if cfg.seed { api.orders_processed().await } else { None };
    cpu.idle(cfg.cpu_idle).await.context("measuring the idle CPU rate")?;

    let started = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    cpu.start().context("reading CPU times at the start of the load")?;
    let shared = Arc::new(Shared {
        api: api.clone(),
        scenario: cfg.scenario,
        skus: skus.clone(),
        run_id,
        next_order: AtomicU64::new(0),
        recorder: Mutex::new(Recorder::new(started)),
        placed: Mutex::new(Placed::default()),
        sample_orders: cfg.sample_orders,
        started,
        max_orders: cfg.max_orders,
        orders_claimed: AtomicU64::new(0),
        placements_done: AtomicU64::new(0),
        progress: Mutex::new(Vec::new()),
        user_apis,
        poll_interval: cfg.poll_interval,
        checkout_timeout: cfg.checkout_timeout,
        checkouts: Mutex::new(CheckoutStats::new()),
    });

    let done = Arc::new(AtomicBool::new(false));
    let pb = progress_bar(cfg);
    let ticker = {
        let (shared, done, pb) = (Arc::clone(&shared), Arc::clone(&done), pb.clone());
        let limit = cfg.duration + cfg.request_timeout * 2;
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) && started.elapsed() < limit {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let (n, e) = shared.recorder.lock().map(|r| r.totals()).unwrap_or_default();
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                pb.set_position(started.elapsed().as_secs());
                pb.set_message(format!("{n} req, {e} errors, {:.0} req/s", n as f64 / secs));
            }
        })
    };

    let deadline = started + cfg.duration;
    match cfg.load {
        Load::Closed { users, iterations, think_ms } => {
            let think = Think::new(Duration::from_millis(think_ms), cfg.think_jitter);
            closed_loop(&shared, users, iterations, think, deadline).await
        }
        Load::Open { rate_per_s, max_in_flight } => {
            open_loop(&shared, rate_per_s, max_in_flight, cfg.duration, started).await?
        }
    }
    let elapsed = started.elapsed();
    cpu.stop(elapsed);
    done.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    pb.finish_and_clear();

    let processed_end = if cfg.seed { api.orders_processed().await } else { None };
    let accepted = shared.placed.lock().map(|p| p.count).unwrap_or(0);
    let sample = shared.placed.lock().map(|p| p.sample.clone()).unwrap_or_default();
    let e2e = if cfg.seed && !sample.is_empty() { Some(sample_e2e(&api, sample, cfg.e2e_wait).await) } else { None };
    let pipeline = match (processed_before, processed_end) {
        (Some(before), Some(end)) => {
            // Wait (bounded by --e2e-wait) for the pipeline to finish this run's orders, so the next
            // run does not start behind a backlog.
            let drain_deadline = Instant::now() + cfg.e2e_wait;
            let mut after = end;
            while after.saturating_sub(before) < accepted && Instant::now() < drain_deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                after = api.orders_processed().await.unwrap_or(after);
            }
            let during = end.saturating_sub(before);
            Some(PipelineReport {
                accepted_orders: accepted,
                processed_during_load: during,
                processed_per_s_during_load: during as f64 / elapsed.as_secs_f64().max(1e-9),
                processed_after_drain: after.saturating_sub(before),
            })
        }
        _ => None,
    };
    let stats = shared.recorder.lock().map_err(|_| anyhow::anyhow!("recorder lock poisoned"))?.report(elapsed);
    let checkout = if cfg.scenario == Scenario::Checkout {
        let c = shared.checkouts.lock().map_err(|_| anyhow::anyhow!("checkout stats lock poisoned"))?;
        Some(c.report(elapsed, cfg.poll_interval, cfg.checkout_timeout))
    } else {
        None
    };
    // CPU per order: per checkout completed during the run; otherwise per order the pipeline finished during
    // the load, or per order accepted when there is no pipeline figure.
    let cpu = match (&checkout, &pipeline) {
        (Some(c), _) => cpu.report(c.completed, "checkouts completed during the run"),
        (None, Some(p)) => cpu.report(p.processed_during_load, "orders processed during the load"),
        (None, None) => cpu.report(accepted, "orders accepted"),
    };
    // Users push their points concurrently: one may land after a later one.
    let mut placement_progress = shared.progress.lock().map(|p| p.clone()).unwrap_or_default();
    placement_progress.sort_by_key(|p| p.orders);
    Ok(Report {
        target: cfg.target.clone(),
        scenario: cfg.scenario,
        load: cfg.load,
        started_unix_ms,
        max_orders: cfg.max_orders,
        think_jitter: match cfg.load {
            Load::Closed { think_ms, .. } if think_ms > 0 => clamp_jitter(cfg.think_jitter),
            _ => 0.0,
        },
        duration_s: cfg.duration.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
        seeded_skus: if cfg.seed { skus.len() } else { 0 },
        stats,
        e2e,
        pipeline,
        checkout,
        cpu,
        placement_progress,
    })
}

/// A closed-loop user's pauses: a mean think time and a uniform jitter around it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Think {
    mean: Duration,
    /// Fraction of `mean`, in 0..=1: pauses fall in `mean x [1 - jitter, 1 + jitter]`.
    jitter: f64,
}

/// A think-time jitter as used: within 0..=1 (a pause is never negative), 0 when not a number.
fn clamp_jitter(jitter: f64) -> f64 {
    if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 }
}

impl Think {
    fn new(mean: Duration, jitter: f64) -> Self {
        Self { mean, jitter: clamp_jitter(jitter) }
    }

    /// The pause after a request.
    fn pause(&self, rng: &mut fastrand::Rng) -> Duration {
        if self.mean.is_zero() {
            return Duration::ZERO;
        }
        self.mean.mul_f64(1.0 + self.jitter * (2.0 * rng.f64() - 1.0))
    }

    /// When a user starts: at a uniformly random point of one mean pause, as users arriving one by one
    /// would, rather than every user at the same instant.
    fn start_offset(&self, rng: &mut fastrand::Rng) -> Duration {
        self.mean.mul_f64(rng.f64())
    }
}

async fn closed_loop(shared: &Arc<Shared>, users: usize, iterations: Option<u64>, think: Think, deadline: Instant) {
    let mut tasks = JoinSet::new();
    for user in 0..users as u64 {
        let shared = Arc::clone(shared);
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(user);
            let mut done = 0u64;
            let mut pause = think.start_offset(&mut rng);
            while iterations.is_none_or(|cap| done < cap) {
                // A pause never runs past the end of the run.
                if !pause.is_zero() {
                    tokio::time::sleep_until(deadline.min(Instant::now() + pause).into()).await;
                }
                if Instant::now() >= deadline {
                    break;
                }
                let op = shared.choose(&mut rng);
                // The order budget is spent: this user is done.
                if op == OP_PLACE && !shared.claim_order() {
                    break;
                }
                if shared.scenario == Scenario::Checkout {
                    shared.checkout(user, &mut rng, deadline).await;
                } else {
                    let t0 = Instant::now();
                    let outcome = shared.execute(op, user, &mut rng).await;
                    shared.record(op, t0.elapsed(), outcome);
                }
                done += 1;
                pause = think.pause(&mut rng);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn open_loop(
    shared: &Arc<Shared>,
    rate_per_s: f64,
    max_in_flight: usize,
    duration: Duration,
    started: Instant,
) -> anyhow::Result<()> {
    if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
        bail!("--rate must be a positive number of requests per second");
    }
    let total = (rate_per_s * duration.as_secs_f64()).floor() as u64;
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut rng = fastrand::Rng::with_seed(0x10ad);
    for i in 0..total {
        // The send time this request was due at: latency is measured from here, not from when the
        // request actually went out, so a stalled server cannot hide its queue (coordinated omission).
        let intended = started + Duration::from_secs_f64(i as f64 / rate_per_s);
        tokio::time::sleep_until(intended.into()).await;
        let permit = Arc::clone(&permits).acquire_owned().await.context("in-flight limiter closed")?;
        let shared = Arc::clone(shared);
        let op = shared.choose(&mut rng);
        if op == OP_PLACE && !shared.claim_order() {
            break;
        }
        let seed = rng.u64(..);
        tasks.spawn(async move {
            let _permit = permit;
            let mut rng = fastrand::Rng::with_seed(seed);
            let outcome = shared.execute(op, seed % 10_000, &mut rng).await;
            shared.record(op, intended.elapsed(), outcome);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Reads each sampled order until it is CONFIRMED or REJECTED (or the bounded wait ends) and takes
/// placed -> terminal from its timeline (server clock).
async fn sample_e2e(api: &Api, ids: Vec<String>, wait: Duration) -> E2eReport {
    let started = Instant::now();
    let deadline = started + wait;
    let permits = Arc::new(Semaphore::new(SAMPLE_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let sampled = ids.len();
    for id in ids {
        let (api, permits) = (api.clone(), Arc::clone(&permits));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            loop {
                if let Ok(order) = api.get_order(&id).await
                    && let Some(outcome) = terminal(&order)
                {
                    return Some(outcome);
                }
                if Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(SAMPLE_POLL).await;
            }
        });
    }
    let (mut confirmed, mut rejected, mut times) = (0, 0, Vec::with_capacity(sampled));
    while let Some(result) = tasks.join_next().await {
        if let Ok(Some((is_confirmed, ms))) = result {
            if is_confirmed {
                confirmed += 1;
            } else {
                rejected += 1;
            }
            times.push(ms);
        }
    }
    E2eReport {
        sampled,
        confirmed,
        rejected,
        not_terminal: sampled - confirmed - rejected,
        latency_ms: LatencyMs::of_millis(&times),
        waited_s: started.elapsed().as_secs_f64(),
    }
}

/// `(confirmed?, placed -> confirmed/rejected in ms)` once the order's timeline has either.
fn terminal(order: &Value) -> Option<(bool, u64)> {
    let timeline = order.get("timeline")?.as_array()?;
    let at = |kind: &str| {
        timeline
            .iter()
            .find(|e| e.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|e| e.get("at_ms")?.as_i64())
    };
    let placed = at("placed").or_else(|| order.get("placed_at_ms")?.as_i64())?;
    let (confirmed, end) = match (at("confirmed"), at("rejected")) {
        (Some(t), _) => (true, t),
        (None, Some(t)) => (false, t),
        (None, None) => return None,
    };
    Some((confirmed, u64::try_from(end - placed).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_to_end_time_comes_from_the_timeline() {
        let order = json!({"status": "CONFIRMED", "placed_at_ms": 1000, "timeline": [
            {"at_ms": 1000, "type": "placed"}, {"at_ms": 1002, "type": "processing"},
            {"at_ms": 1022, "type": "confirmed"}]});
        assert_eq!(terminal(&order), Some((true, 22)));
        let pending = json!({"status": "PROCESSING", "timeline": [{"at_ms": 5, "type": "placed"}]});
        assert_eq!(terminal(&pending), None);
        let rejected = json!({"timeline": [{"at_ms": 5, "type": "placed"}, {"at_ms": 9, "type": "rejected"}]});
        assert_eq!(terminal(&rejected), Some((false, 4)));
    }

    #[test]
    fn final_statuses_end_a_checkout() {
        assert_eq!(verdict(&json!({"status": "PENDING"})), None);
        assert_eq!(verdict(&json!({"status": "PROCESSING"})), None);
        assert_eq!(verdict(&json!({"status": "CONFIRMED"})), Some(Verdict::Confirmed));
        assert_eq!(verdict(&json!({"status": "OUT_FOR_DELIVERY"})), Some(Verdict::Confirmed));
        assert_eq!(verdict(&json!({"status": "REJECTED"})), Some(Verdict::Rejected));
        assert_eq!(verdict(&json!({"status": "CANCELLED"})), Some(Verdict::Cancelled));
        assert_eq!(verdict(&json!({"status": "NO_SUCH_STATUS"})), None);
        assert_eq!(verdict(&json!({"code": "order_not_found"})), None);
    }

    #[test]
    fn checkout_figures() {
        let mut c = CheckoutStats::new();
        c.started = 10;
        c.confirmed = 6;
        c.rejected = 1;
        c.cancelled = 1;
        c.timed_out = 1;
        c.unfinished = 1;
        c.polls = 16;
        for ms in [20, 30, 40, 50, 60, 70, 80, 90] {
            c.latency_us.saturating_record(ms * 1000);
        }
        let r = c.report(Duration::from_secs(4), Duration::from_millis(25), Duration::from_secs(30));
        assert_eq!((r.completed, r.errors, r.unfinished_at_end), (8, 1, 1));
        assert!((r.completed_per_s - 2.0).abs() < 1e-9);
        assert!((r.error_rate_pct - 100.0 / 9.0).abs() < 1e-9);
        assert!((r.polls_per_checkout - 2.0).abs() < 1e-9);
        assert!((r.latency_ms.max - 90.0).abs() < 0.1, "{:?}", r.latency_ms);
        assert_eq!(r.poll_interval_ms, 25.0);
    }

    #[test]
    fn think_time_pauses_stay_within_the_jitter_and_average_the_mean() {
        let mut rng = fastrand::Rng::with_seed(7);
        let think = Think::new(Duration::from_secs(1), 0.5);
        let pauses: Vec<Duration> = (0..10_000).map(|_| think.pause(&mut rng)).collect();
        let (lo, hi) = (Duration::from_millis(500), Duration::from_millis(1500));
        assert!(pauses.iter().all(|p| (lo..=hi).contains(p)), "a pause outside 0.5 s ..= 1.5 s");
        let mean_s = pauses.iter().map(Duration::as_secs_f64).sum::<f64>() / pauses.len() as f64;
        assert!((mean_s - 1.0).abs() < 0.02, "mean pause {mean_s} s");
        // Both halves of the range are used: it is random, not a constant.
        assert!(pauses.iter().any(|p| *p < Duration::from_millis(700)));
        assert!(pauses.iter().any(|p| *p > Duration::from_millis(1300)));
        let offsets: Vec<Duration> = (0..1000).map(|_| think.start_offset(&mut rng)).collect();
        assert!(offsets.iter().all(|o| *o < Duration::from_secs(1)));
    }

    #[test]
    fn no_think_time_means_no_pause_and_jitter_is_clamped() {
        let mut rng = fastrand::Rng::with_seed(1);
        let none = Think::new(Duration::ZERO, 0.5);
        assert_eq!(none.pause(&mut rng), Duration::ZERO);
        assert_eq!(none.start_offset(&mut rng), Duration::ZERO);
        let fixed = Think::new(Duration::from_millis(200), 0.0);
        assert_eq!(fixed.pause(&mut rng), Duration::from_millis(200));
        assert_eq!(Think::new(Duration::from_secs(1), 7.0).jitter, 1.0);
        assert_eq!(Think::new(Duration::from_secs(1), f64::NAN).jitter, 0.0);
        let wide = Think::new(Duration::from_secs(1), 1.0);
        assert!((0..1000).all(|_| wide.pause(&mut rng) <= Duration::from_secs(2)));
    }
}
