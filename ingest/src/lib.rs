//! Order intake: turns a placement request (HTTP JSON today, partner Avro next) into a stored PENDING
//! order and an `OrderPlaced` event. The order is priced here from the catalog; a total sent by the
//! client is checked against that price, never trusted. Prices (and whether a product is archived) are
//! read from the catalog's write model, not its read model: a command must see the latest price.

pub mod body_limit;
pub mod cancel;
pub mod http;
pub mod partner;
pub mod rate_limit;
pub mod webhooks;

use std::sync::Arc;

use orderflow_platform::bus::{Bus, BusRecord};
use orderflow_platform::store::{Inserted, StoreError, Stores};
use orderflow_schemas::events::OrderPlaced;
use orderflow_schemas::{
    CaptureOn, Currency, IdempotencyKey, Money, Order, OrderId, OrderLine, OrderStatus, PaymentMethod, Quantity, Sku,
    TimelineEntry, UserId, codec, now_ms, topics,
};

/// The most lines one order may have.
pub const MAX_LINES: usize = 100;

/// A placement request, already parsed into domain types.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    pub order_id: Option<OrderId>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub user_id: UserId,
    pub items: Vec<(Sku, Quantity)>,
    /// The total the client expects to pay; refused if it differs from the catalog price.
    pub total_amount: Option<Money>,
    /// The provider's reference to the customer's payment method.
    pub payment_method: Option<PaymentMethod>,
    /// The currency the client expects to pay in; refused if the products are priced in another.
    pub currency: Option<Currency>,
    /// `http`, `graphql` or `partner:<id>`.
    pub channel: String,
}

impl PlaceOrder {
    /// A parsed request (see [`orderflow_schemas::order_request`]) arriving through `channel`.
    pub fn new(
        request: orderflow_schemas::order_request::OrderRequest,
        idempotency_key: Option<IdempotencyKey>,
        channel: impl Into<String>,
    ) -> Self {
        Self {
            order_id: request.order_id,
            idempotency_key,
            user_id: request.user_id,
            items: request.items,
            total_amount: request.total_amount,
            payment_method: request.payment_method,
            currency: request.currency,
            channel: channel.into(),
        }
    }
}

/// Why a placement was refused. Each has a stable machine-readable [`IntakeError::code`].
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("an order needs at least one item")]
    NoItems,
    #[error("an order may have at most {MAX_LINES} items")]
    TooManyItems,
    #[error("SKU {0} appears in more than one item; send one item per SKU")]
    DuplicateSku(Sku),
    #[error("no product with SKU {0}")]
    UnknownSku(Sku),
    #[error("product {0} is archived and can no longer be ordered")]
    ProductArchived(Sku),
    #[error("total_amount {sent} does not match the catalog price {expected}")]
    TotalMismatch { expected: Money, sent: Money },
    #[error("the order total is too large")]
    TotalOverflow,
    #[error("{sku} is priced in {found}, but the order is in {expected}: one order is paid in one currency")]
    CurrencyMismatch { sku: Sku, expected: Currency, found: Currency },
    #[error(
        "this shop's payment provider needs the customer's payment method: send `payment_method` (the \
         provider's reference, e.g. Stripe's \"pm_card_visa\"), never card data"
    )]
    PaymentMethodRequired,
    #[error("order {0} already exists with different contents; use a new order_id or Idempotency-Key")]
    IdempotencyConflict(OrderId),
    #[error("temporarily unavailable, retry: {0}")]
    Unavailable(String),
}

impl IntakeError {
    /// Stable code for clients and dashboards; part of the public API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoItems => "no_items",
            Self::TooManyItems => "too_many_items",
            Self::DuplicateSku(_) => "duplicate_sku",
            Self::UnknownSku(_) => "unknown_sku",
            Self::ProductArchived(_) => "product_archived",
            Self::TotalMismatch { .. } => "total_mismatch",
            Self::TotalOverflow => "total_overflow",
            Self::CurrencyMismatch { .. } => "currency_mismatch",
            Self::PaymentMethodRequired => "payment_method_required",
            Self::IdempotencyConflict(_) => "idempotency_conflict",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for IntakeError {
    fn from(e: StoreError) -> Self {
        IntakeError::Unavailable(e.to_string())
    }
}

/// The result of a placement.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: Order,
    /// `true` when this request repeated an earlier one and got its result.
    pub replayed: bool,
}

/// The intake service, shared by the HTTP and GraphQL front doors.
#[derive(Clone)]
pub struct Intake {
    stores: Stores,
    bus: Arc<dyn Bus>,
    /// The payment provider charges only a payment method the customer chose (Stripe): an order from a
    /// customer without one is refused at the door. Partner orders are prepaid and exempt.
    payment_method_required: bool,
    /// The shop's currency (`--currency`): the currency of a product that names none.
    currency: Currency,
    /// When the payments of orders placed now are captured (`--capture-on`).
    capture_on: CaptureOn,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

/// The `OrderPlaced` record of an accepted order, keyed by order id.
pub fn order_placed_record(order: &Order) -> Result<BusRecord, codec::CodecError> {
    Ok(BusRecord::new(topics::ORDERS, order.id.as_str(), codec::encode(&OrderPlaced::envelope_of(order))?))
}

impl Intake {
    pub fn new(stores: Stores, bus: Arc<dyn Bus>) -> Self {
        Self {
            stores,
            bus,
            payment_method_required: false,
            currency: Currency::default(),
            capture_on: CaptureOn::default(),
        }
    }

