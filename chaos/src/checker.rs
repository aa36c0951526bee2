//! The checker: reads the store of record (orders and stock on CQL), the simulated payment provider's own
//! ledger of calls (one entry per idempotency key) and the dead-letter topic, and counts every way the
//! run could have lost or duplicated something. Every count but the informational ones must be 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use orderflow_platform::conformance::{test_cql_security, test_kafka_security};
use orderflow_platform::{ProviderLedger, Stores};
use orderflow_schemas::{Order, OrderId, OrderStatus, Sku};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::workload::{Channel, PARTNER_ID, Record};

/// The checker's counts. `counts()` names the ones that must be 0, `violations()` sums them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verdict {
    // what happened (informational)
    pub attempted: usize,
    pub accepted: usize,
    pub never_accepted: u64,
    pub statuses: BTreeMap<String, usize>,
    pub authorisations: usize,
    pub charges: usize,
    pub voids: usize,
    pub refunds: usize,
    pub dead_letters: usize,
    pub invalid_refused: usize,
    pub restock_units: i64,
    // must be 0
    pub lost: usize,
    pub unsettled: usize,
    pub duplicated_timeline_steps: usize,
    pub timeline_status_mismatch: usize,
    /// A stored order whose lines differ from what was placed.
    pub lines_mismatch: usize,
    pub double_charged: usize,
    pub confirmed_without_charge: usize,
    pub money_kept_after_reject_or_cancel: usize,
    pub refund_without_capture: usize,
    /// An order that ended (rejected, cancelled) with its authorisation neither captured nor voided: an
    /// amount left held on the customer's card.
    pub authorisation_left_held: usize,
    /// A refund of an order that still holds its goods (CONFIRMED and on).
    pub refunded_yet_held: usize,
    pub amount_mismatch: usize,
    pub declined_user_confirmed: usize,
    pub acknowledged_cancel_not_cancelled: usize,
    pub invalid_order_stored: usize,
    pub invalid_order_not_refused: usize,
    pub poison_not_dead_lettered: usize,
    pub poison_became_order: usize,
    pub good_partner_record_dead_lettered: usize,
    pub oversold_units: i64,
    pub stock_not_conserved: usize,
    pub stock_held_mismatch: usize,
    /// The first lost orders (id, channel), to look them up in the role logs.
    pub lost_ids: Vec<String>,
    /// Per SKU: (available, reserved, sold, expected total, units held by orders).
    pub stock: BTreeMap<String, (u64, u64, u64, i64, i64)>,
}

impl Verdict {
    /// Every count that must be 0, named as the report prints it.
    pub fn counts(&self) -> [(&'static str, u64); 22] {
        let n = |c: usize| c as u64;
        [
            ("lost", n(self.lost)),
            ("unsettled", n(self.unsettled)),
            ("duplicated timeline steps", n(self.duplicated_timeline_steps)),
            ("double-charged", n(self.double_charged)),
            ("oversold units", self.oversold_units.max(0) as u64),
            ("confirmed without charge", n(self.confirmed_without_charge)),
            ("money kept after reject/cancel", n(self.money_kept_after_reject_or_cancel)),
            ("refund without capture", n(self.refund_without_capture)),
            ("authorisation left held", n(self.authorisation_left_held)),
            ("refunded yet held", n(self.refunded_yet_held)),
            ("amount mismatch", n(self.amount_mismatch)),
            ("declined user confirmed", n(self.declined_user_confirmed)),
            ("acknowledged cancel not cancelled", n(self.acknowledged_cancel_not_cancelled)),
            ("invalid stored", n(self.invalid_order_stored)),
            ("invalid not refused", n(self.invalid_order_not_refused)),
            ("poison not dead-lettered", n(self.poison_not_dead_lettered)),
            ("poison became order", n(self.poison_became_order)),
            ("good partner record dead-lettered", n(self.good_partner_record_dead_lettered)),
            ("stock not conserved", n(self.stock_not_conserved)),
            ("stock held mismatch", n(self.stock_held_mismatch)),
            ("timeline/status mismatch", n(self.timeline_status_mismatch)),
            ("lines mismatch", n(self.lines_mismatch)),
        ]
    }

    /// The sum of [`Verdict::counts`]: 0 when the run passed.
    pub fn violations(&self) -> u64 {
        self.counts().iter().map(|(_, c)| c).sum()
    }
}

/// Order states in which the order holds its units (reserved, or sold once out for delivery) and its
/// payment.
fn holds(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Confirmed | OrderStatus::Preparing | OrderStatus::OutForDelivery | OrderStatus::Delivered
    )
}

/// The timeline step each final status writes.
fn final_step(status: OrderStatus) -> Option<&'static str> {
    match status {
        OrderStatus::Confirmed => Some("confirmed"),
        OrderStatus::Rejected => Some("rejected"),
        OrderStatus::Cancelled => Some("cancelled"),
        _ => None,
    }
}

