//! Staff stock changes (`adjustStock`, `setLowStockThreshold`, `createProduct`'s initial stock). The
//! inventory processor that owns a SKU's partition is the one writer of its stock, so a change is
//! published to that partition as a command and the mutation waits (at most [`STOCK_WAIT`]) for its
//! answer: an adjustment's first answer is recorded under its request key, which makes a retry with the
//! same key return that answer without applying the change again.

use std::time::Duration;

use orderflow_platform::store::{Adjustment, LowStock};
use orderflow_processors::inventory::stock_command_record;
use orderflow_schemas::stock_command::{RequestKey, StockChange, StockCommand};
use orderflow_schemas::{Sku, StockLevel, now_ms};

use crate::ApiState;
use crate::error::{ApiError, ApiResult};

/// How long a stock change waits for the inventory processor's answer.
pub(crate) const STOCK_WAIT: Duration = Duration::from_secs(5);
/// The first and the longest pause between two looks for the answer.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(50);

/// Adds `delta` available units of `sku` (removes them when negative) under the request key `key`, and
/// answers the SKU's level once the change is applied, or why it was refused.
pub(crate) async fn adjust(
    st: &ApiState,
    sku: &Sku,
    delta: i64,
    reason: &str,
    key: RequestKey,
    requested_by: &str,
) -> ApiResult<StockLevel> {
    let inventory = &st.stores.inventory;
    if let Some(first) = inventory.adjustment(sku, key.as_str()).await? {
        return answer(st, sku, delta, &key, first).await;
    }
    known_product(st, sku).await?;
    let change = StockChange::Adjust { delta, reason: reason.to_owned() };
    publish(st, sku, &key, requested_by, change).await?;
    let first = wait(|| async { Ok(inventory.adjustment(sku, key.as_str()).await?) }).await?;
    match first {
        Some(first) => answer(st, sku, delta, &key, first).await,
        None => {
            tracing::warn!(%sku, key = %key, "the inventory processor has not applied a stock adjustment within {STOCK_WAIT:?}");
            Err(ApiError::StockChangePending { sku: sku.to_string(), key: Some(key.to_string()) })
        }
    }
}

/// Sets the low-stock threshold of `sku` and answers its low-stock state once the change is applied.
pub(crate) async fn set_low_stock_threshold(
    st: &ApiState,
    sku: &Sku,
    threshold: u64,
    actor: &str,
) -> ApiResult<LowStock> {
    known_product(st, sku).await?;
    let change = StockChange::SetLowStockThreshold { threshold };
    publish(st, sku, &RequestKey::random(), actor, change).await?;
    let inventory = &st.stores.inventory;
    let set = wait(|| async {
        let now = inventory.low_stock(sku).await?;
        Ok((now.threshold == threshold).then_some(now))
    })
    .await?;
    set.ok_or_else(|| {
        tracing::warn!(%sku, "the inventory processor has not applied a low-stock threshold within {STOCK_WAIT:?}");
        ApiError::StockChangePending { sku: sku.to_string(), key: None }
    })
}

async fn known_product(st: &ApiState, sku: &Sku) -> ApiResult<()> {
    match st.stores.catalog.product(sku).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::UnknownSku(sku.to_string())),
    }
}

async fn publish(st: &ApiState, sku: &Sku, key: &RequestKey, requested_by: &str, change: StockChange) -> ApiResult<()> {
    let cmd = StockCommand {
        request: key.clone(),
        sku: sku.clone(),
        requested_at_ms: now_ms(),
        requested_by: requested_by.to_owned(),
        change,
    };
    let record = stock_command_record(&cmd).map_err(|e| ApiError::unavailable("encoding a stock command", &e))?;
    st.bus.publish(vec![record]).await.map_err(|e| ApiError::unavailable("publishing a stock command", &e))
}

/// Looks for an answer with `look` until it has one or [`STOCK_WAIT`] has passed (then `None`).
async fn wait<T, F, Fut>(look: F) -> ApiResult<Option<T>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ApiResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + STOCK_WAIT;
    let mut pause = FIRST_POLL;
    loop {
        tokio::time::sleep(pause).await;
        if let Some(answer) = look().await? {
            return Ok(Some(answer));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// The answer to an adjustment of `delta` from the first answer recorded under its key.
async fn answer(st: &ApiState, sku: &Sku, delta: i64, key: &RequestKey, first: Adjustment) -> ApiResult<StockLevel> {
    if first.delta != delta {
        return Err(ApiError::KeyReused { sku: sku.to_string(), key: key.to_string(), applied: first.delta });
    }
    if let Some(refused) = first.refused {
        return Err(refused.into_error(sku).into());
    }
    Ok(st.stores.inventory.stock(sku).await?.unwrap_or_default())
}
