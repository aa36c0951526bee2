//! The GraphQL API of orderflow: the catalog, order placement and tracking for customers, and staff
//! administration (products, stock, order status) for staff, by the request's `Caller` (see
//! `orderflow_identity`).
//!
//! - [`schema`] builds the executable schema over an [`ApiState`]; [`router`] serves it over HTTP.
//! - Every error a resolver raises carries a stable `extensions.code` (see [`codes`]); errors the
//!   GraphQL engine raises itself (syntax, validation, limits, argument coercion) get one too.
//! - Order state has one writer, the order saga: the staff mutations that change an order publish a
//!   request on the orders topic and wait for the saga to apply it, they never write the order row.

mod auth;
pub mod catalog;
mod error;
mod http;
pub mod limits;
mod mutation;
mod query;
mod scalars;
mod stock_change;
mod types;

use std::fmt;
use std::sync::Arc;

use async_graphql::{EmptySubscription, Schema};
use orderflow_ingest::Intake;
use orderflow_platform::{Bus, Stores};

use crate::catalog::CatalogCache;

pub use error::codes;
pub use http::{DEFAULT_TIMEOUT, HttpOptions, MAX_BODY_BYTES, router, router_with};
pub use mutation::Mutation;
pub use orderflow_identity::{AuthMode, Caller, Principal};
pub use query::Query;
pub use scalars::Decimal;

/// The executable schema.
pub type OrderflowSchema = Schema<Query, Mutation, EmptySubscription>;

/// The deepest selection nesting accepted for data. The deepest real query (`orders → edges → node →
/// items → sku`) reaches 5. Introspection queries are not held to it (stock clients nest `ofType` nine
/// times and more): they run on [`introspection_schema`].
pub const MAX_DEPTH: usize = 13;

/// The most work one request may ask for. List fields that take `first` cost their query
/// ([`limits::cost`]) plus `first` times their selection, so a full page of 100 orders with every field
/// costs about 2,000 and a full page of products about 1,300; `metrics` (an aggregate over every order)
/// costs 1,000 and a filtered or searched `products` 500 before its rows. This allows a couple of full
/// pages per request and refuses a query that repeats a scan or a list under many aliases.
pub const MAX_COMPLEXITY: usize = 5_000;

/// How deeply the parser may recurse (nested lists, objects and selections in the document) before it
/// refuses the document; bounds stack use on hostile input.
pub const MAX_RECURSIVE_DEPTH: usize = 32;

/// What the resolvers work with.
#[derive(Clone)]
pub struct ApiState {
    pub stores: Stores,
    /// The catalog read model behind its cache (shared with the catalog projector of the same process,
    /// which invalidates it).
    pub catalog: Arc<CatalogCache>,
    pub bus: Arc<dyn Bus>,
    pub intake: Intake,
    /// Whether anonymous callers may place and read orders.
    pub auth_mode: AuthMode,
}

impl ApiState {
    /// The state with a fresh catalog cache over `stores.catalog_view`.
    pub fn new(stores: Stores, bus: Arc<dyn Bus>, intake: Intake, auth_mode: AuthMode) -> Self {
        let catalog = Arc::new(CatalogCache::new(Arc::clone(&stores.catalog_view)));
        Self { stores, catalog, bus, intake, auth_mode }
    }
}

impl fmt::Debug for ApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiState")
            .field("stores", &self.stores)
            .field("bus", &self.bus)
            .field("intake", &self.intake)
            .field("auth_mode", &self.auth_mode)
            .finish()
    }
}

/// Builds the schema with bounded cost: see [`MAX_DEPTH`], [`MAX_COMPLEXITY`],
/// [`MAX_RECURSIVE_DEPTH`] and the caps of [`limits`]. Introspection stays on (GraphiQL needs it; the
/// schema is public anyway). Batched requests are refused by [`router`], not here.
pub fn schema(state: ApiState) -> OrderflowSchema {
    schema_with(state, None, true)
}

/// [`schema`], with `placeOrder` held to the order rate limit `rate_limit`; with `introspection` off,
/// also without introspection and without "did you mean" suggestions in validation errors (production:
/// the schema is then not discoverable by probing).
pub fn schema_with(
    state: ApiState,
    rate_limit: Option<Arc<orderflow_ingest::rate_limit::OrderRateLimiter>>,
    introspection: bool,
) -> OrderflowSchema {
    let builder = Schema::build(Query, Mutation, EmptySubscription)
        .data(state)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(MAX_RECURSIVE_DEPTH)
        .extension(error::ErrorCodes)
        .extension(limits::RequestLimits { rate_limit });
    let builder = if introspection { builder } else { builder.disable_introspection().disable_suggestions() };
    builder.finish()
}

