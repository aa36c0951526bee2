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
    let p = Product::new(
        sku(sku_name),
        format!("product {sku_name}"),
        String::new(),
        Money::from_cents(250).unwrap(),
        now_ms(),
    );
    assert!(stores.catalog.create_product(&p).await.unwrap());
    if stock > 0 {
        Owner::of(stores).adjust_stock(&p.sku, stock, "test", None).await.unwrap();
    }
    p.sku
}

/// The inventory as the owner of its SKUs' partitions writes it: one call at a time (as one consumer handles
/// its partition), each with the next fence of one epoch ([`next_fence`]). The checks write stock through
/// this, as the inventory processor does; reads go straight to the store.
pub struct Owner {
    inv: Arc<dyn InventoryStore>,
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner").finish_non_exhaustive()
    }
}

static OFFSETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The next fence of epoch 1: offsets grow across every check of the process.
pub fn next_fence() -> Fence {
    Fence::new(1, OFFSETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}

impl Owner {
    pub fn of(stores: &Stores) -> Arc<Owner> {
        Arc::new(Owner { inv: Arc::clone(&stores.inventory), turn: tokio::sync::Mutex::new(()) })
    }

    pub async fn reserve(&self, hold: &Hold) -> Result<Reservation> {
        let _turn = self.turn.lock().await;
        self.inv.reserve(hold, next_fence()).await
    }

    pub async fn reserve_many(&self, holds: &[Hold]) -> Result<Vec<Reservation>> {
        let _turn = self.turn.lock().await;
        let fenced: Vec<(Hold, Fence)> = holds.iter().map(|h| (h.clone(), next_fence())).collect();
        self.inv.reserve_many(&fenced).await
    }

    pub async fn end_reservation(&self, order: &OrderId, sku: &Sku, end: ReservationEnd) -> Result<ReservationEnd> {
        let _turn = self.turn.lock().await;
        self.inv.end_reservation(order, sku, end, next_fence()).await
    }

    pub async fn adjust_stock(
        &self,
        sku: &Sku,
        delta: i64,
        reason: &str,
        key: Option<&str>,
    ) -> Result<StockLevel, StockError> {
        let _turn = self.turn.lock().await;
        self.inv.adjust_stock(sku, delta, reason, key, next_fence()).await
    }

    pub async fn set_low_stock_threshold(
        &self,
        sku: &Sku,
        threshold: u64,
        key: Option<&str>,
    ) -> Result<LowStock, StockError> {
        let _turn = self.turn.lock().await;
        self.inv.set_low_stock_threshold(sku, threshold, key, next_fence()).await
    }

    pub async fn settle_low_stock(&self, sku: &Sku) -> Result<Vec<StockAlert>> {
        let _turn = self.turn.lock().await;
        self.inv.settle_low_stock(sku, next_fence()).await
    }

    pub async fn mark_alert_published(&self, sku: &Sku, seq: u64) -> Result<()> {
        let _turn = self.turn.lock().await;
        self.inv.mark_alert_published(sku, seq, next_fence()).await
    }

    pub async fn stock(&self, sku: &Sku) -> Result<Option<StockLevel>> {
        self.inv.stock(sku).await
    }

    pub async fn adjustment(&self, sku: &Sku, key: &str) -> Result<Option<Adjustment>> {
        self.inv.adjustment(sku, key).await
    }

    pub async fn movements(&self, sku: &Sku, limit: usize) -> Result<Vec<StockMovement>> {
        self.inv.movements(sku, limit).await
    }

    pub async fn low_stock(&self, sku: &Sku) -> Result<LowStock> {
        self.inv.low_stock(sku).await
    }

    pub async fn stock_alerts(&self, sku: Option<&Sku>, limit: usize) -> Result<Vec<StockAlert>> {
        self.inv.stock_alerts(sku, limit).await
    }
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
        reserved_skus: vec![],
        payment_method: None,
        currency: None,
        capture_on: Default::default(),
        timeline: vec![],
    }
}

