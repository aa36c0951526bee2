//! The catalog's read path: `product(sku)` and `products(...)` read only the catalog read model (built by
//! the catalog projector), through an in-process [`CatalogCache`] on `moka`.
//!
//! - Cached: each product by SKU (a missing one too), the listing (every product's summary in SKU order),
//!   and the filtered and sorted results of recent `products` queries.
//! - Invalidated by the catalog events: in `orderflow serve` the catalog projector of the same process
//!   calls [`CatalogCache::invalidate`] right after it stored a new version; a GraphQL process on Kafka also
//!   consumes `orderflow.catalog.v1` in a consumer group of its own ([`CacheInvalidator`],
//!   [`invalidation_group`]), so every instance hears of every change. An invalidation evicts the product
//!   and every listing and query result (catalog writes are rare; browsing is not).
//! - Bounded: every entry also expires [`CACHE_TTL`] after it was loaded, the upper bound on staleness
//!   if an invalidation is ever missed.
//! - Filtering (category, price range, archived), text search on the name and sorting run in memory over
//!   the cached listing: built for catalogs up to about 100,000 products (see `schemas/cql/catalog.cql`).
//!
//! Two races must not leave an old value cached until it expires:
//! - a load that read the store before the projector wrote and finished after the invalidation: each load
//!   notes the invalidation generation before it starts and evicts its own entry if it moved meanwhile;
//! - an invalidation that arrives before the projection (a GraphQL process's own consumer of the catalog
//!   topic and the projector, elsewhere, read the same event independently): an invalidation records the
//!   event's version as the version the SKU must reach, and a load that finds an older one is served but
//!   not cached, so the next read asks the store again until the projector has caught up.

use std::cmp::Ordering;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use async_graphql::connection::{Connection, CursorType, Edge};
use async_graphql::{Context, Enum, InputObject};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::future::Cache;
use orderflow_platform::bus::{Delivery, Handler, HandlerError};
use orderflow_platform::store::{CatalogViewStore, StoreError};
use orderflow_processors::catalog::{CatalogObserver, decode_delivery};
use orderflow_schemas::{Category, Product, ProductSummary, Sku};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::query::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, parse_sku};
use crate::scalars::Decimal;
use crate::types::{ProductObject, state};

/// How long a cached entry lives at most: the bound on staleness when an invalidation is missed.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Products cached by SKU.
const MAX_CACHED_PRODUCTS: u64 = 100_000;
/// The most products the listing holds; a bigger catalog is listed up to this many SKUs (and logged).
pub const MAX_LISTED_PRODUCTS: usize = 200_000;
/// Total result rows kept over all cached `products` queries (each row is one pointer).
const MAX_CACHED_RESULT_ROWS: u64 = 2_000_000;
/// The longest `search` accepted, and the most words in it.
const MAX_SEARCH_LEN: usize = 100;
const MAX_SEARCH_TERMS: usize = 10;
/// Product cursors longer than this are refused before decoding.
const MAX_CURSOR_LEN: usize = 4096;

type Listing = Arc<Vec<Arc<ProductSummary>>>;

fn hit(cache: &'static str) {
    metrics::counter!("orderflow_catalog_cache_hits_total", "cache" => cache).increment(1);
}

fn miss(cache: &'static str) {
    metrics::counter!("orderflow_catalog_cache_misses_total", "cache" => cache).increment(1);
}

fn load_error(e: Arc<StoreError>) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The read model behind a `moka` cache; see the module docs.
pub struct CatalogCache {
    view: Arc<dyn CatalogViewStore>,
    products: Cache<Sku, Option<Arc<Product>>>,
    listing: Cache<(), Listing>,
    queries: Cache<QueryKey, Listing>,
    /// The version each recently changed SKU must have before a loaded product or listing is cached.
    expected: Cache<Sku, u64>,
    /// Bumped by every invalidation, before anything is evicted.
    generation: AtomicU64,
}

impl std::fmt::Debug for CatalogCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogCache").field("products", &self.products.entry_count()).finish_non_exhaustive()
    }
}

impl CatalogCache {
    pub fn new(view: Arc<dyn CatalogViewStore>) -> Self {
        Self::with_ttl(view, CACHE_TTL)
    }

