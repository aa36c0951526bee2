//! Starting processor roles: each role is one consumer group on one topic, restarted with a pause if its
//! consumer fails (the bus or store went away), until shutdown.

use std::sync::Arc;
use std::time::Duration;

use orderflow_platform::Backends;
use orderflow_platform::bus::{Bus, BusRecord, Handler, PartitionProgress};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::Stalled;
use orderflow_schemas::events::{OrderPlaced, StatusChangeRequested};
use orderflow_schemas::topics::{self, Topic};
use orderflow_schemas::{Currency, Envelope, EventId, Order, OrderStatus, codec, now_ms};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::{CatalogObserver, CatalogProjector, CatalogWriter, run_reconciler};
use crate::fulfillment::FulfillmentHandler;
use crate::inventory::InventoryHandler;
use crate::payment::{PaymentHandler, PaymentProvider, SimulatedProvider, SimulatedRules, StripeProvider};
use crate::saga::{STUCK_ORDER_SWEEP, SagaHandler};

/// The processor roles, as named on the command line (`orderflow process <role>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The order saga (and the sweep that re-publishes stalled PENDING orders).
    Orders,
    Inventory,
    Payment,
    Fulfillment,
    /// The catalog projector (ProductUpdated events into the catalog read model) and the reconciliation
    /// that re-publishes writes whose event was lost.
    Catalog,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Orders, Role::Inventory, Role::Payment, Role::Fulfillment, Role::Catalog];

    pub fn group(self) -> &'static str {
        match self {
            Role::Orders => topics::groups::ORDER_SAGA,
            Role::Inventory => topics::groups::INVENTORY,
            Role::Payment => topics::groups::PAYMENT,
            Role::Fulfillment => topics::groups::FULFILLMENT,
            Role::Catalog => topics::groups::CATALOG_PROJECTOR,
        }
    }

    pub fn topic(self) -> Topic {
        match self {
            Role::Orders => topics::ORDERS,
            Role::Inventory => topics::INVENTORY,
            Role::Payment => topics::PAYMENTS,
            Role::Fulfillment => topics::FULFILLMENT,
            Role::Catalog => topics::CATALOG,
        }
    }
}

/// Settings of the processors.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// The rules of the simulated provider, when it is the provider.
    pub payment: SimulatedRules,
    /// Which provider takes the payments (`--payment-provider`).
    pub provider: ProviderChoice,
    /// The shop's currency (`--currency`).
    pub currency: Currency,
    /// A PENDING order older than this is published again (its first `OrderPlaced` may have been lost
    /// to a crash between storing the order and publishing it).
    pub stalled_after: Duration,
    /// An order still PROCESSING this long after it was placed is compensated and REJECTED with reason
    /// `timed_out` (stock released, any capture refunded); `None` never does.
    pub stuck_after: Option<Duration>,
    /// How often the catalog role compares the catalog's write and read models and re-publishes what the
    /// read model missed (a crash between a catalog write and its event); it also does so at start.
    pub catalog_reconcile_every: Duration,
    /// The in-process catalog cache the catalog projector evicts from, when the GraphQL API runs in the
    /// same process.
    pub catalog_observer: Option<Arc<dyn CatalogObserver>>,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            payment: SimulatedRules::default(),
            provider: ProviderChoice::Simulated,
            currency: Currency::EUR,
            stalled_after: Duration::from_secs(3),
            stuck_after: Some(DEFAULT_STUCK_ORDER_TIMEOUT),
            catalog_reconcile_every: Duration::from_secs(60),
            catalog_observer: None,
        }
    }
}

/// The payment service provider the payment role calls.
#[derive(Debug, Clone, Default)]
pub enum ProviderChoice {
    /// The built-in provider that takes no real money (with [`ProcessorSettings::payment`]'s rules).
    #[default]
    Simulated,
    /// Stripe, built (and its key checked) at start.
    Stripe(Arc<StripeProvider>),
}

/// Default of [`ProcessorSettings::stuck_after`]: far beyond a normal order's seconds, short enough that a
/// customer's units are not held for long by an order that will not finish.
pub const DEFAULT_STUCK_ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// Orders re-published per sweep, at most.
const SWEEP_BATCH: usize = 500;

