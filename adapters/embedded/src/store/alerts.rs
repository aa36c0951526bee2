//! Low-stock alerts and thresholds (the inventory port's alert methods, see inventory.rs).

use fjall::Readable;
use orderflow_schemas::{Sku, StockAlert, StockLevel, now_ms};
use serde::{Deserialize, Serialize};

use super::super::{from_row, to_row, unavailable};
use super::{EmbeddedStore, get_latest, get_row};
use orderflow_platform::store::*;

// Low-stock alerts: stock_alerts holds
//   "s" 0x00 sku                          LowStock (threshold, flag, crossings)
//   "p" 0x00 sku                          u64: every alert of the SKU below this seq is published
//   "a" 0x00 sku 0x00 seq(u64 BE)         AlertRow, one per crossing
//   "t" 0x00 at_ms(u64 BE) sku 0x00 seq   empty: every SKU's alerts in time order

#[derive(Debug, Serialize, Deserialize)]
struct AlertRow {
    alert: StockAlert,
    published: bool,
}

fn alert_state_key(sku: &Sku) -> Vec<u8> {
    [b"s\0".as_slice(), sku.as_str().as_bytes()].concat()
}

fn threshold_request_key(sku: &Sku, key: &str) -> Vec<u8> {
    [b"\0thr\0".as_slice(), sku.as_str().as_bytes(), b"\0", key.as_bytes()].concat()
}

fn alert_prefix(sku: &Sku) -> Vec<u8> {
    [b"a\0".as_slice(), sku.as_str().as_bytes(), b"\0"].concat()
}

/// The end (exclusive) of a SKU's alert rows.
fn alert_end(sku: &Sku) -> Vec<u8> {
    [b"a\0".as_slice(), sku.as_str().as_bytes(), b"\x01"].concat()
}

/// Every alert of the SKU with a smaller seq than the value stored here is published.
fn published_below_key(sku: &Sku) -> Vec<u8> {
    [b"p\0".as_slice(), sku.as_str().as_bytes()].concat()
}

fn alert_key(sku: &Sku, seq: u64) -> Vec<u8> {
    [alert_prefix(sku).as_slice(), &seq.to_be_bytes()].concat()
}

fn alert_time_key(alert: &StockAlert) -> Vec<u8> {
    let at = u64::try_from(alert.at_ms).unwrap_or(0);
    [b"t\0".as_slice(), &at.to_be_bytes(), alert.sku.as_str().as_bytes(), b"\0", &alert.seq.to_be_bytes()].concat()
}

