//! Output types: thin wrappers over the domain types, resolved on demand.

use std::time::{Duration, UNIX_EPOCH};

use async_graphql::connection::CursorType;
use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use orderflow_schemas::{Order, Product, StockLevel};

use crate::ApiState;
use crate::error::{ApiError, ApiResult};
use crate::scalars::Decimal;

/// Where an order is in its life.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "OrderStatus", remote = "orderflow_schemas::OrderStatus")]
pub(crate) enum GqlOrderStatus {
    Pending,
    Processing,
    Confirmed,
    Preparing,
    OutForDelivery,
    Delivered,
    Cancelled,
    Rejected,
}

/// The latest instant humantime can print (9999-12-31T23:59:59.999Z); later times are clamped.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T09:15:00.123Z`.
pub(crate) fn rfc3339_ms(at_ms: i64) -> String {
    let ms = at_ms.clamp(0, MAX_RFC3339_MS).unsigned_abs();
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Saturates at `i32::MAX` (GraphQL `Int` is 32-bit); counts that large are not expected.
pub(crate) fn gql_int(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> ApiResult<&'a ApiState> {
    ctx.data::<ApiState>().map_err(|e| ApiError::unavailable("reading the API state", &e.message))
}

/// An order and its timeline.
pub(crate) struct OrderObject(pub(crate) Order);

#[Object(name = "Order")]
impl OrderObject {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn status(&self) -> GqlOrderStatus {
        self.0.status.into()
    }

    async fn user_id(&self) -> ID {
        ID(self.0.user_id.to_string())
    }

    async fn items(&self) -> Vec<OrderItem> {
        self.0
            .lines
            .iter()
            .map(|l| OrderItem {
                sku: l.sku.to_string(),
                quantity: gql_int(u64::from(l.quantity.get())),
                unit_price: l.unit_price.into(),
            })
            .collect()
    }

    /// What the customer pays: the sum of quantity times unit price.
    async fn total_amount(&self) -> Decimal {
        self.0.total.into()
    }

    /// ISO 4217 code of `totalAmount` and every `unitPrice` (one order is paid in one currency).
    async fn currency(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(self.0.currency_or(state(ctx)?.intake.currency()).to_string())
    }

    /// The payment provider's reference to the payment method the order is paid with (e.g. Stripe's
    /// `pm_card_visa`), if it names one.
    async fn payment_method(&self) -> Option<&str> {
        self.0.payment_method.as_ref().map(|m| m.as_str())
    }

    /// The order's payment as the payment role recorded it; `null` before payment started. When the
    /// customer's bank asks them to authenticate (3-D Secure) it is `ACTION_REQUIRED` and the order stays
    /// PROCESSING: the customer's app completes it with `clientSecret` (shown to that customer only) and
    /// Stripe.js or the mobile SDK (`nextAction`); unless completed within `--stuck-order-timeout` the
    /// order is rejected and the authorisation voided.
    async fn payment(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<PaymentObject>> {
        let record = state(ctx)?.stores.payments.payment(&self.0.id).await.map_err(ApiError::from)?;
        let owner = crate::auth::caller(ctx).customer() == Some(&self.0.user_id);
        Ok(record.map(|record| PaymentObject { record, owner }))
    }

    /// Why the order was rejected or cancelled.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }

    /// RFC 3339 UTC with milliseconds.
    async fn placed_at(&self) -> String {
        rfc3339_ms(self.0.placed_at_ms)
    }

    /// Every step of the order, oldest first.
    async fn timeline(&self) -> Vec<TimelineEvent> {
        self.0
            .timeline
            .iter()
            .zip(1..)
            .map(|(t, seq)| TimelineEvent {
                seq,
                at: rfc3339_ms(t.at_ms),
                kind: t.kind.clone(),
                detail: t.detail.clone(),
            })
            .collect()
    }
}

/// Where an order's payment is.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PaymentStatus {
    /// Waiting for the customer to authenticate with their bank (3-D Secure).
    ActionRequired,
    /// The amount is held on the customer's card.
    Authorised,
    /// The amount was taken.
    Captured,
    /// Taken, and paid back in part by staff (`refundOrder`).
    PartlyRefunded,
    Declined,
    /// The hold was released; no money moved.
    Voided,
    Refunded,
}

/// An order's payment.
pub(crate) struct PaymentObject {
    record: orderflow_platform::store::PaymentRecord,
    /// The caller placed the order (only they see the client secret).
    owner: bool,
}

#[Object(name = "Payment")]
impl PaymentObject {
    async fn status(&self) -> PaymentStatus {
        use orderflow_platform::store::PaymentRecord as R;
        match self.record {
            R::ActionRequired { .. } => PaymentStatus::ActionRequired,
            R::Authorised { .. } => PaymentStatus::Authorised,
            R::Captured { .. } => PaymentStatus::Captured,
            R::PartlyRefunded { .. } => PaymentStatus::PartlyRefunded,
            R::Declined { .. } => PaymentStatus::Declined,
            R::Voided { .. } => PaymentStatus::Voided,
            R::Refunded { .. } => PaymentStatus::Refunded,
        }
    }

    /// The provider's id of the payment (Stripe: the PaymentIntent).
    async fn payment_id(&self) -> Option<&str> {
        self.record.payment_id()
    }

    /// What is left of the capture to pay back (`refundOrder` takes at most this); `null` when nothing
    /// was taken or all of it went back.
    async fn refundable_amount(&self) -> Option<Decimal> {
        self.record.refundable().map(Decimal::from)
    }

    /// For `ACTION_REQUIRED`, to the customer who placed the order: the secret their app completes the
    /// payment with (Stripe.js `handleNextAction`).
    async fn client_secret(&self) -> Option<&str> {
        match &self.record {
            orderflow_platform::store::PaymentRecord::ActionRequired { client_secret, .. } if self.owner => {
                Some(client_secret)
            }
            _ => None,
        }
    }

    /// For `ACTION_REQUIRED`: what the customer must do, as the provider names it (`use_stripe_sdk`,
    /// `redirect_to_url`).
    async fn next_action(&self) -> Option<&str> {
        match &self.record {
            orderflow_platform::store::PaymentRecord::ActionRequired { next_action, .. } => Some(next_action),
            _ => None,
        }
    }

    /// For `DECLINED`: the provider's code and message.
    async fn decline_reason(&self) -> Option<&str> {
        match &self.record {
            orderflow_platform::store::PaymentRecord::Declined { reason } => Some(reason),
            _ => None,
        }
    }
}

/// One line of an order, priced at intake.
#[derive(SimpleObject)]
pub(crate) struct OrderItem {
    sku: String,
    quantity: i32,
    unit_price: Decimal,
}

/// One step in an order's life.
#[derive(SimpleObject)]
pub(crate) struct TimelineEvent {
    /// The entry's place in its order's timeline: 1, 2, 3, ... with no gaps (a timeline only grows).
    seq: i32,
    /// RFC 3339 UTC with milliseconds.
    at: String,
    /// Machine-readable step, such as `placed`, `stock_reserved`, `confirmed`.
    #[graphql(name = "type")]
    kind: String,
    detail: String,
}

/// A product in the catalog.
pub(crate) struct ProductObject(pub(crate) Product);

#[Object(name = "Product")]
impl ProductObject {
    async fn sku(&self) -> &str {
        self.0.sku.as_str()
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn description(&self) -> &str {
        &self.0.description
    }

    async fn price(&self) -> Decimal {
        self.0.price.into()
    }

    /// ISO 4217 code of `price`: the product's own, or the shop's (`--currency`) when it names none.
    async fn currency(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(self.0.currency_or(state(ctx)?.intake.currency()).to_string())
    }

    /// Lower-case category slug; `uncategorized` when none was given.
    async fn category(&self) -> &str {
        self.0.category.as_str()
    }

    /// The product's attributes, ordered by key.
    async fn attributes(&self) -> Vec<ProductAttribute> {
        self.0.attributes.iter().map(|(k, v)| ProductAttribute { key: k.to_owned(), value: v.to_owned() }).collect()
    }

    /// An archived product is not listed by `products` and cannot be ordered (`product_archived`).
    async fn archived(&self) -> bool {
        self.0.archived
    }

    /// 1 when created, +1 per change (pass it as `updateProduct(input: {expectedVersion})`).
    async fn version(&self) -> i32 {
        gql_int(self.0.version)
    }

    /// RFC 3339 UTC with milliseconds.
    async fn created_at(&self) -> String {
        rfc3339_ms(self.0.created_at_ms)
    }

    /// When the product last changed; RFC 3339 UTC with milliseconds.
    async fn updated_at(&self) -> String {
        rfc3339_ms(self.0.updated_at_ms)
    }

    /// Whether the product can be ordered now: `OUT` with no unit available, `LOW` at or below its
    /// low-stock threshold, `IN_STOCK` otherwise. Public; the counts are in `stock`, for staff.
    async fn availability(&self, ctx: &Context<'_>) -> async_graphql::Result<Availability> {
        let inventory = &state(ctx)?.stores.inventory;
        let level = inventory.stock(&self.0.sku).await.map_err(ApiError::from)?.unwrap_or_default();
        if level.available == 0 {
            return Ok(Availability::Out);
        }
        let low = inventory.low_stock(&self.0.sku).await.map_err(ApiError::from)?;
        Ok(if low.low || level.available <= low.threshold { Availability::Low } else { Availability::InStock })
    }

    /// Staff: units on the shelf; 0/0 for a product that never had stock.
    #[graphql(guard = "crate::auth::StaffGuard")]
    async fn stock(&self, ctx: &Context<'_>) -> async_graphql::Result<Stock> {
        let level = state(ctx)?.stores.inventory.stock(&self.0.sku).await.map_err(ApiError::from)?;
        Ok(level.unwrap_or_default().into())
    }

    /// Staff: the SKU's low-stock threshold and whether it is flagged low now.
    #[graphql(guard = "crate::auth::StaffGuard")]
    async fn low_stock(&self, ctx: &Context<'_>) -> async_graphql::Result<LowStockObject> {
        Ok(LowStockObject(state(ctx)?.stores.inventory.low_stock(&self.0.sku).await.map_err(ApiError::from)?))
    }

    /// Staff: the SKU's low-stock alerts, newest first. `first`: 1 to 100, default 20.
    #[graphql(
        guard = "crate::auth::StaffGuard",
        complexity = "first.unwrap_or(20).clamp(1, 100) as usize * child_complexity"
    )]
    async fn stock_alerts(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<StockAlertObject>> {
        stock_alerts(ctx, Some(&self.0.sku), first).await
    }

    /// Staff: the stock ledger of this SKU, newest first: every adjustment (with its reason), reservation,
    /// release and commit (with its order id). `first`: 1 to 100, default 20.
    #[graphql(
        guard = "crate::auth::StaffGuard",
        complexity = "first.unwrap_or(20).clamp(1, 100) as usize * child_complexity"
    )]
    async fn stock_movements(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<StockMovementObject>> {
        let limit = crate::query::page_size(first)?;
        let moves = state(ctx)?.stores.inventory.movements(&self.0.sku, limit).await.map_err(ApiError::from)?;
        Ok(moves.into_iter().map(StockMovementObject).collect())
    }
}

