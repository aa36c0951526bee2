//! The catalog, CQRS style.
//!
//! - Write side, [`CatalogWriter`]: a staff operation (create, update, price change, archive) is validated
//!   into a [`NewProduct`] or a [`ProductPatch`], written to the write model ([`CatalogStore`]) with a
//!   version compare-and-set, and then published as a `ProductUpdated` event (the whole product) on
//!   [`topics::CATALOG`], keyed by SKU.
//! - Read side, [`CatalogProjector`]: the catalog role consumes that topic and keeps the read model
//!   ([`CatalogViewStore`]) at the newest version of each product, then tells the in-process cache
//!   ([`CatalogObserver`]).
//! - Repair, [`reconcile`]: a crash between the write and the publish leaves a write the read model never
//!   hears of. A retried staff operation that finds its change already made publishes it again, and the
//!   catalog role compares the write model's versions with the read model's at start and every
//!   `ProcessorSettings::catalog_reconcile_every` (a minute) and re-publishes
//!   what is behind. Republishing is harmless: the event id is derived from (SKU, version) and the
//!   projector keeps the highest version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, BusRecord, Delivery, Handler, HandlerError};
use orderflow_platform::store::{CatalogStore, CatalogViewStore, ProductWrite, Projected, StoreError};
use orderflow_schemas::product_events::{self, ProductUpdated};
use orderflow_schemas::{Attributes, Category, Currency, Money, Product, Sku, now_ms, topics};
use tokio_util::sync::CancellationToken;

/// Compare-and-set rounds for one staff update before giving up (each lost round means another edit of
/// the same product won one).
const MAX_UPDATE_ROUNDS: u32 = 16;
/// Products the reconciliation reads per page of the write model.
const RECONCILE_PAGE: usize = 1_000;
/// The most products the reconciliation compares: far above the catalog size the read side is built for
/// (about 100,000 products; see `schemas/cql/catalog.cql`).
const RECONCILE_MAX_PRODUCTS: usize = 2_000_000;
/// The most products one reconciliation round re-publishes; the rest wait for the next round.
const RECONCILE_MAX_REPUBLISH: usize = 10_000;

/// Why a catalog write was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("a product with SKU {0} already exists")]
    SkuExists(Sku),
    #[error("no product with SKU {0}")]
    UnknownSku(Sku),
    #[error("product {sku} is at version {current}, not the expected {expected}")]
    VersionConflict { sku: Sku, expected: u64, current: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A product to create, already validated.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub price: Money,
    /// `None`: the shop's currency (`--currency`).
    pub currency: Option<Currency>,
    pub category: Category,
    pub attributes: Attributes,
}

/// The fields a staff update changes, already validated; `None` leaves a field as it is. `attributes`
/// replaces the whole set.
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price: Option<Money>,
    pub currency: Option<Currency>,
    pub category: Option<Category>,
    pub attributes: Option<Attributes>,
    pub archived: Option<bool>,
}

impl ProductPatch {
    /// `product` with this patch applied (version and timestamps untouched).
    pub fn apply(&self, product: &Product) -> Product {
        let mut p = product.clone();
        if let Some(name) = &self.name {
            p.name.clone_from(name);
        }
        if let Some(description) = &self.description {
            p.description.clone_from(description);
        }
        if let Some(price) = self.price {
            p.price = price;
        }
        if let Some(currency) = self.currency {
            p.currency = Some(currency);
        }
        if let Some(category) = &self.category {
            p.category = category.clone();
        }
        if let Some(attributes) = &self.attributes {
            p.attributes = attributes.clone();
        }
        if let Some(archived) = self.archived {
            p.archived = archived;
        }
        p
    }
}

/// What [`CatalogWriter::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub product: Product,
    /// The product existed already with exactly this content (a retried create): nothing was written and
    /// its event was published again.
    pub replayed: bool,
}

/// The write side of the catalog: validated staff changes to the write model, each followed by its
/// `ProductUpdated` event.
#[derive(Clone)]
pub struct CatalogWriter {
    catalog: Arc<dyn CatalogStore>,
    bus: Arc<dyn Bus>,
}

impl std::fmt::Debug for CatalogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogWriter").finish_non_exhaustive()
    }
}

