//! Starting processor roles: each role is one consumer group on one topic, restarted with a pause if its
//! consumer fails (the bus or store went away), until shutdown.

use std::sync::Arc;
use std::time::Duration;

use orderflow_platform::Backends;
use orderflow_platform::bus::{BusRecord, Handler};
use orderflow_platform::fencing::PartitionFences;
use orderflow_schemas::topics::{self, Topic};
use orderflow_schemas::{codec, events::OrderPlaced, now_ms};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::{CatalogObserver, CatalogProjector, CatalogWriter, run_reconciler};
use crate::fulfillment::FulfillmentHandler;
use crate::inventory::InventoryHandler;
use crate::payment::{PaymentHandler, SimulatedProvider, SimulatedRules};
use crate::saga::SagaHandler;

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
    pub payment: SimulatedRules,
    /// A PENDING order older than this is published again (its first `OrderPlaced` may have been lost
    /// to a crash between storing the order and publishing it).
    pub stalled_after: Duration,
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
            stalled_after: Duration::from_secs(3),
            catalog_reconcile_every: Duration::from_secs(60),
            catalog_observer: None,
        }
    }
}

/// Orders re-published per sweep, at most.
const SWEEP_BATCH: usize = 500;

fn handler(role: Role, backends: &Backends, settings: &ProcessorSettings) -> Arc<dyn Handler> {
    let bus = Arc::clone(&backends.bus);
    let s = &backends.stores;
    let fences = || PartitionFences::new(Arc::clone(&s.epochs), role.group());
    match role {
        Role::Orders => Arc::new(SagaHandler { orders: Arc::clone(&s.orders), bus, fences: fences() }),
        Role::Inventory => Arc::new(InventoryHandler { inventory: Arc::clone(&s.inventory), bus }),
        Role::Payment => Arc::new(PaymentHandler {
            payments: Arc::clone(&s.payments),
            provider: Arc::new(SimulatedProvider { rules: settings.payment.clone(), ledger: Arc::clone(&s.payments) }),
            bus,
            fences: fences(),
        }),
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
        let backends = backends.clone();
        let stalled_after = settings.stalled_after;
        let token = shutdown.clone();
        tasks.spawn(async move { sweep_stalled(backends, stalled_after, token).await });
    }
}

/// Re-publishes `OrderPlaced` for PENDING orders older than `stalled_after`. Harmless when the first
/// publish did arrive: the event id is the same, and the saga ignores an order it already moved.
async fn sweep_stalled(backends: Backends, stalled_after: Duration, shutdown: CancellationToken) {
    let period = stalled_after.max(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
        let cutoff = now_ms() - i64::try_from(stalled_after.as_millis()).unwrap_or(i64::MAX);
        let stalled = match backends.stores.orders.stalled_pending(cutoff, SWEEP_BATCH).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "stalled-order sweep could not read orders");
                continue;
            }
        };
        if stalled.is_empty() {
            continue;
        }
        let records: Result<Vec<BusRecord>, _> = stalled
            .iter()
            .map(|o| {
                codec::encode(&OrderPlaced::envelope_of(o)).map(|p| BusRecord::new(topics::ORDERS, o.id.as_str(), p))
            })
            .collect();
        match records {
            Ok(records) => {
                tracing::info!(count = records.len(), "re-publishing stalled PENDING orders");
                metrics::counter!("orderflow_orders_republished_total").increment(records.len() as u64);
                if let Err(e) = backends.bus.publish(records).await {
                    tracing::warn!(error = %e, "stalled-order sweep could not publish");
                }
            }
            Err(e) => tracing::error!(error = %e, "stalled-order sweep could not encode"),
        }
    }
}
