//! Store conformance: conditional writes happen once, reservations never oversell, lists paginate.

use std::sync::Arc;

use orderflow_schemas::*;

use super::run_id;
use crate::bus::BusRecord;
use crate::store::*;

/// Parses a SKU the checks know to be valid.
pub fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}

/// A quantity the checks know to be valid.
pub fn q(n: i64) -> Quantity {
    Quantity::new(n).unwrap()
}

/// Creates a product (price 2.50) with `stock` units; returns its SKU.
pub async fn product(stores: &Stores, sku_name: &str, stock: i64) -> Sku {
    let now = now_ms();
    let p = Product {
        sku: sku(sku_name),
        name: format!("product {sku_name}"),
        description: String::new(),
        price: Money::from_cents(250).unwrap(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    assert!(stores.catalog.create_product(&p).await.unwrap());
    if stock > 0 {
        stores.inventory.adjust_stock(&p.sku, stock, "test").await.unwrap();
    }
    p.sku
}

/// A PENDING one-line order of `user`.
pub fn order(id: &str, user: &str, placed_at_ms: i64) -> Order {
    Order {
        id: OrderId::parse(id).unwrap(),
        user_id: UserId::parse(user).unwrap(),
        lines: vec![OrderLine { sku: sku("X"), quantity: q(1), unit_price: Money::from_cents(100).unwrap() }],
        total: Money::from_cents(100).unwrap(),
        status: OrderStatus::Pending,
        reason: None,
        channel: "test".into(),
        placed_at_ms,
        updated_at_ms: placed_at_ms,
        processed_at_ms: None,
        timeline: vec![],
    }
}

pub async fn catalog_creates_once_updates_existing_and_paginates(stores: Stores) {
    let id = run_id("cat");
    let a = product(&stores, &format!("{id}-a"), 0).await;
    let mut p = stores.catalog.product(&a).await.unwrap().unwrap();
    assert!(!stores.catalog.create_product(&p).await.unwrap(), "a SKU is created once");
    p.name = "renamed".into();
    assert!(stores.catalog.update_product(&p).await.unwrap());
    assert_eq!(stores.catalog.product(&a).await.unwrap().unwrap().name, "renamed");
    let mut ghost = p.clone();
    ghost.sku = sku(&format!("{id}-ghost"));
    assert!(!stores.catalog.update_product(&ghost).await.unwrap(), "update never creates");
    assert!(stores.catalog.product(&ghost.sku).await.unwrap().is_none());
    for s in ["b", "c", "d"] {
        product(&stores, &format!("{id}-{s}"), 0).await;
    }
    // Walk every page; ours appear once each, in SKU order.
    let mut after: Option<String> = None;
    let mut ours = Vec::new();
    loop {
        let page = stores.catalog.products(after.as_deref(), 2).await.unwrap();
        assert!(page.items.len() <= 2);
        ours.extend(page.items.iter().filter(|(_, p)| p.sku.as_str().starts_with(&id)).map(|(_, p)| p.sku.to_string()));
        if !page.has_next {
            break;
        }
        after = page.items.last().map(|(k, _)| k.clone());
    }
    let want: Vec<_> = ["a", "b", "c", "d"].iter().map(|s| format!("{id}-{s}")).collect();
    assert_eq!(ours, want);
}

pub async fn reservations_are_all_or_nothing_and_idempotent(stores: Stores) {
    let id = run_id("res");
    let a = product(&stores, &format!("{id}-a"), 5).await;
    let b = product(&stores, &format!("{id}-b"), 1).await;
    let inv = &stores.inventory;
    let o1 = OrderId::parse(format!("{id}-o1")).unwrap();
    let r = inv.reserve(&o1, &[(a.clone(), q(2)), (b.clone(), q(2))]).await.unwrap();
    assert_eq!(r, Reservation::Rejected { reason: "out_of_stock".into(), sku: Some(b.clone()) });
    assert_eq!(inv.stock(&a).await.unwrap().unwrap().available, 5, "nothing held when one line fails");

    let o2 = OrderId::parse(format!("{id}-o2")).unwrap();
    assert_eq!(
        inv.reserve(&o2, &[(a.clone(), q(2)), (b.clone(), q(1))]).await.unwrap(),
        Reservation::Reserved { units: 3 }
    );
    assert_eq!(
        inv.reserve(&o2, &[(a.clone(), q(2)), (b.clone(), q(1))]).await.unwrap(),
        Reservation::Reserved { units: 3 }
    );
    assert_eq!(
        inv.stock(&a).await.unwrap().unwrap(),
        StockLevel { available: 3, reserved: 2, sold: 0 },
        "a repeat holds nothing more"
    );

    let unknown = OrderId::parse(format!("{id}-o3")).unwrap();
    let r = inv.reserve(&unknown, &[(sku(&format!("{id}-nope")), q(1))]).await.unwrap();
    assert!(matches!(r, Reservation::Rejected { ref reason, .. } if reason == "unknown_sku"), "{r:?}");

    assert_eq!(inv.end_reservation(&o2, ReservationEnd::Released).await.unwrap(), ReservationEnd::Released);
    assert_eq!(inv.end_reservation(&o2, ReservationEnd::Released).await.unwrap(), ReservationEnd::NothingHeld);
    assert_eq!(inv.stock(&a).await.unwrap().unwrap(), StockLevel { available: 5, reserved: 0, sold: 0 });
    assert_eq!(inv.stock(&b).await.unwrap().unwrap(), StockLevel { available: 1, reserved: 0, sold: 0 });

    let o4 = OrderId::parse(format!("{id}-o4")).unwrap();
    inv.reserve(&o4, &[(a.clone(), q(4))]).await.unwrap();
    assert_eq!(inv.end_reservation(&o4, ReservationEnd::Committed).await.unwrap(), ReservationEnd::Committed);
    assert_eq!(
        inv.end_reservation(&o4, ReservationEnd::Released).await.unwrap(),
        ReservationEnd::NothingHeld,
        "sold units never come back"
    );
    assert_eq!(inv.stock(&a).await.unwrap().unwrap(), StockLevel { available: 1, reserved: 0, sold: 4 });

    // Ending a reservation that never happened closes it: a late request is refused.
    let o5 = OrderId::parse(format!("{id}-o5")).unwrap();
    assert_eq!(inv.end_reservation(&o5, ReservationEnd::Released).await.unwrap(), ReservationEnd::NothingHeld);
    assert!(matches!(inv.reserve(&o5, &[(a.clone(), q(1))]).await.unwrap(), Reservation::Rejected { .. }));

    let kinds: Vec<_> = inv.movements(&a, 10).await.unwrap().into_iter().map(|m| m.kind).collect();
    assert_eq!(kinds, ["commit", "reserve", "release", "reserve", "adjust"], "newest first");
}

pub async fn concurrent_reservations_never_oversell(stores: Stores) {
    let id = run_id("flash");
    let s = product(&stores, &format!("{id}-s"), 20).await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let inv = Arc::clone(&stores.inventory);
            let s = s.clone();
            let o = OrderId::parse(format!("{id}-o{i}")).unwrap();
            tokio::spawn(async move { inv.reserve(&o, &[(s, q(1))]).await.unwrap() })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Reservation::Reserved { .. }) {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 20);
    assert_eq!(stores.inventory.stock(&s).await.unwrap().unwrap(), StockLevel { available: 0, reserved: 20, sold: 0 });
}

pub async fn stock_adjustments_are_checked(stores: Stores) {
    let id = run_id("adj");
    let s = product(&stores, &format!("{id}-s"), 3).await;
    assert!(matches!(
        stores.inventory.adjust_stock(&s, -4, "x").await,
        Err(StockError::WouldGoNegative { available: 3, .. })
    ));
    assert_eq!(stores.inventory.adjust_stock(&s, -3, "x").await.unwrap().available, 0);
    let ghost = sku(&format!("{id}-ghost"));
    assert!(matches!(stores.inventory.adjust_stock(&ghost, 1, "x").await, Err(StockError::UnknownSku(_))));
}

pub async fn orders_insert_once_and_apply_each_event_once(stores: Stores) {
    let id = run_id("ord");
    let os = &stores.orders;
    let o = order(&format!("{id}-1"), &format!("{id}-u"), now_ms());
    assert_eq!(os.insert_new(&o).await.unwrap(), Inserted::New);
    let mut other = o.clone();
    other.total = Money::from_cents(999).unwrap();
    assert_eq!(os.insert_new(&other).await.unwrap(), Inserted::Existing(o.clone()), "the first insert wins");

    let mut next = o.clone();
    next.status = OrderStatus::Processing;
    let out = vec![BusRecord::new(orderflow_schemas::topics::INVENTORY, o.id.as_str(), vec![1, 2, 3])];
    let event = EventId::random();
    let t = Transition { event_id: event, expected: OrderStatus::Pending, order: next.clone(), outputs: out.clone() };
    assert!(matches!(os.apply(t.clone()).await.unwrap(), Applied::Applied));
    match os.apply(t).await.unwrap() {
        Applied::Duplicate(stored) => assert_eq!(stored, out, "a redelivery gets the stored outputs"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let stale = Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Pending,
        order: next.clone(),
        outputs: vec![],
    };
    assert!(matches!(os.apply(stale).await.unwrap(), Applied::Conflict), "compare-and-set on the status");
    assert_eq!(os.order(&o.id).await.unwrap().unwrap().status, OrderStatus::Processing);

    let quiet = EventId::random();
    assert_eq!(os.seen(&o.id, quiet).await.unwrap(), None);
    assert_eq!(os.seen(&o.id, quiet).await.unwrap(), Some(vec![]));
}

pub async fn orders_list_by_user_and_status_newest_first(stores: Stores) {
    let id = run_id("list");
    let os = &stores.orders;
    let user = format!("{id}-u");
    let base = now_ms() - 10_000;
    for i in 0..5 {
        os.insert_new(&order(&format!("{id}-{i}"), &user, base + i)).await.unwrap();
    }
    let mut cancelled = os.order(&OrderId::parse(format!("{id}-3")).unwrap()).await.unwrap().unwrap();
    cancelled.status = OrderStatus::Cancelled;
    let t =
        Transition { event_id: EventId::random(), expected: OrderStatus::Pending, order: cancelled, outputs: vec![] };
    assert!(matches!(os.apply(t).await.unwrap(), Applied::Applied));

    let filter = OrderFilter { user: Some(UserId::parse(user.clone()).unwrap()), status: None };
    let p1 = os.list(&filter, None, 2).await.unwrap();
    assert!(p1.has_next);
    let p2 = os.list(&filter, p1.items.last().map(|(k, _)| k.as_str()), 10).await.unwrap();
    assert!(!p2.has_next);
    let ids: Vec<_> = p1.items.iter().chain(&p2.items).map(|(_, o)| o.id.to_string()).collect();
    assert_eq!(ids, (0..5).rev().map(|i| format!("{id}-{i}")).collect::<Vec<_>>());

    let both = OrderFilter { user: Some(UserId::parse(user).unwrap()), status: Some(OrderStatus::Pending) };
    assert_eq!(os.list(&both, None, 10).await.unwrap().items.len(), 4);
    let cancelled_only = OrderFilter { user: None, status: Some(OrderStatus::Cancelled) };
    assert!(
        os.list(&cancelled_only, None, 100)
            .await
            .unwrap()
            .items
            .iter()
            .any(|(_, o)| o.id.as_str() == format!("{id}-3"))
    );

    let stalled = os.stalled_pending(base + 3, 100).await.unwrap();
    let ours: Vec<_> = stalled.iter().filter(|o| o.id.as_str().starts_with(&id)).map(|o| o.id.to_string()).collect();
    assert_eq!(
        ours,
        [format!("{id}-0"), format!("{id}-1"), format!("{id}-2")],
        "oldest first, PENDING only, before the cut-off"
    );
}

pub async fn order_stats_follow_transitions(stores: Stores) {
    let id = run_id("stats");
    let os = &stores.orders;
    let before = os.stats().await.unwrap();
    let count = |s: &OrderStats, st: OrderStatus| s.by_status.iter().find(|(x, _)| *x == st).map(|(_, n)| *n).unwrap();
    let o = order(&format!("{id}-1"), "u", now_ms() - 500);
    os.insert_new(&o).await.unwrap();
    let mut done = o.clone();
    done.status = OrderStatus::Rejected;
    done.processed_at_ms = Some(o.placed_at_ms + 40);
    let mut processing = o.clone();
    processing.status = OrderStatus::Processing;
    os.apply(Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Pending,
        order: processing,
        outputs: vec![],
    })
    .await
    .unwrap();
    os.apply(Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Processing,
        order: done,
        outputs: vec![],
    })
    .await
    .unwrap();
    let after = os.stats().await.unwrap();
    assert_eq!(after.by_status.len(), 8);
    assert_eq!(count(&after, OrderStatus::Rejected), count(&before, OrderStatus::Rejected) + 1);
    assert_eq!(count(&after, OrderStatus::Pending), count(&before, OrderStatus::Pending));
    assert_eq!(after.processed, before.processed + 1);
    assert_eq!(after.processing_ms_total, before.processing_ms_total + 40);
}

