//! What one GraphQL request may ask for, beyond the depth and complexity limits of [`crate::schema`]:
//!
//! - **Costs** of the fields that do real work ([`cost`]), used by the complexity limit: a scan or an
//!   aggregate costs far more than reading a field of an object already loaded.
//! - **Caps** on the document, checked right after parsing, before validation or execution
//!   ([`RequestLimits`]): at most [`MAX_ROOT_FIELDS`] root fields per operation, [`MAX_ALIASES`] aliases
//!   per document and [`MAX_MUTATIONS`] mutation fields per operation. Each refusal has its own
//!   `extensions.code` ([`crate::codes`]).
//! - The **order rate limit** on `placeOrder`, the same limiter as `POST /v1/orders` (see
//!   [`orderflow_ingest::rate_limit`]): a request whose `placeOrder` fields would go over it is refused
//!   whole, before anything runs, with code `rate_limited` (HTTP 429 with `Retry-After`).
//!
//! The time limit is applied by the HTTP transport ([`crate::http`]).

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Field, OperationType, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, Name, ServerError, ServerResult, Value, Variables};
use orderflow_identity::Caller;
use orderflow_ingest::rate_limit::{OrderRateLimiter, Placer, RateLimited};
use orderflow_schemas::UserId;

use crate::codes;

/// The most root fields (aliases included, through fragments) one operation may select. Real clients
/// ask for a handful; each root field is an independent read, so many of them are many reads.
pub const MAX_ROOT_FIELDS: usize = 16;

/// The most aliases one document may use. Aliases are how one request asks for the same expensive field
/// many times.
pub const MAX_ALIASES: usize = 16;

/// The most mutation fields one operation may run. Mutations run one after the other and some wait for
/// the order saga, so a long list of them holds a request open for a long time.
pub const MAX_MUTATIONS: usize = 5;

/// How deeply fragment spreads at the root of an operation are followed when counting root fields.
const MAX_FRAGMENT_NESTING: usize = 8;

/// The costs of the fields that do real work, in the units of the complexity limit
/// ([`crate::MAX_COMPLEXITY`]) where reading a field of a loaded object costs 1.
pub mod cost {
    /// `metrics`: an aggregate over every order in the store (a full scan on CQL). At most four per
    /// request fit under the complexity limit.
    pub const METRICS: usize = 1_000;
    /// `orders` and `stockAlerts`: a query over an index of the store, on top of what each row costs.
    pub const LIST_QUERY: usize = 50;
    /// `products`, unfiltered in SKU order: a page of the cached catalog listing.
    pub const PRODUCTS_LISTING: usize = 10;
    /// `products` filtered, searched or sorted otherwise: a pass over the whole catalog (then cached).
    pub const PRODUCTS_SCAN: usize = 500;

    /// The cost of a list field: its query, then `page` rows of `per_row` each.
    pub fn list(query: usize, page: i32, per_row: usize) -> usize {
        let rows = usize::try_from(page.clamp(1, crate::query::MAX_PAGE_SIZE)).unwrap_or(1);
        query.saturating_add(rows.saturating_mul(per_row))
    }
}

/// The request data that says who is asking: put there by the HTTP transport.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// The extension that enforces the caps and the `placeOrder` rate limit (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct RequestLimits {
    pub(crate) rate_limit: Option<Arc<OrderRateLimiter>>,
}

impl ExtensionFactory for RequestLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestLimitsExtension { rate_limit: self.rate_limit.clone() })
    }
}

struct RequestLimitsExtension {
    rate_limit: Option<Arc<OrderRateLimiter>>,
}

#[async_trait::async_trait]
impl Extension for RequestLimitsExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        check_caps(&doc)?;
        if let Some(limiter) = &self.rate_limit {
            let peer = ctx.data_opt::<Peer>().map(|p| p.0.ip());
            let authenticated = ctx.data_opt::<Caller>().and_then(Caller::customer);
            check_orders(&doc, variables, limiter, peer, authenticated)?;
        }
        Ok(doc)
    }
}

fn refused(code: &'static str, message: String) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

/// Refuses a document over [`MAX_ROOT_FIELDS`], [`MAX_MUTATIONS`] or [`MAX_ALIASES`].
pub(crate) fn check_caps(doc: &ExecutableDocument) -> ServerResult<()> {
    for (_, op) in doc.operations.iter() {
        let mut roots = 0;
        root_fields(doc, &op.node.selection_set.node, 0, &mut |_| roots += 1);
        if op.node.ty == OperationType::Mutation && roots > MAX_MUTATIONS {
            return Err(refused(
                codes::TOO_MANY_MUTATIONS,
                format!(
                    "an operation may run at most {MAX_MUTATIONS} mutations (this one has {roots}); send several requests"
                ),
            ));
        }
        if roots > MAX_ROOT_FIELDS {
            return Err(refused(
                codes::TOO_MANY_ROOT_FIELDS,
                format!(
                    "an operation may select at most {MAX_ROOT_FIELDS} root fields (this one has {roots}); send several requests"
                ),
            ));
        }
    }
    let sets = doc
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set.node)
        .chain(doc.fragments.values().map(|f| &f.node.selection_set.node));
    let aliases: usize = sets.map(count_aliases).sum();
    if aliases > MAX_ALIASES {
        return Err(refused(
            codes::TOO_MANY_ALIASES,
            format!("a request may use at most {MAX_ALIASES} aliases (this one has {aliases}); send several requests"),
        ));
    }
    Ok(())
}

