//! The order state machine alone, in process, on one thread: how many `saga::decide` transitions per
//! second, on the happy path OrderPlaced -> StockReserved -> PaymentCaptured (three transitions per
//! iteration, reported as elements/s).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orderflow_processors::saga::decide;
use orderflow_schemas::events::{OrderPlaced, PaymentCaptured, StockReserved};
use orderflow_schemas::{
    Envelope, Event, EventId, Money, Order, OrderId, OrderLine, OrderStatus, Quantity, Sku, UserId,
};

fn order() -> Order {
    let line = |sku: &str, cents: i64, q: i64| OrderLine {
        sku: Sku::parse(sku).unwrap(),
        quantity: Quantity::new(q).unwrap(),
        unit_price: Money::from_cents(cents).unwrap(),
    };
    Order {
        id: OrderId::parse("bench-order-1").unwrap(),
        user_id: UserId::parse("bench-user").unwrap(),
        lines: vec![line("SKU-COFFEE", 350, 2), line("SKU-CROISSANT", 275, 1)],
        total: Money::from_cents(975).unwrap(),
        status: OrderStatus::Pending,
        reason: None,
        channel: "http".into(),
        placed_at_ms: 1_000,
        updated_at_ms: 1_000,
        processed_at_ms: None,
        reserved_skus: vec![],
        payment_method: None,
        currency: None,
        capture_on: Default::default(),
        timeline: vec![],
    }
}

fn env(body: impl Into<Event>) -> Envelope {
    Envelope {
        event_id: EventId::derived(&OrderId::parse("bench-order-1").unwrap(), "bench"),
        order_id: OrderId::parse("bench-order-1").unwrap(),
        occurred_at_ms: 1_000,
        body: body.into(),
    }
}

fn happy_path(c: &mut Criterion) {
    let pending = order();
    let placed = OrderPlaced::envelope_of(&pending);
    let reserved = env(StockReserved { units_reserved: 3, sku: None });
    let captured = env(PaymentCaptured {
        charge_id: "ch_bench".into(),
        captured_cents: 975,
        authorisation_id: None,
        authorised_only: false,
    });

    let mut group = c.benchmark_group("saga_decide");
    group.throughput(Throughput::Elements(3));
    group.bench_function("placed_reserved_captured", |b| {
        b.iter(|| {
            let d1 = decide(black_box(&pending), black_box(&placed), 1_001).unwrap();
            let d2 = decide(&d1.order, black_box(&reserved), 1_002).unwrap();
            let d3 = decide(&d2.order, black_box(&captured), 1_003).unwrap();
            debug_assert_eq!(d3.order.status, OrderStatus::Confirmed);
            black_box(d3)
        })
    });
    group.finish();
}

criterion_group!(benches, happy_path);
criterion_main!(benches);
