//! Write operations: order placement for everyone, catalog and order administration for staff.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use orderflow_ingest::PlaceOrder;
use orderflow_platform::store::PaymentRecord;
use orderflow_processors::catalog::{CatalogWriter, NewProduct, ProductPatch};
use orderflow_processors::requests::{self, ChangeError};
use orderflow_schemas::events::{CancelRequested, RefundPayment, StatusChangeRequested};
use orderflow_schemas::stock_command::RequestKey;
use orderflow_schemas::{
    Attributes, Category, Currency, Envelope, Event, EventId, IdempotencyKey, Order, OrderId, OrderStatus,
    PaymentMethod, Product, Quantity, UserId, topics,
};

use orderflow_identity::PlaceAsError;
use orderflow_ingest::cancel::{self, CancelError};

use crate::ApiState;
use crate::auth::StaffGuard;
use crate::error::{ApiError, ApiResult};
use crate::query::{parse_order_id, parse_sku};
use crate::scalars::Decimal;
use crate::stock_change;
use crate::types::{GqlOrderStatus, LowStockObject, OrderObject, ProductObject, Stock, state};

/// The longest free-text reason accepted for stock adjustments and cancellations.
const MAX_REASON_LEN: usize = 500;

/// The root of write operations.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mutation;

#[derive(InputObject)]
pub(crate) struct PlaceOrderInput {
    /// Client-chosen id (1-64 of `[A-Za-z0-9._:-]`); placing the same id again returns the first order.
    order_id: Option<ID>,
    /// Required from anonymous and staff callers; a signed-in customer may leave it out (it is theirs).
    user_id: Option<ID>,
    items: Vec<OrderItemInput>,
    /// The total the client expects; refused with `total_mismatch` if the catalog prices differ.
    total_amount: Option<Decimal>,
    /// Makes a retry by the same user return the first order.
    idempotency_key: Option<String>,
    /// The payment provider's reference to the customer's payment method (e.g. Stripe's `pm_card_visa`),
    /// never card data. Required when the shop's provider is Stripe (`payment_method_required`).
    payment_method: Option<String>,
    /// The ISO 4217 currency the client expects to pay in (e.g. `EUR`); refused with
    /// `currency_mismatch` if the products are priced in another.
    currency: Option<String>,
}

#[derive(InputObject)]
pub(crate) struct OrderItemInput {
    sku: String,
    quantity: i32,
}

#[derive(SimpleObject)]
pub(crate) struct PlaceOrderPayload {
    order: OrderObject,
    /// True when this request repeated an earlier one and got its order back.
    replayed: bool,
}

#[derive(InputObject)]
pub(crate) struct CreateProductInput {
    /// 1-64 of `[A-Za-z0-9._:-]`.
    sku: String,
    /// 1-200 characters.
    name: String,
    /// At most 5,000 characters; default empty.
    description: Option<String>,
    price: Decimal,
    /// ISO 4217 code of the price (e.g. `USD`); default: none, which prices it in the shop's currency
    /// (`--currency`).
    currency: Option<String>,
    /// Initial available units; default 0. Added only when the product is created (not by a retried
    /// create).
    stock: Option<i32>,
    /// 1-64 of `[a-z0-9_-]` (lower-cased); default `uncategorized`.
    category: Option<String>,
    /// At most 32, keys unique (1-64 of `[A-Za-z0-9_.-]`), values at most 256 characters; default none.
    attributes: Option<Vec<ProductAttributeInput>>,
}

/// The fields to change; the others stay as they are.
#[derive(InputObject)]
pub(crate) struct UpdateProductInput {
    name: Option<String>,
    description: Option<String>,
    price: Option<Decimal>,
    /// ISO 4217 code of the price.
    currency: Option<String>,
    category: Option<String>,
    /// Replaces every attribute (pass `[]` to remove them all).
    attributes: Option<Vec<ProductAttributeInput>>,
    /// `false` puts an archived product back in the catalog; `true` archives it like `archiveProduct`.
    archived: Option<bool>,
    /// Apply only if the product is still at this `version` (`version_conflict` otherwise): for edits
    /// made from a copy a staff member has been looking at.
    expected_version: Option<i32>,
}

/// One attribute of a product, e.g. `{key: "color", value: "blue"}`.
#[derive(InputObject)]
pub(crate) struct ProductAttributeInput {
    key: String,
    value: String,
}

