//! The order saga: the single writer of order state. [`decide`] is the state machine as a pure
//! function of (order, event); [`SagaHandler`] applies its decision atomically with the event id and
//! the outputs, then publishes the outputs.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_platform::bus::{Bus, Delivery, Handler, HandlerError};
use orderflow_platform::fencing::PartitionFences;
use orderflow_platform::store::{
    Applied, Fence, OrderStore, OwnedOrders, PaymentRecord, PaymentStore, StoreError, Transition,
};
use orderflow_schemas::events::*;
use orderflow_schemas::topics::{self, Topic};
use orderflow_schemas::{CaptureOn, Envelope, Event, EventId, Order, OrderStatus, Sku, TimelineEntry};

/// What an event does to an order: its new state and the commands to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub order: Order,
    pub outputs: Vec<(Topic, Envelope)>,
}

struct Step<'a> {
    before: &'a Order,
    order: Order,
    at_ms: i64,
    outputs: Vec<(Topic, Envelope)>,
}

impl<'a> Step<'a> {
    fn new(before: &'a Order, at_ms: i64) -> Self {
        let mut order = before.clone();
        order.updated_at_ms = at_ms.max(before.updated_at_ms);
        Self { before, order, at_ms, outputs: Vec::new() }
    }

    fn note(mut self, kind: &str, detail: impl Into<String>) -> Self {
        self.order.timeline.push(TimelineEntry { at_ms: self.at_ms, kind: kind.to_owned(), detail: detail.into() });
        self
    }

    /// [`Step::note`] of `entry`, if there is one.
    fn note_if(self, entry: Option<(&str, String)>) -> Self {
        match entry {
            Some((kind, detail)) => self.note(kind, detail),
            None => self,
        }
    }

    /// [`Step::note`] unless the timeline already has a step of that kind (one per SKU would repeat it).
    fn note_once(self, kind: &str, detail: impl Into<String>) -> Self {
        if self.order.timeline.iter().any(|e| e.kind == kind) { self } else { self.note(kind, detail) }
    }

    fn status(mut self, status: OrderStatus) -> Self {
        debug_assert!(self.before.status.can_move_to(status), "{} -> {status}", self.before.status);
        self.order.status = status;
        if matches!(status, OrderStatus::Confirmed | OrderStatus::Rejected) {
            self.order.processed_at_ms = Some(self.at_ms);
        }
        self
    }

    fn reason(mut self, reason: impl Into<String>) -> Self {
        self.order.reason = Some(reason.into());
        self
    }

    fn send(mut self, topic: Topic, step: &str, body: impl Into<Event>) -> Self {
        let env = Envelope {
            event_id: EventId::derived(&self.order.id, step),
            order_id: self.order.id.clone(),
            occurred_at_ms: self.at_ms,
            body: body.into(),
        };
        self.outputs.push((topic, env));
        self
    }

    /// One inventory command per SKU, each to its SKU's partition, with the id of (order, `action`, SKU).
    fn per_sku<E: Into<Event>>(
        mut self,
        action: &str,
        skus: impl IntoIterator<Item = Sku>,
        command: impl Fn(&Order, Sku) -> E,
    ) -> Self {
        for sku in skus {
            let step = format!("{action}:{sku}");
            let body = command(&self.order, sku);
            self = self.send(topics::INVENTORY, &step, body);
        }
        self
    }

    /// One reservation per SKU of the order, with the order's lines of that SKU.
    fn reserve(self) -> Self {
        let skus = self.order.skus();
        self.per_sku("reserve", skus, |order, sku| ReserveStock {
            lines: (order.lines.iter())
                .filter(|l| l.sku == sku)
                .map(|l| ReserveLine { sku: l.sku.clone(), quantity: l.quantity })
                .collect(),
        })
    }

    /// Gives back the hold of every SKU of the order: what was held, and what is still on its way (a
    /// release reaches a SKU's partition after that SKU's reservation, and undoes it).
    fn release(self, why: &str) -> Self {
        let skus = self.order.skus();
        self.release_skus(why, skus)
    }

    fn release_skus(self, why: &str, skus: impl IntoIterator<Item = Sku>) -> Self {
        self.per_sku("release", skus, |_, sku| ReleaseStock { release_reason: why.to_owned(), skus: vec![sku] })
    }

    fn commit(self, why: &str) -> Self {
        let skus = self.order.skus();
        self.per_sku("commit", skus, |_, sku| CommitStock { commit_reason: why.to_owned(), skus: vec![sku] })
    }

    fn refund(self, why: &str) -> Self {
        let command = RefundPayment::compensation(&self.order, why);
        self.send(topics::PAYMENTS, "refund", command)
    }

    fn done(self) -> Option<Decision> {
        Some(Decision { order: self.order, outputs: self.outputs })
    }
}

/// The command that takes `order`'s payment (sent once its stock is held; sent again by the provider's
/// webhook for a payment that waited for the customer: the payment role resumes where it stopped). An
/// order captured at dispatch is only authorised by it; [`dispatch_capture_command`] captures it.
pub fn capture_command(order: &Order) -> CapturePayment {
    CapturePayment {
        user_id: order.user_id.clone(),
        amount_cents: order.total.cents(),
        idempotency_key: crate::payment::idempotency_key(&order.id, "capture"),
        payment_method: order.payment_method.clone(),
        currency: order.currency,
        authorise_only: order.capture_on == CaptureOn::Dispatch,
    }
}

