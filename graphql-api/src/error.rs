//! The API's one error type and the codes clients see in `extensions.code`.

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextRequest};
use async_graphql::{ErrorExtensions, Response};
use orderflow_ingest::IntakeError;
use orderflow_platform::StoreError;
use orderflow_platform::store::StockError;
use orderflow_schemas::{OrderStatus, ValueError};
use std::sync::Arc;

/// Every `extensions.code` this API returns. Part of the public contract: never rename one.
pub mod codes {
    /// An argument or input field was refused; `extensions.field` names it.
    pub const INVALID_INPUT: &str = "invalid_input";
    /// `after` is not a cursor this API handed out for that list.
    pub const INVALID_CURSOR: &str = "invalid_cursor";
    /// The document was refused before execution: syntax, validation, depth or complexity limit.
    pub const INVALID_QUERY: &str = "invalid_query";
    /// No credentials where the operation needs an identity, or a bearer token that is not valid (the
    /// latter answered with HTTP 401 before the query runs).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// Credentials of a role that may not do this (a customer asking for a staff field).
    pub const FORBIDDEN: &str = "forbidden";
    /// A customer's `placeOrder` named another user as `userId`.
    pub const USER_MISMATCH: &str = "user_mismatch";
    pub const UNKNOWN_SKU: &str = "unknown_sku";
    pub const SKU_EXISTS: &str = "sku_exists";
    /// `updateProduct` with an `expectedVersion` that is no longer the product's version (another edit
    /// came first); `extensions.currentVersion` has the version now stored.
    pub const VERSION_CONFLICT: &str = "version_conflict";
    pub const STOCK_WOULD_GO_NEGATIVE: &str = "stock_would_go_negative";
    /// `adjustStock` with an `idempotencyKey` already used on that SKU for a different delta (or
    /// `createProduct` again with a different initial `stock`).
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    /// A stock change (`adjustStock`, `setLowStockThreshold`, `createProduct`'s initial `stock`) was
    /// accepted but the inventory processor that owns the SKU has not applied it within 5 s (it is
    /// behind, or restarting). It will be applied once; `extensions.idempotencyKey` is the key to send
    /// the same `adjustStock` with to learn its outcome without applying it twice.
    pub const STOCK_CHANGE_PENDING: &str = "stock_change_pending";
    pub const ORDER_NOT_FOUND: &str = "order_not_found";
    pub const ILLEGAL_TRANSITION: &str = "illegal_transition";
    /// `refundOrder` on an order with nothing captured left to pay back (never paid, voided, or refunded
    /// in full).
    pub const NOTHING_TO_REFUND: &str = "nothing_to_refund";
    /// `refundOrder` asked for more than is left of the capture; `message` says how much is.
    pub const REFUND_EXCEEDS_PAYMENT: &str = "refund_exceeds_payment";
    /// The store or the bus failed; worth retrying. The cause is logged, not returned.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The HTTP body was not one GraphQL request as JSON (batches are refused too).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The HTTP body exceeded [`crate::MAX_BODY_BYTES`].
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// An operation selected more than [`crate::limits::MAX_ROOT_FIELDS`] root fields.
    pub const TOO_MANY_ROOT_FIELDS: &str = "too_many_root_fields";
    /// The document used more than [`crate::limits::MAX_ALIASES`] aliases.
    pub const TOO_MANY_ALIASES: &str = "too_many_aliases";
    /// A mutation operation had more than [`crate::limits::MAX_MUTATIONS`] fields.
    pub const TOO_MANY_MUTATIONS: &str = "too_many_mutations";
    /// The request's `placeOrder` fields went over the order rate limit; nothing ran.
    /// `extensions.retryAfterSeconds` (and the HTTP `Retry-After` header) say when to retry.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The request ran longer than the GraphQL time limit (`--graphql-timeout`) and was stopped.
    pub const TIMEOUT: &str = "timeout";
    // Intake codes pass through unchanged from `IntakeError::code`: `no_items`, `too_many_items`,
    // `duplicate_sku`, `unknown_sku`, `product_archived`, `total_mismatch`, `total_overflow`,
    // `payment_method_required`, `idempotency_conflict`, `unavailable`.
}