/// One attribute of a product.
#[derive(SimpleObject)]
pub(crate) struct ProductAttribute {
    key: String,
    value: String,
}

/// One movement of stock.
pub(crate) struct StockMovementObject(pub(crate) orderflow_platform::store::StockMovement);

#[Object(name = "StockMovement")]
impl StockMovementObject {
    /// When it happened (RFC 3339, UTC).
    async fn at(&self) -> String {
        rfc3339_ms(self.0.at_ms)
    }

    /// `adjust`, `reserve`, `release` or `commit`.
    async fn kind(&self) -> &str {
        &self.0.kind
    }

    /// Change in available units (negative when units were held or removed).
    async fn available_delta(&self) -> i64 {
        self.0.available_delta
    }

    /// The adjustment's reason, or the order id of a reservation, release or commit.
    async fn reference(&self) -> &str {
        &self.0.reference
    }
}

/// What customers see of a product's stock (see `Product.availability`).
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Availability {
    InStock,
    Low,
    Out,
}

/// Units of one SKU on the shelf.
#[derive(SimpleObject, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stock {
    /// Units that can be ordered now.
    available: i32,
    /// Units held for orders in progress.
    reserved: i32,
    /// Units that left with an order (out for delivery).
    sold: i32,
}

impl From<StockLevel> for Stock {
    fn from(s: StockLevel) -> Self {
        Stock { available: gql_int(s.available), reserved: gql_int(s.reserved), sold: gql_int(s.sold) }
    }
}