/// The command that captures the authorised payment of an order captured at dispatch.
pub fn dispatch_capture_command(order: &Order) -> CapturePayment {
    CapturePayment { authorise_only: false, ..capture_command(order) }
}

/// `changed_by` of the `StatusChangeRequested { status: REJECTED }` that the stuck-order sweep publishes
/// for an order still PROCESSING after `--stuck-order-timeout`.
pub const STUCK_ORDER_SWEEP: &str = "stuck-order-sweep";

/// The order state machine. `None`: the event changes nothing in this state (a duplicate, or a reply
/// that arrives after the order moved on and needs no compensation).
pub fn decide(order: &Order, env: &Envelope, now_ms: i64) -> Option<Decision> {
    use OrderStatus::*;
    let step = Step::new(order, now_ms);
    match (&env.body, order.status) {
        (Event::OrderPlaced(_), Pending) => {
            step.status(Processing).note("processing", "reserving stock").reserve().done()
        }
        // One SKU held: payment once every SKU is (a reply from before per-SKU reservations held them all).
        (Event::StockReserved(r), Processing) => {
            let held = match &r.sku {
                Some(sku) if order.reserved_skus.contains(sku) => return None,
                Some(sku) => vec![sku.clone()],
                None => order.skus(),
            };
            let mut step = step;
            for sku in held {
                if !step.order.reserved_skus.contains(&sku) {
                    step.order.reserved_skus.push(sku);
                }
            }
            if !step.order.fully_reserved() {
                return step.done();
            }
            let units: u64 = order.lines.iter().map(|l| u64::from(l.quantity.get())).sum();
            step.note("stock_reserved", format!("{units} units reserved"))
                .send(topics::PAYMENTS, "capture", capture_command(order))
                .done()
        }
        // The order was cancelled while a reservation was in flight: give those units back (the cancel's
        // own release follows the reservation too; ending a hold twice ends it once).
        (Event::StockReserved(r), Cancelled) => {
            let skus = r.sku.clone().map_or_else(|| order.skus(), |sku| vec![sku]);
            step.note_once("stock_released", "reserved after cancellation").release_skus("cancelled", skus).done()
        }
        // One SKU refused: the order is rejected and every other SKU's hold, made or on its way, goes back.
        (Event::StockRejected(r), Processing) => {
            let reason = match &r.sku {
                Some(sku) => format!("{}: {sku}", r.reason),
                None => r.reason.clone(),
            };
            let others: Vec<Sku> = match &r.sku {
                Some(refused) => order.skus().into_iter().filter(|s| s != refused).collect(),
                // A reply from before per-SKU reservations: its one reservation held nothing.
                None => Vec::new(),
            };
            step.status(Rejected)
                .reason(reason.clone())
                .note("rejected", reason)
                .release_skus("rejected", others)
                .done()
        }
        (Event::PaymentCaptured(p), Processing) => {
            let step =
                step.note_if(p.authorisation_id.as_ref().map(|id| ("payment_authorised", format!("payment {id}"))));
            let step = if p.authorised_only {
                step.status(Confirmed).note("confirmed", "stock reserved and payment authorised; captured at dispatch")
            } else {
                step.note("payment_captured", format!("charge {}", p.charge_id))
                    .status(Confirmed)
                    .note("confirmed", "stock reserved and payment captured")
            };
            step.send(
                topics::FULFILLMENT,
                "ship",
                CreateShipment {
                    ship_to_user_id: order.user_id.clone(),
                    lines: order
                        .lines
                        .iter()
                        .map(|l| ShipmentLine { sku: l.sku.clone(), quantity: l.quantity })
                        .collect(),
                },
            )
            .done()
        }
        // Captured at dispatch: the order goes out for delivery, its units leave as sold.
        (Event::PaymentCaptured(p), Preparing) if order.capture_on == CaptureOn::Dispatch && !p.authorised_only => step
            .note("payment_captured", format!("charge {}", p.charge_id))
            .status(OutForDelivery)
            .note("out_for_delivery", "payment captured at dispatch")
            .commit("out for delivery")
            .done(),
        // The capture at dispatch failed (the provider voided the authorisation): the order cannot go out.
        (Event::PaymentDeclined(d), Preparing) if order.capture_on == CaptureOn::Dispatch => {
            // The payment role says the capture (not the authorisation) failed; say it once.
            let why = d.decline_reason.strip_prefix("capture_failed: ").unwrap_or(&d.decline_reason);
            let reason = format!("payment_capture_failed: {why}");
            step.status(Cancelled).reason(reason.clone()).note("cancelled", reason).release("capture failed").done()
        }
        // Captured after the order was cancelled: pay it back.
        (Event::PaymentCaptured(p), Cancelled) => step
            .note("refund_requested", format!("charge {} after cancellation", p.charge_id))
            .refund("cancelled")
            .done(),
        (Event::PaymentDeclined(d), Processing) => {
            let reason = format!("payment_declined: {}", d.decline_reason);
            step.status(Rejected).reason(reason.clone()).note("rejected", reason).release("payment declined").done()
        }
        (Event::PaymentRefunded(r), _) if r.voided => {
            step.note("payment_voided", format!("authorisation {} released, nothing captured", r.refund_id)).done()
        }
        (Event::PaymentRefunded(r), _) => {
            step.note("refunded", format!("refund {} of {} cents", r.refund_id, r.refunded_cents)).done()
        }
        (Event::ShipmentCreated(s), Confirmed | Preparing | OutForDelivery | Delivered) => {
            step.note("shipment_created", format!("shipment {}", s.shipment_id)).done()
        }
        (Event::CancelRequested(c), status) if status.is_cancellable() => {
            let step = step
                .status(Cancelled)
                .reason(c.cancel_reason.clone())
                .note("cancelled", format!("by {}: {}", c.requested_by, c.cancel_reason));
            match status {
                Pending => step.done(),
                // A reservation and a capture may be in flight; their late replies are compensated above.
                Processing => step.release("cancelled").done(),
                _ => step.release("cancelled").refund("cancelled").done(),
            }
        }
        // No progress within the stuck-order timeout (the sweep's request), or staff rejecting an order
        // that is stuck: the reservation and the capture may still be in flight, so release and refund go
        // to the same partitions after them and undo whatever they did (nothing, if they never happen).
        (Event::StatusChangeRequested(c), Processing) if c.status == Rejected => {
            let (reason, note) = if c.changed_by == STUCK_ORDER_SWEEP {
                ("timed_out", "no progress within the stuck-order timeout: stock released, any capture refunded")
            } else {
                ("rejected_by_staff", "rejected by staff: stock released, any capture refunded")
            };
            step.status(Rejected).reason(reason.to_owned()).note("rejected", note).release(reason).refund(reason).done()
        }
        // Out for delivery once the payment held since confirmation is captured (the capture's reply moves
        // it on, above); a repeated request asks again under the same ids, which changes nothing.
        (Event::StatusChangeRequested(c), Preparing)
            if c.status == OutForDelivery && order.capture_on == CaptureOn::Dispatch =>
        {
            step.note_once("capture_requested", format!("by {}: capturing the payment before dispatch", c.changed_by))
                .send(topics::PAYMENTS, "capture_at_dispatch", dispatch_capture_command(order))
                .done()
        }
        (Event::StatusChangeRequested(c), status)
            if status.can_move_to(c.status) && matches!(c.status, Preparing | OutForDelivery | Delivered) =>
        {
            let step =
                step.status(c.status).note(&c.status.as_str().to_ascii_lowercase(), format!("by {}", c.changed_by));
            if c.status == OutForDelivery { step.commit("out for delivery").done() } else { step.done() }
        }
        _ => None,
    }
}