fn parse_category(field: &str, category: &str) -> ApiResult<Category> {
    Category::parse(category).map_err(|e| ApiError::value(field, e))
}

fn parse_attributes(field: &str, attributes: Vec<ProductAttributeInput>) -> ApiResult<Attributes> {
    Attributes::parse(attributes.into_iter().map(|a| (a.key, a.value))).map_err(|e| ApiError::value(field, e))
}

fn check_name(field: &str, name: String) -> ApiResult<String> {
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if name.chars().count() > Product::MAX_NAME_LEN {
        return Err(ApiError::invalid(field, format!("must be at most {} characters", Product::MAX_NAME_LEN)));
    }
    Ok(name)
}

fn check_description(field: &str, description: String) -> ApiResult<String> {
    if description.chars().count() > Product::MAX_DESCRIPTION_LEN {
        return Err(ApiError::invalid(field, format!("must be at most {} characters", Product::MAX_DESCRIPTION_LEN)));
    }
    Ok(description)
}

fn check_reason(field: &str, reason: Option<String>, default: &str) -> ApiResult<String> {
    let reason = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).unwrap_or_else(|| default.to_owned());
    if reason.chars().count() > MAX_REASON_LEN {
        return Err(ApiError::invalid(field, format!("must be at most {MAX_REASON_LEN} characters")));
    }
    Ok(reason)
}

fn parse_place_order(ctx: &Context<'_>, input: PlaceOrderInput) -> ApiResult<PlaceOrder> {
    let order_id =
        input.order_id.map(|id| OrderId::parse(id.0).map_err(|e| ApiError::value("input.orderId", e))).transpose()?;
    let claimed =
        input.user_id.map(|u| UserId::parse(u.0).map_err(|e| ApiError::value("input.userId", e))).transpose()?;
    let user_id = crate::auth::caller(ctx).place_as(claimed, crate::auth::mode(ctx)).map_err(|e| match e {
        PlaceAsError::Unauthenticated => ApiError::Unauthorized(
            "placing an order needs a signed-in customer on this server: send `Authorization: Bearer <token>`",
        ),
        PlaceAsError::NotYou { .. } => ApiError::UserMismatch(e.to_string()),
        PlaceAsError::MissingUserId => ApiError::invalid("input.userId", "is required"),
    })?;
    let idempotency_key = input
        .idempotency_key
        .map(|k| IdempotencyKey::parse(k).map_err(|e| ApiError::value("input.idempotencyKey", e)))
        .transpose()?;
    let items = input
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let sku = parse_sku(&format!("input.items[{i}].sku"), &item.sku)?;
            let quantity = Quantity::new(i64::from(item.quantity))
                .map_err(|e| ApiError::value(format!("input.items[{i}].quantity"), e))?;
            Ok((sku, quantity))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(PlaceOrder {
        order_id,
        idempotency_key,
        user_id,
        items,
        total_amount: input.total_amount.map(|d| d.0),
        payment_method: input
            .payment_method
            .map(|m| PaymentMethod::parse(m).map_err(|e| ApiError::value("input.paymentMethod", e)))
            .transpose()?,
        currency: parse_currency("input.currency", input.currency)?,
        channel: "graphql".into(),
    })
}

fn parse_currency(field: &'static str, code: Option<String>) -> ApiResult<Option<Currency>> {
    code.map(|c| Currency::parse("currency", &c).map_err(|e| ApiError::value(field, e))).transpose()
}

fn check_idempotency_key(field: &'static str, key: Option<String>) -> ApiResult<Option<RequestKey>> {
    key.map(|k| RequestKey::parse(field, k).map_err(|e| ApiError::value(field, e))).transpose()
}

async fn create_product(st: &ApiState, input: CreateProductInput, actor: &str) -> ApiResult<Product> {
    let sku = parse_sku("input.sku", &input.sku)?;
    let name = check_name("input.name", input.name)?;
    let description = check_description("input.description", input.description.unwrap_or_default())?;
    let stock = input.stock.unwrap_or(0);
    if stock < 0 {
        return Err(ApiError::invalid("input.stock", format!("must not be negative (got {stock})")));
    }
    let category = input.category.map(|c| parse_category("input.category", &c)).transpose()?.unwrap_or_default();
    let attributes = input.attributes.map(|a| parse_attributes("input.attributes", a)).transpose()?.unwrap_or_default();
    let currency = parse_currency("input.currency", input.currency)?;
    let new = NewProduct { sku, name, description, price: input.price.0, currency, category, attributes };
    let created = catalog_writer(st).create(new).await?;
    let product = created.product;
    // Also on a replayed create: the first attempt may have stored the product and then failed before
    // its stock. The key makes the initial stock apply once, whichever attempt gets there.
    if stock > 0 {
        let key = RequestKey::parse("input.stock", orderflow_platform::store::INITIAL_STOCK_KEY)
            .map_err(|e| ApiError::value("input.stock", e))?;
        stock_change::adjust(st, &product.sku, i64::from(stock), "initial stock", key, actor).await?;
    }
    Ok(product)
}

