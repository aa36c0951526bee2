//! Low-stock alerts: `orderflow_inventory.stock_alerts` (a SKU's alert state as static columns and one row per
//! crossing) and `stock_alerts_by_day` (the all-SKU feed). See inventory.cql for the layout.

use orderflow_schemas::{Sku, StockAlert, StockAlertKind, now_ms};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, Lwt, MAX_CAS_ROUNDS, backoff, batch, corrupt, prepare, serial, to_i64, to_u64};
use crate::store::{ALERT_LISTING_DAYS, LowStock, Result, StockError, StoreError};

/// Newest alert rows read per SKU when looking for unpublished ones: alerts are published right after they
/// are recorded, so only the newest few can still be unpublished.
const UNPUBLISHED_SCAN: i32 = 32;
const DAY_MS: i64 = 86_400_000;

pub(super) struct Statements {
    state: PreparedStatement,
    state_serial: PreparedStatement,
    init: PreparedStatement,
    set_threshold: PreparedStatement,
    flip: Batch,
    recent: PreparedStatement,
    recent_serial: PreparedStatement,
    mark: PreparedStatement,
    day_insert: PreparedStatement,
    day_read: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(s: &Session) -> Result<Self> {
        let state = prepare(
            s,
            "SELECT threshold, low, crossings FROM orderflow_inventory.stock_alerts WHERE sku = ? LIMIT 1",
            true,
        )
        .await?;
        let recent = prepare(
            s,
            "SELECT seq, kind, available, alert_threshold, at_ms, published FROM orderflow_inventory.stock_alerts \
             WHERE sku = ? LIMIT ?",
            true,
        )
        .await?;
        let flip_state = prepare(
            s,
            "UPDATE orderflow_inventory.stock_alerts SET low = ?, crossings = ? WHERE sku = ? IF crossings = ?",
            false,
        )
        .await?;
        let flip_row = prepare(
            s,
            "INSERT INTO orderflow_inventory.stock_alerts (sku, seq, kind, available, alert_threshold, at_ms, published) \
             VALUES (?, ?, ?, ?, ?, ?, false)",
            false,
        )
        .await?;
        Ok(Self {
            state_serial: serial(&state),
            state,
            init: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock_alerts (sku, threshold, low, crossings) VALUES (?, ?, false, 0) \
                 IF NOT EXISTS",
                false,
            )
            .await?,
            set_threshold: prepare(
                s,
                "UPDATE orderflow_inventory.stock_alerts SET threshold = ? WHERE sku = ? IF crossings = ?",
                false,
            )
            .await?,
            flip: batch(BatchType::Logged, &[&flip_state, &flip_row], false),
            recent_serial: serial(&recent),
            recent,
            mark: prepare(
                s,
                "UPDATE orderflow_inventory.stock_alerts SET published = true WHERE sku = ? AND seq = ? \
                 IF published = false",
                false,
            )
            .await?,
            day_insert: prepare(
                s,
                "INSERT INTO orderflow_inventory.stock_alerts_by_day \
                 (day, at_ms, sku, seq, kind, available, alert_threshold) VALUES (?, ?, ?, ?, ?, ?, ?)",
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

/// A row of `stock_alerts_by_day`: at_ms, sku, seq, kind, available, threshold.
type DayTuple = (i64, String, i64, Option<String>, Option<i64>, Option<i64>);
type StateTuple = (Option<i64>, Option<bool>, Option<i64>);
/// A row of `stock_alerts`; `seq` is null on the row a partition with only its static columns returns.
type AlertTuple = (Option<i64>, Option<String>, Option<i64>, Option<i64>, Option<i64>, Option<bool>);

fn to_state(row: Option<StateTuple>) -> Result<Option<LowStock>> {
    let Some((threshold, low, Some(crossings))) = row else { return Ok(None) };
    Ok(Some(LowStock {
        threshold: match threshold {
            Some(t) => to_u64(t, "threshold")?,
            None => LowStock::default().threshold,
        },
        low: low.unwrap_or(false),
        crossings: to_u64(crossings, "crossings")?,
    }))
}

fn to_alert(sku: &Sku, (seq, kind, available, threshold, at_ms, published): AlertTuple) -> Result<(StockAlert, bool)> {
    let seq = seq.ok_or_else(|| corrupt(format!("{sku}: alert without seq")))?;
    let kind = kind.as_deref().and_then(StockAlertKind::parse).ok_or_else(|| corrupt(format!("{sku}: alert kind")))?;
    let alert = StockAlert {
        sku: sku.clone(),
        seq: to_u64(seq, "seq")?,
        kind,
        available: to_u64(available.unwrap_or(0), "available")?,
        threshold: to_u64(threshold.unwrap_or(0), "threshold")?,
        at_ms: at_ms.unwrap_or(0),
    };
    Ok((alert, published.unwrap_or(false)))
}

impl CqlStore {
    async fn alert_state(&self, sku: &Sku, serial_read: bool) -> Result<Option<LowStock>> {
        let st = &self.alerts;
        to_state(self.first_row(if serial_read { &st.state_serial } else { &st.state }, (sku.as_str(),)).await?)
    }

    /// The SKU's alert state, created with the default threshold if it has none yet.
    async fn alert_state_or_init(&self, sku: &Sku) -> Result<LowStock> {
        if let Some(state) = self.alert_state(sku, false).await? {
            return Ok(state);
        }
        let default = LowStock::default();
        // Whether or not this insert applies (a racing one may win), the row exists afterwards; an unknown
        // outcome is settled by the SERIAL read.
        let _ = self.lwt(&self.alerts.init, (sku.as_str(), to_i64(default.threshold, "threshold")?)).await?;
        self.alert_state(sku, true).await?.ok_or_else(|| corrupt(format!("{sku}: alert state vanished")))
    }

    async fn record_day(&self, alert: &StockAlert) -> Result<()> {
        let values = (
            alert.at_ms.div_euclid(DAY_MS),
            alert.at_ms,
            alert.sku.as_str(),
            to_i64(alert.seq, "seq")?,
            alert.kind.as_str(),
            to_i64(alert.available, "available")?,
            to_i64(alert.threshold, "threshold")?,
        );
        self.write(&self.alerts.day_insert, values).await
    }

    pub(super) async fn alerts_set_threshold(&self, sku: &Sku, threshold: u64) -> Result<LowStock, StockError> {
        if !self.product_exists(sku).await? {
            return Err(StockError::UnknownSku(sku.clone()));
        }
        for round in 0..MAX_CAS_ROUNDS {
            let state = if round == 0 {
                self.alert_state_or_init(sku).await?
            } else {
                self.alert_state(sku, true).await?.ok_or_else(|| corrupt(format!("{sku}: alert state vanished")))?
            };
            if state.threshold == threshold {
                return Ok(state);
            }
            let values = (to_i64(threshold, "threshold")?, sku.as_str(), to_i64(state.crossings, "crossings")?);
            if let Lwt::Applied = self.lwt(&self.alerts.set_threshold, values).await? {
                return Ok(LowStock { threshold, ..state });
            }
            // Not applied or unknown: the next round reads at SERIAL and either finds it set or tries again.
            backoff(round).await;
        }
        Err(StoreError::Unavailable(format!("setting the threshold of {sku}: too much contention")).into())
    }

    pub(super) async fn alerts_state(&self, sku: &Sku) -> Result<LowStock> {
        Ok(self.alert_state(sku, false).await?.unwrap_or_default())
    }

    pub(super) async fn alerts_settle(&self, sku: &Sku) -> Result<Vec<StockAlert>> {
        let mut serial_read = false;
        for round in 0..MAX_CAS_ROUNDS {
            let Some(level) = self.read_stock_level(sku, serial_read).await? else {
                return Ok(Vec::new());
            };
            let state = match self.alert_state(sku, serial_read).await? {
                Some(state) => state,
                None => self.alert_state_or_init(sku).await?,
            };
            let Some(alert) = state.crossing(sku, level.available, now_ms()) else {
                return self.unpublished(sku, serial_read).await;
            };
            let after = state.after(&alert);
            let values = (
                (after.low, to_i64(after.crossings, "crossings")?, sku.as_str(), to_i64(state.crossings, "crossings")?),
                (
                    sku.as_str(),
                    to_i64(alert.seq, "seq")?,
                    alert.kind.as_str(),
                    to_i64(alert.available, "available")?,
                    to_i64(alert.threshold, "threshold")?,
                    alert.at_ms,
                ),
            );
            match self.lwt_batch(&self.alerts.flip, values).await? {
                Lwt::Applied => {
                    self.record_day(&alert).await?;
                    return self.unpublished(sku, false).await;
                }
                Lwt::NotApplied => {}
                Lwt::Unknown(e) => {
                    tracing::warn!(%sku, error = %e, "alert outcome unknown; settling with a SERIAL read")
                }
            }
            // Another settle recorded a crossing (or ours may have): look again at SERIAL and decide again.
            serial_read = true;
            backoff(round).await;
        }
        Err(StoreError::Unavailable(format!("settling the low-stock state of {sku}: too much contention")))
    }

    async fn unpublished(&self, sku: &Sku, serial_read: bool) -> Result<Vec<StockAlert>> {
        let st = &self.alerts;
        let stmt = if serial_read { &st.recent_serial } else { &st.recent };
        let rows: Vec<AlertTuple> = self.rows(stmt, (sku.as_str(), UNPUBLISHED_SCAN)).await?;
        let mut out = Vec::new();
        for row in rows.into_iter().filter(|r| r.0.is_some()) {
            let (alert, published) = to_alert(sku, row)?;
            if !published {
                // Heals a crash between recording the crossing and writing the feed row.
                self.record_day(&alert).await?;
                out.push(alert);
            }
        }
        out.reverse(); // oldest first
        Ok(out)
    }

    pub(super) async fn alerts_mark_published(&self, sku: &Sku, seq: u64) -> Result<()> {
        // Not applied = already published; unknown = harmless to leave: the next settle republishes it with
        // the same event id and marks it again.
        let _ = self.lwt(&self.alerts.mark, (sku.as_str(), to_i64(seq, "seq")?)).await?;
        Ok(())
    }

    pub(super) async fn alerts_list(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        let limit_i32 = i32::try_from(limit).unwrap_or(i32::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(sku) = sku {
            let rows: Vec<AlertTuple> = self.rows(&self.alerts.recent, (sku.as_str(), limit_i32)).await?;
            return rows.into_iter().filter(|r| r.0.is_some()).map(|r| Ok(to_alert(sku, r)?.0)).collect();
        }
        let today = now_ms().div_euclid(DAY_MS);
        let mut out = Vec::new();
        for day in (today - ALERT_LISTING_DAYS + 1..=today).rev() {
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let rows: Vec<DayTuple> = self.rows(&self.alerts.day_read, (day, want)).await?;
            for (at_ms, sku, seq, kind, available, threshold) in rows {
                let sku = Sku::parse(sku).map_err(corrupt)?;
                out.push(to_alert(&sku, (Some(seq), kind, available, threshold, Some(at_ms), None))?.0);
            }
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}