/// A SKU's low-stock setting and state.
pub(crate) struct LowStockObject(pub(crate) orderflow_platform::store::LowStock);

#[Object(name = "LowStock")]
impl LowStockObject {
    /// `InventoryLow` is raised when available units fall to this or below.
    async fn threshold(&self) -> i32 {
        gql_int(self.0.threshold)
    }

    /// Whether the SKU is currently flagged low (its last alert was `InventoryLow`).
    async fn low(&self) -> bool {
        self.0.low
    }

    /// Alerts raised so far.
    async fn crossings(&self) -> i32 {
        gql_int(self.0.crossings)
    }
}

/// Low-stock alerts newest first, of one SKU or of all (`first`: 1 to 100, default 20).
pub(crate) async fn stock_alerts(
    ctx: &Context<'_>,
    sku: Option<&orderflow_schemas::Sku>,
    first: Option<i32>,
) -> async_graphql::Result<Vec<StockAlertObject>> {
    let limit = crate::query::page_size(first)?;
    let alerts = state(ctx)?.stores.inventory.stock_alerts(sku, limit).await.map_err(ApiError::from)?;
    Ok(alerts.into_iter().map(StockAlertObject).collect())
}

/// One crossing of a SKU's low-stock threshold.
pub(crate) struct StockAlertObject(pub(crate) orderflow_schemas::StockAlert);