/// The `ProductUpdated` record of `product`, keyed by its SKU.
pub fn product_updated_record(product: &Product) -> Result<BusRecord, orderflow_schemas::codec::CodecError> {
    let payload = product_events::encode(&ProductUpdated::new(product.clone()))?;
    Ok(BusRecord::new(topics::CATALOG, product.sku.as_str(), payload))
}

impl CatalogWriter {
    pub fn new(catalog: Arc<dyn CatalogStore>, bus: Arc<dyn Bus>) -> Self {
        Self { catalog, bus }
    }

    /// Publishes the product's event. A failure is logged, not returned: the write it follows is
    /// durable, and the catalog role's reconciliation publishes it later (see the module docs).
    async fn publish(&self, product: &Product) {
        let outcome = match product_updated_record(product) {
            Ok(record) => self.bus.publish(vec![record]).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => metrics::counter!("orderflow_catalog_events_published_total").increment(1),
            Err(e) => {
                metrics::counter!("orderflow_catalog_events_deferred_total").increment(1);
                tracing::warn!(sku = %product.sku, version = product.version, error = %e,
                    "ProductUpdated not published; the catalog reconciliation will publish it");
            }
        }
    }

    /// Publishes the current state of a product again (reconciliation). `false` if there is no such SKU.
    pub async fn republish(&self, sku: &Sku) -> Result<bool, StoreError> {
        match self.catalog.product(sku).await? {
            Some(product) => {
                self.publish(&product).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Creates a product at version 1 and publishes it. The same create again (same content) is a retry:
    /// it publishes the stored product again and reports `replayed`; different content is `SkuExists`.
    pub async fn create(&self, new: NewProduct) -> Result<Created, CatalogError> {
        let mut product = Product::new(new.sku, new.name, new.description, new.price, now_ms());
        product.category = new.category;
        product.attributes = new.attributes;
        product.currency = new.currency;
        if self.catalog.create_product(&product).await? {
            self.publish(&product).await;
            return Ok(Created { product, replayed: false });
        }
        match self.catalog.product(&product.sku).await? {
            Some(stored) if stored.version == 1 && stored.same_content_as(&product) => {
                self.publish(&stored).await;
                Ok(Created { product: stored, replayed: true })
            }
            _ => Err(CatalogError::SkuExists(product.sku)),
        }
    }

    /// Applies `patch` to the product and publishes the result. With `expected_version`, the update
    /// applies only to that version (`VersionConflict` otherwise); without, it is re-applied to the newest
    /// version if another edit wins the race. A patch that changes nothing writes nothing and publishes
    /// the stored product again, which is how a retried update (or archive) heals a lost event.
    pub async fn update(
        &self,
        sku: &Sku,
        patch: &ProductPatch,
        expected_version: Option<u64>,
    ) -> Result<Product, CatalogError> {
        for _ in 0..MAX_UPDATE_ROUNDS {
            let current = self.catalog.product(sku).await?.ok_or_else(|| CatalogError::UnknownSku(sku.clone()))?;
            let mut next = patch.apply(&current);
            if next.same_content_as(&current) {
                self.publish(&current).await;
                return Ok(current);
            }
            if let Some(expected) = expected_version.filter(|v| *v != current.version) {
                return Err(CatalogError::VersionConflict { sku: sku.clone(), expected, current: current.version });
            }
            next.version = current.version + 1;
            next.updated_at_ms = now_ms().max(current.updated_at_ms);
            match self.catalog.update_product(&next).await? {
                ProductWrite::Written => {
                    self.publish(&next).await;
                    return Ok(next);
                }
                ProductWrite::NotFound => return Err(CatalogError::UnknownSku(sku.clone())),
                ProductWrite::Conflict(stored) => {
                    if let Some(expected) = expected_version {
                        return Err(CatalogError::VersionConflict {
                            sku: sku.clone(),
                            expected,
                            current: stored.version,
                        });
                    }
                }
            }
        }
        Err(StoreError::Unavailable(format!("product {sku} is being changed by other edits; retry")).into())
    }
}

/// Told by the projector after it stored `version` of a product (the GraphQL cache of the same process
/// evicts the product and the listing).
#[async_trait]
pub trait CatalogObserver: Send + Sync + std::fmt::Debug {
    async fn product_changed(&self, sku: &Sku, version: u64);
}

/// The catalog role's handler: keeps the read model at the newest version of each product.
pub struct CatalogProjector {
    pub view: Arc<dyn CatalogViewStore>,
    /// The in-process cache to evict from, when the GraphQL API runs in the same process.
    pub observer: Option<Arc<dyn CatalogObserver>>,
}

impl std::fmt::Debug for CatalogProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogProjector").field("observer", &self.observer).finish_non_exhaustive()
    }
}

/// Decodes a catalog record, checking it sits under its SKU (a record under another key is misplaced).
pub fn decode_delivery(delivery: &Delivery) -> Result<ProductUpdated, HandlerError> {
    let event = product_events::decode(&delivery.payload)
        .map_err(|e| HandlerError::Poison(format!("undecodable ProductUpdated: {e}")))?;
    if event.product.sku.as_str() != delivery.key {
        return Err(HandlerError::Poison(format!(
            "ProductUpdated of {} under the key {:?}",
            event.product.sku, delivery.key
        )));
    }
    Ok(event)
}

#[async_trait]
impl Handler for CatalogProjector {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let event = decode_delivery(delivery)?;
        let outcome = self.view.upsert_if_newer(&event.product).await?;
        tracing::debug!(sku = %event.product.sku, version = event.product.version, ?outcome, "projected");
        let label = match outcome {
            Projected::Applied => "applied",
            Projected::AlreadyCurrent => "already_current",
            Projected::Stale => "stale",
        };
        metrics::counter!("orderflow_catalog_events_projected_total", "outcome" => label).increment(1);
        if outcome == Projected::Applied {
            let lag_ms = (now_ms() - event.occurred_at_ms).max(0);
            metrics::histogram!("orderflow_catalog_projection_lag_seconds").record(lag_ms as f64 / 1000.0);
        }
        if outcome != Projected::Stale
            && let Some(observer) = &self.observer
        {
            observer.product_changed(&event.product.sku, event.product.version).await;
        }
        Ok(())
    }
}

