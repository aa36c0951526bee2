//! Catalog: `orderflow_catalog.products` (by SKU) and `products_by_sku` (the SKU-ordered listing).

use async_trait::async_trait;
use futures::future::try_join_all;
use orderflow_schemas::{Money, Product, Sku};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Lwt, MAX_UNKNOWN_RETRIES, corrupt, prepare, serial};
use crate::store::{CatalogStore, Page, Result, StoreError};

/// The listing's only shard (see catalog.cql).
const LISTING_SHARD: i32 = 0;

pub(super) struct Statements {
    insert: PreparedStatement,
    update: PreparedStatement,
    get: PreparedStatement,
    get_serial: PreparedStatement,
    list_first: PreparedStatement,
    list_after: PreparedStatement,
    list_insert: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Session) -> Result<Self> {
        let get = prepare(
            s,
            "SELECT sku, name, description, price_cents, created_at_ms, updated_at_ms \
             FROM orderflow_catalog.products WHERE sku = ?",
            true,
        )
        .await?;
        Ok(Self {
            insert: prepare(
                s,
                "INSERT INTO orderflow_catalog.products \
                 (sku, name, description, price_cents, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?) \
                 IF NOT EXISTS",
                false,
            )
            .await?,
            update: prepare(
                s,
                "UPDATE orderflow_catalog.products \
                 SET name = ?, description = ?, price_cents = ?, created_at_ms = ?, updated_at_ms = ? \
                 WHERE sku = ? IF EXISTS",
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
        })
    }
}

type ProductRow = (String, Option<String>, Option<String>, Option<i64>, Option<i64>, Option<i64>);

fn product_from_row(row: ProductRow) -> Result<Product> {
    let (sku, name, description, price_cents, created_at_ms, updated_at_ms) = row;
    Ok(Product {
        sku: Sku::parse(sku).map_err(corrupt)?,
        name: name.unwrap_or_default(),
        description: description.unwrap_or_default(),
        price: Money::from_cents(price_cents.unwrap_or_default()).map_err(corrupt)?,
        created_at_ms: created_at_ms.unwrap_or_default(),
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
        let values = (p.sku.as_str(), &p.name, &p.description, p.price.cents(), p.created_at_ms, p.updated_at_ms);
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

    async fn update_product(&self, p: &Product) -> Result<bool> {
        let values = (&p.name, &p.description, p.price.cents(), p.created_at_ms, p.updated_at_ms, p.sku.as_str());
        for _ in 0..MAX_UNKNOWN_RETRIES {
            match self.lwt(&self.catalog.update, values).await? {
                Lwt::Applied => {}
                Lwt::NotApplied => return Ok(false),
                Lwt::Unknown(e) => {
                    tracing::warn!(sku = %p.sku, error = %e, "product update outcome unknown; settling with a SERIAL read");
                    match self.product_read(&p.sku, true).await? {
                        None => return Ok(false),
                        Some(stored) if stored == *p => {}
                        Some(_) => continue,
                    }
                }
            }
            self.list_sku(&p.sku).await?;
            return Ok(true);
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
}