    pub fn with_ttl(view: Arc<dyn CatalogViewStore>, ttl: Duration) -> Self {
        Self {
            view,
            products: Cache::builder().max_capacity(MAX_CACHED_PRODUCTS).time_to_live(ttl).build(),
            listing: Cache::builder().max_capacity(1).time_to_live(ttl).build(),
            queries: Cache::builder()
                .max_capacity(MAX_CACHED_RESULT_ROWS)
                .weigher(|_, rows: &Listing| u32::try_from(rows.len()).unwrap_or(u32::MAX).max(1))
                .time_to_live(ttl)
                .build(),
            expected: Cache::builder().max_capacity(MAX_CACHED_PRODUCTS).time_to_live(ttl).build(),
            generation: AtomicU64::new(0),
        }
    }

    /// Evicts a product that changed to `version`, the listing and every query result; until the read
    /// model shows `version` (or [`CACHE_TTL`] passes), what is loaded for the SKU is not cached.
    pub async fn invalidate(&self, sku: &Sku, version: u64) {
        let expected = self.expected.get(sku).await.unwrap_or(0).max(version);
        self.expected.insert(sku.clone(), expected).await;
        self.generation.fetch_add(1, AtomicOrdering::SeqCst);
        self.products.invalidate(sku).await;
        self.listing.invalidate_all();
        self.queries.invalidate_all();
        metrics::counter!("orderflow_catalog_cache_invalidations_total").increment(1);
    }

    fn generation(&self) -> u64 {
        self.generation.load(AtomicOrdering::SeqCst)
    }

    /// A product from the read model (archived ones included); `None` if the read model has no such SKU.
    pub async fn product(&self, sku: &Sku) -> Result<Option<Arc<Product>>, StoreError> {
        if let Some(p) = self.products.get(sku).await {
            hit("product");
            return Ok(p);
        }
        miss("product");
        let before = self.generation();
        let view = Arc::clone(&self.view);
        let key = sku.clone();
        let loaded = self
            .products
            .try_get_with(sku.clone(), async move { Ok(view.view_product(&key).await?.map(Arc::new)) })
            .await
            .map_err(load_error)?;
        let behind = match self.expected.get(sku).await {
            Some(want) if loaded.as_ref().is_some_and(|p| p.version >= want) => {
                self.expected.invalidate(sku).await;
                false
            }
            Some(_) => true,
            None => false,
        };
        if behind || self.generation() != before {
            self.products.invalidate(sku).await;
        }
        Ok(loaded)
    }

    /// Whether the listing lacks a version some SKU is expected to reach.
    fn listing_behind(&self, listing: &[Arc<ProductSummary>]) -> bool {
        self.expected.iter().any(|(sku, want)| {
            let found = listing.binary_search_by(|s| s.sku.as_str().cmp(sku.as_str())).ok();
            found.and_then(|i| listing.get(i)).is_none_or(|s| s.version < want)
        })
    }

    /// Every product's summary in SKU order (archived ones included).
    pub async fn listing(&self) -> Result<Listing, StoreError> {
        Ok(self.listing_and_freshness().await?.0)
    }

    /// The listing, and whether it may be cached (it is not behind an invalidation).
    async fn listing_and_freshness(&self) -> Result<(Listing, bool), StoreError> {
        if let Some(l) = self.listing.get(&()).await {
            hit("listing");
            return Ok((l, true));
        }
        miss("listing");
        let before = self.generation();
        let view = Arc::clone(&self.view);
        let loaded = self
            .listing
            .try_get_with((), async move {
                let rows = view.listing(MAX_LISTED_PRODUCTS).await?;
                if rows.len() >= MAX_LISTED_PRODUCTS {
                    tracing::warn!(
                        limit = MAX_LISTED_PRODUCTS,
                        "the catalog is larger than the in-memory listing is built for; products past the limit \
                         (in SKU order) are not listed: put a search index in front of the catalog"
                    );
                }
                Ok::<_, StoreError>(Arc::new(rows.into_iter().map(Arc::new).collect::<Vec<_>>()))
            })
            .await
            .map_err(load_error)?;
        let fresh = !self.listing_behind(&loaded);
        if !fresh || self.generation() != before {
            self.listing.invalidate_all();
        }
        Ok((loaded, fresh))
    }