pub async fn catalog_creates_once_updates_existing_and_paginates(stores: Stores) {
    let id = run_id("cat");
    let a = product(&stores, &format!("{id}-a"), 0).await;
    let mut p = stores.catalog.product(&a).await.unwrap().unwrap();
    assert_eq!(p.version, 1);
    assert!(!stores.catalog.create_product(&p).await.unwrap(), "a SKU is created once");
    p.name = "renamed".into();
    p.category = Category::parse("kitchen").unwrap();
    p.attributes = Attributes::parse([("color".to_owned(), "blue".to_owned())]).unwrap();
    p.archived = true;
    p.currency = Some("JPY".parse().unwrap());
    p.version = 2;
    assert_eq!(stores.catalog.update_product(&p).await.unwrap(), ProductWrite::Written);
    assert_eq!(stores.catalog.product(&a).await.unwrap().unwrap(), p, "every field is stored");
    // A second edit made from version 1 loses: it sees the stored product.
    let mut late = p.clone();
    late.name = "late".into();
    assert_eq!(stores.catalog.update_product(&late).await.unwrap(), ProductWrite::Conflict(p.clone()));
    late.version = 5;
    assert_eq!(stores.catalog.update_product(&late).await.unwrap(), ProductWrite::Conflict(p.clone()));
    assert_eq!(stores.catalog.product(&a).await.unwrap().unwrap().name, "renamed");
    let mut ghost = p.clone();
    ghost.sku = sku(&format!("{id}-ghost"));
    assert_eq!(stores.catalog.update_product(&ghost).await.unwrap(), ProductWrite::NotFound, "update never creates");
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

    // Every product's version, each SKU once, across pages.
    let mut after: Option<String> = None;
    let mut versions = std::collections::BTreeMap::new();
    for _ in 0..100_000 {
        let page = stores.catalog.product_versions(after.as_deref(), 3).await.unwrap();
        assert!(page.items.len() <= 3);
        for (key, version) in &page.items {
            if key.starts_with(&id) {
                assert!(versions.insert(key.clone(), *version).is_none(), "{key} listed twice");
            }
        }
        if !page.has_next {
            break;
        }
        after = page.items.last().map(|(k, _)| k.clone());
    }
    let want: std::collections::BTreeMap<_, _> =
        [("a", 2), ("b", 1), ("c", 1), ("d", 1)].iter().map(|(s, v)| (format!("{id}-{s}"), *v as u64)).collect();
    assert_eq!(versions, want);
}

fn versioned(sku_name: &str, version: u64, name: &str, category: &str, cents: i64) -> Product {
    let mut p = Product::new(
        sku(sku_name),
        name.into(),
        format!("{name}, described"),
        Money::from_cents(cents).unwrap(),
        1_000,
    );
    p.version = version;
    p.category = Category::parse(category).unwrap();
    p.attributes = Attributes::parse([("v".to_owned(), version.to_string())]).unwrap();
    p.updated_at_ms = 1_000 + version as i64;
    // Even versions name their currency, odd ones leave it to the shop's: both must round-trip.
    p.currency = version.is_multiple_of(2).then(|| "USD".parse().unwrap());
    p
}

async fn our_listing(stores: &Stores, id: &str) -> Vec<ProductSummary> {
    stores
        .catalog_view
        .listing(1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.sku.as_str().starts_with(id))
        .collect()
}

/// The read model keeps the highest version of each product whatever order the versions arrive in, and
/// applying one twice changes nothing.
pub async fn catalog_view_keeps_the_newest_version(stores: Stores) {
    let id = run_id("view");
    let a = format!("{id}-a");
    let view = &stores.catalog_view;
    assert!(view.view_product(&sku(&a)).await.unwrap().is_none());
    let v1 = versioned(&a, 1, "one", "drinks", 100);
    let v2 = versioned(&a, 2, "two", "food", 200);
    let mut v3 = versioned(&a, 3, "three", "toys", 300);
    v3.archived = true;
    v3.attributes = Attributes::default();

    assert_eq!(view.upsert_if_newer(&v2).await.unwrap(), Projected::Applied);
    assert_eq!(view.upsert_if_newer(&v1).await.unwrap(), Projected::Stale, "an older version arriving late");
    assert_eq!(view.view_product(&v2.sku).await.unwrap(), Some(v2.clone()));
    assert_eq!(view.upsert_if_newer(&v2).await.unwrap(), Projected::AlreadyCurrent, "a redelivery");
    assert_eq!(our_listing(&stores, &id).await, vec![ProductSummary::from(&v2)]);

    assert_eq!(view.upsert_if_newer(&v3).await.unwrap(), Projected::Applied);
    assert_eq!(view.upsert_if_newer(&v2).await.unwrap(), Projected::Stale);
    assert_eq!(view.upsert_if_newer(&v1).await.unwrap(), Projected::Stale);
    assert_eq!(view.view_product(&v3.sku).await.unwrap(), Some(v3.clone()), "attributes removed, archived");
    assert_eq!(our_listing(&stores, &id).await, vec![ProductSummary::from(&v3)], "one row per product");
}

/// The listing holds every product's summary once, in SKU order.
pub async fn catalog_listing_is_in_sku_order(stores: Stores) {
    let id = run_id("listing");
    for (i, s) in ["c", "a", "d", "b"].iter().enumerate() {
        let p = versioned(&format!("{id}-{s}"), 1 + i as u64, s, "misc", 100 * i as i64);
        stores.catalog_view.upsert_if_newer(&p).await.unwrap();
    }
    let skus: Vec<_> = our_listing(&stores, &id).await.into_iter().map(|s| s.sku.to_string()).collect();
    let want: Vec<_> = ["a", "b", "c", "d"].iter().map(|s| format!("{id}-{s}")).collect();
    assert_eq!(skus, want);
    assert!(stores.catalog_view.listing(1).await.unwrap().len() <= 1, "the limit holds");
}

/// The hold of `sku` for `order` of lines with these quantities.
pub fn hold(order: &OrderId, sku: &Sku, quantities: &[i64]) -> Hold {
    Hold::new(order.clone(), sku.clone(), quantities.iter().map(|n| q(*n))).expect("at least one line")
}