/// Compares every product's version in the write model with the read model's and publishes the current
/// state of each product the read model is behind on (or lacks). Returns how many it published.
pub async fn reconcile(
    writer: &CatalogWriter,
    catalog: &dyn CatalogStore,
    view: &dyn CatalogViewStore,
) -> Result<usize, StoreError> {
    let seen: HashMap<String, u64> = view
        .listing(RECONCILE_MAX_PRODUCTS)
        .await?
        .into_iter()
        .map(|s| (s.sku.as_str().to_owned(), s.version))
        .collect();
    let mut behind = Vec::new();
    let mut after: Option<String> = None;
    let mut compared = 0usize;
    while compared < RECONCILE_MAX_PRODUCTS && behind.len() < RECONCILE_MAX_REPUBLISH {
        let page = catalog.product_versions(after.as_deref(), RECONCILE_PAGE).await?;
        compared += page.items.len();
        for (sku, version) in &page.items {
            if seen.get(sku).is_none_or(|v| v < version) {
                behind.push(sku.clone());
            }
        }
        if !page.has_next {
            break;
        }
        after = page.items.last().map(|(k, _)| k.clone());
    }
    let mut published = 0;
    for sku in behind.iter().take(RECONCILE_MAX_REPUBLISH) {
        let Ok(sku) = Sku::parse(sku.as_str()) else {
            tracing::warn!(%sku, "catalog reconciliation skipped an unparsable SKU");
            continue;
        };
        if writer.republish(&sku).await? {
            published += 1;
        }
    }
    Ok(published)
}