/// What a request that orderflow itself makes on an order asks for, as it is recorded before its record
/// is published (see [`OrderStore::record_request`]): a staff or sweep status change, or a cancellation.
/// `None` for every other event (those are checked otherwise, or change nothing on their own).
pub fn request_name(body: &Event) -> Option<String> {
    match body {
        Event::StatusChangeRequested(c) => Some(format!("StatusChangeRequested:{}", c.status.as_str())),
        Event::CancelRequested(_) => Some("CancelRequested".into()),
        // A staff refund (the order's own compensation is the saga's, and needs no record).
        Event::RefundPayment(RefundPayment { refund_key: Some(key), amount_cents, .. }) => {
            Some(format!("RefundPayment:{key}:{}", amount_cents.unwrap_or(0)))
        }
        _ => None,
    }
}

/// Records every request among `envelopes` (see [`request_name`]) in the orders store: call it before
/// publishing them, so that the saga applies them, and only them.
pub async fn record_requests(orders: &dyn OrderStore, envelopes: &[Envelope]) -> Result<(), StoreError> {
    for env in envelopes {
        if let Some(request) = request_name(&env.body) {
            orders.record_request(&env.order_id, env.event_id, &request).await?;
        }
    }
    Ok(())
}

impl Decision {
    /// The outputs as bus records: an inventory command keyed by its SKU (that SKU's partition is the
    /// one writer of its stock), everything else by order id.
    pub fn records(&self) -> Result<Vec<orderflow_platform::bus::BusRecord>, HandlerError> {
        self.outputs
            .iter()
            .map(|(topic, env)| {
                let key = match &env.body {
                    Event::ReserveStock(c) => c.sku(),
                    Event::ReleaseStock(c) => c.skus.first(),
                    Event::CommitStock(c) => c.skus.first(),
                    _ => None,
                };
                crate::record_keyed(*topic, key.map_or(env.order_id.as_str(), Sku::as_str), env)
            })
            .collect()
    }
}

/// Events on the orders topic that are commands for other processors never belong there.
fn belongs_on_orders_topic(event: &Event) -> bool {
    matches!(
        event,
        Event::OrderPlaced(_)
            | Event::StockReserved(_)
            | Event::StockRejected(_)
            | Event::PaymentCaptured(_)
            | Event::PaymentDeclined(_)
            | Event::PaymentRefunded(_)
            | Event::ShipmentCreated(_)
            | Event::CancelRequested(_)
            | Event::StatusChangeRequested(_)
    )
}

/// Consumes the orders topic.
pub struct SagaHandler {
    pub orders: Arc<dyn OrderStore>,
    pub bus: Arc<dyn Bus>,
    /// This instance's epochs for the partitions of the orders topic it owns: every write is fenced.
    pub fences: PartitionFences,
    /// Where the state this instance writes as an order's owner is kept for reads in this process.
    pub owned: Arc<OwnedOrders>,
    /// The payments' store of record, which a capture is checked against before it confirms an order.
    pub payments: Arc<dyn PaymentStore>,
}

impl std::fmt::Debug for SagaHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaHandler").finish_non_exhaustive()
    }
}

/// How often a step is re-decided when the order changed under it before giving up for a retry.
const MAX_CONFLICTS: usize = 8;

/// Records of one partition taken together at most: their steps are applied with one store call (one
/// commit on the embedded store) and their outputs published with one append.
pub const MAX_STEP_BATCH: usize = 64;