fn parse_alert_time_key(key: &[u8]) -> Result<(i64, Sku, u64)> {
    let bad = || StoreError::Corrupt("malformed stock alert time key".into());
    let rest = key.get(2..).ok_or_else(bad)?;
    let (at, rest) = rest.split_at_checked(8).ok_or_else(bad)?;
    let (sku, seq) = rest.split_at_checked(rest.len().checked_sub(9).ok_or_else(bad)?).ok_or_else(bad)?;
    let at = i64::try_from(u64::from_be_bytes(at.try_into().map_err(|_| bad())?)).map_err(|_| bad())?;
    let seq = u64::from_be_bytes(seq.get(1..).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let sku = Sku::parse(String::from_utf8_lossy(sku).into_owned()).map_err(|_| bad())?;
    Ok((at, sku, seq))
}

impl EmbeddedStore {
    pub(super) async fn alerts_set_threshold(
        &self,
        sku: &Sku,
        threshold: u64,
        key: Option<&str>,
        _fence: Fence,
    ) -> Result<LowStock, StockError> {
        let (sku, key_row) = (sku.clone(), key.map(|k| threshold_request_key(sku, k)));
        self.db
            .write(move |db, tx| {
                if !tx.contains_key(&db.products, sku.as_str()).map_err(unavailable)? {
                    return Ok(Err(StockError::UnknownSku(sku)));
                }
                let mut state: LowStock = get_row(tx, &db.stock_alerts, alert_state_key(&sku))?.unwrap_or_default();
                if let Some(row) = &key_row {
                    if tx.contains_key(&db.stock, row).map_err(unavailable)? {
                        return Ok(Ok(state));
                    }
                    tx.insert(&db.stock, row, to_row(&threshold)?);
                }
                state.threshold = threshold;
                tx.insert(&db.stock_alerts, alert_state_key(&sku), to_row(&state)?);
                Ok(Ok(state))
            })
            .await?
    }

    pub(super) async fn alerts_state(&self, sku: &Sku) -> Result<LowStock> {
        Ok(get_latest(&self.db.stock_alerts, alert_state_key(sku))?.unwrap_or_default())
    }

    pub(super) async fn alerts_settle(&self, sku: &Sku, _fence: Fence) -> Result<Vec<StockAlert>> {
        // The common case (no crossing, nothing unpublished) needs no write transaction: a look at the
        // latest committed rows settles it. A crossing is re-checked and recorded under the write lock.
        let level: Option<StockLevel> = get_latest(&self.db.stock, sku.as_str())?;
        let state: LowStock = get_latest(&self.db.stock_alerts, alert_state_key(sku))?.unwrap_or_default();
        if level.is_none_or(|l| state.crossing(sku, l.available, 0).is_none()) {
            let from: u64 = get_latest(&self.db.stock_alerts, published_below_key(sku))?.unwrap_or(1);
            let mut unpublished = Vec::new();
            for g in self.db.stock_alerts.inner().range(alert_key(sku, from)..alert_end(sku)) {
                let row: AlertRow = from_row(&g.value().map_err(unavailable)?)?;
                if !row.published {
                    unpublished.push(row.alert);
                }
            }
            if unpublished.is_empty() {
                return Ok(unpublished);
            }
        }
        let sku = sku.clone();
        self.db
            .write(move |db, tx| {
                // Read and flip in one serialisable transaction: no other writer can interleave.
                if let Some(level) = get_row::<StockLevel>(tx, &db.stock, sku.as_str())? {
                    let state: LowStock = get_row(tx, &db.stock_alerts, alert_state_key(&sku))?.unwrap_or_default();
                    if let Some(alert) = state.crossing(&sku, level.available, now_ms()) {
                        tx.insert(&db.stock_alerts, alert_state_key(&sku), to_row(&state.after(&alert))?);
                        tx.insert(&db.stock_alerts, alert_time_key(&alert), []);
                        let row = AlertRow { alert, published: false };
                        tx.insert(&db.stock_alerts, alert_key(&sku, row.alert.seq), to_row(&row)?);
                    }
                }
                let from: u64 = get_row(tx, &db.stock_alerts, published_below_key(&sku))?.unwrap_or(1);
                let mut unpublished = Vec::new();
                for g in tx.range(&db.stock_alerts, alert_key(&sku, from)..alert_end(&sku)) {
                    let row: AlertRow = from_row(&g.value().map_err(unavailable)?)?;
                    if !row.published {
                        unpublished.push(row.alert);
                    }
                }
                Ok(unpublished)
            })
            .await
    }

    pub(super) async fn alerts_mark_published(&self, sku: &Sku, seq: u64, _fence: Fence) -> Result<()> {
        let sku = sku.clone();
        self.db
            .write(move |db, tx| {
                if let Some(mut row) = get_row::<AlertRow>(tx, &db.stock_alerts, alert_key(&sku, seq))?
                    && !row.published
                {
                    row.published = true;
                    tx.insert(&db.stock_alerts, alert_key(&sku, seq), to_row(&row)?);
                }
                // Move the SKU's watermark past every published alert, so settling reads only what follows.
                let mut below: u64 = get_row(tx, &db.stock_alerts, published_below_key(&sku))?.unwrap_or(1);
                let start = below;
                while get_row::<AlertRow>(tx, &db.stock_alerts, alert_key(&sku, below))?.is_some_and(|r| r.published) {
                    below += 1;
                }
                if below != start {
                    tx.insert(&db.stock_alerts, published_below_key(&sku), to_row(&below)?);
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn alerts_list(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        let ks = &self.db.stock_alerts;
        match sku {
            Some(sku) => ks
                .inner()
                .prefix(alert_prefix(sku))
                .rev()
                .take(limit)
                .map(|g| Ok(from_row::<AlertRow>(&g.value().map_err(unavailable)?)?.alert))
                .collect(),
            None => {
                let since = now_ms().saturating_sub(ALERT_LISTING_DAYS * 86_400_000);
                let mut out = Vec::new();
                for g in ks.inner().prefix(b"t\0").rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let key = g.key().map_err(unavailable)?;
                    let (at_ms, sku, seq) = parse_alert_time_key(&key)?;
                    if at_ms < since {
                        break;
                    }
                    if let Some(row) = get_latest::<AlertRow>(ks, alert_key(&sku, seq))? {
                        out.push(row.alert);
                    }
                }
                Ok(out)
            }
        }
    }
}
