//! The HTTP server's limits over raw TCP, as misbehaving or unlucky clients meet them: an oversized body
//! sent in full, headers that never finish, a body that never finishes, more requests than the server
//! takes at once.

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