pub async fn payments_first_record_wins(stores: Stores) {
    let id = run_id("pay");
    let ps = &stores.payments;
    let o = OrderId::parse(format!("{id}-1")).unwrap();
    let captured = PaymentRecord::Captured { charge_id: "ch_1".into(), amount: Money::from_cents(500).unwrap() };
    assert_eq!(ps.record_first(&o, &captured).await.unwrap(), captured);
    let declined = PaymentRecord::Declined { reason: "x".into() };
    assert_eq!(ps.record_first(&o, &declined).await.unwrap(), captured);
    let refunded = PaymentRecord::Refunded {
        charge_id: "ch_1".into(),
        refund_id: "re_1".into(),
        amount: Money::from_cents(500).unwrap(),
    };
    assert_eq!(ps.replace(&o, &captured, &refunded).await.unwrap(), refunded);
    assert_eq!(
        ps.replace(&o, &captured, &declined).await.unwrap(),
        refunded,
        "compare-and-set: stale `from` changes nothing"
    );

    let key = format!("{id}:capture");
    let e1 =
        ProviderEntry { kind: "charge".into(), id: "ch_a".into(), amount: Money::from_cents(1).unwrap(), at_ms: 1 };
    let e2 = ProviderEntry { id: "ch_b".into(), ..e1.clone() };
    assert_eq!(ps.provider_entry_once(&key, &e1).await.unwrap(), e1);
    assert_eq!(ps.provider_entry_once(&key, &e2).await.unwrap(), e1);
    assert_eq!(ps.provider_entries().await.unwrap().iter().filter(|(k, _)| *k == key).count(), 1);
}