/// Why a resolver failed. Deliberately not `Display`: async-graphql turns any `Display` error into an
/// error without a code, so this type converts only through its own `From` impl below.
#[derive(Debug)]
pub(crate) enum ApiError {
    InvalidInput {
        field: String,
        reason: String,
    },
    InvalidCursor,
    Unauthorized(&'static str),
    Forbidden(&'static str),
    UserMismatch(String),
    UnknownSku(String),
    SkuExists(String),
    VersionConflict {
        sku: String,
        expected: u64,
        current: u64,
    },
    StockWouldGoNegative {
        sku: String,
        available: u64,
    },
    KeyReused {
        sku: String,
        key: String,
        applied: i64,
    },
    StockChangePending {
        sku: String,
        /// The adjustment's request key, to retry it with (none for a threshold: setting it again is safe).
        key: Option<String>,
    },
    OrderNotFound(String),
    IllegalTransition {
        from: OrderStatus,
        to: OrderStatus,
    },
    NothingToRefund(String),
    RefundExceedsPayment {
        asked: orderflow_schemas::Money,
        left: orderflow_schemas::Money,
    },
    Intake(IntakeError),
    /// The cause was logged where this was made.
    Unavailable,
}

impl ApiError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput { field: field.into(), reason: reason.into() }
    }

    /// A domain parse error, reported under the GraphQL name of the field.
    pub(crate) fn value(field: impl Into<String>, e: ValueError) -> Self {
        Self::invalid(field, e.reason)
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput { .. } => codes::INVALID_INPUT,
            Self::InvalidCursor => codes::INVALID_CURSOR,
            Self::Unauthorized(_) => codes::UNAUTHORIZED,
            Self::Forbidden(_) => codes::FORBIDDEN,
            Self::UserMismatch(_) => codes::USER_MISMATCH,
            Self::UnknownSku(_) => codes::UNKNOWN_SKU,
            Self::SkuExists(_) => codes::SKU_EXISTS,
            Self::VersionConflict { .. } => codes::VERSION_CONFLICT,
            Self::StockWouldGoNegative { .. } => codes::STOCK_WOULD_GO_NEGATIVE,
            Self::KeyReused { .. } => codes::IDEMPOTENCY_CONFLICT,
            Self::StockChangePending { .. } => codes::STOCK_CHANGE_PENDING,
            Self::OrderNotFound(_) => codes::ORDER_NOT_FOUND,
            Self::IllegalTransition { .. } => codes::ILLEGAL_TRANSITION,
            Self::NothingToRefund(_) => codes::NOTHING_TO_REFUND,
            Self::RefundExceedsPayment { .. } => codes::REFUND_EXCEEDS_PAYMENT,
            Self::Intake(e) => e.code(),
            Self::Unavailable => codes::UNAVAILABLE,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::InvalidInput { field, reason } => format!("{field}: {reason}"),
            Self::InvalidCursor => {
                "after: not a cursor of this list; pass the `cursor` of an edge (or `pageInfo.endCursor`) \
                 from an earlier page of the same field"
                    .into()
            }
            Self::Unauthorized(why) | Self::Forbidden(why) => (*why).into(),
            Self::UserMismatch(why) => why.clone(),
            Self::UnknownSku(sku) => format!("no product with SKU {sku}"),
            Self::SkuExists(sku) => format!("a product with SKU {sku} already exists; use updateProduct"),
            Self::VersionConflict { sku, expected, current } => format!(
                "product {sku} is at version {current}, not {expected}: another change came first; read it again"
            ),
            Self::StockWouldGoNegative { sku, available } => {
                format!("the adjustment would take {sku} below zero available units (available: {available})")
            }
            Self::KeyReused { sku, key, applied } => {
                format!("idempotency key {key:?} was already used on {sku} for a change of {applied} units")
            }
            Self::StockChangePending { sku, key: Some(key) } => format!(
                "the change of {sku} was accepted but not applied yet; it will be applied once: send the same \
                 change with idempotencyKey {key:?} to learn its outcome"
            ),
            Self::StockChangePending { sku, key: None } => {
                format!("the change of {sku} was accepted but not applied yet; it will be applied shortly")
            }
            Self::OrderNotFound(id) => format!("no order with id {id}"),
            Self::IllegalTransition { from, to } => format!("an order cannot move from {from} to {to}"),
            Self::NothingToRefund(id) => format!("order {id} has nothing captured left to pay back"),
            Self::RefundExceedsPayment { asked, left } => {
                format!("a refund of {asked} is more than the {left} left of the payment")
            }
            Self::Intake(e) => e.to_string(),
            Self::Unavailable => "temporarily unavailable; retry shortly".into(),
        }
    }

    /// Logs an internal failure and returns the error clients see, which does not carry the cause.
    pub(crate) fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{what} failed");
        Self::Unavailable
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        let field = match &e {
            ApiError::InvalidInput { field, .. } => Some(field.clone()),
            _ => None,
        };
        let current_version = match &e {
            ApiError::VersionConflict { current, .. } => Some(*current),
            _ => None,
        };
        let pending_key = match &e {
            ApiError::StockChangePending { key, .. } => key.clone(),
            _ => None,
        };
        async_graphql::Error::new(e.message()).extend_with(|_, ext| {
            ext.set("code", code);
            if let Some(field) = &field {
                ext.set("field", field.as_str());
            }
            if let Some(current) = current_version {
                ext.set("currentVersion", current);
            }
            if let Some(key) = &pending_key {
                ext.set("idempotencyKey", key.as_str());
            }
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::unavailable("store", &e)
    }
}