/// A step decided in a batch, waiting for the run it belongs to to be applied.
struct Decided<'a> {
    delivery: &'a Delivery,
    event: &'static str,
    fence: Fence,
    from: OrderStatus,
    decision: Decision,
    event_id: EventId,
}

impl SagaHandler {
    /// Whether `env` may be applied to `order`. An event that moves money is checked against the store
    /// of record, not trusted because it is on the topic: a `PaymentCaptured` that would confirm an order
    /// must name the charge the payments store holds for it, with the same amount; a request to change an
    /// order (staff's or the stuck-order sweep's) must be recorded in the orders store under its event id
    /// ([`record_requests`]). Anything else (a
    /// record forged by whoever can write to the topic, or one for an order whose payment was declined)
    /// is refused: logged, counted, and not applied; the order waits for its real outcome (and ends
    /// `timed_out` if none comes).
    async fn vouched(&self, order: &Order, env: &Envelope) -> Result<bool, HandlerError> {
        if let Some(request) = request_name(&env.body) {
            let recorded = self.orders.recorded_request(&order.id, env.event_id).await?;
            let vouched = recorded.as_deref() == Some(request.as_str());
            if !vouched {
                metrics::counter!("orderflow_events_refused_total", "event" => env.body.name()).increment(1);
                tracing::warn!(
                    order = %order.id,
                    event_id = %env.event_id,
                    request,
                    recorded,
                    "a request orderflow did not record was refused (a forged or stray record)"
                );
            }
            return Ok(vouched);
        }
        let at_dispatch = order.capture_on == CaptureOn::Dispatch && order.status == OrderStatus::Preparing;
        if let Event::PaymentDeclined(_) = &env.body
            && at_dispatch
        {
            // A failed capture cancels an order that may be on its way: only one the payments store holds.
            let declined = matches!(self.payments.payment(&order.id).await?, Some(PaymentRecord::Declined { .. }));
            if !declined {
                metrics::counter!("orderflow_events_refused_total", "event" => "PaymentDeclined").increment(1);
                tracing::warn!(order = %order.id, event_id = %env.event_id, "a PaymentDeclined the payments store does not hold was refused");
            }
            return Ok(declined);
        }
        let Event::PaymentCaptured(captured) = &env.body else { return Ok(true) };
        // A reply that confirms the order, or (captured at dispatch) sends it out.
        let moves_order = order.status == OrderStatus::Processing || (at_dispatch && !captured.authorised_only);
        if !moves_order {
            return Ok(true); // `decide` moves nothing on it, or pays it back (after a cancellation)
        }
        let vouched = match self.payments.payment(&order.id).await? {
            // Held, not taken: confirms an order captured at dispatch, for its whole total.
            Some(PaymentRecord::Authorised { payment_id, amount }) if captured.authorised_only => {
                payment_id == captured.charge_id && amount == order.total
            }
            Some(_) if captured.authorised_only => false,
            Some(
                PaymentRecord::Captured { charge_id, amount }
                | PaymentRecord::PartlyRefunded { charge_id, amount, .. }
                | PaymentRecord::Refunded { charge_id, amount, .. },
            ) => charge_id == captured.charge_id && amount.cents() == captured.captured_cents,
            Some(
                PaymentRecord::ActionRequired { .. }
                | PaymentRecord::Authorised { .. }
                | PaymentRecord::Declined { .. }
                | PaymentRecord::Voided { .. },
            )
            | None => false,
        };
        if !vouched {
            metrics::counter!("orderflow_events_refused_total", "event" => "PaymentCaptured").increment(1);
            tracing::warn!(
                order = %order.id,
                charge = %captured.charge_id,
                event_id = %env.event_id,
                "a PaymentCaptured the payments store does not hold was refused (a forged or stray record)"
            );
        }
        Ok(vouched)
    }

    fn decode(delivery: &Delivery) -> Result<Envelope, HandlerError> {
        let env = crate::decode(&delivery.payload)?;
        if !belongs_on_orders_topic(&env.body) {
            return Err(HandlerError::Poison(format!("{} does not belong on the orders topic", env.body.name())));
        }
        Ok(env)
    }

    /// The fence for `delivery`'s writes; notes that this process holds its partition under the fence's
    /// epoch, so that intake here can hand the owner the orders it places on that partition.
    async fn fence(&self, delivery: &Delivery) -> Result<Fence, HandlerError> {
        let fence = self.fences.fence(delivery).await?;
        self.owned.holding(delivery.partition, &delivery.assignment, fence.epoch);
        Ok(fence)
    }

    /// What follows a step that applied: this process remembers the order as its owner, and the move is
    /// counted and logged.
    fn applied(&self, delivery: &Delivery, from: OrderStatus, written: &Order, event: &str) {
        self.owned.remember(written, &delivery.assignment);
        if from != written.status {
            let to = written.status;
            metrics::counter!("orderflow_order_transitions_total", "to" => to.as_str()).increment(1);
            tracing::info!(order = %written.id, %from, %to, event, "order moved");
        }
    }