async fn update_product(st: &ApiState, sku: &str, input: UpdateProductInput) -> ApiResult<Product> {
    let sku = parse_sku("sku", sku)?;
    let name = input.name.map(|n| check_name("input.name", n)).transpose()?;
    let description = input.description.map(|d| check_description("input.description", d)).transpose()?;
    let expected_version = input
        .expected_version
        .map(|v| {
            u64::try_from(v)
                .map_err(|_| ApiError::invalid("input.expectedVersion", format!("must not be negative (got {v})")))
        })
        .transpose()?;
    let patch = ProductPatch {
        name,
        description,
        price: input.price.map(|p| p.0),
        currency: parse_currency("input.currency", input.currency)?,
        category: input.category.map(|c| parse_category("input.category", &c)).transpose()?,
        attributes: input.attributes.map(|a| parse_attributes("input.attributes", a)).transpose()?,
        archived: input.archived,
    };
    Ok(catalog_writer(st).update(&sku, &patch, expected_version).await?)
}

fn catalog_writer(st: &ApiState) -> CatalogWriter {
    CatalogWriter::new(Arc::clone(&st.stores.catalog), Arc::clone(&st.bus))
}

/// Asks the order saga (the one writer of order state) to move order `id` to `to`, then waits for it
/// to do so. Refuses at once if the order's current status cannot move to `to`; the saga checks again
/// when it applies the request, since the order may move on in between.
async fn request_order_change(st: &ApiState, id: OrderId, to: OrderStatus, body: Event) -> ApiResult<Order> {
    let before = st.stores.orders.order(&id).await?.ok_or_else(|| ApiError::OrderNotFound(id.to_string()))?;
    change(st, &before, to, body).await
}

async fn change(st: &ApiState, before: &Order, to: OrderStatus, body: Event) -> ApiResult<Order> {
    requests::request_order_change(&*st.stores.orders, &*st.bus, before, to, body).await.map_err(change_error)
}

fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::NotFound(id) => ApiError::OrderNotFound(id.to_string()),
        ChangeError::IllegalTransition { from, to } => ApiError::IllegalTransition { from, to },
        ChangeError::Unavailable(why) => ApiError::unavailable("an order request", &why),
    }
}

#[Object]
impl Mutation {
    /// Places an order, priced from the catalog. Safe to retry with the same `orderId` or
    /// `idempotencyKey`. Errors carry the intake codes (`unknown_sku`, `total_mismatch`, ...).
    async fn place_order(&self, ctx: &Context<'_>, input: PlaceOrderInput) -> async_graphql::Result<PlaceOrderPayload> {
        let req = parse_place_order(ctx, input)?;
        let placed = state(ctx)?.intake.place(req).await.map_err(ApiError::from)?;
        Ok(PlaceOrderPayload { order: OrderObject(placed.order), replayed: placed.replayed })
    }

    /// Staff: adds a product, with `stock` initial units, and returns it as written; reads (`product`,
    /// `products`) show it moments later. `sku_exists` if the SKU is taken by a different product (the
    /// same create again returns the product: a safe retry).
    #[graphql(guard = "StaffGuard")]
    async fn create_product(
        &self,
        ctx: &Context<'_>,
        input: CreateProductInput,
    ) -> async_graphql::Result<ProductObject> {
        let actor = crate::auth::caller(ctx).audit_name();
        Ok(ProductObject(create_product(state(ctx)?, input, &actor).await?))
    }

