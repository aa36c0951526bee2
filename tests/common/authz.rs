//! The role table of the README ("Who may do what"), walked: every query, mutation and REST route of
//! the API, for every role, over real sockets, with tokens signed by a key pair made here and published
//! to the server as a JWKS file.

use std::path::Path;

use orderflow::{AuthModeArg, Settings};
use orderflow_identity::testing::{TestKeys, now, sign, test_keys};
use serde_json::{Value, json};

use super::{ADMIN_TOKEN, TestApp};

const ISSUER: &str = "https://id.test.example";
const AUDIENCE: &str = "orderflow-test";

/// Signed tokens of each role, for one server's keys.
pub struct Tokens {
    keys: TestKeys,
}

impl Tokens {
    fn token(&self, sub: &str, roles: &[&str]) -> String {
        sign(&self.keys, json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "roles": roles}))
    }

    /// A customer's token.
    pub fn customer(&self, user: &str) -> String {
        self.token(user, &[])
    }

    pub fn staff(&self) -> String {
        self.token("sam-staff", &["staff"])
    }

    pub fn admin(&self) -> String {
        self.token("ann-admin", &["admin"])
    }

    /// A customer token that expired an hour ago.
    pub fn expired(&self) -> String {
        sign(&self.keys, json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now() - 3600}))
    }
}

/// Configures `settings` to verify customer and staff JWTs signed by keys made here (their JWKS written
/// into `dir`), in `mode`; returns the tokens.
pub fn with_jwt(settings: &mut Settings, dir: &Path, mode: AuthModeArg) -> Tokens {
    let keys = test_keys(42, "test-key-1");
    let path = dir.join("jwks.json");
    std::fs::write(&path, &keys.jwks).unwrap();
    settings.auth_jwks = Some(orderflow_identity::jwt::KeySource::File(path));
    settings.auth_algorithms = "EdDSA".into();
    settings.auth_issuer = Some(ISSUER.into());
    settings.auth_audience = Some(AUDIENCE.into());
    settings.auth = Some(mode);
    Tokens { keys }
}

/// What a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    /// Done, or refused for a reason past the access check (e.g. `order_not_found`).
    Ok,
    /// Answered as if the thing did not exist: `null`, an empty list, a 404.
    Hidden,
    /// 401 / `unauthorized`: needs (valid) credentials.
    Unauth,
    /// 403 / `forbidden`: the caller's role may not.
    Forbidden,
    /// A customer named another user.
    Mismatch,
}

use Got::{Forbidden as F, Hidden as H, Mismatch as M, Ok as A, Unauth as U};

/// An operation of the walk: (name, query, the data path that must be non-null, expected per caller).
type GraphqlRow<'a> = (&'a str, String, &'a str, [Got; 6]);
/// A REST route of the walk: (name, method, path, body, expected per caller).
type RestRow<'a> = (&'a str, &'a str, String, Option<Value>, [Got; 6]);

/// The callers, in the order of the expectation rows below.
const WHO: [&str; 6] = ["anonymous", "alice", "bob", "staff", "admin JWT", "admin token"];

fn gql_outcome(status: u16, v: &Value, path: &str) -> Got {
    if status == 401 {
        return U;
    }
    match v["errors"][0]["extensions"]["code"].as_str() {
        Some("unauthorized") => return U,
        Some("forbidden") => return F,
        Some("user_mismatch") => return M,
        Some(_) => return A,
        None => {}
    }
    let data = v.pointer(path).cloned().unwrap_or(Value::Null);
    match data {
        Value::Null => H,
        Value::Array(ref items) if items.is_empty() => H,
        _ => A,
    }
}

fn rest_outcome(status: u16) -> Got {
    match status {
        401 => U,
        403 => M,
        404 => H,
        _ => A,
    }
}

/// What the walk works on: products of this run (the CQL store outlives a run) and an order of `alice`.
pub struct Prepared {
    /// The two customers (names of this run: the CQL store outlives a run, and with it their orders).
    pub alice: String,
    pub bob: String,
    pub sku: String,
    pub archivable_sku: String,
    pub alice_order: String,
}

