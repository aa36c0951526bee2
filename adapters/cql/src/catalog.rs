//! Catalog. Write model: `orderflow_catalog.products` (by SKU, lightweight transactions only) and
//! `products_by_sku` (the SKU-ordered listing). Read model: `product_view` (by SKU) and `product_listing`
//! (every product's summary in one partition), both written with `USING TIMESTAMP <version>` so the highest
//! version wins whatever order the projector applies events in. See `schemas/cql/catalog.cql`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::future::try_join_all;
use orderflow_schemas::{Attributes, Category, Currency, Money, Product, ProductSummary, Sku};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Lwt, MAX_UNKNOWN_RETRIES, Scope, batch, corrupt, prepare, serial, to_i64, to_u64};
use orderflow_platform::store::{CatalogStore, CatalogViewStore, Page, ProductWrite, Projected, Result, StoreError};

/// The listing's only shard (see catalog.cql).
const LISTING_SHARD: i32 = 0;

const PRODUCT_COLUMNS: &str = "sku, name, description, price_cents, category, attributes, archived, version, created_at_ms, updated_at_ms, currency";

pub(super) struct Statements {
    insert: PreparedStatement,
    update: PreparedStatement,
    /// The update of a row written before versions existed (its `version` is null).
    update_unversioned: PreparedStatement,
    get: PreparedStatement,
    get_serial: PreparedStatement,
    list_first: PreparedStatement,
    list_after: PreparedStatement,
    list_insert: PreparedStatement,
    versions_first: PreparedStatement,
    versions_after: PreparedStatement,
    view_get: PreparedStatement,
    view_version: PreparedStatement,
    view_upsert: Batch,
    listing: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Scope<'_>) -> Result<Self> {
        let get = prepare(s, &format!("SELECT {PRODUCT_COLUMNS} FROM orderflow_catalog.products WHERE sku = ?"), true)
            .await?;
        let set = "SET name = ?, description = ?, price_cents = ?, category = ?, attributes = ?, archived = ?, \
                   version = ?, created_at_ms = ?, updated_at_ms = ?, currency = ? WHERE sku = ?";
        let view_insert = prepare(
            s,
            &format!(
                "INSERT INTO orderflow_catalog.product_view ({PRODUCT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 USING TIMESTAMP ?"
            ),
            true,
        )
        .await?;
        let listing_insert = prepare(
            s,
            "INSERT INTO orderflow_catalog.product_listing \
             (shard, sku, name, price_cents, category, archived, version, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            true,
        )
        .await?;
        Ok(Self {
            insert: prepare(
                s,
                &format!(
                    "INSERT INTO orderflow_catalog.products ({PRODUCT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            update: prepare(s, &format!("UPDATE orderflow_catalog.products {set} IF version = ?"), false).await?,
            update_unversioned: prepare(
                s,
                &format!("UPDATE orderflow_catalog.products {set} IF version = null AND created_at_ms != null"),
                false,
            )
            .await?,
            get_serial: serial(&get),
            get,
            list_first: prepare(s, "SELECT sku FROM orderflow_catalog.products_by_sku WHERE shard = ? LIMIT ?", true)
                .await?,
            list_after: prepare(
                s,
                "SELECT sku FROM orderflow_catalog.products_by_sku WHERE shard = ? AND sku > ? LIMIT ?",
                true,
            )
            .await?,
            list_insert: prepare(s, "INSERT INTO orderflow_catalog.products_by_sku (shard, sku) VALUES (?, ?)", true)
                .await?,
            versions_first: prepare(s, "SELECT sku, version FROM orderflow_catalog.products LIMIT ?", true).await?,
            versions_after: prepare(
                s,
                "SELECT sku, version FROM orderflow_catalog.products WHERE token(sku) > token(?) LIMIT ?",
                true,
            )
            .await?,
            view_get: prepare(
                s,
                &format!("SELECT {PRODUCT_COLUMNS} FROM orderflow_catalog.product_view WHERE sku = ?"),
                true,
            )
            .await?,
            view_version: prepare(s, "SELECT version FROM orderflow_catalog.product_view WHERE sku = ?", true).await?,
            // Logged: the view row and the listing row land together or (after a retry) not at all.
            view_upsert: batch(BatchType::Logged, &[&view_insert, &listing_insert], true),
            listing: prepare(
                s,
                "SELECT sku, name, price_cents, category, archived, version, updated_at_ms \
                 FROM orderflow_catalog.product_listing WHERE shard = ? LIMIT ?",
                true,
            )
            .await?,
        })
    }
}

type ProductRow = (
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<BTreeMap<String, String>>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn category_of(c: Option<String>) -> Result<Category> {
    c.map(|c| Category::parse(&c).map_err(corrupt)).transpose().map(Option::unwrap_or_default)
}

fn product_from_row(row: ProductRow) -> Result<Product> {
    let (
        sku,
        name,
        description,
        price_cents,
        category,
        attributes,
        archived,
        version,
        created_at_ms,
        updated_at_ms,
        currency,
    ) = row;
    Ok(Product {
        sku: Sku::parse(sku).map_err(corrupt)?,
        name: name.unwrap_or_default(),
        description: description.unwrap_or_default(),
        price: Money::from_cents(price_cents.unwrap_or_default()).map_err(corrupt)?,
        currency: currency.map(|c| Currency::parse("currency", &c).map_err(corrupt)).transpose()?,
        category: category_of(category)?,
        attributes: Attributes::parse(attributes.unwrap_or_default()).map_err(corrupt)?,
        archived: archived.unwrap_or(false),
        version: to_u64(version.unwrap_or_default(), "product version")?,
        created_at_ms: created_at_ms.unwrap_or_default(),
        updated_at_ms: updated_at_ms.unwrap_or_default(),
    })
}

type SummaryRow = (String, Option<String>, Option<i64>, Option<String>, Option<bool>, Option<i64>, Option<i64>);

fn summary_from_row(row: SummaryRow) -> Result<ProductSummary> {
    let (sku, name, price_cents, category, archived, version, updated_at_ms) = row;
    Ok(ProductSummary {
        sku: Sku::parse(sku).map_err(corrupt)?,
        name: name.unwrap_or_default(),
        price: Money::from_cents(price_cents.unwrap_or_default()).map_err(corrupt)?,
        category: category_of(category)?,
        archived: archived.unwrap_or(false),
        version: to_u64(version.unwrap_or_default(), "product version")?,
        updated_at_ms: updated_at_ms.unwrap_or_default(),
    })
}

impl CqlStore {
    async fn product_read(&self, sku: &Sku, serial: bool) -> Result<Option<Product>> {
        let st = &self.catalog;
        let stmt = if serial { &st.get_serial } else { &st.get };
        self.first_row::<ProductRow>(stmt, (sku.as_str(),)).await?.map(product_from_row).transpose()
    }

    /// Whether the SKU is in the catalog (inventory asks this before it refuses a line as unknown).
    pub(super) async fn product_exists(&self, sku: &Sku) -> Result<bool> {
        Ok(self.product_read(sku, false).await?.is_some())
    }

    async fn list_sku(&self, sku: &Sku) -> Result<()> {
        self.write(&self.catalog.list_insert, (LISTING_SHARD, sku.as_str())).await
    }
}

#[async_trait]
impl CatalogStore for CqlStore {
    async fn create_product(&self, p: &Product) -> Result<bool> {
        let currency = p.currency.as_ref().map(Currency::as_str);
        let values = (
            p.sku.as_str(),
            &p.name,
            &p.description,
            p.price.cents(),
            p.category.as_str(),
            p.attributes.as_map(),
            p.archived,
            to_i64(p.version, "product version")?,
            p.created_at_ms,
            p.updated_at_ms,
            currency,
        );
        for _ in 0..MAX_UNKNOWN_RETRIES {
            let created = match self.lwt(&self.catalog.insert, values).await? {
                Lwt::Applied => true,
                Lwt::NotApplied => false,
                Lwt::Unknown(e) => {
                    tracing::warn!(sku = %p.sku, error = %e, "product insert outcome unknown; settling with a SERIAL read");
                    match self.product_read(&p.sku, true).await? {
                        // Written, by this call or by an identical one: either way the product is as asked.
                        Some(stored) => stored == *p,
                        None => continue,
                    }
                }
            };
            // Also when it already existed: heals a listing row lost to a crash after the first insert.
            self.list_sku(&p.sku).await?;
            return Ok(created);
        }
        Err(StoreError::Unavailable(format!("creating product {}: outcome stayed unknown", p.sku)))
    }

    async fn update_product(&self, p: &Product) -> Result<ProductWrite> {
        let Some(expected) = p.version.checked_sub(1) else {
            return Err(StoreError::Unavailable(format!("product {} update with version 0", p.sku)));
        };
        let (version, expected_i64) = (to_i64(p.version, "product version")?, to_i64(expected, "product version")?);
        let (price, category, attributes) = (p.price.cents(), p.category.as_str(), p.attributes.as_map());
        let currency = p.currency.as_ref().map(Currency::as_str);
        let set = (
            &p.name,
            &p.description,
            price,
            category,
            attributes,
            p.archived,
            version,
            p.created_at_ms,
            p.updated_at_ms,
            currency,
            p.sku.as_str(),
        );
        let set_if_version = (
            &p.name,
            &p.description,
            price,
            category,
            attributes,
            p.archived,
            version,
            p.created_at_ms,
            p.updated_at_ms,
            currency,
            p.sku.as_str(),
            expected_i64,
        );
        for _ in 0..MAX_UNKNOWN_RETRIES {
            // A row from before versions has a null version, which reads as 0.
            let outcome = if expected == 0 {
                match self.lwt(&self.catalog.update_unversioned, set).await? {
                    Lwt::NotApplied => self.lwt(&self.catalog.update, set_if_version).await?,
                    other => other,
                }
            } else {
                self.lwt(&self.catalog.update, set_if_version).await?
            };
            match outcome {
                Lwt::Applied => {}
                Lwt::NotApplied => {
                    return Ok(match self.product_read(&p.sku, true).await? {
                        None => ProductWrite::NotFound,
                        Some(stored) if stored == *p => ProductWrite::Written,
                        Some(stored) => ProductWrite::Conflict(stored),
                    });
                }
                Lwt::Unknown(e) => {
                    tracing::warn!(sku = %p.sku, error = %e, "product update outcome unknown; settling with a SERIAL read");
                    match self.product_read(&p.sku, true).await? {
                        None => return Ok(ProductWrite::NotFound),
                        Some(stored) if stored == *p => {}
                        // Still at the version the edit was made from: the update did not apply; try again.
                        Some(stored) if stored.version == expected => continue,
                        Some(stored) => return Ok(ProductWrite::Conflict(stored)),
                    }
                }
            }
            self.list_sku(&p.sku).await?;
            return Ok(ProductWrite::Written);
        }
        Err(StoreError::Unavailable(format!("updating product {}: outcome stayed unknown", p.sku)))
    }

    async fn product(&self, sku: &Sku) -> Result<Option<Product>> {
        self.product_read(sku, false).await
    }

    async fn products(&self, after: Option<&str>, limit: usize) -> Result<Page<Product>> {
        let fetch = i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX);
        let skus: Vec<(String,)> = match after {
            Some(after) => self.rows(&self.catalog.list_after, (LISTING_SHARD, after, fetch)).await?,
            None => self.rows(&self.catalog.list_first, (LISTING_SHARD, fetch)).await?,
        };
        let has_next = skus.len() > limit;
        let wanted =
            skus.into_iter().take(limit).map(|(s,)| Sku::parse(s).map_err(corrupt)).collect::<Result<Vec<_>>>()?;
        let products = try_join_all(wanted.iter().map(|sku| self.product_read(sku, false))).await?;
        let items =
            wanted.into_iter().zip(products).filter_map(|(sku, p)| p.map(|p| (sku.as_str().to_owned(), p))).collect();
        Ok(Page { items, has_next })
    }

    async fn product_versions(&self, after: Option<&str>, limit: usize) -> Result<Page<u64>> {
        let fetch = i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX);
        let rows: Vec<(String, Option<i64>)> = match after {
            Some(after) => self.rows(&self.catalog.versions_after, (after, fetch)).await?,
            None => self.rows(&self.catalog.versions_first, (fetch,)).await?,
        };
        let has_next = rows.len() > limit;
        let items = rows
            .into_iter()
            .take(limit)
            .map(|(sku, v)| Ok((sku, to_u64(v.unwrap_or_default(), "product version")?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { items, has_next })
    }
}

#[async_trait]
impl CatalogViewStore for CqlStore {
    async fn upsert_if_newer(&self, p: &Product) -> Result<Projected> {
        let version = to_i64(p.version, "product version")?;
        let stored: Option<(Option<i64>,)> = self.first_row(&self.catalog.view_version, (p.sku.as_str(),)).await?;
        let outcome = match stored.map(|(v,)| v.unwrap_or_default()) {
            Some(v) if v > version => return Ok(Projected::Stale),
            Some(v) if v == version => Projected::AlreadyCurrent,
            _ => Projected::Applied,
        };
        // Written even when the read said "same version": the timestamps make it a no-op then, and a
        // concurrent projector of an older version can never overwrite it.
        let view = (
            p.sku.as_str(),
            &p.name,
            &p.description,
            p.price.cents(),
            p.category.as_str(),
            p.attributes.as_map(),
            p.archived,
            version,
            p.created_at_ms,
            p.updated_at_ms,
            p.currency.as_ref().map(Currency::as_str),
            version,
        );
        let listing = (
            LISTING_SHARD,
            p.sku.as_str(),
            &p.name,
            p.price.cents(),
            p.category.as_str(),
            p.archived,
            version,
            p.updated_at_ms,
            version,
        );
        self.write_batch(&self.catalog.view_upsert, (view, listing)).await?;
        Ok(outcome)
    }

    async fn view_product(&self, sku: &Sku) -> Result<Option<Product>> {
        self.first_row::<ProductRow>(&self.catalog.view_get, (sku.as_str(),)).await?.map(product_from_row).transpose()
    }

    async fn listing(&self, limit: usize) -> Result<Vec<ProductSummary>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<SummaryRow> = self.stream_rows(&self.catalog.listing, (LISTING_SHARD, limit)).await?;
        rows.into_iter().map(summary_from_row).collect()
    }
}
