//! The conformance suite of the simulated provider's ledger ([`ProviderLedger`]): every adapter keeps the
//! first entry per idempotency key, answers a keyed read, and lists its entries in key order.

use std::sync::Arc;

use orderflow_schemas::Money;

use super::run_id;
use crate::ledger::{ProviderEntry, ProviderLedger};

fn entry(kind: &str, id: &str, cents: i64) -> ProviderEntry {
    ProviderEntry { kind: kind.into(), id: id.into(), amount: Money::from_cents(cents).unwrap(), at_ms: cents }
}

pub async fn ledger_keeps_the_first_entry_per_key(ledger: Arc<dyn ProviderLedger>) {
    let id = run_id("ledger");
    let key = format!("{id}:capture");
    assert_eq!(ledger.entry(&key).await.unwrap(), None, "no entry before the first call");
    let first = entry("charge", "ch_a", 100);
    let second = entry("charge", "ch_b", 200);
    assert_eq!(ledger.record_once(&key, &first).await.unwrap(), first);
    assert_eq!(ledger.record_once(&key, &second).await.unwrap(), first, "the first entry under a key wins");
    assert_eq!(ledger.entry(&key).await.unwrap(), Some(first.clone()), "the keyed read finds the first entry");
    assert_eq!(ledger.entry(&format!("{id}:refund")).await.unwrap(), None, "another key has no entry");
    let listed: Vec<_> = ledger.entries().await.unwrap().into_iter().filter(|(k, _)| *k == key).collect();
    assert_eq!(listed, vec![(key, first)], "the listing has one entry per key");
}

pub async fn ledger_lists_every_entry_in_key_order(ledger: Arc<dyn ProviderLedger>) {
    let id = run_id("listing");
    let written = [("c:refund", entry("refund", "re_c", 3)), ("a:authorise", entry("authorisation", "pay_a", 1))];
    for (suffix, e) in &written {
        ledger.record_once(&format!("{id}-{suffix}"), e).await.unwrap();
    }
    ledger.record_once(&format!("{id}-b:void"), &entry("void", "pay_b", 0)).await.unwrap();
    let all = ledger.entries().await.unwrap();
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "the listing is sorted by key, one entry per key");
    let ours: Vec<(String, ProviderEntry)> = all.into_iter().filter(|(k, _)| k.starts_with(&id)).collect();
    assert_eq!(
        ours,
        vec![
            (format!("{id}-a:authorise"), entry("authorisation", "pay_a", 1)),
            (format!("{id}-b:void"), entry("void", "pay_b", 0)),
            (format!("{id}-c:refund"), entry("refund", "re_c", 3)),
        ]
    );
}

pub async fn ledger_records_many_keys_at_once(ledger: Arc<dyn ProviderLedger>) {
    const KEYS: i64 = 40;
    let id = run_id("many");
    let key = |i: i64| format!("{id}-{i:02}:capture");
    let recorded = futures::future::join_all((0..KEYS).map(|i| {
        let ledger = Arc::clone(&ledger);
        async move { ledger.record_once(&key(i), &entry("charge", &format!("ch_{i}"), i + 1)).await }
    }))
    .await;
    for (i, r) in (0..KEYS).zip(recorded) {
        assert_eq!(r.unwrap(), entry("charge", &format!("ch_{i}"), i + 1), "each key's own entry comes back");
        assert_eq!(ledger.entry(&key(i)).await.unwrap(), Some(entry("charge", &format!("ch_{i}"), i + 1)));
    }
}