#[derive(Debug)]
pub struct Checker {
    stores: Stores,
    /// The simulated provider's own books (their audit listing).
    ledger: orderflow_cql::CqlLedger,
    kafka: String,
    run: String,
    initial_stock: i64,
}

impl Checker {
    pub async fn connect(kafka: &str, cql: &str, run: &str, initial_stock: i64) -> anyhow::Result<Checker> {
        let store =
            orderflow_cql::connect(&[cql.to_owned()], &test_cql_security()).await.context("connecting to CQL")?;
        let ledger = store.ledger().await.context("preparing the provider's ledger")?;
        Ok(Checker {
            stores: Arc::new(store).stores(),
            ledger,
            kafka: kafka.to_owned(),
            run: run.to_owned(),
            initial_stock,
        })
    }

    /// Reads everything once and counts.
    pub async fn check(&self, record: &Record, skus: &[String]) -> anyhow::Result<Verdict> {
        let mut v = Verdict {
            attempted: record.orders.len(),
            accepted: record.orders.values().filter(|o| o.accepted).count(),
            never_accepted: record.never_accepted,
            ..Verdict::default()
        };

        // Orders, as the store of record has them (every id tried, accepted or not: a request whose answer
        // was lost may still have placed the order, and then it counts like any other).
        let ids: Vec<String> = record.orders.keys().chain(record.invalid.keys()).cloned().collect();
        let orders = self.orders(&ids).await?;

        // The provider's own book: one entry per idempotency key (`<order>:authorise`, `<order>:capture`,
        // `<order>:void`, `<order>:refund`).
        let mut authorised: HashSet<String> = HashSet::new();
        let mut voided: HashSet<String> = HashSet::new();
        let mut charge: HashMap<String, i64> = HashMap::new();
        let mut refund: HashMap<String, i64> = HashMap::new();
        let known: HashSet<&str> = record.orders.keys().map(String::as_str).collect();
        for (key, entry) in self.ledger.entries().await? {
            let Some((order, what)) = key.rsplit_once(':') else { continue };
            if !known.contains(order) {
                continue;
            }
            match (entry.kind.as_str(), what) {
                ("authorisation", "authorise") => {
                    v.authorisations += 1;
                    authorised.insert(order.to_owned());
                }
                ("void", "void") => {
                    v.voids += 1;
                    voided.insert(order.to_owned());
                }
                ("charge", "capture") => {
                    v.charges += 1;
                    charge.insert(order.to_owned(), entry.amount.cents());
                }
                ("refund", "refund") => {
                    v.refunds += 1;
                    refund.insert(order.to_owned(), entry.amount.cents());
                }
                // Money moved under a key no step of the pipeline uses: a second, unaccounted movement.
                _ => v.double_charged += 1,
            }
        }

        let mut held: BTreeMap<String, i64> = BTreeMap::new();
        for (id, planned) in &record.orders {
            let Some(order) = orders.get(id) else {
                if planned.accepted {
                    v.lost += 1;
                    if v.lost_ids.len() < 20 {
                        v.lost_ids.push(format!(
                            "{id} ({:?}{})",
                            planned.channel,
                            planned.external.as_deref().map(|e| format!(" {e}")).unwrap_or_default()
                        ));
                    }
                }
                continue;
            };
            *v.statuses.entry(order.status.as_str().to_owned()).or_default() += 1;
            let mut stored: Vec<(String, u32)> =
                order.lines.iter().map(|l| (l.sku.to_string(), l.quantity.get())).collect();
            let mut placed = planned.lines.clone();
            stored.sort();
            placed.sort();
            if stored != placed {
                v.lines_mismatch += 1;
            }
            if !(order.status.is_terminal() || holds(order.status)) {
                v.unsettled += 1;
                continue;
            }
            // Timeline: each step once; the last status step agrees with the status.
            let mut steps: HashMap<&str, usize> = HashMap::new();
            for entry in &order.timeline {
                *steps.entry(entry.kind.as_str()).or_default() += 1;
            }
            v.duplicated_timeline_steps += steps.values().filter(|n| **n > 1).count();
            if let Some(step) = final_step(order.status)
                && !steps.contains_key(step)
            {
                v.timeline_status_mismatch += 1;
            }
            // Money.
            let charged = charge.get(id);
            let refunded = refund.get(id);
            if refunded.is_some() && charged.is_none() {
                v.refund_without_capture += 1;
            }
            if order.status.is_terminal()
                && !holds(order.status)
                && authorised.contains(id)
                && charged.is_none()
                && !voided.contains(id)
            {
                v.authorisation_left_held += 1;
            }
            if holds(order.status) {
                match charged {
                    None => v.confirmed_without_charge += 1,
                    Some(c) if *c != order.total.cents() => v.amount_mismatch += 1,
                    Some(_) => {}
                }
                if refunded.is_some() {
                    v.refunded_yet_held += 1;
                }
                if planned.declined_user {
                    v.declined_user_confirmed += 1;
                }
                for line in &order.lines {
                    *held.entry(line.sku.to_string()).or_default() += i64::from(line.quantity.get());
                }
            } else if let Some(c) = charged {
                match refunded {
                    None => v.money_kept_after_reject_or_cancel += 1,
                    Some(r) if r != c => v.amount_mismatch += 1,
                    Some(_) => {}
                }
            }
            if planned.cancel == Some(true) && order.status != OrderStatus::Cancelled {
                v.acknowledged_cancel_not_cancelled += 1;
            }
        }

        // Bad input: refused with a 4xx and never stored.
        for (id, status) in &record.invalid {
            if orders.contains_key(id) {
                v.invalid_order_stored += 1;
            }
            if (400..500).contains(status) {
                v.invalid_refused += 1;
            } else {
                v.invalid_order_not_refused += 1;
            }
        }

        // Dead letters: every poison record there, no good partner record there, no poison an order.
        let dead = self.dead_letter_keys().await?;
        v.dead_letters = dead.iter().filter(|k| k.starts_with(&self.run)).count();
        for key in &record.poison_keys {
            if !dead.contains(key) {
                v.poison_not_dead_lettered += 1;
            }
            let id = OrderId::from_partner(PARTNER_ID, key);
            if self.stores.orders.order(&id).await?.is_some() {
                v.poison_became_order += 1;
            }
        }
        let partner_keys: HashSet<String> = record
            .orders
            .iter()
            .filter(|(_, p)| p.channel == Channel::Partner)
            .filter_map(|(_, p)| p.external.clone())
            .collect();
        v.good_partner_record_dead_lettered = dead.iter().filter(|k| partner_keys.contains(*k)).count();

        // Stock: conserved, never oversold, and what is held is exactly what held orders hold.
        for sku in skus {
            let parsed = Sku::parse(sku.clone()).map_err(|e| anyhow::anyhow!("{sku}: {e}"))?;
            let Some(level) = self.stores.inventory.stock(&parsed).await? else {
                v.stock_not_conserved += 1;
                continue;
            };
            let restocked = record.restocked.get(sku).copied().unwrap_or(0);
            v.restock_units += restocked;
            let uncertain = record.restock_uncertain.get(sku).copied().unwrap_or(0);
            let total = (level.available + level.reserved + level.sold) as i64;
            let expected = self.initial_stock + restocked;
            if total != expected && total != expected + uncertain {
                v.stock_not_conserved += 1;
            }
            v.oversold_units += ((level.reserved + level.sold) as i64 - (expected + uncertain)).max(0);
            let by_orders = held.get(sku).copied().unwrap_or(0);
            if (level.reserved + level.sold) as i64 != by_orders {
                v.stock_held_mismatch += 1;
            }
            v.stock.insert(sku.clone(), (level.available, level.reserved, level.sold, expected, by_orders));
        }
        Ok(v)
    }