    /// The summaries matching `key`, in its order.
    async fn query(&self, key: &QueryKey) -> Result<Listing, StoreError> {
        if let Some(rows) = self.queries.get(key).await {
            hit("query");
            return Ok(rows);
        }
        miss("query");
        let before = self.generation();
        let (listing, fresh) = self.listing_and_freshness().await?;
        let rows = Arc::new(key.run(&listing));
        if fresh && self.generation() == before {
            self.queries.insert(key.clone(), Arc::clone(&rows)).await;
            if self.generation() != before {
                self.queries.invalidate(key).await;
            }
        }
        Ok(rows)
    }
}

#[async_trait]
impl CatalogObserver for CatalogCache {
    async fn product_changed(&self, sku: &Sku, version: u64) {
        self.invalidate(sku, version).await;
    }
}

/// Keeps a GraphQL process's cache in step with the catalog when the projector runs elsewhere: consumes
/// the catalog topic in a group of this process's own ([`invalidation_group`]) and invalidates.
#[derive(Debug)]
pub struct CacheInvalidator {
    pub cache: Arc<CatalogCache>,
}

#[async_trait]
impl Handler for CacheInvalidator {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let event = decode_delivery(delivery)?;
        self.cache.invalidate(&event.product.sku, event.product.version).await;
        Ok(())
    }
}

/// A consumer group for one GraphQL process's cache invalidation: every instance must see every catalog
/// event, so each has its own group.
pub fn invalidation_group() -> String {
    format!("orderflow-graphql-cache-{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------------
// The `products` query: filter, search, sort, Relay pagination.

/// What `products` returns, by default all products that are not archived.
#[derive(InputObject, Default)]
pub(crate) struct ProductFilter {
    /// Only this category (case-insensitive).
    category: Option<String>,
    /// Only products at this price or above.
    min_price: Option<Decimal>,
    /// Only products at this price or below.
    max_price: Option<Decimal>,
    /// Only products whose name contains every word of this (case-insensitive), e.g. "flat white".
    search: Option<String>,
    /// Staff: list archived products too.
    include_archived: Option<bool>,
}

/// What `products` sorts by.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub(crate) enum ProductSortField {
    #[default]
    Sku,
    /// Case-insensitive, then by SKU.
    Name,
    /// Then by SKU.
    Price,
    /// Last change, then by SKU.
    UpdatedAt,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub(crate) enum SortDirection {
    #[default]
    Asc,
    Desc,
}

/// The order of `products`; default SKU ascending.
#[derive(InputObject, Default)]
pub(crate) struct ProductSort {
    #[graphql(default)]
    field: ProductSortField,
    #[graphql(default)]
    direction: SortDirection,
}

/// A `products` query, normalised: the key of its cached result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QueryKey {
    category: Option<Category>,
    min_cents: Option<i64>,
    max_cents: Option<i64>,
    terms: Vec<String>,
    include_archived: bool,
    field: ProductSortField,
    direction: SortDirection,
}

/// A summary's position in a sort: the sort value, then the SKU.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
enum SortValue {
    Int(i64),
    Text(String),
}

fn sort_value(field: ProductSortField, s: &ProductSummary) -> SortValue {
    match field {
        ProductSortField::Sku => SortValue::Text(String::new()),
        ProductSortField::Name => SortValue::Text(s.name.to_lowercase()),
        ProductSortField::Price => SortValue::Int(s.price.cents()),
        ProductSortField::UpdatedAt => SortValue::Int(s.updated_at_ms),
    }
}

impl QueryKey {
    fn matches(&self, s: &ProductSummary) -> bool {
        (self.include_archived || !s.archived)
            && self.category.as_ref().is_none_or(|c| *c == s.category)
            && self.min_cents.is_none_or(|m| s.price.cents() >= m)
            && self.max_cents.is_none_or(|m| s.price.cents() <= m)
            && (self.terms.is_empty() || {
                let name = s.name.to_lowercase();
                self.terms.iter().all(|t| name.contains(t.as_str()))
            })
    }

    /// Compares two positions in this query's order.
    fn order(&self, a: &(SortValue, &str), b: &(SortValue, &str)) -> Ordering {
        let asc = a.cmp(b);
        if self.direction == SortDirection::Desc { asc.reverse() } else { asc }
    }

    fn position<'a>(&self, s: &'a ProductSummary) -> (SortValue, &'a str) {
        (sort_value(self.field, s), s.sku.as_str())
    }

    fn run(&self, listing: &[Arc<ProductSummary>]) -> Vec<Arc<ProductSummary>> {
        let mut rows: Vec<Arc<ProductSummary>> = listing.iter().filter(|s| self.matches(s)).cloned().collect();
        if self.field != ProductSortField::Sku || self.direction != SortDirection::Asc {
            // The listing is in SKU order already; other orders sort their own copy.
            let mut keyed: Vec<_> = rows.into_iter().map(|s| (sort_value(self.field, &s), s)).collect();
            keyed.sort_by(|(va, a), (vb, b)| self.order(&(va.clone(), a.sku.as_str()), &(vb.clone(), b.sku.as_str())));
            rows = keyed.into_iter().map(|(_, s)| s).collect();
        }
        rows
    }
}