pub async fn reservations_hold_each_sku_once(stores: Stores) {
    let id = run_id("res");
    let a = product(&stores, &format!("{id}-a"), 5).await;
    let b = product(&stores, &format!("{id}-b"), 1).await;
    let inv = &Owner::of(&stores);
    // One order, two SKUs: two holds, each answered on its own (the saga collects them).
    let o1 = OrderId::parse(format!("{id}-o1")).unwrap();
    assert_eq!(inv.reserve(&hold(&o1, &a, &[2])).await.unwrap(), Reservation::Reserved { units: 2 });
    let refused = Reservation::Rejected { reason: "out_of_stock".into(), sku: Some(b.clone()) };
    assert_eq!(inv.reserve(&hold(&o1, &b, &[2])).await.unwrap(), refused);
    assert_eq!(inv.reserve(&hold(&o1, &a, &[2])).await.unwrap(), Reservation::Reserved { units: 2 }, "first answer");
    assert_eq!(inv.reserve(&hold(&o1, &b, &[2])).await.unwrap(), refused, "first answer");
    assert_eq!(
        inv.stock(&a).await.unwrap().unwrap(),
        StockLevel { available: 3, reserved: 2, sold: 0 },
        "a repeat holds nothing more"
    );
    assert_eq!(inv.stock(&b).await.unwrap().unwrap(), StockLevel { available: 1, reserved: 0, sold: 0 });
    // The saga gives back what one SKU held when another was refused; the refused one held nothing.
    assert_eq!(inv.end_reservation(&o1, &a, ReservationEnd::Released).await.unwrap(), ReservationEnd::Released);
    assert_eq!(inv.end_reservation(&o1, &a, ReservationEnd::Released).await.unwrap(), ReservationEnd::NothingHeld);
    assert_eq!(inv.end_reservation(&o1, &b, ReservationEnd::Released).await.unwrap(), ReservationEnd::NothingHeld);
    assert_eq!(inv.stock(&a).await.unwrap().unwrap(), StockLevel { available: 5, reserved: 0, sold: 0 });
    assert_eq!(inv.stock(&b).await.unwrap().unwrap(), StockLevel { available: 1, reserved: 0, sold: 0 });

    let unknown = OrderId::parse(format!("{id}-o3")).unwrap();
    let r = inv.reserve(&hold(&unknown, &sku(&format!("{id}-nope")), &[1])).await.unwrap();
    assert!(matches!(r, Reservation::Rejected { ref reason, .. } if reason == "unknown_sku"), "{r:?}");

    let o4 = OrderId::parse(format!("{id}-o4")).unwrap();
    inv.reserve(&hold(&o4, &a, &[4])).await.unwrap();
    assert_eq!(inv.end_reservation(&o4, &a, ReservationEnd::Committed).await.unwrap(), ReservationEnd::Committed);
    assert_eq!(
        inv.end_reservation(&o4, &a, ReservationEnd::Released).await.unwrap(),
        ReservationEnd::NothingHeld,
        "sold units never come back"
    );
    assert_eq!(inv.stock(&a).await.unwrap().unwrap(), StockLevel { available: 1, reserved: 0, sold: 4 });

    // Ending a hold that never happened closes it: a late request is refused, and only for that SKU.
    let o5 = OrderId::parse(format!("{id}-o5")).unwrap();
    assert_eq!(inv.end_reservation(&o5, &a, ReservationEnd::Released).await.unwrap(), ReservationEnd::NothingHeld);
    assert!(matches!(inv.reserve(&hold(&o5, &a, &[1])).await.unwrap(), Reservation::Rejected { .. }));
    assert_eq!(inv.reserve(&hold(&o5, &b, &[1])).await.unwrap(), Reservation::Reserved { units: 1 });

    let kinds: Vec<_> = inv.movements(&a, 10).await.unwrap().into_iter().map(|m| m.kind).collect();
    assert_eq!(kinds, ["commit", "reserve", "release", "reserve", "adjust"], "newest first");

    // A refusal is the first answer for good, even once stock arrives.
    let c = product(&stores, &format!("{id}-c"), 1).await;
    let o6 = OrderId::parse(format!("{id}-o6")).unwrap();
    let refused = Reservation::Rejected { reason: "out_of_stock".into(), sku: Some(c.clone()) };
    assert_eq!(inv.reserve(&hold(&o6, &c, &[2])).await.unwrap(), refused);
    inv.adjust_stock(&c, 5, "restock", None).await.unwrap();
    assert_eq!(inv.reserve(&hold(&o6, &c, &[2])).await.unwrap(), refused, "a retry gets the first answer");
    assert_eq!(inv.end_reservation(&o6, &c, ReservationEnd::Released).await.unwrap(), ReservationEnd::NothingHeld);
    // Reserved (two lines of one SKU: one hold of their sum), released, then a late duplicate request: the
    // first answer, and nothing held again.
    let o7 = OrderId::parse(format!("{id}-o7")).unwrap();
    assert_eq!(inv.reserve(&hold(&o7, &c, &[1, 2])).await.unwrap(), Reservation::Reserved { units: 3 });
    assert_eq!(inv.stock(&c).await.unwrap().unwrap(), StockLevel { available: 3, reserved: 3, sold: 0 });
    assert_eq!(inv.end_reservation(&o7, &c, ReservationEnd::Released).await.unwrap(), ReservationEnd::Released);
    assert_eq!(inv.reserve(&hold(&o7, &c, &[1, 2])).await.unwrap(), Reservation::Reserved { units: 3 });
    assert_eq!(inv.stock(&c).await.unwrap().unwrap(), StockLevel { available: 6, reserved: 0, sold: 0 });

    // One SKU on two lines whose quantities sum past what one line may ask for: one hold of the sum,
    // never an error. (Intake refuses a SKU named twice today; a hold sums lines all the same, for orders
    // placed before that rule and any other producer of `ReserveStock`.)
    let most = i64::from(Quantity::MAX);
    let d = product(&stores, &format!("{id}-d"), 2 * most).await;
    let o8 = OrderId::parse(format!("{id}-o8")).unwrap();
    let units = 2 * u64::from(Quantity::MAX);
    assert_eq!(inv.reserve(&hold(&o8, &d, &[most, most])).await.unwrap(), Reservation::Reserved { units });
    assert_eq!(inv.stock(&d).await.unwrap().unwrap(), StockLevel { available: 0, reserved: units, sold: 0 });
    assert_eq!(inv.end_reservation(&o8, &d, ReservationEnd::Committed).await.unwrap(), ReservationEnd::Committed);
    assert_eq!(inv.stock(&d).await.unwrap().unwrap(), StockLevel { available: 0, reserved: 0, sold: units });
}