    /// Staff: takes a product out of the catalog: `products` no longer lists it and orders for it are
    /// refused with `product_archived`; `product(sku)` still shows it, with `archived: true`. Undo with
    /// `updateProduct(sku, input: {archived: false})`. Archiving an archived product changes nothing.
    #[graphql(guard = "StaffGuard")]
    async fn archive_product(&self, ctx: &Context<'_>, sku: String) -> async_graphql::Result<ProductObject> {
        let st = state(ctx)?;
        let sku = parse_sku("sku", &sku)?;
        let patch = ProductPatch { archived: Some(true), ..Default::default() };
        Ok(ProductObject(catalog_writer(st).update(&sku, &patch, None).await.map_err(ApiError::from)?))
    }

    /// Staff: changes the given fields of a product (name, description, price, category, attributes,
    /// archived) and returns it as written; reads (`product`, `products`) show the change moments later.
    /// `unknown_sku` if there is none; with `expectedVersion`, `version_conflict` if the product changed
    /// since. Changing nothing is allowed (a safe retry).
    #[graphql(guard = "StaffGuard")]
    async fn update_product(
        &self,
        ctx: &Context<'_>,
        sku: String,
        input: UpdateProductInput,
    ) -> async_graphql::Result<ProductObject> {
        Ok(ProductObject(update_product(state(ctx)?, &sku, input).await?))
    }

