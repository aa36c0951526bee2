//! Property: whatever events reach the order saga, in whatever order and however often, the order's
//! status only moves along the edges of `OrderStatus::can_move_to`, and a terminal status never changes.

#![allow(clippy::unwrap_used)]

use orderflow_processors::saga::decide;
use orderflow_schemas::events::*;
use orderflow_schemas::*;
use proptest::prelude::*;

fn order() -> Order {
    let sku = Sku::parse("SKU-1").unwrap();
    Order {
        id: OrderId::parse("o-1").unwrap(),
        user_id: UserId::parse("u1").unwrap(),
        lines: vec![OrderLine {
            sku,
            quantity: Quantity::new(2).unwrap(),
            unit_price: Money::from_cents(250).unwrap(),
        }],
        total: Money::from_cents(500).unwrap(),
        status: OrderStatus::Pending,
        reason: None,
        channel: "http".into(),
        placed_at_ms: 0,
        updated_at_ms: 0,
        processed_at_ms: None,
        reserved_skus: vec![],
        payment_method: None,
        currency: None,
        capture_on: Default::default(),
        timeline: vec![],
    }
}

fn event(kind: u8, status: OrderStatus) -> Event {
    let user = UserId::parse("u1").unwrap();
    match kind % 10 {
        0 => OrderPlaced {
            user_id: user,
            lines: vec![],
            total_cents: 500,
            channel: "http".into(),
            payment_method: None,
            currency: None,
        }
        .into(),
        1 => StockReserved { units_reserved: 2, sku: None }.into(),
        2 => StockRejected { reason: "out_of_stock".into(), sku: None }.into(),
        3 => PaymentCaptured {
            charge_id: "ch".into(),
            captured_cents: 500,
            authorisation_id: None,
            authorised_only: false,
        }
        .into(),
        4 => PaymentDeclined { decline_reason: "limit".into() }.into(),
        5 => PaymentRefunded::refund("re", 500).into(),
        6 => ShipmentCreated { shipment_id: "sh".into() }.into(),
        7 => CancelRequested { cancel_reason: "changed mind".into(), requested_by: "staff".into() }.into(),
        _ => StatusChangeRequested { status, changed_by: "staff".into() }.into(),
    }
}

proptest! {
    #[test]
    fn no_illegal_transition_is_reachable(steps in proptest::collection::vec((any::<u8>(), 0usize..8), 0..40)) {
        let mut order = order();
        for (i, (kind, target)) in steps.into_iter().enumerate() {
            let body = event(kind, OrderStatus::ALL[target]);
            let env = Envelope { event_id: EventId::random(), order_id: order.id.clone(), occurred_at_ms: 0, body };
            let Some(decision) = decide(&order, &env, i64::try_from(i).unwrap()) else { continue };
            let (from, to) = (order.status, decision.order.status);
            prop_assert!(from == to || from.can_move_to(to), "{} -> {} on {}", from, to, env.body.name());
            prop_assert!(!from.is_terminal() || from == to, "left terminal {} on {}", from, env.body.name());
            prop_assert!(decision.order.timeline.len() >= order.timeline.len(), "the timeline lost entries");
            order = decision.order;
        }
    }
}
