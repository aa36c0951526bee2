//! The port conformance suites against the embedded adapters, each check on a fresh data directory,
//! plus what only the embedded adapter promises: everything survives reopening the directory.

use std::sync::Arc;

use orderflow_embedded as embedded;
use orderflow_platform::backend::BackendOptions;
use orderflow_platform::conformance::{bus, ledger, store};
use orderflow_platform::{Backends, Bus};

struct Fresh {
    _dir: tempfile::TempDir,
    backends: Backends,
}

fn fresh() -> Fresh {
    let dir = tempfile::tempdir().expect("tempdir");
    let backends = embedded::open(dir.path(), &BackendOptions::default()).expect("open");
    Fresh { _dir: dir, backends }
}

macro_rules! checks {
    ($kind:ident: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let f = fresh();
                checks!(@run $kind, $name, f);
            }
        )*
    };
    (@run bus, $name:ident, $f:ident) => { bus::$name(Arc::clone(&$f.backends.bus) as Arc<dyn Bus>).await };
    (@run store, $name:ident, $f:ident) => { store::$name($f.backends.stores.clone()).await };
    (@run ledger, $name:ident, $f:ident) => { ledger::$name(Arc::clone(&$f.backends.ledger)).await };
}

checks!(bus:
    preserves_per_key_order,
    batches_keep_order_and_fall_back_to_single_records,
    retries_transient_failures_in_place,
    resumes_after_restart_without_loss,
    dead_letters_poison_and_moves_on,
    contains_a_panicking_handler_and_moves_on,
    groups_are_independent,
    refuses_unknown_topics,
    reports_ready_quickly,
    knows_the_partition_of_a_key,
);

checks!(store:
    catalog_creates_once_updates_existing_and_paginates,
    catalog_view_keeps_the_newest_version,
    catalog_listing_is_in_sku_order,
    reservations_hold_each_sku_once,
    concurrent_reservations_never_oversell,
    batched_reservations_take_stock_in_order,
    stock_adjustments_are_checked,
    low_stock_alerts_fire_once_per_crossing,
    orders_insert_once_and_apply_each_event_once,
    orders_list_by_user_and_status_newest_first,
    order_stats_follow_transitions,
    payments_record_then_replace,
    shipments_are_created_once,
    order_requests_are_recorded_per_order_and_event,
    partition_epochs_only_grow,
    answers_readiness_pings,
);

checks!(ledger:
    ledger_keeps_the_first_entry_per_key,
    ledger_lists_every_entry_in_key_order,
    ledger_records_many_keys_at_once,
);

/// The simulated provider's ledger is in the data directory: its entries are there after reopening it, and
/// none of the store's tables holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_reopening_apart_from_the_store() {
    use orderflow_platform::ProviderEntry;
    use orderflow_schemas::{Money, OrderId};
    let dir = tempfile::tempdir().expect("tempdir");
    let charge = ProviderEntry {
        kind: "charge".into(),
        id: "ch_1".into(),
        amount: Money::from_cents(250).expect("amount"),
        at_ms: 1,
    };
    {
        let b = embedded::open(dir.path(), &BackendOptions::default()).expect("open");
        assert_eq!(b.ledger.record_once("o-1:capture", &charge).await.expect("record"), charge);
    }
    let b = embedded::open(dir.path(), &BackendOptions::default()).expect("reopen");
    assert_eq!(b.ledger.entry("o-1:capture").await.expect("entry"), Some(charge.clone()));
    assert_eq!(b.ledger.entries().await.expect("entries"), vec![("o-1:capture".to_owned(), charge)]);
    let order = OrderId::parse("o-1").expect("order id");
    assert_eq!(b.stores.payments.payment(&order).await.expect("payment"), None, "the store has no payment of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_cursors_survive_reopening() {
    use orderflow_platform::bus::BusRecord;
    use orderflow_schemas::topics;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let b = embedded::open(dir.path(), &BackendOptions::default()).expect("open");
        let recs = (0..10).map(|i| BusRecord::new(topics::PAYMENTS, "k", vec![i])).collect();
        b.bus.publish(recs).await.expect("publish");
    }
    // Reopen: new records get new offsets after the old ones, and a group reads all of them in order.
    let b = embedded::open(dir.path(), &BackendOptions::default()).expect("reopen");
    b.bus.publish(vec![BusRecord::new(topics::PAYMENTS, "k", vec![10])]).await.expect("publish");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    struct H(Arc<std::sync::Mutex<Vec<(u64, u8)>>>, tokio_util::sync::CancellationToken);
    #[async_trait::async_trait]
    impl orderflow_platform::Handler for H {
        async fn handle(&self, d: &orderflow_platform::Delivery) -> Result<(), orderflow_platform::HandlerError> {
            let mut s = self.0.lock().expect("lock");
            s.push((d.offset, d.payload[0]));
            if s.len() == 11 {
                self.1.cancel();
            }
            Ok(())
        }
    }
    let token = tokio_util::sync::CancellationToken::new();
    let h = Arc::new(H(seen.clone(), token.clone()));
    tokio::time::timeout(std::time::Duration::from_secs(20), b.bus.consume("g", topics::PAYMENTS, h, token))
        .await
        .expect("consumed in time")
        .expect("consume");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, (0..11).map(|i| (i as u64, i as u8)).collect::<Vec<_>>());
}