    /// Prices products that name no currency in `currency` (the shop's, `--currency`).
    pub fn in_currency(mut self, currency: Currency) -> Self {
        self.currency = currency;
        self
    }

    /// Captures the payments of the orders it places at `capture_on` (`--capture-on`).
    pub fn capturing_on(mut self, capture_on: CaptureOn) -> Self {
        self.capture_on = capture_on;
        self
    }

    /// The shop's currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Refuses customers' orders without a `payment_method` (the provider charges nothing else).
    pub fn requiring_payment_method(mut self, required: bool) -> Self {
        self.payment_method_required = required;
        self
    }

    /// When the saga of this process holds the partition of a just-inserted order, gives the order to it
    /// as its state (before the `OrderPlaced` is published, never over what it holds): polls of the order
    /// and the saga's first step then skip the store. Elsewhere (another process owns the partition, or
    /// none does yet) nothing happens and they read the store.
    fn hand_to_owner(&self, order: &Order) {
        let Some(partition) = self.bus.partition_of(topics::ORDERS, order.id.as_str()) else { return };
        if let Some(epoch) = self.stores.owned_orders.placed(order, partition) {
            self.stores.orders.placed_under(order, epoch);
            metrics::counter!("orderflow_orders_handed_to_owner_total").increment(1);
        }
    }

    /// Validates, prices, stores and publishes an order. Safe to repeat: the same `order_id` (or the
    /// same user with the same `Idempotency-Key`) returns the first order instead of a second one.
    #[tracing::instrument(skip_all, fields(user = %req.user_id, channel = %req.channel))]
    pub async fn place(&self, req: PlaceOrder) -> Result<Placed, IntakeError> {
        if req.items.is_empty() {
            return Err(IntakeError::NoItems);
        }
        if req.items.len() > MAX_LINES {
            return Err(IntakeError::TooManyItems);
        }
        if self.payment_method_required && req.payment_method.is_none() && !req.channel.starts_with("partner:") {
            return Err(IntakeError::PaymentMethodRequired);
        }
        let mut seen = std::collections::HashSet::new();
        for (sku, _) in &req.items {
            if !seen.insert(sku) {
                return Err(IntakeError::DuplicateSku(sku.clone()));
            }
        }
        let mut lines = Vec::with_capacity(req.items.len());
        let mut total = Money::ZERO;
        // The order's currency: the one the client named, else its first product's.
        let mut currency = req.currency;
        for (sku, quantity) in &req.items {
            let product =
                self.stores.catalog.product(sku).await?.ok_or_else(|| IntakeError::UnknownSku(sku.clone()))?;
            if product.archived {
                return Err(IntakeError::ProductArchived(sku.clone()));
            }
            let found = product.currency_or(self.currency);
            match currency {
                Some(expected) if expected != found => {
                    return Err(IntakeError::CurrencyMismatch { sku: sku.clone(), expected, found });
                }
                _ => currency = Some(found),
            }
            let line_total = product.price.checked_mul(*quantity).ok_or(IntakeError::TotalOverflow)?;
            total = total.checked_add(line_total).ok_or(IntakeError::TotalOverflow)?;
            lines.push(OrderLine { sku: sku.clone(), quantity: *quantity, unit_price: product.price });
        }
        if let Some(sent) = req.total_amount
            && sent != total
        {
            return Err(IntakeError::TotalMismatch { expected: total, sent });
        }
        let id = match (&req.order_id, &req.idempotency_key) {
            (Some(id), _) => id.clone(),
            (None, Some(key)) => OrderId::from_idempotency_key(&req.user_id, key),
            (None, None) => OrderId::generate(),
        };
        let now = now_ms();
        let order = Order {
            id: id.clone(),
            user_id: req.user_id,
            lines,
            total,
            currency: Some(currency.unwrap_or(self.currency)),
            status: OrderStatus::Pending,
            reason: None,
            channel: req.channel,
            placed_at_ms: now,
            updated_at_ms: now,
            processed_at_ms: None,
            reserved_skus: vec![],
            payment_method: req.payment_method,
            capture_on: self.capture_on,
            timeline: vec![TimelineEntry {
                at_ms: now,
                kind: "placed".into(),
                detail: format!("total {total} {}", currency.unwrap_or(self.currency)),
            }],
        };
        let (order, replayed) = match self.stores.orders.insert_new(&order).await? {
            Inserted::New => {
                self.hand_to_owner(&order);
                (order, false)
            }
            Inserted::Existing(first) if first.same_request_as(&order) => (*first, true),
            Inserted::Existing(_) => return Err(IntakeError::IdempotencyConflict(id)),
        };
        // Published after the row is stored: if we die in between, the stalled-order sweep publishes it.
        // A replay of a still-PENDING order publishes again for the same reason; the event id is the same.
        if order.status == OrderStatus::Pending {
            let record = order_placed_record(&order).map_err(|e| IntakeError::Unavailable(e.to_string()))?;
            self.bus.publish(vec![record]).await.map_err(|e| IntakeError::Unavailable(e.to_string()))?;
        }
        if !replayed {
            metrics::counter!("orderflow_orders_placed_total", "channel" => order.channel.clone()).increment(1);
        }
        Ok(Placed { order, replayed })
    }
}