    /// Staff: adds (or with a negative delta removes) available units. `stock_would_go_negative` if
    /// fewer are available than removed. The inventory processor owning the SKU applies the change
    /// (it is the one writer of stock); this waits up to 5 s for it, then answers
    /// `stock_change_pending`. With an `idempotencyKey` (any string of up to 128 characters the client
    /// makes up per change, e.g. a UUID) the first answer stands: a retry after a lost response changes
    /// nothing and answers the stock as it is (or the same refusal); the same key with another delta is
    /// `idempotency_conflict`.
    #[graphql(guard = "StaffGuard")]
    async fn adjust_stock(
        &self,
        ctx: &Context<'_>,
        sku: String,
        delta: i32,
        reason: Option<String>,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Stock> {
        let sku = parse_sku("sku", &sku)?;
        let reason = check_reason("reason", reason, "staff adjustment")?;
        let key = check_idempotency_key("idempotencyKey", idempotency_key)?;
        let key = key.unwrap_or_else(RequestKey::random);
        let actor = crate::auth::caller(ctx).audit_name();
        let level = stock_change::adjust(state(ctx)?, &sku, i64::from(delta), &reason, key, &actor).await?;
        Ok(level.into())
    }

    /// Staff: sets the SKU's low-stock threshold. One `InventoryLow` alert is raised when its available
    /// units fall to the threshold or below and one `InventoryRestocked` when they rise above it again
    /// (on the `orderflow.stock-alerts.v1` topic and in `stockAlerts`). A SKU never set up uses 5.
    /// Applied by the inventory processor owning the SKU; waits up to 5 s for it, like `adjustStock`.
    #[graphql(guard = "StaffGuard")]
    async fn set_low_stock_threshold(
        &self,
        ctx: &Context<'_>,
        sku: String,
        threshold: i32,
    ) -> async_graphql::Result<LowStockObject> {
        let sku = parse_sku("sku", &sku)?;
        let threshold = u64::try_from(threshold)
            .map_err(|_| ApiError::invalid("threshold", format!("must not be negative (got {threshold})")))?;
        let actor = crate::auth::caller(ctx).audit_name();
        Ok(LowStockObject(stock_change::set_low_stock_threshold(state(ctx)?, &sku, threshold, &actor).await?))
    }

    /// Staff: moves an order one step along its life (e.g. CONFIRMED to PREPARING). The order saga
    /// applies the change; this waits up to 5 s for it and returns the order as it then is.
    /// `illegal_transition` if the order cannot move there from its current status. An order placed
    /// under `--capture-on dispatch` goes OUT_FOR_DELIVERY once its payment is captured: it stays
    /// PREPARING until then, and is CANCELLED (`payment_capture_failed: ...`) if the capture fails.
    #[graphql(guard = "StaffGuard")]
    async fn update_order_status(
        &self,
        ctx: &Context<'_>,
        id: ID,
        status: GqlOrderStatus,
    ) -> async_graphql::Result<OrderObject> {
        let id = parse_order_id("id", &id)?;
        let to = OrderStatus::from(status);
        let actor = crate::auth::caller(ctx).audit_name();
        // Cancelling has its own request, which makes the saga release stock and refund payment.
        let body: Event = if to == OrderStatus::Cancelled {
            CancelRequested { cancel_reason: "cancelled by staff".into(), requested_by: actor }.into()
        } else {
            StatusChangeRequested { status: to, changed_by: actor }.into()
        };
        Ok(OrderObject(request_order_change(state(ctx)?, id, to, body).await?))
    }

    /// Staff: pays `amount` of an order's captured payment back (a damaged item, a goodwill gesture),
    /// with a reason, whatever the order's status; at most what is left of the capture. Safe to retry
    /// with the same `idempotencyKey`: one refund per key. The payment role refunds it at the provider
    /// under its own key; this waits up to 5 s and returns the order, whose timeline then shows the refund
    /// (`refunded`) and whose `payment { refundableAmount }` what is left. `nothing_to_refund`,
    /// `refund_exceeds_payment`.
    #[graphql(guard = "StaffGuard")]
    async fn refund_order(
        &self,
        ctx: &Context<'_>,
        id: ID,
        amount: Decimal,
        reason: String,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<OrderObject> {
        let st = state(ctx)?;
        let id = parse_order_id("id", &id)?;
        let amount = amount.0;
        if amount == orderflow_schemas::Money::ZERO {
            return Err(ApiError::invalid("amount", "must be more than 0").into());
        }
        let reason = check_reason("reason", Some(reason), "refund by staff")?;
        let key = check_idempotency_key("idempotencyKey", idempotency_key)?.unwrap_or_else(RequestKey::random);
        let order = st.stores.orders.order(&id).await?.ok_or_else(|| ApiError::OrderNotFound(id.to_string()))?;
        let payment = st.stores.payments.payment(&id).await?;
        let key = key.to_string();
        // The refund made under `key`, once the payment role has made it.
        let made = |p: &Option<PaymentRecord>| p.as_ref()?.refund_under(&key).map(|r| r.refund_id.clone());
        if made(&payment).is_none() {
            let left = payment
                .as_ref()
                .and_then(PaymentRecord::refundable)
                .ok_or_else(|| ApiError::NothingToRefund(id.to_string()))?;
            if amount > left {
                return Err(ApiError::RefundExceedsPayment { asked: amount, left }.into());
            }
            let body = RefundPayment {
                refund_reason: reason,
                amount_cents: Some(amount.cents()),
                refund_key: Some(key.clone()),
                currency: order.currency,
                ..Default::default()
            };
            let envelope =
                Envelope::new(EventId::for_key(id.as_str(), &format!("staff-refund:{key}")), id.clone(), body);
            // Recorded before it is published: the payment role pays back only what orderflow recorded.
            requests::record_and_publish(&*st.stores.orders, &*st.bus, topics::PAYMENTS, &envelope)
                .await
                .map_err(change_error)?;
        }
        // Until the payment role made it and the saga noted it in the timeline (or 5 s).
        let deadline = tokio::time::Instant::now() + requests::SAGA_WAIT;
        let mut now = order;
        loop {
            if let Some(refund_id) = made(&st.stores.payments.payment(&id).await?) {
                now = st.stores.orders.order(&id).await?.unwrap_or(now);
                if now.timeline.iter().any(|t| t.kind == "refunded" && t.detail.contains(&refund_id)) {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(order = %id, "a staff refund was not made within {:?}", requests::SAGA_WAIT);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(OrderObject(now))
    }

    /// Cancels an order that has not left the store yet (before OUT_FOR_DELIVERY): staff any order, a
    /// signed-in customer their own (someone else's answers `order_not_found`, as a missing one). The
    /// saga releases its stock and voids its payment's authorisation, or refunds its capture. Waits up
    /// to 5 s and returns the order as it then is. `illegal_transition` once it is out for delivery.
    async fn cancel_order(
        &self,
        ctx: &Context<'_>,
        id: ID,
        reason: Option<String>,
    ) -> async_graphql::Result<OrderObject> {
        let caller = crate::auth::caller(ctx);
        let st = state(ctx)?;
        let id = parse_order_id("id", &id)?;
        let reason = reason.map(|r| check_reason("reason", Some(r), "")).transpose()?.filter(|r| !r.is_empty());
        let order =
            cancel::cancel_order(&st.stores, &*st.bus, caller, Some(&id), reason).await.map_err(|e| match e {
                CancelError::NotSignedIn => ApiError::Unauthorized(cancel::SIGN_IN_TO_CANCEL),
                CancelError::NotFound => ApiError::OrderNotFound(id.to_string()),
                CancelError::Change(e) => change_error(e),
            })?;
        Ok(OrderObject(order))
    }
}