    async fn orders(&self, ids: &[String]) -> anyhow::Result<HashMap<String, Order>> {
        let reads = futures::stream::iter(ids.iter().cloned())
            .map(|id| async move {
                let parsed = OrderId::parse(id.clone()).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
                Ok::<_, anyhow::Error>((id, self.stores.orders.order(&parsed).await?))
            })
            .buffer_unordered(32);
        let mut out = HashMap::new();
        futures::pin_mut!(reads);
        while let Some(r) = reads.next().await {
            if let (id, Some(order)) = r? {
                out.insert(id, order);
            }
        }
        Ok(out)
    }

    /// The keys of every record on the dead-letter topic.
    async fn dead_letter_keys(&self) -> anyhow::Result<HashSet<String>> {
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = orderflow_kafka::apply_security(
                ClientConfig::new().set("bootstrap.servers", &kafka),
                &test_kafka_security(),
            )
            .set("group.id", "orderflow-chaos-checker")
            .set("enable.auto.commit", "false")
            .create()?;
            let topic = orderflow_schemas::topics::DEAD_LETTER.name;
            let mut keys = HashSet::new();
            let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(30))?;
            if high <= low {
                return Ok(keys);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, 0, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut next = low;
            while next < high && std::time::Instant::now() < deadline {
                if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                    let m = m?;
                    next = m.offset() + 1;
                    if let Some(k) = m.key() {
                        keys.insert(String::from_utf8_lossy(k).into_owned());
                    }
                }
            }
            anyhow::ensure!(next >= high, "read the dead-letter topic only up to offset {next} of {high}");
            Ok(keys)
        })
        .await?
    }
}