fn handler(role: Role, backends: &Backends, settings: &ProcessorSettings) -> Arc<dyn Handler> {
    let bus = Arc::clone(&backends.bus);
    let s = &backends.stores;
    let fences = || PartitionFences::new(Arc::clone(&s.epochs), role.group());
    match role {
        Role::Orders => Arc::new(SagaHandler {
            orders: Arc::clone(&s.orders),
            bus,
            fences: fences(),
            owned: Arc::clone(&s.owned_orders),
            payments: Arc::clone(&s.payments),
        }),
        Role::Inventory => Arc::new(InventoryHandler { inventory: Arc::clone(&s.inventory), bus, fences: fences() }),
        Role::Payment => {
            let provider: Arc<dyn PaymentProvider> = match &settings.provider {
                ProviderChoice::Simulated => Arc::new(SimulatedProvider {
                    rules: settings.payment.clone(),
                    ledger: Arc::clone(&backends.ledger),
                }),
                ProviderChoice::Stripe(stripe) => Arc::clone(stripe) as Arc<dyn PaymentProvider>,
            };
            Arc::new(PaymentHandler {
                payments: Arc::clone(&s.payments),
                orders: Arc::clone(&s.orders),
                provider,
                bus,
                fences: fences(),
                currency: settings.currency,
            })
        }
        Role::Fulfillment => {
            Arc::new(FulfillmentHandler { shipments: Arc::clone(&s.shipments), bus, fences: fences() })
        }
        Role::Catalog => Arc::new(CatalogProjector {
            view: Arc::clone(&s.catalog_view),
            observer: settings.catalog_observer.clone(),
        }),
    }
}

/// Starts `role` on `tasks`; it runs until `shutdown` is cancelled, finishing the record in hand.
pub fn spawn_role(
    role: Role,
    backends: &Backends,
    settings: &ProcessorSettings,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let handler = handler(role, backends, settings);
    let bus = Arc::clone(&backends.bus);
    tasks.spawn(orderflow_platform::bus::run_consumer(bus, role.group(), role.topic(), handler, shutdown.clone()));
    if role == Role::Catalog {
        let s = &backends.stores;
        tasks.spawn(run_reconciler(
            CatalogWriter::new(Arc::clone(&s.catalog), Arc::clone(&backends.bus)),
            Arc::clone(&s.catalog),
            Arc::clone(&s.catalog_view),
            settings.catalog_reconcile_every,
            shutdown.clone(),
        ));
    }
    if role == Role::Orders {
        let (b, after, token) = (backends.clone(), settings.stalled_after, shutdown.clone());
        tasks.spawn(async move { sweep_stalled(b, Stalled::Pending, after, token).await });
        if let Some(after) = settings.stuck_after {
            let (b, token) = (backends.clone(), shutdown.clone());
            tasks.spawn(async move { sweep_stalled(b, Stalled::Processing, after, token).await });
        }
    }
}

/// When each stalled order may be re-published again: the first time once it is `stalled_after` old,
/// then after twice as long each time, up to [`MAX_REPUBLISH_INTERVAL`]. A saga that lags behind a burst
/// leaves many orders PENDING for a while although their events are in the log; re-publishing all of them
/// on every pass would pile more work on the lagging saga. Bounded: it holds only orders that the last
/// pass still found PENDING (at most [`SWEEP_BATCH`]).
#[derive(Debug, Default)]
struct RepublishBackoff {
    /// Order id -> (times re-published, not again before this instant).
    due: std::collections::HashMap<String, (u32, std::time::Instant)>,
}

/// The longest wait between two re-publications of one stalled order.
const MAX_REPUBLISH_INTERVAL: Duration = Duration::from_secs(300);

impl RepublishBackoff {
    /// Of the orders a pass found PENDING (`found`), those to re-publish now; forgets orders no longer
    /// found (they moved on).
    fn select<'a>(&mut self, found: &'a [Order], stalled_after: Duration, now: std::time::Instant) -> Vec<&'a Order> {
        self.due.retain(|id, _| found.iter().any(|o| o.id.as_str() == id));
        let mut out = Vec::new();
        for order in found {
            let entry = self.due.entry(order.id.as_str().to_owned()).or_insert((0, now));
            if entry.1 <= now {
                let wait = stalled_after.saturating_mul(1 << entry.0.min(16)).min(MAX_REPUBLISH_INTERVAL);
                *entry = (entry.0 + 1, now + wait);
                out.push(order);
            }
        }
        out
    }
}