/// A position in a `products` result: the sort and the last item's (sort value, SKU), so the next page
/// starts right after it even if products were added or changed in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProductCursor {
    #[serde(rename = "f")]
    field: ProductSortField,
    #[serde(rename = "d")]
    direction: SortDirection,
    #[serde(rename = "v")]
    value: SortValue,
    #[serde(rename = "k")]
    sku: String,
}

impl ProductCursor {
    const TAG: &'static str = "products:";

    fn decode(s: &str, key: &QueryKey) -> ApiResult<Self> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(ApiError::InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| ApiError::InvalidCursor)?;
        let json = bytes.strip_prefix(Self::TAG.as_bytes()).ok_or(ApiError::InvalidCursor)?;
        let cursor: ProductCursor = serde_json::from_slice(json).map_err(|_| ApiError::InvalidCursor)?;
        if cursor.field != key.field || cursor.direction != key.direction {
            return Err(ApiError::InvalidCursor);
        }
        Ok(cursor)
    }
}

impl CursorType for ProductCursor {
    type Error = &'static str;

    /// Not used for input (the resolver decodes with the query's sort); required by the trait.
    fn decode_cursor(_s: &str) -> Result<Self, Self::Error> {
        Err("decode product cursors with ProductCursor::decode")
    }

    fn encode_cursor(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(format!("{}{json}", Self::TAG))
    }
}

fn cursor_position(c: &ProductCursor) -> (SortValue, &str) {
    (c.value.clone(), c.sku.as_str())
}

/// The arguments of `products`, as given.
pub(crate) struct ProductsArgs {
    pub(crate) first: Option<i32>,
    pub(crate) after: Option<String>,
    pub(crate) last: Option<i32>,
    pub(crate) before: Option<String>,
    pub(crate) filter: Option<ProductFilter>,
    pub(crate) sort_by: Option<ProductSort>,
}

fn page_size(name: &str, n: i32) -> ApiResult<usize> {
    if !(1..=MAX_PAGE_SIZE).contains(&n) {
        return Err(ApiError::invalid(name, format!("must be between 1 and {MAX_PAGE_SIZE} (got {n})")));
    }
    Ok(n.unsigned_abs() as usize)
}

/// What the query part of `products` costs (see [`crate::limits::cost`]): a page of the cached listing,
/// or, filtered, searched or sorted otherwise than by SKU, a pass over the whole catalog.
pub(crate) fn products_query_cost(filter: Option<&ProductFilter>, sort: Option<&ProductSort>) -> usize {
    let filtered = filter.is_some_and(|f| {
        f.category.is_some()
            || f.min_price.is_some()
            || f.max_price.is_some()
            || f.search.as_deref().is_some_and(|s| !s.trim().is_empty())
            || f.include_archived == Some(true)
    });
    let sorted = sort.is_some_and(|s| s.field != ProductSortField::Sku || s.direction != SortDirection::Asc);
    if filtered || sorted { crate::limits::cost::PRODUCTS_SCAN } else { crate::limits::cost::PRODUCTS_LISTING }
}