/// Calls `each` with every root field of `set`, following fragments (up to [`MAX_FRAGMENT_NESTING`]
/// deep, so a fragment cycle, which validation refuses later, ends here too).
fn root_fields<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    nesting: usize,
    each: &mut dyn FnMut(&'a Field),
) {
    if nesting > MAX_FRAGMENT_NESTING {
        return;
    }
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => each(&f.node),
            Selection::InlineFragment(i) => root_fields(doc, &i.node.selection_set.node, nesting + 1, each),
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                    root_fields(doc, &fragment.node.selection_set.node, nesting + 1, each);
                }
            }
        }
    }
}

/// The aliases written in `set` and the selection sets under it (not following fragment spreads: each
/// fragment definition is counted once, by [`check_caps`]). The parser's recursion limit bounds the
/// nesting.
fn count_aliases(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(f) => usize::from(f.node.alias.is_some()) + count_aliases(&f.node.selection_set.node),
            Selection::InlineFragment(i) => count_aliases(&i.node.selection_set.node),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

/// Counts every `placeOrder` of the document's mutations against the order rate limit, keyed by
/// `input.userId` (a literal or from the variables) or by the peer's address; refuses the whole request
/// if one is over. A `userId` that is missing or invalid is not counted: the resolver refuses that order.
fn check_orders(
    doc: &ExecutableDocument,
    variables: &Variables,
    limiter: &OrderRateLimiter,
    peer: Option<std::net::IpAddr>,
    authenticated: Option<&UserId>,
) -> ServerResult<()> {
    let mut placements = Vec::new();
    for (_, op) in doc.operations.iter().filter(|(_, op)| op.node.ty == OperationType::Mutation) {
        root_fields(doc, &op.node.selection_set.node, 0, &mut |f| {
            if f.name.node == "placeOrder" {
                placements.push(claimed_user(f, variables));
            }
        });
    }
    // A signed-in customer may leave `userId` out: the order is theirs.
    for claimed in placements.iter().filter_map(|claimed| claimed.as_ref().or(authenticated)) {
        let placer = Placer { authenticated, claimed, peer };
        if let Err(limited) = limiter.check(&placer) {
            return Err(rate_limited(&limited));
        }
    }
    Ok(())
}

fn rate_limited(limited: &RateLimited) -> ServerError {
    let mut error = refused(codes::RATE_LIMITED, limited.message());
    if let Some(extensions) = &mut error.extensions {
        extensions.set("retryAfterSeconds", limited.retry_after_secs());
    }
    error
}

/// `input.userId` of a `placeOrder` field, resolving variables.
fn claimed_user(field: &Field, variables: &Variables) -> Option<UserId> {
    let (_, input) = field.arguments.iter().find(|(name, _)| name.node == "input")?;
    let input = input.node.clone().into_const_with(|name| variables.get(&name).cloned().ok_or(())).ok()?;
    let Value::Object(input) = input else { return None };
    // An `ID` input takes an integer too.
    let user = match input.get(&Name::new("userId"))? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    UserId::parse(user).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn code(query: &str) -> Option<String> {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        check_caps(&doc).err().map(|e| {
            e.extensions.and_then(|x| x.get("code").map(|c| c.to_string().trim_matches('"').to_owned())).unwrap()
        })
    }

    #[test]
    fn caps_count_root_fields_aliases_and_mutations_through_fragments() {
        assert_eq!(code("{ a b c }"), None);
        let roots = (0..=MAX_ROOT_FIELDS).map(|i| format!("f{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(code(&format!("{{ {roots} }}")).as_deref(), Some(codes::TOO_MANY_ROOT_FIELDS));
        let via_fragment = format!("{{ ...F }} fragment F on Query {{ {roots} }}");
        assert_eq!(code(&via_fragment).as_deref(), Some(codes::TOO_MANY_ROOT_FIELDS));
        let aliases = (0..=MAX_ALIASES).map(|i| format!("a{i}: sku")).collect::<Vec<_>>().join(" ");
        assert_eq!(
            code(&format!("{{ product(sku: \"X\") {{ {aliases} }} }}")).as_deref(),
            Some(codes::TOO_MANY_ALIASES)
        );
        let mutations = (0..=MAX_MUTATIONS).map(|i| format!("m{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(code(&format!("mutation {{ {mutations} }}")).as_deref(), Some(codes::TOO_MANY_MUTATIONS));
        assert_eq!(code("{ ...F } fragment F on Query { ...F }"), None, "a cycle ends (validation refuses it)");
    }

    #[test]
    fn the_user_of_place_order_comes_from_a_literal_or_the_variables() {
        let doc = async_graphql::parser::parse_query(
            "mutation($u: String!, $i: PlaceOrderInput!) { a: placeOrder(input: {userId: $u, items: []}) { replayed } \
             b: placeOrder(input: $i) { replayed } c: placeOrder(input: {userId: \"carol\"}) { replayed } d: placeOrder(input: {userId: 42}) { replayed } }",
        )
        .unwrap();
        let variables = Variables::from_json(serde_json::json!({"u": "alice", "i": {"userId": "bob", "items": []}}));
        let mut users = Vec::new();
        for (_, op) in doc.operations.iter() {
            root_fields(&doc, &op.node.selection_set.node, 0, &mut |f| users.push(claimed_user(f, &variables)));
        }
        let names: Vec<_> = users.iter().map(|u| u.as_ref().map(UserId::as_str)).collect();
        assert_eq!(names, [Some("alice"), Some("bob"), Some("carol"), Some("42")]);
    }
}
