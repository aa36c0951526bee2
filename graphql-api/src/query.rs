//! Read operations: orders, the catalog and the metrics.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Object};
use orderflow_platform::store::OrderFilter;
use orderflow_schemas::{OrderId, OrderStatus, Sku, UserId};

use orderflow_identity::ListScope;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::limits::cost;
use crate::types::{GqlOrderStatus, Metrics, OrderObject, PageCursor, ProductObject, StatusCount, gql_int, state};

/// Page size when `first` is not given.
pub(crate) const DEFAULT_PAGE_SIZE: i32 = 20;
/// The largest `first` accepted.
pub(crate) const MAX_PAGE_SIZE: i32 = 100;

/// The root of read operations.
#[derive(Debug, Default, Clone, Copy)]
pub struct Query;

/// Checks a list's `first` (1 to [`MAX_PAGE_SIZE`], default [`DEFAULT_PAGE_SIZE`]); returns the page size.
pub(crate) fn page_size(first: Option<i32>) -> ApiResult<usize> {
    let first = first.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&first) {
        return Err(ApiError::invalid("first", format!("must be between 1 and {MAX_PAGE_SIZE} (got {first})")));
    }
    Ok(first.unsigned_abs() as usize)
}

/// Checks `first` and decodes `after`; returns the page size and the store key to start after.
fn page_args(list: &'static str, first: Option<i32>, after: Option<&str>) -> ApiResult<(usize, Option<String>)> {
    let limit = page_size(first)?;
    let after = after.map(|s| PageCursor::decode(list, s)).transpose()?;
    Ok((limit, after))
}

pub(crate) fn parse_order_id(field: &str, id: &ID) -> ApiResult<OrderId> {
    OrderId::parse(id.as_str()).map_err(|e| ApiError::value(field, e))
}

pub(crate) fn parse_sku(field: &str, sku: &str) -> ApiResult<Sku> {
    Sku::parse(sku).map_err(|e| ApiError::value(field, e))
}

#[Object]
impl Query {
    /// One order by id; null if there is none, or it is another customer's (a customer sees only their
    /// own; staff see any; anonymous callers any in open mode, none when the server requires sign-in).
    async fn order(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<OrderObject>> {
        let id = parse_order_id("id", &id)?;
        let (caller, mode) = (auth::caller(ctx), auth::mode(ctx));
        if caller.signed_in_if_required(mode).is_err() {
            return Err(ApiError::Unauthorized(
                "reading an order needs a signed-in customer on this server: send `Authorization: Bearer <token>`",
            )
            .into());
        }
        let order = state(ctx)?.stores.orders.order(&id).await.map_err(ApiError::from)?;
        Ok(order.filter(|o| caller.may_read_order(&o.user_id, mode)).map(OrderObject))
    }

    /// Orders, newest first, optionally of one customer and/or in one status. A customer lists only
    /// their own (`userId` of anyone else gives an empty list); staff list anyone's; anonymous callers
    /// may not list. `first`: 1 to 100, default 20; `after`: the `endCursor` of the previous page.
    #[graphql(complexity = "cost::list(cost::LIST_QUERY, first.unwrap_or(DEFAULT_PAGE_SIZE), child_complexity)")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        user_id: Option<ID>,
        status: Option<GqlOrderStatus>,
    ) -> async_graphql::Result<Connection<PageCursor, OrderObject>> {
        let (limit, after) = page_args(PageCursor::ORDERS, first, after.as_deref())?;
        let user = user_id.map(|u| UserId::parse(u.as_str()).map_err(|e| ApiError::value("userId", e))).transpose()?;
        let user = match auth::caller(ctx).listable_user(user) {
            Ok(ListScope::All) => None,
            Ok(ListScope::User(user)) => Some(user),
            Ok(ListScope::Nothing) => return Ok(Connection::new(false, false)),
            Err(_) => {
                return Err(ApiError::Unauthorized(
                    "listing orders needs a signed-in customer (their own orders) or staff: send \
                     `Authorization: Bearer <token>`",
                )
                .into());
            }
        };
        let filter = OrderFilter { user, status: status.map(OrderStatus::from) };
        let page = state(ctx)?.stores.orders.list(&filter, after.as_deref(), limit).await.map_err(ApiError::from)?;
        let mut connection = Connection::new(after.is_some(), page.has_next);
        connection.edges.extend(
            page.items
                .into_iter()
                .map(|(key, order)| Edge::new(PageCursor { list: PageCursor::ORDERS, key }, OrderObject(order))),
        );
        Ok(connection)
    }