pub async fn shipments_are_created_once(stores: Stores) {
    let id = run_id("ship");
    let o = OrderId::parse(format!("{id}-1")).unwrap();
    let s1 = Shipment {
        shipment_id: "sh_1".into(),
        order_id: o.clone(),
        user_id: UserId::parse("u").unwrap(),
        lines: vec![(sku("A"), q(1))],
        created_at_ms: 1,
    };
    let s2 = Shipment { shipment_id: "sh_2".into(), ..s1.clone() };
    assert_eq!(stores.shipments.create_once(&s1).await.unwrap(), s1);
    assert_eq!(stores.shipments.create_once(&s2).await.unwrap(), s1);
    assert_eq!(stores.shipments.shipment(&o).await.unwrap(), Some(s1));
}

/// Runs every store check.
pub async fn run_all(stores: Stores) {
    catalog_creates_once_updates_existing_and_paginates(stores.clone()).await;
    reservations_are_all_or_nothing_and_idempotent(stores.clone()).await;
    concurrent_reservations_never_oversell(stores.clone()).await;
    stock_adjustments_are_checked(stores.clone()).await;
    orders_insert_once_and_apply_each_event_once(stores.clone()).await;
    orders_list_by_user_and_status_newest_first(stores.clone()).await;
    order_stats_follow_transitions(stores.clone()).await;
    payments_first_record_wins(stores.clone()).await;
    shipments_are_created_once(stores).await;
}