/// What the sweep of `stalled` publishes for `order`, to the orders topic, keyed by order id:
/// - PENDING: its `OrderPlaced` again. Harmless when the first publish did arrive: the event id is the
///   same, and the saga ignores an order it already moved.
/// - PROCESSING past the stuck-order timeout: a request to reject it (`StatusChangeRequested` REJECTED by
///   [`STUCK_ORDER_SWEEP`], one id per order), which the saga applies only if the order is still PROCESSING.
fn sweep_envelope(stalled: Stalled, order: &Order) -> Envelope {
    match stalled {
        Stalled::Pending => OrderPlaced::envelope_of(order),
        Stalled::Processing => Envelope::new(
            EventId::derived(&order.id, "stuck"),
            order.id.clone(),
            StatusChangeRequested { status: OrderStatus::Rejected, changed_by: STUCK_ORDER_SWEEP.into() },
        ),
    }
}

fn to_record(envelope: &Envelope) -> Result<BusRecord, codec::CodecError> {
    codec::encode(envelope).map(|p| BusRecord::new(topics::ORDERS, envelope.order_id.as_str(), p))
}

#[cfg(test)]
fn sweep_record(stalled: Stalled, order: &Order) -> Result<BusRecord, codec::CodecError> {
    to_record(&sweep_envelope(stalled, order))
}

/// Tells when the saga has handled every record published to the orders topic before a moment: a *mark*
/// is the topic's end offsets taken at a time; it is passed once the saga group's committed positions
/// reach them. Only then can an order placed well before the mark and still PENDING be told from one
/// whose `OrderPlaced` waits in a backlog: its event was lost (a crash between the intake's insert and its
/// publish). Without this, a saga that lags behind a burst (or restarts, or loses the database for a
/// while) would have every order of its backlog re-published, adding to the very backlog it waits on.
#[derive(Debug, Default)]
struct SagaCaughtUp {
    mark: Option<(i64, Vec<PartitionProgress>)>,
}

impl SagaCaughtUp {
    /// The time of the last mark if the saga has passed it since the previous call (and takes a new one),
    /// else `None` (the first call only takes a mark).
    async fn passed(&mut self, bus: &dyn Bus) -> Result<Option<i64>, orderflow_platform::BusError> {
        let now = now_ms();
        let progress = bus.progress(topics::groups::ORDER_SAGA, topics::ORDERS).await?;
        let passed = match &self.mark {
            Some((at, mark)) if orderflow_platform::bus::passed(mark, &progress) => Some(*at),
            Some(_) => return Ok(None),
            None => None,
        };
        self.mark = Some((now, progress));
        Ok(passed)
    }
}