/// Runs [`reconcile`] now and then every `period` until `shutdown`.
pub async fn run_reconciler(
    writer: CatalogWriter,
    catalog: Arc<dyn CatalogStore>,
    view: Arc<dyn CatalogViewStore>,
    period: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match reconcile(&writer, catalog.as_ref(), view.as_ref()).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    products = n,
                    "catalog reconciliation re-published products the read model was behind on"
                );
                metrics::counter!("orderflow_catalog_events_republished_total").increment(n as u64);
            }
            Err(e) => tracing::warn!(error = %e, "catalog reconciliation failed; retrying next round"),
        }
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use orderflow_platform::Backends;

    fn new_product(sku: &str) -> NewProduct {
        NewProduct {
            sku: Sku::parse(sku).unwrap(),
            name: "Mug".into(),
            description: String::new(),
            price: Money::from_cents(500).unwrap(),
            currency: None,
            category: Category::parse("kitchen").unwrap(),
            attributes: Attributes::default(),
        }
    }

    /// Runs the projector on the embedded bus until `done` holds for the read model (10 s at most).
    async fn project_until(backends: &Backends, done: impl AsyncFn(&dyn CatalogViewStore) -> bool) {
        let token = CancellationToken::new();
        let projector = Arc::new(CatalogProjector { view: Arc::clone(&backends.stores.catalog_view), observer: None });
        let bus = Arc::clone(&backends.bus);
        let t = token.clone();
        let task = tokio::spawn(async move { bus.consume("test-projector", topics::CATALOG, projector, t).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(backends.stores.catalog_view.as_ref()).await {
            assert!(tokio::time::Instant::now() < deadline, "the read model did not catch up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_reach_the_read_model_and_a_lost_event_is_republished() {
        let dir = tempfile::tempdir().unwrap();
        let backends = orderflow_embedded::open(dir.path(), &Default::default()).unwrap();
        let stores = &backends.stores;
        let writer = CatalogWriter::new(Arc::clone(&stores.catalog), Arc::clone(&backends.bus));
        let sku = Sku::parse("SKU-1").unwrap();

        let created = writer.create(new_product("SKU-1")).await.unwrap();
        assert!(!created.replayed);
        let again = writer.create(new_product("SKU-1")).await.unwrap();
        assert!(again.replayed, "the same create twice is a retry");
        let mut other = new_product("SKU-1");
        other.name = "Other".into();
        assert!(matches!(writer.create(other).await, Err(CatalogError::SkuExists(_))));

        let patch = ProductPatch { price: Some(Money::from_cents(650).unwrap()), ..Default::default() };
        let v2 = writer.update(&sku, &patch, Some(1)).await.unwrap();
        assert_eq!((v2.version, v2.price.cents()), (2, 650));
        let stale = ProductPatch { name: Some("x".into()), ..Default::default() };
        assert!(matches!(
            writer.update(&sku, &stale, Some(1)).await,
            Err(CatalogError::VersionConflict { expected: 1, current: 2, .. })
        ));
        project_until(&backends, async |view| {
            view.view_product(&sku).await.unwrap().is_some_and(|p| p.version == 2 && p.price.cents() == 650)
        })
        .await;

        // A write whose event never left (the process died in between): the read model stays behind...
        let mut lost = stores.catalog.product(&sku).await.unwrap().unwrap();
        lost.archived = true;
        lost.version = 3;
        assert_eq!(stores.catalog.update_product(&lost).await.unwrap(), ProductWrite::Written);
        assert_eq!(reconcile(&writer, stores.catalog.as_ref(), stores.catalog_view.as_ref()).await.unwrap(), 1);
        // ... until the reconciliation publishes it again; a second round finds nothing to do once projected.
        project_until(&backends, async |view| view.view_product(&sku).await.unwrap().is_some_and(|p| p.archived)).await;
        assert_eq!(reconcile(&writer, stores.catalog.as_ref(), stores.catalog_view.as_ref()).await.unwrap(), 0);

        // A retried archive finds the product archived: it writes nothing and publishes it again.
        let archive = ProductPatch { archived: Some(true), ..Default::default() };
        assert_eq!(writer.update(&sku, &archive, None).await.unwrap().version, 3);
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let p = Product::new(Sku::parse("S").unwrap_or_else(|e| panic!("{e}")), "n".into(), "d".into(), Money::ZERO, 1);
        let patch = ProductPatch { name: Some("m".into()), archived: Some(true), ..Default::default() };
        let q = patch.apply(&p);
        assert_eq!((q.name.as_str(), q.description.as_str(), q.archived, q.version), ("m", "d", true, 1));
        assert!(ProductPatch::default().apply(&p).same_content_as(&p));
        assert!(!q.same_content_as(&p));
    }
}