/// The schema for introspection-only requests (see [`is_introspection_only`]): no depth or complexity
/// limit, since GraphiQL's docs panel, graphql-codegen and Apollo tooling send introspection queries
/// deeper than any data query needs (a type reference nests `ofType` nine times); data fields resolve to
/// nothing here (`introspection_only`). The parser's recursion bound still applies, and what keeps the
/// answer small is the bound on nested lists checked before a request is routed here.
pub fn introspection_schema(state: ApiState) -> OrderflowSchema {
    Schema::build(Query, Mutation, EmptySubscription)
        .data(state)
        .introspection_only()
        .limit_recursive_depth(MAX_RECURSIVE_DEPTH)
        .extension(error::ErrorCodes)
        .extension(limits::RequestLimits::default())
        .finish()
}

/// How many introspection lists an introspection-only request may nest (`types → fields → args` is 3
/// in every stock client's query). Lists fan out: `types { fields { type { fields { type { fields … } } } } }`
/// multiplies the answer by the number of fields at every level, which a depth limit alone would allow
/// up to its bound, so nesting of lists is what is bounded; single-object chains such as `ofType` are not.
pub const MAX_INTROSPECTION_LIST_NESTING: usize = 4;

/// The introspection fields that return lists.
const INTROSPECTION_LISTS: [&str; 8] =
    ["types", "fields", "args", "inputFields", "interfaces", "possibleTypes", "enumValues", "directives"];

/// Whether `query` asks for nothing but introspection, within [`MAX_INTROSPECTION_LIST_NESTING`]: every
/// operation is a query whose root fields are all `__schema`, `__type` or `__typename`. Such a request
/// runs on [`introspection_schema`]; anything else (data, mutations, mixed, or introspection nesting lists
/// deeper) runs on the limited schema, which refuses what is too deep.
pub fn is_introspection_only(query: &str) -> bool {
    use async_graphql::parser::types::{OperationType, Selection};
    let Ok(doc) = async_graphql::parser::parse_query(query) else { return false };
    let mut operations = doc.operations.iter().peekable();
    operations.peek().is_some()
        && operations.all(|(_, op)| {
            op.node.ty == OperationType::Query
                && op.node.selection_set.node.items.iter().all(|item| match &item.node {
                    Selection::Field(f) => f.node.name.node.starts_with("__"),
                    Selection::FragmentSpread(_) | Selection::InlineFragment(_) => false,
                })
                && list_nesting(&doc, &op.node.selection_set.node, 0, 0)
                    .is_some_and(|n| n <= MAX_INTROSPECTION_LIST_NESTING)
        })
}

/// The deepest nesting of introspection lists under `set`, following fragment spreads; `None` if it
/// exceeds the bound or fragments nest past [`MAX_RECURSIVE_DEPTH`] (a cycle, say).
fn list_nesting(
    doc: &async_graphql::parser::types::ExecutableDocument,
    set: &async_graphql::parser::types::SelectionSet,
    lists: usize,
    depth: usize,
) -> Option<usize> {
    use async_graphql::parser::types::Selection;
    if lists > MAX_INTROSPECTION_LIST_NESTING || depth > MAX_RECURSIVE_DEPTH {
        return None;
    }
    let mut deepest = lists;
    for item in &set.items {
        let below = match &item.node {
            Selection::Field(f) => {
                let is_list = INTROSPECTION_LISTS.contains(&f.node.name.node.as_str());
                list_nesting(doc, &f.node.selection_set.node, lists + usize::from(is_list), depth + 1)?
            }
            Selection::InlineFragment(i) => list_nesting(doc, &i.node.selection_set.node, lists, depth + 1)?,
            Selection::FragmentSpread(spread) => {
                let fragment = doc.fragments.get(&spread.node.fragment_name.node)?;
                list_nesting(doc, &fragment.node.selection_set.node, lists, depth + 1)?
            }
        };
        deepest = deepest.max(below);
    }
    Some(deepest)
}