fn query_key(ctx: &Context<'_>, filter: ProductFilter, sort: ProductSort) -> ApiResult<QueryKey> {
    let include_archived = filter.include_archived.unwrap_or(false);
    if include_archived {
        crate::auth::require_staff(ctx)?;
    }
    let category =
        filter.category.map(|c| Category::parse(&c).map_err(|e| ApiError::value("filter.category", e))).transpose()?;
    let (min_cents, max_cents) = (filter.min_price.map(|d| d.0.cents()), filter.max_price.map(|d| d.0.cents()));
    if let (Some(min), Some(max)) = (min_cents, max_cents)
        && min > max
    {
        return Err(ApiError::invalid("filter.maxPrice", "must not be below filter.minPrice"));
    }
    let search = filter.search.unwrap_or_default();
    if search.chars().count() > MAX_SEARCH_LEN {
        return Err(ApiError::invalid("filter.search", format!("must be at most {MAX_SEARCH_LEN} characters")));
    }
    let terms: Vec<String> = search.split_whitespace().map(str::to_lowercase).collect();
    if terms.len() > MAX_SEARCH_TERMS {
        return Err(ApiError::invalid("filter.search", format!("must have at most {MAX_SEARCH_TERMS} words")));
    }
    Ok(QueryKey {
        category,
        min_cents,
        max_cents,
        terms,
        include_archived,
        field: sort.field,
        direction: sort.direction,
    })
}

/// Resolves `products`.
pub(crate) async fn products(
    ctx: &Context<'_>,
    args: ProductsArgs,
) -> ApiResult<Connection<ProductCursor, ProductObject>> {
    let (count, from_end) = match (args.first, args.last) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("last", "pass either first or last, not both")),
        (Some(n), None) => (page_size("first", n)?, false),
        (None, Some(n)) => (page_size("last", n)?, true),
        (None, None) => (page_size("first", DEFAULT_PAGE_SIZE)?, false),
    };
    let key = query_key(ctx, args.filter.unwrap_or_default(), args.sort_by.unwrap_or_default())?;
    let after = args.after.as_deref().map(|c| ProductCursor::decode(c, &key)).transpose()?;
    let before = args.before.as_deref().map(|c| ProductCursor::decode(c, &key)).transpose()?;
    let st = state(ctx)?;
    let rows = st.catalog.query(&key).await?;
    // Results are sorted in the query's order, so both bounds are binary searches.
    let start = after
        .as_ref()
        .map_or(0, |c| rows.partition_point(|s| key.order(&key.position(s), &cursor_position(c)) != Ordering::Greater));
    let end = before
        .as_ref()
        .map_or(rows.len(), |c| {
            rows.partition_point(|s| key.order(&key.position(s), &cursor_position(c)) == Ordering::Less)
        })
        .max(start);
    let (lo, hi) =
        if from_end { (end.saturating_sub(count).max(start), end) } else { (start, (start + count).min(end)) };
    let window = rows.get(lo..hi).unwrap_or_default();
    let nodes = futures::future::try_join_all(window.iter().map(|s| st.catalog.product(&s.sku))).await?;
    let mut connection = Connection::new(lo > 0, hi < rows.len());
    connection.edges.extend(window.iter().zip(nodes).filter_map(|(summary, node)| {
        let cursor = ProductCursor {
            field: key.field,
            direction: key.direction,
            value: sort_value(key.field, summary),
            sku: summary.sku.to_string(),
        };
        node.map(|p| Edge::new(cursor, ProductObject((*p).clone())))
    }));
    Ok(connection)
}

