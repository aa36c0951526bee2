//! Orders, their applied events and their indexes.

use std::collections::BTreeMap;

use async_trait::async_trait;
use orderflow_schemas::{EventId, Order, OrderId, OrderStatus};
use serde::{Deserialize, Serialize};

use super::super::{Db, to_row, unavailable};
use super::{EmbeddedStore, get_latest, get_row, page_keys};
use orderflow_platform::bus::BusRecord;
use orderflow_platform::store::*;

// Orders: orders[id] = Order; order_index holds, with empty values,
//   "a" 0x00 pos            every order, newest first
//   "u" 0x00 user 0x00 pos  one customer's orders, newest first
//   "s" 0x00 STATUS 0x00 pos orders in a status, newest first
// where pos = hex(u64::MAX - placed_at_ms) ":" id. saga_effects[id 0x00 event_id] = Effect (the offset of
// the record that applied the event, and its outputs). order_requests[id 0x00 event_id] = what orderflow asked
// for on the order (a staff or sweep request), recorded before its record was published.
// stats["orders"] = StatsRow, updated in the same transaction as every status change.

fn position(order: &Order) -> String {
    format!("{:016x}:{}", u64::MAX - order.placed_at_ms.max(0) as u64, order.id)
}

fn index_prefix(kind: &str, part: Option<&str>) -> Vec<u8> {
    let mut k = kind.as_bytes().to_vec();
    k.push(0);
    if let Some(p) = part {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

fn index_key(prefix: Vec<u8>, pos: &str) -> Vec<u8> {
    let mut k = prefix;
    k.extend_from_slice(pos.as_bytes());
    k
}

fn effects_key(id: &OrderId, event: EventId) -> Vec<u8> {
    let mut k = id.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(event.0.as_bytes());
    k
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StatsRow {
    counts: BTreeMap<OrderStatus, u64>,
    processed: u64,
    processing_ms_total: u64,
}

const STATS_KEY: &str = "orders";

fn bump_stats(db: &Db, tx: &mut fjall::SingleWriterWriteTx<'_>, before: Option<&Order>, after: &Order) -> Result<()> {
    let mut stats: StatsRow = get_row(tx, &db.stats, STATS_KEY)?.unwrap_or_default();
    if let Some(before) = before {
        let c = stats.counts.entry(before.status).or_default();
        *c = c.saturating_sub(1);
    }
    *stats.counts.entry(after.status).or_default() += 1;
    let newly_processed = after.processed_at_ms.is_some() && before.is_none_or(|b| b.processed_at_ms.is_none());
    if let (true, Some(at)) = (newly_processed, after.processed_at_ms) {
        stats.processed += 1;
        stats.processing_ms_total += (at - after.placed_at_ms).max(0) as u64;
    }
    tx.insert(&db.stats, STATS_KEY, to_row(&stats)?);
    Ok(())
}

/// What `saga_effects` holds per applied (or seen) event.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Effect {
    /// The offset of the record that applied the event, and the outputs it published.
    Applied { offset: u64, outputs: Vec<BusRecord> },
    /// Written by versions before the offset was kept: the outputs alone.
    OutputsOnly(Vec<BusRecord>),
}

impl Effect {
    /// What a delivery under `fence` of the event publishes again (see [`Applied::Duplicate`]); rows
    /// from before the offset was kept answer as they did then, with their outputs.
    fn into_republished(self, fence: Fence) -> Vec<BusRecord> {
        match self {
            Effect::Applied { offset, outputs } if fence.is_at(offset) => outputs,
            Effect::Applied { .. } => Vec::new(),
            Effect::OutputsOnly(outputs) => outputs,
        }
    }
}

/// Applies one saga step inside the caller's write transaction (see [`OrderStore::apply`]).
fn apply_in_tx(db: &Db, tx: &mut fjall::SingleWriterWriteTx<'_>, t: Transition) -> Result<Applied> {
    let ek = effects_key(&t.order.id, t.event_id);
    if let Some(effect) = get_row::<Effect>(tx, &db.saga_effects, &ek)? {
        return Ok(Applied::Duplicate(effect.into_republished(t.fence)));
    }
    let Some(before) = get_row::<Order>(tx, &db.orders, t.order.id.as_str())? else {
        return Ok(Applied::Conflict);
    };
    if before.status != t.expected {
        return Ok(Applied::Conflict);
    }
    if before.status != t.order.status {
        let pos = position(&before);
        tx.remove(&db.order_index, index_key(index_prefix("s", Some(before.status.as_str())), &pos));
        tx.insert(&db.order_index, index_key(index_prefix("s", Some(t.order.status.as_str())), &pos), b"");
        bump_stats(db, tx, Some(&before), &t.order)?;
    }
    tx.insert(&db.orders, t.order.id.as_str(), to_row(&t.order)?);
    let effect = Effect::Applied { offset: t.fence.offset, outputs: t.outputs };
    tx.insert(&db.saga_effects, ek, to_row(&effect)?);
    Ok(Applied::Applied)
}

#[async_trait]
impl OrderStore for EmbeddedStore {
    async fn insert_new(&self, order: &Order) -> Result<Inserted> {
        let order = order.clone();
        self.db
            .write(move |db, tx| {
                if let Some(existing) = get_row::<Order>(tx, &db.orders, order.id.as_str())? {
                    return Ok(Inserted::Existing(Box::new(existing)));
                }
                tx.insert(&db.orders, order.id.as_str(), to_row(&order)?);
                let pos = position(&order);
                tx.insert(&db.order_index, index_key(index_prefix("a", None), &pos), b"");
                tx.insert(&db.order_index, index_key(index_prefix("u", Some(order.user_id.as_str())), &pos), b"");
                tx.insert(&db.order_index, index_key(index_prefix("s", Some(order.status.as_str())), &pos), b"");
                bump_stats(db, tx, None, &order)?;
                Ok(Inserted::New)
            })
            .await
    }

    async fn order(&self, id: &OrderId) -> Result<Option<Order>> {
        get_latest(&self.db.orders, id.as_str())
    }

    async fn apply(&self, t: Transition) -> Result<Applied> {
        self.db.write(move |db, tx| apply_in_tx(db, tx, t)).await
    }

    /// One transaction (one commit) for every step.
    async fn apply_many(&self, transitions: Vec<Transition>) -> Result<Vec<Applied>> {
        self.db.write(move |db, tx| transitions.into_iter().map(|t| apply_in_tx(db, tx, t)).collect()).await
    }

    async fn seen(&self, id: &OrderId, event: EventId, fence: Fence) -> Result<Option<Vec<BusRecord>>> {
        let ek = effects_key(id, event);
        self.db
            .write(move |db, tx| {
                if let Some(effect) = get_row::<Effect>(tx, &db.saga_effects, &ek)? {
                    return Ok(Some(effect.into_republished(fence)));
                }
                tx.insert(&db.saga_effects, ek, to_row(&Effect::Applied { offset: fence.offset, outputs: vec![] })?);
                Ok(None)
            })
            .await
    }

    async fn list(&self, filter: &OrderFilter, after: Option<&str>, limit: usize) -> Result<Page<Order>> {
        // Pick the narrowest index; a second filter is checked on the rows.
        let (prefix, recheck_status) = match (&filter.user, filter.status) {
            (Some(user), status) => (index_prefix("u", Some(user.as_str())), status),
            (None, Some(status)) => (index_prefix("s", Some(status.as_str())), None),
            (None, None) => (index_prefix("a", None), None),
        };
        let mut items = Vec::with_capacity(limit + 1);
        let mut cursor = after.map(str::to_owned);
        loop {
            let (keys, more) = page_keys(&self.db.order_index, &prefix, cursor.as_deref(), limit + 1)?;
            for pos in &keys {
                let Some((_, id)) = pos.split_once(':') else { continue };
                if let Some(order) = get_latest::<Order>(&self.db.orders, id)?
                    && recheck_status.is_none_or(|s| s == order.status)
                {
                    items.push((pos.clone(), order));
                }
                if items.len() > limit {
                    break;
                }
            }
            if items.len() > limit || !more {
                break;
            }
            cursor = keys.last().cloned();
        }
        let has_next = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_next })
    }

    async fn stalled(&self, stalled: Stalled, placed_before_ms: i64, limit: usize) -> Result<Vec<Order>> {
        let status = stalled.status();
        let floor = self.sweep_floors.of(stalled);
        let prefix = index_prefix("s", Some(status.as_str()));
        // Positions sort newest first, so [placed_before, floor - margin] in time is this key range.
        let at = |ms: i64| index_key(prefix.clone(), &format!("{:016x}", u64::MAX - ms.max(0) as u64));
        let start = at(placed_before_ms.saturating_sub(1));
        let end = match floor.sweep_from_ms() {
            Some(from) => at(from),
            None => {
                let mut end = prefix.clone();
                end.push(0xFF);
                end
            }
        };
        let mut out = Vec::new();
        let mut complete = true;
        // Read backwards for oldest first.
        for guard in self.db.order_index.inner().range(start..end).rev() {
            if out.len() >= limit {
                complete = false;
                break;
            }
            let key = guard.key().map_err(unavailable)?;
            let pos = String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default()).into_owned();
            let Some((_, id)) = pos.split_once(':') else { continue };
            let Some(order) = get_latest::<Order>(&self.db.orders, id)? else { continue };
            if order.placed_at_ms >= placed_before_ms {
                continue;
            }
            if order.status == status {
                out.push(order);
            }
        }
        // The oldest order still in that status holds the floor; with none left, everything placed before
        // the cutoff has moved on.
        floor.passed(out.first().map(|o| o.placed_at_ms), complete, placed_before_ms);
        Ok(out)
    }

    async fn stats(&self) -> Result<OrderStats> {
        let row: StatsRow = get_latest(&self.db.stats, STATS_KEY)?.unwrap_or_default();
        Ok(OrderStats {
            by_status: OrderStatus::ALL.iter().map(|s| (*s, row.counts.get(s).copied().unwrap_or(0))).collect(),
            processed: row.processed,
            processing_ms_total: row.processing_ms_total,
        })
    }

    async fn record_request(&self, order: &OrderId, event: EventId, request: &str) -> Result<()> {
        let key = effects_key(order, event);
        let request = request.to_owned();
        self.db
            .write(move |db, tx| {
                tx.insert(&db.order_requests, key, request.into_bytes());
                Ok(())
            })
            .await
    }

    async fn recorded_request(&self, order: &OrderId, event: EventId) -> Result<Option<String>> {
        let value = self.db.order_requests.get(effects_key(order, event)).map_err(unavailable)?;
        value.map(|v| String::from_utf8(v.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))).transpose()
    }
}