#[Object(name = "StockAlert")]
impl StockAlertObject {
    async fn sku(&self) -> &str {
        self.0.sku.as_str()
    }

    /// The SKU's crossing number, from 1.
    async fn seq(&self) -> i32 {
        gql_int(self.0.seq)
    }

    async fn kind(&self) -> GqlStockAlertKind {
        match self.0.kind {
            orderflow_schemas::StockAlertKind::InventoryLow => GqlStockAlertKind::InventoryLow,
            orderflow_schemas::StockAlertKind::InventoryRestocked => GqlStockAlertKind::InventoryRestocked,
        }
    }

    /// Available units seen when the crossing was recorded.
    async fn available(&self) -> i32 {
        gql_int(self.0.available)
    }

    async fn threshold(&self) -> i32 {
        gql_int(self.0.threshold)
    }

    /// When it was recorded, ms since the Unix epoch.
    async fn at_ms(&self) -> f64 {
        self.0.at_ms as f64
    }
}

/// Which way a SKU crossed its threshold.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "StockAlertKind")]
pub(crate) enum GqlStockAlertKind {
    /// Available units fell to the threshold or below.
    #[graphql(name = "INVENTORY_LOW")]
    InventoryLow,
    /// Available units rose above the threshold again.
    #[graphql(name = "INVENTORY_RESTOCKED")]
    InventoryRestocked,
}

/// Order counters.
#[derive(SimpleObject)]
pub(crate) struct Metrics {
    /// Orders that reached CONFIRMED or REJECTED.
    pub(crate) orders_processed: i32,
    /// Mean time from placement to CONFIRMED or REJECTED; 0 when none was processed.
    pub(crate) average_processing_time_ms: f64,
    /// Every status, zero counts included.
    pub(crate) orders_by_status: Vec<StatusCount>,
}

#[derive(SimpleObject)]
pub(crate) struct StatusCount {
    pub(crate) status: GqlOrderStatus,
    pub(crate) count: i32,
}

/// A position in a keyset-paginated list: the store's key, tagged with the list it belongs to and
/// base64url-encoded so clients treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageCursor {
    pub(crate) list: &'static str,
    pub(crate) key: String,
}

/// Cursors longer than this are refused before decoding (store keys are short).
const MAX_CURSOR_LEN: usize = 1024;

impl PageCursor {
    pub(crate) const ORDERS: &'static str = "orders";

    /// Decodes a cursor that must belong to `list`.
    pub(crate) fn decode(list: &'static str, s: &str) -> ApiResult<String> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(ApiError::InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| ApiError::InvalidCursor)?;
        let text = String::from_utf8(bytes).map_err(|_| ApiError::InvalidCursor)?;
        let (tag, key) = text.split_once(':').ok_or(ApiError::InvalidCursor)?;
        if tag != list || key.is_empty() {
            return Err(ApiError::InvalidCursor);
        }
        Ok(key.to_owned())
    }
}

impl CursorType for PageCursor {
    type Error = &'static str;

    /// Not used for input (resolvers call [`PageCursor::decode`] with the expected list); required by
    /// the trait.
    fn decode_cursor(_s: &str) -> Result<Self, Self::Error> {
        Err("decode cursors with PageCursor::decode")
    }

    fn encode_cursor(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.list, self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn cursors_round_trip_and_belong_to_one_list() {
        let c = PageCursor { list: "products", key: "SKU-1".into() }.encode_cursor();
        assert_eq!(PageCursor::decode("products", &c).ok(), Some("SKU-1".to_owned()));
        assert!(PageCursor::decode(PageCursor::ORDERS, &c).is_err());
        assert!(PageCursor::decode("products", "not base64!").is_err());
        assert!(PageCursor::decode("products", &URL_SAFE_NO_PAD.encode("SKU-1")).is_err());
        assert!(PageCursor::decode("products", &"A".repeat(5000)).is_err());
    }
}