    /// Applies a run of steps of different orders with one store call, then publishes every output with
    /// one append. A step whose order changed under it is handled again on its own.
    async fn apply_run(&self, run: Vec<Decided<'_>>) -> Result<(), HandlerError> {
        if run.is_empty() {
            return Ok(());
        }
        let mut transitions = Vec::with_capacity(run.len());
        for d in &run {
            transitions.push(Transition {
                event_id: d.event_id,
                expected: d.from,
                order: d.decision.order.clone(),
                outputs: d.decision.records()?,
                fence: d.fence,
            });
        }
        let outputs: Vec<_> = transitions.iter().map(|t| t.outputs.clone()).collect();
        let results = self.orders.apply_many(transitions).await?;
        if results.len() != run.len() {
            return Err(HandlerError::Transient(format!("{} answers for {} steps", results.len(), run.len())));
        }
        let mut records = Vec::new();
        let mut again = Vec::new();
        for ((d, result), outputs) in run.iter().zip(results).zip(outputs) {
            match result {
                Applied::Applied => {
                    self.applied(d.delivery, d.from, &d.decision.order, d.event);
                    records.extend(outputs);
                }
                Applied::Duplicate(previous) => records.extend(previous),
                Applied::Conflict => again.push(d.delivery),
            }
        }
        self.bus.publish(records).await?;
        for delivery in again {
            self.handle(delivery).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for SagaHandler {
    fn max_batch(&self) -> usize {
        MAX_STEP_BATCH
    }

    /// Decides each record in turn and applies the steps of a run of different orders together. A second
    /// record of an order already in the run first applies the run, so an order's steps stay in order and
    /// each is decided on the state the one before left; a record that changes nothing is handled on its
    /// own, after the run before it.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<(), HandlerError> {
        if let [one] = deliveries {
            return self.handle(one).await;
        }
        let mut run: Vec<Decided<'_>> = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let env = Self::decode(delivery)?;
            if run.iter().any(|d| d.decision.order.id == env.order_id) {
                self.apply_run(std::mem::take(&mut run)).await?;
            }
            let fence = self.fence(delivery).await?;
            let order = self.orders.order_for_step(&env.order_id, fence).await?;
            if let Some(o) = &order
                && !self.vouched(o, &env).await?
            {
                continue;
            }
            match order.and_then(|o| decide(&o, &env, orderflow_schemas::now_ms()).map(|d| (o.status, d))) {
                Some((from, decision)) => run.push(Decided {
                    delivery,
                    event: env.body.name(),
                    fence,
                    from,
                    decision,
                    event_id: env.event_id,
                }),
                None => {
                    self.apply_run(std::mem::take(&mut run)).await?;
                    self.handle(delivery).await?;
                }
            }
        }
        self.apply_run(run).await
    }

    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let env = Self::decode(delivery)?;
        let fence = self.fence(delivery).await?;
        for _ in 0..MAX_CONFLICTS {
            let Some(order) = self.orders.order_for_step(&env.order_id, fence).await? else {
                return Err(HandlerError::Poison(format!("no order {}", env.order_id)));
            };
            if !self.vouched(&order, &env).await? {
                return Ok(());
            }
            let Some(decision) = decide(&order, &env, orderflow_schemas::now_ms()) else {
                tracing::debug!(order = %order.id, event = env.body.name(), status = %order.status, "event changes nothing");
                if let Some(previous) = self.orders.seen(&order.id, env.event_id, fence).await? {
                    self.bus.publish(previous).await?;
                }
                return Ok(());
            };
            let outputs = decision.records()?;
            let from = order.status;
            let written = decision.order.clone();
            let transition = Transition {
                event_id: env.event_id,
                expected: from,
                order: decision.order,
                outputs: outputs.clone(),
                fence,
            };
            match self.orders.apply(transition).await? {
                Applied::Applied => {
                    self.applied(delivery, from, &written, env.body.name());
                    self.bus.publish(outputs).await?;
                    return Ok(());
                }
                Applied::Duplicate(previous) => {
                    self.bus.publish(previous).await?;
                    return Ok(());
                }
                Applied::Conflict => continue,
            }
        }
        Err(HandlerError::Transient(format!("order {} kept changing", env.order_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderflow_schemas::{Money, OrderId, OrderLine, Quantity, Sku, UserId};

    fn order(status: OrderStatus) -> Order {
        Order {
            id: OrderId::parse("o-1").unwrap(),
            user_id: UserId::parse("u-1").unwrap(),
            lines: vec![OrderLine {
                sku: Sku::parse("S1").unwrap(),
                quantity: Quantity::new(2).unwrap(),
                unit_price: Money::from_cents(500).unwrap(),
            }],
            total: Money::from_cents(1000).unwrap(),
            status,
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
            event_id: EventId::random(),
            order_id: OrderId::parse("o-1").unwrap(),
            occurred_at_ms: 1_000,
            body: body.into(),
        }
    }

    fn placed() -> Envelope {
        OrderPlaced::envelope_of(&order(OrderStatus::Pending))
    }

    fn bodies(d: &Decision) -> Vec<(&'static str, &'static str)> {
        d.outputs.iter().map(|(t, e)| (t.name, e.body.name())).collect()
    }

    fn reserved(sku: &str) -> Envelope {
        env(StockReserved { units_reserved: 2, sku: Some(Sku::parse(sku).unwrap()) })
    }

    fn two_skus(status: OrderStatus) -> Order {
        let mut o = order(status);
        o.lines.push(OrderLine {
            sku: Sku::parse("A9").unwrap(),
            quantity: Quantity::new(1).unwrap(),
            unit_price: Money::from_cents(100).unwrap(),
        });
        o.lines.push(OrderLine {
            sku: Sku::parse("S1").unwrap(),
            quantity: Quantity::new(3).unwrap(),
            unit_price: Money::from_cents(500).unwrap(),
        });
        o
    }

    fn keys(d: &Decision) -> Vec<(String, String)> {
        d.records().unwrap().into_iter().map(|r| (r.topic, r.key)).collect()
    }

    #[test]
    fn inventory_commands_go_one_per_sku_keyed_by_it_and_the_rest_by_order() {
        let o = two_skus(OrderStatus::Pending);
        let d = decide(&o, &OrderPlaced::envelope_of(&o), 1_005).unwrap();
        let inv = topics::INVENTORY.name.to_owned();
        assert_eq!(keys(&d), vec![(inv.clone(), "S1".to_owned()), (inv.clone(), "A9".to_owned())]);
        // The SKU named on two lines is one command with both lines.
        let Event::ReserveStock(first) = &d.outputs[0].1.body else { panic!("expected a reservation") };
        assert_eq!(first.lines.iter().map(|l| l.quantity.get()).collect::<Vec<_>>(), [2, 3]);
        assert_ne!(d.outputs[0].1.event_id, d.outputs[1].1.event_id, "one id per SKU");

        // A release after a cancel goes to each SKU's partition, after its reservation; a refund by order id.
        let mut confirmed = d.order.clone();
        confirmed.status = OrderStatus::Confirmed;
        let cancel = env(CancelRequested { cancel_reason: "changed mind".into(), requested_by: "staff".into() });
        let d = decide(&confirmed, &cancel, 1_010).unwrap();
        assert_eq!(
            keys(&d),
            vec![
                (inv.clone(), "S1".to_owned()),
                (inv, "A9".to_owned()),
                (topics::PAYMENTS.name.to_owned(), "o-1".to_owned())
            ]
        );
    }

    #[test]
    fn payment_waits_for_every_sku_and_a_refusal_gives_the_others_back() {
        let placed =
            decide(&two_skus(OrderStatus::Pending), &OrderPlaced::envelope_of(&two_skus(OrderStatus::Pending)), 1)
                .unwrap()
                .order;
        let one = decide(&placed, &reserved("A9"), 2).unwrap();
        assert!(one.outputs.is_empty(), "S1 is not held yet");
        assert_eq!(one.order.status, OrderStatus::Processing);
        assert_eq!(one.order.reserved_skus, [Sku::parse("A9").unwrap()]);
        assert!(decide(&one.order, &reserved("A9"), 3).is_none(), "the same SKU again changes nothing");
        let both = decide(&one.order, &reserved("S1"), 4).unwrap();
        assert_eq!(bodies(&both), vec![(topics::PAYMENTS.name, "CapturePayment")]);
        assert_eq!(
            both.order.timeline.last().map(|e| (e.kind.as_str(), e.detail.as_str())),
            Some(("stock_reserved", "6 units reserved"))
        );

        // S1 refused after A9 was held: rejected, and A9 (only) goes back.
        let refused = env(StockRejected { reason: "out_of_stock".into(), sku: Some(Sku::parse("S1").unwrap()) });
        let d = decide(&one.order, &refused, 5).unwrap();
        assert_eq!(d.order.status, OrderStatus::Rejected);
        assert_eq!(keys(&d), vec![(topics::INVENTORY.name.to_owned(), "A9".to_owned())]);
        // Refused before anything was held: A9's reservation is on its way, so its release follows it.
        let d = decide(&placed, &refused, 5).unwrap();
        assert_eq!(keys(&d), vec![(topics::INVENTORY.name.to_owned(), "A9".to_owned())]);
        // A reply from before per-SKU reservations held (or refused) every line at once.
        let all = decide(&placed, &env(StockReserved { units_reserved: 6, sku: None }), 6).unwrap();
        assert_eq!(bodies(&all), vec![(topics::PAYMENTS.name, "CapturePayment")]);
        let none = decide(&placed, &env(StockRejected { reason: "out_of_stock".into(), sku: None }), 6).unwrap();
        assert!(none.outputs.is_empty(), "its one reservation held nothing");
    }

    #[test]
    fn happy_path_reserves_then_charges_then_confirms_and_ships() {
        let d = decide(&order(OrderStatus::Pending), &placed(), 1_005).unwrap();
        assert_eq!(d.order.status, OrderStatus::Processing);
        assert_eq!(bodies(&d), vec![(topics::INVENTORY.name, "ReserveStock")]);

        let d = decide(&d.order, &reserved("S1"), 1_010).unwrap();
        assert_eq!(d.order.status, OrderStatus::Processing);
        let Event::CapturePayment(c) = &d.outputs[0].1.body else { panic!("expected a capture") };
        assert_eq!(c.amount_cents, 1000);
        assert_eq!(c.idempotency_key, "o-1:capture");

        let captured = PaymentCaptured {
            charge_id: "pay_1".into(),
            captured_cents: 1000,
            authorisation_id: Some("pay_1".into()),
            authorised_only: false,
        };
        let d = decide(&d.order, &env(captured), 1_050).unwrap();
        assert_eq!(d.order.status, OrderStatus::Confirmed);
        assert_eq!(d.order.processed_at_ms, Some(1_050));
        assert_eq!(bodies(&d), vec![(topics::FULFILLMENT.name, "CreateShipment")]);
        let kinds: Vec<_> = d.order.timeline.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(kinds, ["processing", "stock_reserved", "payment_authorised", "payment_captured", "confirmed"]);
    }

    fn staff_moves(status: OrderStatus) -> Envelope {
        env(StatusChangeRequested { status, changed_by: "staff".into() })
    }

    #[test]
    fn captured_at_dispatch_confirms_on_the_authorisation_and_ships_on_the_capture() {
        let mut pending = order(OrderStatus::Pending);
        pending.capture_on = CaptureOn::Dispatch;
        let d = decide(&pending, &OrderPlaced::envelope_of(&pending), 1_005).unwrap();
        let d = decide(&d.order, &reserved("S1"), 1_010).unwrap();
        let Event::CapturePayment(c) = &d.outputs[0].1.body else { panic!("expected a payment command") };
        assert!(c.authorise_only, "authorised now, captured at dispatch");

        let held = PaymentCaptured {
            charge_id: "pay_1".into(),
            captured_cents: 0,
            authorisation_id: Some("pay_1".into()),
            authorised_only: true,
        };
        let d = decide(&d.order, &env(held), 1_050).unwrap();
        assert_eq!(d.order.status, OrderStatus::Confirmed);
        assert_eq!(bodies(&d), vec![(topics::FULFILLMENT.name, "CreateShipment")]);
        let kinds: Vec<_> = d.order.timeline.iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(kinds, ["processing", "stock_reserved", "payment_authorised", "confirmed"]);
        let preparing = decide(&d.order, &staff_moves(OrderStatus::Preparing), 1_100).unwrap().order;

        // Out for delivery asks for the capture first; the order waits for it, and a repeated request
        // sends the same command (same id) again.
        let d = decide(&preparing, &staff_moves(OrderStatus::OutForDelivery), 1_200).unwrap();
        assert_eq!(d.order.status, OrderStatus::Preparing);
        let Event::CapturePayment(c) = &d.outputs[0].1.body else { panic!("expected the capture") };
        assert!(!c.authorise_only);
        assert_eq!(c.idempotency_key, "o-1:capture", "the capture's key is the same in both modes");
        let again = decide(&d.order, &staff_moves(OrderStatus::OutForDelivery), 1_210).unwrap();
        assert_eq!(again.outputs[0].1.event_id, d.outputs[0].1.event_id);
        assert_eq!(again.order.timeline.iter().filter(|t| t.kind == "capture_requested").count(), 1);

        let captured = PaymentCaptured {
            charge_id: "pay_1".into(),
            captured_cents: 1000,
            authorisation_id: Some("pay_1".into()),
            authorised_only: false,
        };
        let shipped = decide(&d.order, &env(captured), 1_300).unwrap();
        assert_eq!(shipped.order.status, OrderStatus::OutForDelivery);
        assert_eq!(bodies(&shipped), vec![(topics::INVENTORY.name, "CommitStock")]);
        assert!(shipped.order.timeline.iter().any(|t| t.kind == "payment_captured"));
        // A redelivered authorisation reply changes nothing any more.
        let late = PaymentCaptured {
            charge_id: "pay_1".into(),
            captured_cents: 0,
            authorisation_id: Some("pay_1".into()),
            authorised_only: true,
        };
        assert!(decide(&shipped.order, &env(late), 1_400).is_none());

        // A capture that fails at dispatch cancels the order and releases its stock (the payment role
        // voided the authorisation).
        let failed = decide(&d.order, &env(PaymentDeclined { decline_reason: "expired_card".into() }), 1_300).unwrap();
        assert_eq!(failed.order.status, OrderStatus::Cancelled);
        assert_eq!(failed.order.reason.as_deref(), Some("payment_capture_failed: expired_card"));
        assert_eq!(bodies(&failed), vec![(topics::INVENTORY.name, "ReleaseStock")]);
    }

    #[test]
    fn out_of_stock_rejects_with_the_sku_in_the_reason() {
        let d = decide(
            &order(OrderStatus::Processing),
            &env(StockRejected { reason: "out_of_stock".into(), sku: Some(Sku::parse("S1").unwrap()) }),
            2_000,
        )
        .unwrap();
        assert_eq!(d.order.status, OrderStatus::Rejected);
        assert_eq!(d.order.reason.as_deref(), Some("out_of_stock: S1"));
        assert_eq!(d.order.processed_at_ms, Some(2_000));
        assert!(d.outputs.is_empty(), "nothing was reserved, so nothing to release");
    }

    #[test]
    fn declined_payment_rejects_and_releases_stock() {
        let d = decide(
            &order(OrderStatus::Processing),
            &env(PaymentDeclined { decline_reason: "over limit".into() }),
            2_000,
        )
        .unwrap();
        assert_eq!(d.order.status, OrderStatus::Rejected);
        assert_eq!(bodies(&d), vec![(topics::INVENTORY.name, "ReleaseStock")]);
    }

    #[test]
    fn cancelling_compensates_what_was_done() {
        let cancel = env(CancelRequested { cancel_reason: "changed mind".into(), requested_by: "staff".into() });
        assert!(decide(&order(OrderStatus::Pending), &cancel, 1).unwrap().outputs.is_empty());
        assert_eq!(
            bodies(&decide(&order(OrderStatus::Processing), &cancel, 1).unwrap()),
            vec![(topics::INVENTORY.name, "ReleaseStock")]
        );
        assert_eq!(
            bodies(&decide(&order(OrderStatus::Confirmed), &cancel, 1).unwrap()),
            vec![(topics::INVENTORY.name, "ReleaseStock"), (topics::PAYMENTS.name, "RefundPayment")]
        );
        assert!(decide(&order(OrderStatus::OutForDelivery), &cancel, 1).is_none());
        assert!(decide(&order(OrderStatus::Delivered), &cancel, 1).is_none());
    }

    #[test]
    fn late_replies_after_cancellation_are_compensated() {
        let c = order(OrderStatus::Cancelled);
        let d = decide(&c, &reserved("S1"), 1).unwrap();
        assert_eq!(d.order.status, OrderStatus::Cancelled);
        assert_eq!(bodies(&d), vec![(topics::INVENTORY.name, "ReleaseStock")]);
        // A second SKU's late hold goes back too, without a second timeline step.
        let again = decide(&d.order, &reserved("A9"), 2).unwrap();
        assert_eq!(keys(&again), vec![(topics::INVENTORY.name.to_owned(), "A9".to_owned())]);
        assert_eq!(again.order.timeline.len(), d.order.timeline.len());
        let d = decide(
            &c,
            &env(PaymentCaptured {
                charge_id: "ch".into(),
                captured_cents: 1000,
                authorisation_id: None,
                authorised_only: false,
            }),
            1,
        )
        .unwrap();
        assert_eq!(bodies(&d), vec![(topics::PAYMENTS.name, "RefundPayment")]);
    }

    #[test]
    fn a_stuck_order_is_rejected_with_its_stock_released_and_any_capture_refunded() {
        let stuck = env(StatusChangeRequested { status: OrderStatus::Rejected, changed_by: STUCK_ORDER_SWEEP.into() });
        let d = decide(&order(OrderStatus::Processing), &stuck, 7).unwrap();
        assert_eq!(d.order.status, OrderStatus::Rejected);
        assert_eq!(d.order.reason.as_deref(), Some("timed_out"));
        assert_eq!(d.order.timeline.last().map(|e| e.kind.as_str()), Some("rejected"));
        assert_eq!(
            bodies(&d),
            vec![(topics::INVENTORY.name, "ReleaseStock"), (topics::PAYMENTS.name, "RefundPayment")]
        );
        let by_staff = env(StatusChangeRequested { status: OrderStatus::Rejected, changed_by: "staff".into() });
        let d = decide(&order(OrderStatus::Processing), &by_staff, 7).unwrap();
        assert_eq!(d.order.reason.as_deref(), Some("rejected_by_staff"));
        // Only PROCESSING: an order that finished or has not started is left alone.
        for status in [OrderStatus::Pending, OrderStatus::Confirmed, OrderStatus::Rejected, OrderStatus::Cancelled] {
            assert!(decide(&order(status), &stuck, 7).is_none(), "{status}");
        }
        // The reservation's reply after the timeout needs nothing more: the release follows it.
        let rejected = decide(&order(OrderStatus::Processing), &stuck, 7).unwrap().order;
        assert!(decide(&rejected, &reserved("S1"), 8).is_none());
    }

    #[test]
    fn duplicates_and_out_of_order_events_change_nothing() {
        assert!(decide(&order(OrderStatus::Processing), &placed(), 1).is_none());
        assert!(
            decide(
                &order(OrderStatus::Confirmed),
                &env(PaymentCaptured {
                    charge_id: "c".into(),
                    captured_cents: 1,
                    authorisation_id: None,
                    authorised_only: false
                }),
                1
            )
            .is_none()
        );
        assert!(decide(&order(OrderStatus::Rejected), &reserved("S1"), 1).is_none());
    }

    #[test]
    fn fulfillment_moves_only_forward_and_commits_stock_when_it_leaves() {
        let to = |s| env(StatusChangeRequested { status: s, changed_by: "staff".into() });
        assert!(decide(&order(OrderStatus::Processing), &to(OrderStatus::Preparing), 1).is_none());
        assert!(decide(&order(OrderStatus::Confirmed), &to(OrderStatus::Delivered), 1).is_none());
        assert!(decide(&order(OrderStatus::Confirmed), &to(OrderStatus::Confirmed), 1).is_none());
        let d = decide(&order(OrderStatus::Preparing), &to(OrderStatus::OutForDelivery), 1).unwrap();
        assert_eq!(d.order.status, OrderStatus::OutForDelivery);
        assert_eq!(bodies(&d), vec![(topics::INVENTORY.name, "CommitStock")]);
        assert_eq!(
            decide(&order(OrderStatus::OutForDelivery), &to(OrderStatus::Delivered), 1).unwrap().order.status,
            OrderStatus::Delivered
        );
    }

    #[test]
    fn every_decision_follows_a_legal_edge_and_derives_output_ids() {
        let events = [
            placed(),
            reserved("S1"),
            env(StockReserved { units_reserved: 1, sku: None }),
            env(StockRejected { reason: "out_of_stock".into(), sku: None }),
            env(PaymentCaptured {
                charge_id: "c".into(),
                captured_cents: 1,
                authorisation_id: None,
                authorised_only: false,
            }),
            env(PaymentDeclined { decline_reason: "x".into() }),
            env(CancelRequested { cancel_reason: "x".into(), requested_by: "s".into() }),
            env(StatusChangeRequested { status: OrderStatus::Preparing, changed_by: "s".into() }),
        ];
        for status in OrderStatus::ALL {
            for e in &events {
                if let Some(d) = decide(&order(status), e, 5) {
                    assert!(
                        d.order.status == status || status.can_move_to(d.order.status),
                        "{status} -> {}",
                        d.order.status
                    );
                    for (_, out) in &d.outputs {
                        // Same order, same step: the same id every time, so redeliveries are recognisable.
                        let again = decide(&order(status), e, 6).unwrap();
                        assert!(again.outputs.iter().any(|(_, o)| o.event_id == out.event_id));
                    }
                }
            }
        }
    }
}