/// Walks every operation for every caller and compares with the role table; `mode` is the server's.
pub async fn walk(app: &TestApp, tokens: &Tokens, mode: AuthModeArg, prepared: &Prepared) {
    let alice_order = prepared.alice_order.as_str();
    let (alice, bob) = (prepared.alice.as_str(), prepared.bob.as_str());
    let open = mode == AuthModeArg::Open;
    // In open mode anonymous callers may place orders and read one by id; in required mode not.
    let anon_orders = if open { A } else { U };
    let auth: [Option<String>; 6] = [
        None,
        Some(tokens.customer(alice)),
        Some(tokens.customer(bob)),
        Some(tokens.staff()),
        Some(tokens.admin()),
        Some(ADMIN_TOKEN.to_owned()),
    ];
    let staff_only = [U, F, F, A, A, A];
    let p = prepared.sku.as_str();
    // (name, query, the data path that must be non-null, expected per caller)
    let graphql: Vec<GraphqlRow<'_>> = vec![
        (
            "order(id) of alice",
            format!("{{ order(id: \"{alice_order}\") {{ id }} }}"),
            "/data/order",
            [anon_orders, A, H, A, A, A],
        ),
        (
            "orders",
            "{ orders(first: 100) { edges { node { id userId } } } }".into(),
            "/data/orders/edges",
            [U, A, H, A, A, A],
        ),
        (
            "orders(userId: alice)",
            format!("{{ orders(userId: \"{alice}\") {{ edges {{ node {{ id }} }} }} }}"),
            "/data/orders/edges",
            [U, A, H, A, A, A],
        ),
        (
            "product.availability",
            format!("{{ product(sku: \"{p}\") {{ availability }} }}"),
            "/data/product/availability",
            [A; 6],
        ),
        (
            "products.availability",
            "{ products(first: 5) { edges { node { sku availability } } } }".into(),
            "/data/products/edges",
            [A; 6],
        ),
        (
            "product.stock",
            format!("{{ product(sku: \"{p}\") {{ stock {{ available }} }} }}"),
            "/data/product/stock",
            staff_only,
        ),
        (
            "product.lowStock",
            format!("{{ product(sku: \"{p}\") {{ lowStock {{ threshold }} }} }}"),
            "/data/product/lowStock",
            staff_only,
        ),
        (
            "product.stockAlerts",
            format!("{{ product(sku: \"{p}\") {{ stockAlerts {{ seq }} }} }}"),
            "/data/product",
            staff_only,
        ),
        (
            "product.stockMovements",
            format!("{{ product(sku: \"{p}\") {{ stockMovements {{ kind }} }} }}"),
            "/data/product/stockMovements",
            staff_only,
        ),
        (
            "products(includeArchived)",
            "{ products(filter: {includeArchived: true}) { edges { node { sku } } } }".into(),
            "/data/products/edges",
            staff_only,
        ),
        ("stockAlerts", "{ stockAlerts { sku } }".into(), "/data", staff_only),
        ("metrics", "{ metrics { ordersProcessed } }".into(), "/data/metrics", staff_only),
        (
            "createProduct",
            format!(
                "mutation {{ createProduct(input: {{sku: \"{p}\", name: \"Authz\", price: \"1.00\", stock: 1000}}) {{ sku }} }}"
            ),
            "/data/createProduct",
            staff_only,
        ),
        (
            "updateProduct",
            format!("mutation {{ updateProduct(sku: \"{p}\", input: {{description: \"d\"}}) {{ sku }} }}"),
            "/data/updateProduct",
            staff_only,
        ),
        (
            "adjustStock",
            format!("mutation {{ adjustStock(sku: \"{p}\", delta: 1, reason: \"authz\") {{ available }} }}"),
            "/data/adjustStock",
            staff_only,
        ),
        (
            "setLowStockThreshold",
            format!("mutation {{ setLowStockThreshold(sku: \"{p}\", threshold: 5) {{ threshold }} }}"),
            "/data/setLowStockThreshold",
            staff_only,
        ),
        (
            "archiveProduct",
            format!("mutation {{ archiveProduct(sku: \"{}\") {{ sku }} }}", prepared.archivable_sku),
            "/data",
            staff_only,
        ),
        (
            "updateOrderStatus",
            "mutation { updateOrderStatus(id: \"no-such-order\", status: CANCELLED) { id } }".into(),
            "/data",
            staff_only,
        ),
        (
            "refundOrder",
            "mutation { refundOrder(id: \"no-such-order\", amount: \"1.00\", reason: \"authz\") { id } }".into(),
            "/data",
            staff_only,
        ),
        // Customers cancel their own orders: past the access check, a missing one is `order_not_found`.
        ("cancelOrder", "mutation { cancelOrder(id: \"no-such-order\") { id } }".into(), "/data", [U, A, A, A, A, A]),
        (
            "placeOrder as alice",
            format!(
                "mutation {{ placeOrder(input: {{userId: \"{alice}\", items: [{{sku: \"{p}\", quantity: 1}}]}}) {{ order {{ id }} }} }}"
            ),
            "/data/placeOrder",
            [anon_orders, A, M, A, A, A],
        ),
        (
            "placeOrder without userId",
            format!(
                "mutation {{ placeOrder(input: {{items: [{{sku: \"{p}\", quantity: 1}}]}}) {{ order {{ userId }} }} }}"
            ),
            "/data/placeOrder",
            [if open { A } else { U }, A, A, A, A, A],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, query, path, expected) in &graphql {
        for (i, who) in WHO.iter().enumerate() {
            let mut req = app.http.post(format!("{}/graphql", app.base)).json(&json!({"query": query}));
            if let Some(token) = &auth[i] {
                req = req.bearer_auth(token);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            let mut got = gql_outcome(status, &v, path);
            // Without a user id, an anonymous or staff placement is refused as invalid input: past the
            // access check.
            if *name == "placeOrder without userId" && v["errors"][0]["extensions"]["field"] == "input.userId" {
                got = A;
            }
            if got != expected[i] {
                wrong.push(format!("{name} as {who}: expected {:?}, got {got:?}: {v}", expected[i]));
            }
        }
    }
    // Listings show a customer only their own orders.
    for (i, user) in [(1, alice), (2, bob)] {
        let v = app
            .http
            .post(format!("{}/graphql", app.base))
            .bearer_auth(auth[i].as_ref().unwrap())
            .json(&json!({"query": "{ orders(first: 100) { edges { node { userId } } } }"}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let users: Vec<&str> = v["data"]["orders"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["node"]["userId"].as_str())
            .collect();
        if users.iter().any(|u| *u != user) {
            wrong.push(format!("{user} listed someone else's orders: {users:?}"));
        }
    }

    // REST.
    let body_alice = json!({"user_id": alice, "items": [{"sku": p, "quantity": 1}]});
    let body_nobody = json!({"items": [{"sku": p, "quantity": 1}]});
    let rest: Vec<RestRow<'_>> = vec![
        ("POST /v1/orders as alice", "POST", "/v1/orders".into(), Some(body_alice), [anon_orders, A, M, A, A, A]),
        (
            "POST /v1/orders without user_id",
            "POST",
            "/v1/orders".into(),
            Some(body_nobody),
            [anon_orders, A, A, A, A, A],
        ),
        ("GET /v1/orders/{alice's}", "GET", format!("/v1/orders/{alice_order}"), None, [anon_orders, A, H, A, A, A]),
        (
            "POST /v1/orders/{missing}/cancel",
            "POST",
            "/v1/orders/no-such-order/cancel".into(),
            Some(json!({})),
            [U, H, H, H, H, H],
        ),
    ];
    for (name, method, path, body, expected) in &rest {
        for (i, who) in WHO.iter().enumerate() {
            let url = format!("{}{path}", app.base);
            let mut req =
                if *method == "POST" { app.http.post(url).json(body.as_ref().unwrap()) } else { app.http.get(url) };
            if let Some(token) = &auth[i] {
                req = req.bearer_auth(token);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            // Without a user id an anonymous (open mode) or staff placement is refused as invalid: past
            // the access check.
            let got = if status == 422 && v["code"] == "invalid_user_id" { A } else { rest_outcome(status) };
            if got != expected[i] {
                wrong.push(format!("{name} as {who}: expected {:?}, got {got:?} ({status}): {v}", expected[i]));
            }
        }
    }

    // A bad token is refused before anything runs, on every API route, whatever it asks.
    for (what, token) in [("expired JWT", tokens.expired()), ("wrong admin token", format!("{ADMIN_TOKEN}x"))] {
        let v = app
            .http
            .post(format!("{}/graphql", app.base))
            .bearer_auth(&token)
            .json(&json!({"query": "{ products { edges { cursor } } }"}))
            .send()
            .await
            .unwrap();
        let status = v.status().as_u16();
        let www = v.headers().get("www-authenticate").map(|h| h.to_str().unwrap_or("").to_owned());
        if status != 401 || www.as_deref() != Some("Bearer error=\"invalid_token\"") {
            wrong.push(format!("{what} on /graphql: {status} {www:?}"));
        }
        let v = app.http.get(format!("{}/v1/orders/{alice_order}", app.base)).bearer_auth(&token).send().await.unwrap();
        if v.status().as_u16() != 401 {
            wrong.push(format!("{what} on GET /v1/orders: {}", v.status()));
        }
    }
    assert!(wrong.is_empty(), "the API does not follow the role table:\n{}", wrong.join("\n"));
}

/// Creates the products the walk uses (as the admin token) and places an order as customer `alice`,
/// and waits until it is CONFIRMED.
pub async fn prepare(app: &TestApp, tokens: &Tokens) -> Prepared {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let prepared = Prepared {
        alice: format!("alice-{run}"),
        bob: format!("bob-{run}"),
        sku: format!("SKU-AUTHZ-{run}"),
        archivable_sku: format!("SKU-AUTHZ-OLD-{run}"),
        alice_order: String::new(),
    };
    for (sku, stock) in [(prepared.sku.as_str(), 1000), (prepared.archivable_sku.as_str(), 0)] {
        let v = app
            .gql_stock_change(
                "mutation($s: String!, $n: Int!){ createProduct(input: {sku: $s, name: \"Authz\", price: \"1.00\", stock: $n}){ sku } }",
                json!({"s": sku, "n": stock}),
            )
            .await;
        assert_eq!(v["data"]["createProduct"]["sku"], sku, "{v}");
        app.wait_product(sku).await;
    }
    let alice = tokens.customer(&prepared.alice);
    let resp = app
        .http
        .post(format!("{}/v1/orders", app.base))
        .bearer_auth(&alice)
        .json(&json!({"items": [{"sku": prepared.sku, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    loop {
        let v: Value = app
            .http
            .get(format!("{}/v1/orders/{id}", app.base))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "CONFIRMED" {
            assert_eq!(v["user_id"], prepared.alice, "placed without user_id: the order is the signed-in customer's");
            return Prepared { alice_order: id, ..prepared };
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "alice's order never confirmed: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