/// Publishes [`sweep_record`] for orders still in the `stalled` status `after` their placement, each with
/// a growing pause between attempts ([`RepublishBackoff`]). PENDING orders are looked for only once the
/// saga has caught up with what was published before them ([`SagaCaughtUp`]), so a lagging saga is never
/// sent its own backlog again.
async fn sweep_stalled(backends: Backends, stalled: Stalled, after: Duration, shutdown: CancellationToken) {
    let period = after.clamp(Duration::from_millis(200), Duration::from_secs(30));
    let what = match stalled {
        Stalled::Pending => "re-publishing stalled PENDING orders",
        Stalled::Processing => "rejecting orders stuck in PROCESSING",
    };
    let mut backoff = RepublishBackoff::default();
    let mut caught_up = SagaCaughtUp::default();
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
        let cutoff = match stalled {
            Stalled::Pending => match caught_up.passed(backends.bus.as_ref()).await {
                Ok(Some(mark_at)) => mark_at.saturating_sub(after_ms),
                Ok(None) => {
                    metrics::counter!("orderflow_stalled_sweeps_waiting_total").increment(1);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stalled-order sweep could not read the saga's progress");
                    continue;
                }
            },
            Stalled::Processing => now_ms().saturating_sub(after_ms),
        };
        let found = match backends.stores.orders.stalled(stalled, cutoff, SWEEP_BATCH).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, ?stalled, "stalled-order sweep could not read orders");
                continue;
            }
        };
        let due = backoff.select(&found, after, std::time::Instant::now());
        if due.is_empty() {
            continue;
        }
        let envelopes: Vec<Envelope> = due.iter().map(|o| sweep_envelope(stalled, o)).collect();
        // A rejection is a request: recorded first, so that the saga can tell it from a forged record.
        if let Err(e) = crate::saga::record_requests(&*backends.stores.orders, &envelopes).await {
            tracing::warn!(error = %e, ?stalled, "stalled-order sweep could not record its requests");
            continue;
        }
        match envelopes.iter().map(to_record).collect::<Result<Vec<_>, _>>() {
            Ok(records) => {
                tracing::info!(count = records.len(), "{what}");
                let counter = match stalled {
                    Stalled::Pending => "orderflow_orders_republished_total",
                    Stalled::Processing => "orderflow_orders_timed_out_total",
                };
                metrics::counter!(counter).increment(records.len() as u64);
                if let Err(e) = backends.bus.publish(records).await {
                    tracing::warn!(error = %e, ?stalled, "stalled-order sweep could not publish");
                }
            }
            Err(e) => tracing::error!(error = %e, "stalled-order sweep could not encode"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_schemas::{Money, OrderId, UserId};

    fn pending(id: &str) -> Order {
        Order {
            id: OrderId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            user_id: UserId::parse("u").unwrap_or_else(|e| panic!("{e}")),
            lines: vec![],
            total: Money::ZERO,
            status: OrderStatus::Pending,
            reason: None,
            channel: "http".into(),
            placed_at_ms: 0,
            updated_at_ms: 0,
            processed_at_ms: None,
            reserved_skus: vec![],
            payment_method: None,
            currency: None,
            capture_on: Default::default(),
            timeline: vec![],
        }
    }

    #[test]
    fn a_stalled_order_is_republished_with_growing_pauses_and_forgotten_once_it_moves_on() {
        let after = Duration::from_secs(3);
        let mut b = RepublishBackoff::default();
        let t0 = std::time::Instant::now();
        let (a, c) = (pending("a"), pending("c"));
        let ids = |v: Vec<&Order>| v.iter().map(|o| o.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(b.select(&[a.clone(), c.clone()], after, t0)), ["a", "c"], "first pass: both");
        assert!(b.select(std::slice::from_ref(&a), after, t0 + Duration::from_secs(2)).is_empty(), "not before 3 s");
        assert_eq!(b.due.len(), 1, "c moved on and is forgotten");
        assert_eq!(ids(b.select(std::slice::from_ref(&a), after, t0 + Duration::from_secs(3))), ["a"]);
        assert!(
            b.select(std::slice::from_ref(&a), after, t0 + Duration::from_secs(8)).is_empty(),
            "then 6 s later, not 5"
        );
        assert_eq!(ids(b.select(std::slice::from_ref(&a), after, t0 + Duration::from_secs(9))), ["a"]);
        // Capped: after many attempts the pause is at most MAX_REPUBLISH_INTERVAL.
        let mut now = t0 + Duration::from_secs(9);
        for _ in 0..20 {
            now += MAX_REPUBLISH_INTERVAL;
            assert_eq!(ids(b.select(std::slice::from_ref(&a), after, now)), ["a"]);
        }
    }

    /// Consumes the orders topic as the saga group without doing anything: moves the group's position.
    struct Skip;

    #[async_trait::async_trait]
    impl Handler for Skip {
        async fn handle(&self, _: &orderflow_platform::bus::Delivery) -> Result<(), orderflow_platform::HandlerError> {
            Ok(())
        }
    }

    async fn ends(backends: &Backends) -> u64 {
        let progress = backends.bus.progress(topics::groups::ORDER_SAGA, topics::ORDERS).await.unwrap();
        progress.iter().map(|p| p.end).sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pending_sweep_leaves_a_lagging_sagas_backlog_alone_and_republishes_only_lost_events() {
        let dir = tempfile::tempdir().unwrap();
        let backends = orderflow_embedded::open(dir.path(), &Default::default()).unwrap();
        // An order PENDING for a minute whose OrderPlaced is in the log, not yet handled: a backlog.
        let mut order = pending("backlog-1");
        order.placed_at_ms = now_ms() - 60_000;
        backends.stores.orders.insert_new(&order).await.unwrap();
        backends.bus.publish(vec![sweep_record(Stalled::Pending, &order).unwrap()]).await.unwrap();
        let published = ends(&backends).await;
        let shutdown = CancellationToken::new();
        let after = Duration::from_millis(200);
        let sweep = tokio::spawn(sweep_stalled(backends.clone(), Stalled::Pending, after, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(ends(&backends).await, published, "nothing re-published while the saga has not caught up");

        // The saga group handles the backlog, yet the order stays PENDING (as if its event had been
        // lost): now it is re-published.
        let consumer = tokio::spawn(orderflow_platform::bus::run_consumer(
            Arc::clone(&backends.bus),
            topics::groups::ORDER_SAGA,
            topics::ORDERS,
            Arc::new(Skip),
            shutdown.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ends(&backends).await == published {
            assert!(std::time::Instant::now() < deadline, "the lost event was never re-published");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shutdown.cancel();
        let _ = tokio::join!(sweep, consumer);
    }
}