/// Resolves `product(sku)`.
pub(crate) async fn product(ctx: &Context<'_>, sku: &str) -> ApiResult<Option<ProductObject>> {
    let sku = parse_sku("sku", sku)?;
    Ok(state(ctx)?.catalog.product(&sku).await?.map(|p| ProductObject((*p).clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_schemas::Money;

    fn summary(sku: &str, name: &str, cents: i64, category: &str, archived: bool) -> Arc<ProductSummary> {
        Arc::new(ProductSummary {
            sku: Sku::parse(sku).unwrap_or_else(|e| panic!("{e}")),
            name: name.into(),
            price: Money::from_cents(cents).unwrap_or_default(),
            category: Category::parse(category).unwrap_or_else(|e| panic!("{e}")),
            archived,
            version: 1,
            updated_at_ms: cents,
        })
    }

    fn key(field: ProductSortField, direction: SortDirection) -> QueryKey {
        QueryKey {
            category: None,
            min_cents: None,
            max_cents: None,
            terms: vec![],
            include_archived: false,
            field,
            direction,
        }
    }

    fn skus(rows: &[Arc<ProductSummary>]) -> Vec<&str> {
        rows.iter().map(|s| s.sku.as_str()).collect()
    }

    #[test]
    fn filters_search_and_sorts() {
        let listing = vec![
            summary("A", "Flat white", 350, "drinks", false),
            summary("B", "butter croissant", 275, "bakery", false),
            summary("C", "Old mug", 100, "kitchen", true),
            summary("D", "White mug", 2500, "kitchen", false),
        ];
        assert_eq!(skus(&key(ProductSortField::Sku, SortDirection::Asc).run(&listing)), ["A", "B", "D"]);
        assert_eq!(skus(&key(ProductSortField::Name, SortDirection::Asc).run(&listing)), ["B", "A", "D"]);
        assert_eq!(skus(&key(ProductSortField::Price, SortDirection::Desc).run(&listing)), ["D", "A", "B"]);
        let mut k = key(ProductSortField::Sku, SortDirection::Asc);
        k.terms = vec!["white".into()];
        assert_eq!(skus(&k.run(&listing)), ["A", "D"]);
        k.terms = vec!["white".into(), "mug".into()];
        assert_eq!(skus(&k.run(&listing)), ["D"]);
        let mut k = key(ProductSortField::Sku, SortDirection::Asc);
        k.category = Category::parse("Kitchen").ok();
        k.include_archived = true;
        assert_eq!(skus(&k.run(&listing)), ["C", "D"]);
        let mut k = key(ProductSortField::Sku, SortDirection::Asc);
        (k.min_cents, k.max_cents) = (Some(275), Some(350));
        assert_eq!(skus(&k.run(&listing)), ["A", "B"]);
    }

    #[tokio::test]
    async fn an_invalidation_ahead_of_the_projection_caches_nothing_old() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let backends = orderflow_embedded::open(dir.path(), &Default::default()).unwrap_or_else(|e| panic!("{e}"));
        let view = Arc::clone(&backends.stores.catalog_view);
        let cache = CatalogCache::new(Arc::clone(&view));
        let sku = Sku::parse("S").unwrap_or_else(|e| panic!("{e}"));
        let mut p = Product::new(sku.clone(), "one".into(), String::new(), Money::ZERO, 1);
        view.upsert_if_newer(&p).await.unwrap_or_else(|e| panic!("{e}"));
        let version = |p: Option<Arc<Product>>| p.map(|p| p.version);
        assert_eq!(version(cache.product(&sku).await.unwrap_or_else(|e| panic!("{e}"))), Some(1));
        assert_eq!(cache.listing().await.unwrap_or_else(|e| panic!("{e}"))[0].version, 1);

        // The event of version 2 reaches this cache before the projector stored it.
        cache.invalidate(&sku, 2).await;
        assert_eq!(version(cache.product(&sku).await.unwrap_or_else(|e| panic!("{e}"))), Some(1));
        assert_eq!(cache.listing().await.unwrap_or_else(|e| panic!("{e}"))[0].version, 1);
        p.version = 2;
        view.upsert_if_newer(&p).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            version(cache.product(&sku).await.unwrap_or_else(|e| panic!("{e}"))),
            Some(2),
            "version 1 was served, not cached"
        );
        assert_eq!(cache.listing().await.unwrap_or_else(|e| panic!("{e}"))[0].version, 2);
    }

    #[test]
    fn cursors_round_trip_and_belong_to_one_sort() {
        let c = ProductCursor {
            field: ProductSortField::Name,
            direction: SortDirection::Desc,
            value: SortValue::Text("flat white".into()),
            sku: "SKU:1".into(),
        };
        let encoded = c.encode_cursor();
        assert!(!encoded.contains("SKU"), "opaque");
        let by_name = key(ProductSortField::Name, SortDirection::Desc);
        assert_eq!(ProductCursor::decode(&encoded, &by_name).ok(), Some(c));
        assert!(ProductCursor::decode(&encoded, &key(ProductSortField::Name, SortDirection::Asc)).is_err());
        assert!(ProductCursor::decode(&encoded, &key(ProductSortField::Price, SortDirection::Desc)).is_err());
        assert!(ProductCursor::decode("garbage!", &by_name).is_err());
    }
}
