//! Low-stock alerts: the `alert:<seq>` rows of a SKU's `orderflow_inventory.stock_v2` partition (recorded by
//! the write that moved the level or the threshold across it, see inventory.rs) and `stock_alerts_by_day`
//! (the all-SKU feed). See inventory.cql for the layout.

use orderflow_schemas::{Sku, StockAlert, StockAlertKind, now_ms};
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Scope, corrupt, prepare, to_i64, to_u64};
use orderflow_platform::store::{ALERT_LISTING_DAYS, Fence, Result};

/// Newest alert rows read per SKU when looking for unpublished ones: alerts are published right after they
/// are recorded, so only the newest few can still be unpublished.
const UNPUBLISHED_SCAN: i32 = 32;
const DAY_MS: i64 = 86_400_000;
/// SKUs whose alerts this process knows to be all published, at most (see [`CleanSkus`]).
const CLEAN_SKUS: u64 = 100_000;

pub(super) struct Statements {
    recent: PreparedStatement,
    mark: PreparedStatement,
    day_insert: PreparedStatement,
    day_read: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Scope<'_>) -> Result<Self> {
        Ok(Self {
            recent: prepare(
                s,
                "SELECT ref, kind, alert_available, alert_threshold, at_ms, published FROM orderflow_inventory.stock_v2 \
                 WHERE sku = ? AND ref >= 'alert:' AND ref < 'alert;' ORDER BY ref DESC LIMIT ?",
                true,
            )
            .await?,
            mark: prepare(
                s,
                "UPDATE orderflow_inventory.stock_v2 USING TIMESTAMP ? SET published = true WHERE sku = ? AND ref = ?",
                true,
            )
            .await?,
            day_insert: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock_alerts_by_day \
                 (day, at_ms, sku, seq, kind, available, alert_threshold) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 USING TIMESTAMP ?",
                true,
            )
            .await?,
            day_read: prepare(
                s,
                "SELECT at_ms, sku, seq, kind, available, alert_threshold FROM orderflow_inventory.stock_alerts_by_day \
                 WHERE day = ? LIMIT ?",
                true,
            )
            .await?,
        })
    }
}

/// The SKUs whose alerts this process found all published, each with the epoch it held the SKU's partition
/// under: while it still writes the SKU under that epoch, it alone records new crossings (and forgets the
/// SKU when it does), so a settle needs no read. Bounded; an entry of another epoch is never used.
pub(super) struct CleanSkus(moka::sync::Cache<String, u64>);

impl CleanSkus {
    pub(super) fn new() -> Self {
        Self(moka::sync::Cache::new(CLEAN_SKUS))
    }
}

/// The row of alert `seq` in its SKU's partition (zero-padded, so rows sort by seq).
pub(super) fn alert_ref(seq: u64) -> String {
    format!("alert:{seq:020}")
}

/// A row of `stock_alerts_by_day`: at_ms, sku, seq, kind, available, threshold.
type DayTuple = (i64, String, i64, Option<String>, Option<i64>, Option<i64>);
/// An alert row: ref, kind, available, threshold, at_ms, published.
type AlertTuple = (String, Option<String>, Option<i64>, Option<i64>, Option<i64>, Option<bool>);

fn to_alert(sku: &Sku, (r, kind, available, threshold, at_ms, published): AlertTuple) -> Result<(StockAlert, bool)> {
    let seq = r.strip_prefix("alert:").and_then(|s| s.parse::<u64>().ok());
    let seq = seq.ok_or_else(|| corrupt(format!("{sku}: alert row {r:?}")))?;
    let kind = kind.as_deref().and_then(StockAlertKind::parse).ok_or_else(|| corrupt(format!("{sku}: alert kind")))?;
    let alert = StockAlert {
        sku: sku.clone(),
        seq,
        kind,
        available: to_u64(available.unwrap_or(0), "available")?,
        threshold: to_u64(threshold.unwrap_or(0), "threshold")?,
        at_ms: at_ms.unwrap_or(0),
    };
    Ok((alert, published.unwrap_or(false)))
}

impl CqlStore {
    async fn record_day(&self, alert: &StockAlert, fence: Fence) -> Result<()> {
        let values = (
            alert.at_ms.div_euclid(DAY_MS),
            alert.at_ms,
            alert.sku.as_str(),
            to_i64(alert.seq, "seq")?,
            alert.kind.as_str(),
            to_i64(alert.available, "available")?,
            to_i64(alert.threshold, "threshold")?,
            fence.timestamp(),
        );
        self.write(&self.alerts.day_insert, values).await
    }

    /// After the batch that recorded a crossing: the feed row, and the SKU is no longer known clean.
    pub(super) async fn alert_recorded(&self, alert: &StockAlert, fence: Fence) -> Result<()> {
        self.clean_skus.0.invalidate(alert.sku.as_str());
        self.record_day(alert, fence).await
    }

    /// The SKU's alerts not yet marked published, oldest first.
    pub(super) async fn alerts_unpublished(&self, sku: &Sku, fence: Fence) -> Result<Vec<StockAlert>> {
        if self.clean_skus.0.get(sku.as_str()) == Some(fence.epoch) {
            return Ok(Vec::new());
        }
        let rows: Vec<AlertTuple> = self.rows(&self.alerts.recent, (sku.as_str(), UNPUBLISHED_SCAN)).await?;
        let mut out = Vec::new();
        for row in rows {
            let (alert, published) = to_alert(sku, row)?;
            if !published {
                // Heals a crash between recording the crossing and writing the feed row.
                self.record_day(&alert, fence).await?;
                out.push(alert);
            }
        }
        if out.is_empty() {
            self.clean_skus.0.insert(sku.as_str().to_owned(), fence.epoch);
        }
        out.reverse(); // oldest first
        Ok(out)
    }

    pub(super) async fn alerts_mark_published(&self, sku: &Sku, seq: u64, fence: Fence) -> Result<()> {
        self.write(&self.alerts.mark, (fence.timestamp(), sku.as_str(), alert_ref(seq))).await
    }

    pub(super) async fn alerts_list(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        let limit_i32 = i32::try_from(limit).unwrap_or(i32::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(sku) = sku {
            let rows: Vec<AlertTuple> = self.rows(&self.alerts.recent, (sku.as_str(), limit_i32)).await?;
            return rows.into_iter().map(|r| Ok(to_alert(sku, r)?.0)).collect();
        }
        let today = now_ms().div_euclid(DAY_MS);
        let mut out = Vec::new();
        for day in (today - ALERT_LISTING_DAYS + 1..=today).rev() {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let rows: Vec<DayTuple> = self.rows(&self.alerts.day_read, (day, want)).await?;
            for (at_ms, sku, seq, kind, available, threshold) in rows {
                let sku = Sku::parse(sku).map_err(corrupt)?;
                let r = alert_ref(to_u64(seq, "seq")?);
                out.push(to_alert(&sku, (r, kind, available, threshold, Some(at_ms), None))?.0);
            }
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}