pub async fn concurrent_reservations_never_oversell(stores: Stores) {
    let owner = Owner::of(&stores);
    let id = run_id("flash");
    let s = product(&stores, &format!("{id}-s"), 20).await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let inv = Arc::clone(&owner);
            let s = s.clone();
            let o = OrderId::parse(format!("{id}-o{i}")).unwrap();
            // As the consumer policy does: an outcome the store could not settle (a timeout under this
            // much contention on one partition) is retried with the same order, which is idempotent.
            tokio::spawn(async move {
                let mut attempt = 0u64;
                loop {
                    match inv.reserve(&hold(&o, &s, &[1])).await {
                        Err(StoreError::Unavailable(e)) if attempt < 20 => {
                            attempt += 1;
                            eprintln!("reservation of {o} not settled ({e}); retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                        }
                        outcome => break outcome.unwrap(),
                    }
                }
            })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Reservation::Reserved { .. }) {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 20);
    assert_eq!(owner.stock(&s).await.unwrap().unwrap(), StockLevel { available: 0, reserved: 20, sold: 0 });
}

pub async fn batched_reservations_take_stock_in_order(stores: Stores) {
    let owner = Owner::of(&stores);
    let id = run_id("batch");
    let s = product(&stores, &format!("{id}-s"), 3).await;
    let t = product(&stores, &format!("{id}-t"), 1).await;
    let order = |i: usize| OrderId::parse(format!("{id}-o{i}")).unwrap();
    // Order 1 is two SKUs: two holds in the batch.
    let mut requests: Vec<_> = (0..5).map(|i| hold(&order(i), &s, &[1])).collect();
    requests.insert(2, hold(&order(1), &t, &[1]));
    let kinds = |rs: &[Reservation]| rs.iter().map(|r| matches!(r, Reservation::Reserved { .. })).collect::<Vec<_>>();
    let first = owner.reserve_many(&requests).await.unwrap();
    assert_eq!(kinds(&first), vec![true, true, true, true, false, false], "{first:?}");
    assert_eq!(owner.stock(&s).await.unwrap().unwrap(), StockLevel { available: 0, reserved: 3, sold: 0 });
    assert_eq!(owner.stock(&t).await.unwrap().unwrap(), StockLevel { available: 0, reserved: 1, sold: 0 });
    // Redelivered: the same answers, nothing taken twice; one order alone gets its stored answer too.
    assert_eq!(owner.reserve_many(&requests).await.unwrap(), first);
    assert_eq!(owner.reserve(&hold(&order(4), &s, &[1])).await.unwrap(), first[5]);
    assert_eq!(owner.stock(&s).await.unwrap().unwrap().reserved, 3);
}

pub async fn stock_adjustments_are_checked(stores: Stores) {
    let owner = Owner::of(&stores);
    let id = run_id("adj");
    let s = product(&stores, &format!("{id}-s"), 3).await;
    assert!(matches!(
        owner.adjust_stock(&s, -4, "x", None).await,
        Err(StockError::WouldGoNegative { available: 3, .. })
    ));
    assert_eq!(owner.adjust_stock(&s, -3, "x", None).await.unwrap().available, 0);
    let ghost = sku(&format!("{id}-ghost"));
    assert!(matches!(owner.adjust_stock(&ghost, 1, "x", None).await, Err(StockError::UnknownSku(_))));

    // A client retrying with its idempotency key: applied once, the repeat answers the level as it is.
    let inv = &owner;
    assert_eq!(inv.adjust_stock(&s, 5, "delivery", Some("k-1")).await.unwrap().available, 5);
    assert_eq!(inv.adjust_stock(&s, 5, "delivery", Some("k-1")).await.unwrap().available, 5, "not twice");
    assert!(matches!(
        inv.adjust_stock(&s, 6, "delivery", Some("k-1")).await,
        Err(StockError::KeyReused { applied: 5, asked: 6, .. })
    ));
    assert_eq!(inv.adjust_stock(&s, 2, "delivery", Some("k-2")).await.unwrap().available, 7, "another key applies");
    let other = product(&stores, &format!("{id}-t"), 0).await;
    assert_eq!(inv.adjust_stock(&other, 1, "x", Some("k-1")).await.unwrap().available, 1, "keys are per SKU");
    assert!(matches!(inv.adjust_stock(&s, i64::MAX, "x", None).await, Err(StockError::WouldOverflow { .. })));
    assert!(matches!(inv.adjust_stock(&s, i64::MIN, "x", None).await, Err(StockError::WouldGoNegative { .. })));

    // The first answer under a key stands, refusals too, and is what `adjustment` reports.
    assert_eq!(inv.adjustment(&s, "k-1").await.unwrap(), Some(Adjustment { delta: 5, refused: None }));
    assert_eq!(inv.adjustment(&s, "k-never").await.unwrap(), None);
    let refused = Some(StockRefusal::WouldGoNegative { available: 7 });
    assert!(matches!(
        inv.adjust_stock(&s, -8, "x", Some("k-3")).await,
        Err(StockError::WouldGoNegative { available: 7, .. })
    ));
    assert_eq!(inv.adjustment(&s, "k-3").await.unwrap(), Some(Adjustment { delta: -8, refused }));
    assert_eq!(inv.adjust_stock(&s, 1, "x", Some("k-4")).await.unwrap().available, 8);
    assert!(
        matches!(
            inv.adjust_stock(&s, -8, "x", Some("k-3")).await,
            Err(StockError::WouldGoNegative { available: 7, .. })
        ),
        "a refused key stays refused, though 8 are available now"
    );
    assert!(matches!(inv.adjust_stock(&s, -1, "x", Some("k-3")).await, Err(StockError::KeyReused { applied: -8, .. })));
    assert!(matches!(inv.adjust_stock(&s, i64::MAX, "x", Some("k-5")).await, Err(StockError::WouldOverflow { .. })));
    let overflow = Some(Adjustment { delta: i64::MAX, refused: Some(StockRefusal::WouldOverflow) });
    assert_eq!(inv.adjustment(&s, "k-5").await.unwrap(), overflow);
    assert!(matches!(inv.adjust_stock(&ghost, 1, "x", Some("k-6")).await, Err(StockError::UnknownSku(_))));
    let unknown = Some(Adjustment { delta: 1, refused: Some(StockRefusal::UnknownSku) });
    assert_eq!(inv.adjustment(&ghost, "k-6").await.unwrap(), unknown);
    assert_eq!(inv.stock(&ghost).await.unwrap(), None, "a refused key gives an unknown SKU no stock");
    assert_eq!(inv.stock(&s).await.unwrap().unwrap().available, 8);
    let adjusts = inv.movements(&s, 20).await.unwrap().into_iter().filter(|m| m.kind == "adjust").count();
    assert_eq!(adjusts, 5, "one ledger line per applied adjustment (initial, -3, +5, +2, +1)");
}

pub async fn low_stock_alerts_fire_once_per_crossing(stores: Stores) {
    let id = run_id("low");
    let inv = &Owner::of(&stores);
    let s = product(&stores, &format!("{id}-s"), 12).await;
    assert_eq!(inv.low_stock(&s).await.unwrap(), LowStock::default(), "a SKU starts with the default threshold");
    let ghost = sku(&format!("{id}-ghost"));
    assert!(matches!(inv.set_low_stock_threshold(&ghost, 3, None).await, Err(StockError::UnknownSku(_))));
    assert_eq!(inv.set_low_stock_threshold(&s, 10, Some("t-1")).await.unwrap().threshold, 10);
    assert_eq!(inv.set_low_stock_threshold(&s, 11, Some("t-2")).await.unwrap().threshold, 11);
    assert_eq!(
        inv.set_low_stock_threshold(&s, 10, Some("t-1")).await.unwrap().threshold,
        11,
        "a repeated request (a redelivery after a later one) changes nothing"
    );
    assert_eq!(inv.set_low_stock_threshold(&s, 10, None).await.unwrap().threshold, 10);
    assert!(inv.settle_low_stock(&s).await.unwrap().is_empty(), "12 > 10: nothing to report");

    // 12 -> 9 crosses; concurrent settles record that crossing once.
    assert!(matches!(
        inv.reserve(&hold(&OrderId::parse(format!("{id}-o1")).unwrap(), &s, &[3])).await.unwrap(),
        Reservation::Reserved { .. }
    ));
    let settles: Vec<_> = (0..4)
        .map(|_| {
            let inv = Arc::clone(inv);
            let s = s.clone();
            tokio::spawn(async move { inv.settle_low_stock(&s).await.unwrap() })
        })
        .collect();
    for t in settles {
        let pending = t.await.unwrap();
        assert_eq!(pending.len(), 1, "every settle sees the one unpublished crossing: {pending:?}");
        assert_eq!((pending[0].seq, pending[0].kind, pending[0].available), (1, StockAlertKind::InventoryLow, 9));
    }
    // Published: no longer pending. Going further down is the same crossing.
    inv.mark_alert_published(&s, 1).await.unwrap();
    inv.mark_alert_published(&s, 1).await.unwrap();
    assert!(matches!(
        inv.reserve(&hold(&OrderId::parse(format!("{id}-o2")).unwrap(), &s, &[4])).await.unwrap(),
        Reservation::Reserved { .. }
    ));
    assert!(inv.settle_low_stock(&s).await.unwrap().is_empty(), "5 is still low: no second InventoryLow");
    assert_eq!(inv.low_stock(&s).await.unwrap(), LowStock { threshold: 10, low: true, crossings: 1 });

    // Back above the threshold: one InventoryRestocked, left unpublished to show it is returned again.
    inv.end_reservation(&OrderId::parse(format!("{id}-o2")).unwrap(), &s, ReservationEnd::Released).await.unwrap();
    inv.end_reservation(&OrderId::parse(format!("{id}-o1")).unwrap(), &s, ReservationEnd::Released).await.unwrap();
    let pending = inv.settle_low_stock(&s).await.unwrap();
    assert_eq!(
        pending.iter().map(|a| (a.seq, a.kind, a.available)).collect::<Vec<_>>(),
        vec![(2, StockAlertKind::InventoryRestocked, 12)]
    );
    assert_eq!(inv.settle_low_stock(&s).await.unwrap(), pending, "an unpublished alert is returned until marked");
    inv.mark_alert_published(&s, 2).await.unwrap();
    assert!(inv.settle_low_stock(&s).await.unwrap().is_empty());

    // Raising the threshold over the level is a crossing too; a staff adjustment back up ends it.
    inv.set_low_stock_threshold(&s, 20, None).await.unwrap();
    assert_eq!(
        inv.settle_low_stock(&s).await.unwrap().iter().map(|a| (a.seq, a.kind)).collect::<Vec<_>>(),
        vec![(3, StockAlertKind::InventoryLow)]
    );
    inv.mark_alert_published(&s, 3).await.unwrap();
    inv.adjust_stock(&s, 10, "restock", None).await.unwrap();
    assert_eq!(
        inv.settle_low_stock(&s).await.unwrap().iter().map(|a| (a.seq, a.kind, a.threshold)).collect::<Vec<_>>(),
        vec![(4, StockAlertKind::InventoryRestocked, 20)]
    );
    inv.mark_alert_published(&s, 4).await.unwrap();

    let listed: Vec<_> = inv.stock_alerts(Some(&s), 10).await.unwrap().iter().map(|a| a.seq).collect();
    assert_eq!(listed, vec![4, 3, 2, 1], "newest first");
    assert_eq!(inv.stock_alerts(Some(&s), 2).await.unwrap().len(), 2);
    let feed: Vec<_> =
        inv.stock_alerts(None, 1000).await.unwrap().into_iter().filter(|a| a.sku == s).map(|a| a.seq).collect();
    assert_eq!(feed, vec![4, 3, 2, 1], "the all-SKU feed has them too, newest first");
}

pub async fn orders_insert_once_and_apply_each_event_once(stores: Stores) {
    let id = run_id("ord");
    let os = &stores.orders;
    let o = order(&format!("{id}-1"), &format!("{id}-u"), now_ms());
    assert_eq!(os.insert_new(&o).await.unwrap(), Inserted::New);
    let mut other = o.clone();
    other.total = Money::from_cents(999).unwrap();
    assert_eq!(os.insert_new(&other).await.unwrap(), Inserted::Existing(Box::new(o.clone())), "the first insert wins");

    let mut next = o.clone();
    next.status = OrderStatus::Processing;
    let out = vec![BusRecord::new(orderflow_schemas::topics::INVENTORY, o.id.as_str(), vec![1, 2, 3])];
    let event = EventId::random();
    let t = Transition {
        event_id: event,
        expected: OrderStatus::Pending,
        order: next.clone(),
        outputs: out.clone(),
        fence: fence(1),
    };
    assert!(matches!(os.apply(t.clone()).await.unwrap(), Applied::Applied));
    match os.apply(t.clone()).await.unwrap() {
        Applied::Duplicate(stored) => assert_eq!(stored, out, "a redelivery gets the stored outputs"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // The same event again at another offset (re-published, or a reply sent twice): recognised, and
    // nothing to publish again, so a copy never runs the rest of the pipeline twice.
    let copy = Transition { fence: Fence::new(2, 40), ..t.clone() };
    match os.apply(copy).await.unwrap() {
        Applied::Duplicate(stored) => assert!(stored.is_empty(), "a copy publishes nothing: {stored:?}"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let redelivered_to_next_owner = Transition { fence: Fence::new(2, 1), ..t };
    match os.apply(redelivered_to_next_owner).await.unwrap() {
        Applied::Duplicate(stored) => assert_eq!(stored, out, "the same record under a new epoch is a redelivery"),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let stale = Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Pending,
        order: next.clone(),
        outputs: vec![],
        fence: fence(2),
    };
    assert!(matches!(os.apply(stale).await.unwrap(), Applied::Conflict), "compare-and-set on the status");
    assert_eq!(os.order(&o.id).await.unwrap().unwrap().status, OrderStatus::Processing);

    let quiet = EventId::random();
    assert_eq!(os.seen(&o.id, quiet, fence(3)).await.unwrap(), None);
    assert_eq!(os.seen(&o.id, quiet, fence(3)).await.unwrap(), Some(vec![]));
    assert_eq!(os.seen(&o.id, quiet, fence(9)).await.unwrap(), Some(vec![]), "a copy: recognised");
    assert_eq!(os.seen(&o.id, event, fence(9)).await.unwrap(), Some(vec![]), "a copy of an applied event");
    assert_eq!(os.seen(&o.id, event, fence(1)).await.unwrap(), Some(out), "its redelivery");
    assert_eq!(os.order(&o.id).await.unwrap().unwrap().status, OrderStatus::Processing, "seen changes no state");
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
    let t = Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Pending,
        order: cancelled,
        outputs: vec![],
        fence: fence(1),
    };
    assert!(matches!(os.apply(t).await.unwrap(), Applied::Applied));
    let mut processing = os.order(&OrderId::parse(format!("{id}-4")).unwrap()).await.unwrap().unwrap();
    processing.status = OrderStatus::Processing;
    let t = Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Pending,
        order: processing,
        outputs: vec![],
        fence: fence(1),
    };
    assert!(matches!(os.apply(t).await.unwrap(), Applied::Applied));
    let stuck = os.stalled(Stalled::Processing, base + 5, 100).await.unwrap();
    let ours: Vec<_> = stuck.iter().filter(|o| o.id.as_str().starts_with(&id)).map(|o| o.id.to_string()).collect();
    assert_eq!(ours, [format!("{id}-4")], "PROCESSING only");
    assert!(
        os.stalled(Stalled::Processing, base + 4, 100).await.unwrap().iter().all(|o| !o.id.as_str().starts_with(&id))
    );

    let filter = OrderFilter { user: Some(UserId::parse(user.clone()).unwrap()), status: None };
    let p1 = os.list(&filter, None, 2).await.unwrap();
    assert!(p1.has_next);
    let p2 = os.list(&filter, p1.items.last().map(|(k, _)| k.as_str()), 10).await.unwrap();
    assert!(!p2.has_next);
    let ids: Vec<_> = p1.items.iter().chain(&p2.items).map(|(_, o)| o.id.to_string()).collect();
    assert_eq!(ids, (0..5).rev().map(|i| format!("{id}-{i}")).collect::<Vec<_>>());

    let both = OrderFilter { user: Some(UserId::parse(user).unwrap()), status: Some(OrderStatus::Pending) };
    assert_eq!(os.list(&both, None, 10).await.unwrap().items.len(), 3);
    let cancelled_only = OrderFilter { user: None, status: Some(OrderStatus::Cancelled) };
    assert!(
        os.list(&cancelled_only, None, 100)
            .await
            .unwrap()
            .items
            .iter()
            .any(|(_, o)| o.id.as_str() == format!("{id}-3"))
    );

    let stalled = os.stalled(Stalled::Pending, base + 3, 100).await.unwrap();
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
        fence: fence(1),
    })
    .await
    .unwrap();
    os.apply(Transition {
        event_id: EventId::random(),
        expected: OrderStatus::Processing,
        order: done,
        outputs: vec![],
        fence: fence(2),
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

pub async fn payments_record_then_replace(stores: Stores) {
    let id = run_id("pay");
    let ps = &stores.payments;
    let o = OrderId::parse(format!("{id}-1")).unwrap();
    assert_eq!(ps.payment(&o).await.unwrap(), None);
    let authorised = PaymentRecord::Authorised { payment_id: "ch_1".into(), amount: Money::from_cents(500).unwrap() };
    ps.record_new(&o, &authorised, fence(1)).await.unwrap();
    assert_eq!(ps.payment(&o).await.unwrap(), Some(authorised.clone()));
    let captured = PaymentRecord::Captured { charge_id: "ch_1".into(), amount: Money::from_cents(500).unwrap() };
    assert_eq!(ps.replace(&o, &authorised, &captured, fence(2)).await.unwrap(), captured);
    assert_eq!(ps.payment(&o).await.unwrap(), Some(captured.clone()));
    let declined = PaymentRecord::Declined { reason: "x".into() };
    let refunded = PaymentRecord::Refunded {
        charge_id: "ch_1".into(),
        refund_id: "re_1".into(),
        amount: Money::from_cents(500).unwrap(),
    };
    assert_eq!(ps.replace(&o, &captured, &refunded, fence(3)).await.unwrap(), refunded);
    assert_eq!(
        ps.replace(&o, &captured, &declined, fence(4)).await.unwrap(),
        refunded,
        "compare-and-set: stale `from` changes nothing"
    );
    // An authorisation released without a capture keeps the payment's id and amount.
    let o2 = OrderId::parse(format!("{id}-2")).unwrap();
    let held = PaymentRecord::Authorised { payment_id: "pi_2".into(), amount: Money::from_cents(700).unwrap() };
    let voided = PaymentRecord::Voided { payment_id: "pi_2".into(), amount: Money::from_cents(700).unwrap() };
    ps.record_new(&o2, &held, fence(1)).await.unwrap();
    assert_eq!(ps.replace(&o2, &held, &voided, fence(2)).await.unwrap(), voided);
    assert_eq!(ps.payment(&o2).await.unwrap(), Some(voided));
    // Partial refunds by staff, each under its key, and what is left.
    let o3 = OrderId::parse(format!("{id}-3")).unwrap();
    let taken = PaymentRecord::Captured { charge_id: "pi_3".into(), amount: Money::from_cents(1000).unwrap() };
    ps.record_new(&o3, &taken, fence(1)).await.unwrap();
    let part = |key: &str, cents: i64| PartRefund {
        key: key.into(),
        refund_id: format!("re_{key}"),
        amount: Money::from_cents(cents).unwrap(),
    };
    let partly = PaymentRecord::PartlyRefunded {
        charge_id: "pi_3".into(),
        amount: Money::from_cents(1000).unwrap(),
        refunds: vec![part("a", 300), part("b", 200)],
    };
    assert_eq!(ps.replace(&o3, &taken, &partly, fence(2)).await.unwrap(), partly);
    assert_eq!(ps.payment(&o3).await.unwrap(), Some(partly.clone()));
    assert_eq!(partly.refundable(), Some(Money::from_cents(500).unwrap()));
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
    assert_eq!(stores.shipments.create_once(&s1, fence(1)).await.unwrap(), s1);
    assert_eq!(stores.shipments.create_once(&s2, fence(2)).await.unwrap(), s1);
    assert_eq!(stores.shipments.shipment(&o).await.unwrap(), Some(s1));
}

/// A request orderflow recorded on an order is found under its order and event id, with what was asked;
/// another event id, or the same id on another order, finds nothing.
pub async fn order_requests_are_recorded_per_order_and_event(stores: Stores) {
    let id = run_id("req");
    let (a, b) = (OrderId::parse(format!("{id}-a")).unwrap(), OrderId::parse(format!("{id}-b")).unwrap());
    let (e1, e2) = (EventId::random(), EventId::random());
    assert_eq!(stores.orders.recorded_request(&a, e1).await.unwrap(), None);
    stores.orders.record_request(&a, e1, "StatusChangeRequested:DELIVERED").await.unwrap();
    stores.orders.record_request(&a, e1, "StatusChangeRequested:DELIVERED").await.unwrap();
    assert_eq!(
        stores.orders.recorded_request(&a, e1).await.unwrap().as_deref(),
        Some("StatusChangeRequested:DELIVERED")
    );
    assert_eq!(stores.orders.recorded_request(&a, e2).await.unwrap(), None, "another event");
    assert_eq!(stores.orders.recorded_request(&b, e1).await.unwrap(), None, "another order");
}

/// A fence of epoch 1 at `offset`: what the first owner of a partition stamps its writes with.
fn fence(offset: u64) -> Fence {
    Fence::new(1, offset)
}

/// A store that is up answers its readiness probe, quickly.
pub async fn answers_readiness_pings(stores: Stores) {
    for _ in 0..3 {
        let started = std::time::Instant::now();
        stores.readiness.ping().await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "ping() took {:?}", started.elapsed());
    }
}

pub async fn partition_epochs_only_grow(stores: Stores) {
    let group = run_id("group");
    let e1 = stores.epochs.claim(&group, "t", 3, "a").await.unwrap();
    let e2 = stores.epochs.claim(&group, "t", 3, "b").await.unwrap();
    assert!(e2 > e1, "a later claim gets a later epoch ({e1} then {e2})");
    assert_eq!(stores.epochs.claim(&group, "t", 4, "a").await.unwrap(), 1, "epochs are per partition");
    let claims = (0..8).map(|i| {
        let epochs = stores.epochs.clone();
        let group = group.clone();
        async move { epochs.claim(&group, "t", 5, &format!("c{i}")).await.unwrap() }
    });
    let mut got = futures::future::join_all(claims).await;
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 8, "concurrent claims never share an epoch: {got:?}");
    assert!(Fence::new(e2, 0).timestamp() > Fence::new(e1, u64::from(u32::MAX)).timestamp());
}

/// Runs every store check.
pub async fn run_all(stores: Stores) {
    partition_epochs_only_grow(stores.clone()).await;
    answers_readiness_pings(stores.clone()).await;
    catalog_creates_once_updates_existing_and_paginates(stores.clone()).await;
    reservations_hold_each_sku_once(stores.clone()).await;
    concurrent_reservations_never_oversell(stores.clone()).await;
    batched_reservations_take_stock_in_order(stores.clone()).await;
    stock_adjustments_are_checked(stores.clone()).await;
    low_stock_alerts_fire_once_per_crossing(stores.clone()).await;
    orders_insert_once_and_apply_each_event_once(stores.clone()).await;
    orders_list_by_user_and_status_newest_first(stores.clone()).await;
    order_stats_follow_transitions(stores.clone()).await;
    payments_record_then_replace(stores.clone()).await;
    order_requests_are_recorded_per_order_and_event(stores.clone()).await;
    shipments_are_created_once(stores).await;
}
