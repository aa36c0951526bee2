//! Cancelling an order from outside the pipeline, the one rule both front doors (`POST
//! /v1/orders/{id}/cancel` and GraphQL `cancelOrder`) follow: the order's owner (a signed-in customer) or
//! staff, before it is out for delivery; someone else's order is answered as a missing one.

use orderflow_identity::{Caller, CancelAccess};
use orderflow_platform::bus::Bus;
use orderflow_platform::store::Stores;
use orderflow_processors::requests::{self, ChangeError};
use orderflow_schemas::{Order, OrderId, OrderStatus};

/// Why a cancellation was not sent.
#[derive(Debug)]
pub enum CancelError {
    /// An anonymous caller: a cancellation belongs to someone.
    NotSignedIn,
    /// No such order, or someone else's.
    NotFound,
    Change(ChangeError),
}

/// Cancels order `id` (`None`: an id that cannot name an order) for `caller`, with `reason` or, when it
/// is `None`, the default for the caller's role; returns the order as it is once the saga applied it (or
/// after 5 s).
pub async fn cancel_order(
    stores: &Stores,
    bus: &dyn Bus,
    caller: &Caller,
    id: Option<&OrderId>,
    reason: Option<String>,
) -> Result<Order, CancelError> {
    let order = match id {
        Some(id) => stores.orders.order(id).await.map_err(|e| CancelError::Change(e.into()))?,
        None => None,
    };
    let order = match (caller.may_cancel_order(order.as_ref().map(|o| &o.user_id)), order) {
        (CancelAccess::Allowed, Some(order)) => order,
        (CancelAccess::NotSignedIn, _) => return Err(CancelError::NotSignedIn),
        _ => return Err(CancelError::NotFound),
    };
    let default = if caller.is_staff() { "cancelled by staff" } else { "cancelled by the customer" };
    let request = requests::cancellation(reason.unwrap_or_else(|| default.to_owned()), caller.audit_name());
    requests::request_order_change(&*stores.orders, bus, &order, OrderStatus::Cancelled, request)
        .await
        .map_err(CancelError::Change)
}

/// What a caller is told when it must sign in to cancel.
pub const SIGN_IN_TO_CANCEL: &str =
    "cancelling an order needs the signed-in customer who placed it, or staff: send `Authorization: Bearer <token>`";
