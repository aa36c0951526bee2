//! The HTTP server's limits over real sockets, as misbehaving or unlucky clients meet them: an oversized
//! body sent in full, headers that never finish, a body that never finishes, more requests than the server
//! takes at once, too many orders from one caller, a browser from another origin, GraphQL requests that
//! ask for too much.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `head` and then the whole `body` before reading anything, as Python's urllib does, and returns
/// the status line and the JSON body of the answer. The heads ask for `Connection: close` (urllib's too),
/// so the answer ends when the server closes.
async fn send_whole_then_read(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (String, Value) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap_or_else(|e| panic!("writing the body failed (the server reset it?): {e}"));
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap_or_else(|e| panic!("reading the answer failed: {e}"));
    parse(&answer)
}

fn parse(answer: &[u8]) -> (String, Value) {
    let text = String::from_utf8_lossy(answer);
    let status = text.lines().next().unwrap_or_default().to_owned();
    let json = text.split("\r\n\r\n").nth(1).map(|b| serde_json::from_str(b).unwrap_or(Value::Null));
    (status, json.unwrap_or(Value::Null))
}

fn post_head(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_order_sent_in_full_gets_the_413() {
    let app = TestApp::start().await;
    // More than loopback's socket buffers hold (about 4 MB), so a server that stops reading at the
    // limit resets the connection while the client is still writing; less than the 16 MiB drained.
    let body = vec![b' '; 8_000_000];
    let (status, json) = send_whole_then_read(app.app().addr, &post_head("/v1/orders", body.len()), &body).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(json["code"], "payload_too_large", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_order_gets_the_413() {
    let app = TestApp::start().await;
    let head = "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut body = Vec::new();
    for _ in 0..500 {
        body.extend_from_slice(format!("{:x}\r\n", 16_384).as_bytes());
        body.extend_from_slice(&[b' '; 16_384]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (status, json) = send_whole_then_read(app.app().addr, head, &body).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(json["code"], "payload_too_large", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_graphql_request_sent_in_full_gets_the_413() {
    let app = TestApp::start().await;
    // As above: more than the socket buffers hold.
    let body = vec![b' '; 8_000_000];
    let (status, json) = send_whole_then_read(app.app().addr, &post_head("/graphql", body.len()), &body).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(json["errors"][0]["extensions"]["code"], "payload_too_large", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_100_continue_gets_the_413_without_sending_the_body() {
    let app = TestApp::start().await;
    let head = "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n";
    let (status, json) = send_whole_then_read(app.app().addr, head, b"").await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(json["code"], "payload_too_large", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_finish_are_cut_off_after_the_header_read_timeout() {
    let app = TestApp::start_with(|s| s.header_read_timeout = Duration::from_millis(500)).await;
    let mut conn = TcpStream::connect(app.app().addr).await.unwrap();
    conn.write_all(b"GET /v1/orders/x HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the timeout: {:?}", started.elapsed());
}

/// Opens a connection that sends an order's headers and half its body, then stalls: a request the server
/// is busy with until the client finishes or a timeout ends it.
async fn stalled_order(addr: std::net::SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(post_head("/v1/orders", 100).as_bytes()).await.unwrap();
    conn.write_all(b"{\"user_id\": \"alice\",").await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_gets_a_503_timeout() {
    let app = TestApp::start_with(|s| s.request_timeout = Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut conn = stalled_order(app.app().addr).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let (status, json) = parse(&answer);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(json["code"], "timeout", "{json}");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_limit_are_shed_with_503_and_retry_after() {
    let app = TestApp::start_with(|s| s.max_concurrent_requests = 2).await;
    let busy = [stalled_order(app.app().addr).await, stalled_order(app.app().addr).await];
    // Let the server take both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let r = app.http.get(format!("{}/v1/orders/some-order", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "overloaded");
    let r = app.http.post(format!("{}/graphql", app.base)).json(&serde_json::json!({"query": "{ __typename }"}));
    assert_eq!(r.send().await.unwrap().status(), 503, "the limit covers GraphQL too");
    // Probes are not shed: a busy process is alive and ready.
    let r = app.http.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(format!("{}/readyz", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Once the stalled clients go away, their slots are free again.
    drop(busy);
    let started = Instant::now();
    loop {
        let r = app.http.get(format!("{}/v1/orders/some-order", app.base)).send().await.unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still {} after the slots were freed", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one_per_second(burst: u32) -> impl FnOnce(&mut orderflow::Settings) {
    move |s| {
        s.order_rate_limit = std::num::NonZeroU32::new(1);
        s.order_rate_limit_burst = std::num::NonZeroU32::new(burst);
    }
}

/// Posts orders of `user` (for a SKU that does not exist: the limit is checked before the order is
/// priced, so they are cheap) until one is refused; returns how many went through first and the refusal.
async fn orders_until_refused(app: &TestApp, user: &str) -> (usize, reqwest::Response, Duration) {
    let started = Instant::now();
    for passed in 0..20 {
        let body = serde_json::json!({"user_id": user, "items": [{"sku": "SKU-NONE", "quantity": 1}]});
        let r = app.http.post(format!("{}/v1/orders", app.base)).json(&body).send().await.unwrap();
        if r.status() == 429 {
            return (passed, r, started.elapsed());
        }
        assert_eq!(r.status(), 422, "an order under the limit reaches intake (and fails on its SKU)");
    }
    panic!("20 orders in {:?} and none refused", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_over_the_rate_limit_get_429_with_retry_after() {
    let app = TestApp::start_with(one_per_second(3)).await;
    let (passed, r, took) = orders_until_refused(&app, "hasty").await;
    // The burst, plus one per second that passed meanwhile.
    assert!(passed >= 3 && passed <= 3 + took.as_secs() as usize + 1, "{passed} passed in {took:?}");
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    // Another user has a bucket of its own, and a valid order of theirs goes through.
    let (status, body) =
        app.post_order(serde_json::json!({"user_id": "patient", "items": [{"sku": "SKU-PIZZA", "quantity": 1}]})).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_address_every_user_id_from_one_client_shares_the_limit() {
    let app = TestApp::start_with(|s| {
        one_per_second(2)(s);
        s.order_rate_limit_key = orderflow::config::OrderRateLimitKey::Ip;
    })
    .await;
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let body = serde_json::json!({"user_id": format!("user-{i}"), "items": [{"sku": "SKU-NONE", "quantity": 1}]});
        let r = app.http.post(format!("{}/v1/orders", app.base)).json(&body).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    let passed = statuses.iter().filter(|s| **s == 422).count();
    assert!(statuses.contains(&429), "8 orders from one address in {:?}: {statuses:?}", started.elapsed());
    assert!(passed <= 2 + started.elapsed().as_secs() as usize + 1, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_rate_limit_no_order_is_refused_for_rate() {
    let app = TestApp::start().await;
    for _ in 0..20 {
        let body = serde_json::json!({"user_id": "hasty", "items": [{"sku": "SKU-NONE", "quantity": 1}]});
        let r = app.http.post(format!("{}/v1/orders", app.base)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 422);
        assert!(r.headers().get("retry-after").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_place_order_counts_against_the_same_rate_limit() {
    let app = TestApp::start_with(one_per_second(1)).await;
    let twice = "mutation { a: placeOrder(input: {userId: \"gq\", items: [{sku: \"SKU-PIZZA\", quantity: 1}]}) { order { id } } \
                 b: placeOrder(input: {userId: \"gq\", items: [{sku: \"SKU-PIZZA\", quantity: 1}]}) { order { id } } }";
    let r =
        app.http.post(format!("{}/graphql", app.base)).json(&serde_json::json!({"query": twice})).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "rate_limited", "{body}");
    assert!(body["data"].is_null(), "nothing ran: {body}");
}

const SHOP: &str = "https://shop.example";

async fn preflight(app: &TestApp, path: &str, origin: &str, headers: &str) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, format!("{}{path}", app.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", headers)
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only() {
    let app = TestApp::start_with(|s| s.cors_allow_origin = vec![SHOP.into(), "http://localhost:3000".into()]).await;
    for (path, headers) in [("/v1/orders", "content-type,idempotency-key"), ("/graphql", "content-type,authorization")]
    {
        let r = preflight(&app, path, SHOP, headers).await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(header(&r, "access-control-allow-origin"), Some(SHOP), "{path}");
        assert!(header(&r, "access-control-allow-methods").is_some_and(|m| m.contains("POST")), "{path}");
        let allowed = header(&r, "access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
        for h in headers.split(',') {
            assert!(allowed.contains(h), "{path}: {h} not in {allowed:?}");
        }
        let r = preflight(&app, path, "https://evil.example", headers).await;
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{path}");
    }
    // The actual request: the allowed origin is echoed and the headers a page needs are exposed.
    let r = app
        .http
        .post(format!("{}/v1/orders", app.base))
        .header("origin", SHOP)
        .json(&serde_json::json!({"user_id": "web", "items": [{"sku": "SKU-PIZZA", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(SHOP));
    let exposed = header(&r, "access-control-expose-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(exposed.contains("location") && exposed.contains("retry-after"), "{exposed:?}");
    let r = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allow_list_no_cors_headers_are_sent() {
    let app = TestApp::start().await;
    let r = preflight(&app, "/graphql", SHOP, "content-type").await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("origin", SHOP)
        .json(&serde_json::json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

fn error_code(v: &Value) -> &str {
    v["errors"][0]["extensions"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_caps_root_fields_aliases_and_mutations() {
    let app = TestApp::start().await;
    let roots = format!("{{ {} }}", "__typename ".repeat(17));
    let v = app.gql(&roots, serde_json::json!({}), false).await;
    assert_eq!(error_code(&v), "too_many_root_fields", "{v}");
    let aliases = (0..17).map(|i| format!("a{i}: sku")).collect::<Vec<_>>().join(" ");
    let v = app.gql(&format!("{{ product(sku: \"SKU-PIZZA\") {{ {aliases} }} }}"), serde_json::json!({}), false).await;
    assert_eq!(error_code(&v), "too_many_aliases", "{v}");
    let one = "placeOrder(input: {userId: \"m\", items: [{sku: \"SKU-PIZZA\", quantity: 1}]}) { order { id } }";
    let mutations = (0..6).map(|i| format!("m{i}: {one}")).collect::<Vec<_>>().join(" ");
    let v = app.gql(&format!("mutation {{ {mutations} }}"), serde_json::json!({}), false).await;
    assert_eq!(error_code(&v), "too_many_mutations", "{v}");
    assert!(v["data"].is_null(), "none ran: {v}");
    // Within the caps, the same shapes run (once the demo catalog is projected).
    app.wait_product("SKU-PIZZA").await;
    let aliases = (0..16).map(|i| format!("a{i}: sku")).collect::<Vec<_>>().join(" ");
    let v = app.gql(&format!("{{ product(sku: \"SKU-PIZZA\") {{ {aliases} }} }}"), serde_json::json!({}), false).await;
    assert_eq!(v["data"]["product"]["a15"], "SKU-PIZZA", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_and_aggregates_cost_more_than_pages() {
    let app = TestApp::start().await;
    let many = |n: usize, field: &str| {
        format!("{{ {} }}", (0..n).map(|i| format!("x{i}: {field}")).collect::<Vec<_>>().join(" "))
    };
    // Four aggregates over every order fit; five do not.
    let v = app.gql(&many(4, "metrics { ordersProcessed }"), serde_json::json!({}), true).await;
    assert!(v.get("errors").is_none(), "{v}");
    let v = app.gql(&many(5, "metrics { ordersProcessed }"), serde_json::json!({}), true).await;
    assert_eq!(error_code(&v), "invalid_query", "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap_or_default().contains("complex"), "{v}");
    // Ten one-product pages are cheap; ten searches over the whole catalog are not.
    let v = app.gql(&many(10, "products(first: 1) { edges { node { sku } } }"), serde_json::json!({}), false).await;
    assert!(v.get("errors").is_none(), "{v}");
    let searches = many(10, "products(first: 1, filter: {search: \"pizza\"}) { edges { node { sku } } }");
    let v = app.gql(&searches, serde_json::json!({}), false).await;
    assert_eq!(error_code(&v), "invalid_query", "{v}");
}