    /// One product by SKU (archived ones too: see `archived`); null if there is none. Served from the
    /// catalog read model: a staff change shows here within moments (see the README).
    async fn product(&self, ctx: &Context<'_>, sku: String) -> async_graphql::Result<Option<ProductObject>> {
        Ok(crate::catalog::product(ctx, &sku).await?)
    }

    /// The catalog as a Relay connection, from the catalog read model. Archived products are left out
    /// unless a staff request sets `filter.includeArchived`. `sortBy`: SKU (the default), NAME, PRICE or
    /// UPDATED_AT, ascending or descending (ties by SKU). Pages: `first` (1 to 100, default 20) with
    /// `after`, or `last` with `before`, where `after`/`before` are cursors from an earlier page of the
    /// same sort.
    #[graphql(complexity = "cost::list(
        crate::catalog::products_query_cost(filter.as_ref(), sort_by.as_ref()),
        first.or(last).unwrap_or(DEFAULT_PAGE_SIZE),
        child_complexity
    )")]
    #[allow(clippy::too_many_arguments)]
    async fn products(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        filter: Option<crate::catalog::ProductFilter>,
        sort_by: Option<crate::catalog::ProductSort>,
    ) -> async_graphql::Result<Connection<crate::catalog::ProductCursor, ProductObject>> {
        let args = crate::catalog::ProductsArgs { first, after, last, before, filter, sort_by };
        Ok(crate::catalog::products(ctx, args).await?)
    }

    /// Staff: low-stock alerts of every SKU, newest first, from the last 7 days (one SKU's whole
    /// history: `product(sku) { stockAlerts }`). `first`: 1 to 100, default 20.
    #[graphql(
        guard = "crate::auth::StaffGuard",
        complexity = "cost::list(cost::LIST_QUERY, first.unwrap_or(DEFAULT_PAGE_SIZE), child_complexity)"
    )]
    async fn stock_alerts(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<crate::types::StockAlertObject>> {
        crate::types::stock_alerts(ctx, None, first).await
    }

    /// Staff: order counters over every order in the store.
    #[graphql(guard = "crate::auth::StaffGuard", complexity = "cost::METRICS + child_complexity")]
    async fn metrics(&self, ctx: &Context<'_>) -> async_graphql::Result<Metrics> {
        let stats = state(ctx)?.stores.orders.stats().await.map_err(ApiError::from)?;
        let average_processing_time_ms =
            if stats.processed == 0 { 0.0 } else { stats.processing_ms_total as f64 / stats.processed as f64 };
        let orders_by_status = OrderStatus::ALL
            .into_iter()
            .map(|status| {
                let count = stats.by_status.iter().filter(|(s, _)| *s == status).map(|(_, n)| *n).sum::<u64>();
                StatusCount { status: status.into(), count: gql_int(count) }
            })
            .collect();
        Ok(Metrics { orders_processed: gql_int(stats.processed), average_processing_time_ms, orders_by_status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_must_be_between_1_and_100() {
        assert_eq!(page_args("p", None, None).ok(), Some((20, None)));
        assert_eq!(page_args("p", Some(100), None).ok(), Some((100, None)));
        for bad in [0, -1, 101, i32::MAX, i32::MIN] {
            assert!(matches!(page_args("p", Some(bad), None), Err(ApiError::InvalidInput { .. })), "{bad}");
        }
    }
}