impl From<orderflow_processors::catalog::CatalogError> for ApiError {
    fn from(e: orderflow_processors::catalog::CatalogError) -> Self {
        use orderflow_processors::catalog::CatalogError;
        match e {
            CatalogError::SkuExists(sku) => Self::SkuExists(sku.to_string()),
            CatalogError::UnknownSku(sku) => Self::UnknownSku(sku.to_string()),
            CatalogError::VersionConflict { sku, expected, current } => {
                Self::VersionConflict { sku: sku.to_string(), expected, current }
            }
            CatalogError::Store(e) => e.into(),
        }
    }
}

impl From<StockError> for ApiError {
    fn from(e: StockError) -> Self {
        match e {
            StockError::UnknownSku(sku) => Self::UnknownSku(sku.to_string()),
            StockError::WouldGoNegative { sku, available } => {
                Self::StockWouldGoNegative { sku: sku.to_string(), available }
            }
            StockError::WouldOverflow { sku } => Self::InvalidInput {
                field: "delta".into(),
                reason: format!("would take the units of {sku} past {}", i64::MAX),
            },
            StockError::KeyReused { sku, key, applied, .. } => Self::KeyReused { sku: sku.to_string(), key, applied },
            StockError::Store(e) => e.into(),
        }
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Unavailable(cause) => Self::unavailable("order intake", &cause),
            other => Self::Intake(other),
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Gives every error in a response an `extensions.code`, including the ones the engine raises itself:
/// errors without a path were raised before execution (syntax, validation, limits) and become
/// `invalid_query`; errors with a path but no code come from coercing an argument and become
/// `invalid_input`.
pub(crate) struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodesExtension)
    }
}

struct ErrorCodesExtension;

#[async_trait::async_trait]
impl Extension for ErrorCodesExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        for error in &mut response.errors {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            if extensions.get("code").is_none() {
                let code = if error.path.is_empty() { codes::INVALID_QUERY } else { codes::INVALID_INPUT };
                extensions.set("code", code);
            }
        }
        response
    }
}
