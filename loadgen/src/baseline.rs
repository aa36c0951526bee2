//! Baselines measured in the same run as the product: a bare axum handler for the HTTP intake, raw
//! fjall writes in the same shape as the pipeline's writes for the embedded store, and, for the Kafka + CQL
//! mode, the raw produce rate ([`kafka`]) and raw CQL write rates ([`cql`]) combined through what one order
//! costs ([`distributed`]).

pub mod cql;
pub mod distributed;
pub mod kafka;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::json;

// ---------------------------------------------------------------------------------------------------
// Bare HTTP: the same order JSON, parsed with the same shape and strictness, answered with 202.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // parsed for the cost of parsing, like the real intake; not otherwise used
struct BareOrder {
    order_id: Option<String>,
    user_id: String,
    items: Vec<BareItem>,
    total_amount: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct BareItem {
    sku: String,
    quantity: i64,
}

async fn place(Json(order): Json<BareOrder>) -> impl IntoResponse {
    let id = order.order_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let location = format!("/v1/orders/{id}");
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(json!({"order_id": id, "status": "PENDING"})))
}

/// The product as the catalog's GraphQL `product(sku){ sku name price availability }` answers it, for
/// the plain-JSON product read.
#[derive(Debug, Clone, Serialize)]
struct BareProduct {
    sku: String,
    name: String,
    price: String,
    availability: &'static str,
}

/// The plain-axum product read: a lookup in an in-memory map and a JSON answer. A SKU is added on its
/// first read, so any SKU the load generator asks for exists.
async fn product(
    axum::extract::State(products): axum::extract::State<
        Arc<std::sync::RwLock<std::collections::HashMap<String, BareProduct>>>,
    >,
    axum::extract::Path(sku): axum::extract::Path<String>,
) -> impl IntoResponse {
    let found = products.read().ok().and_then(|m| m.get(&sku).cloned());
    let product = match found {
        Some(p) => p,
        None => {
            let p = BareProduct {
                name: format!("Product {sku}"),
                sku: sku.clone(),
                price: "4.00".into(),
                availability: "IN_STOCK",
            };
            if let Ok(mut m) = products.write() {
                m.insert(sku, p.clone());
            }
            p
        }
    };
    Json(product)
}

/// Serves `POST /v1/orders` and `GET /v1/products/{sku}` on `listener` until `shutdown` resolves.
pub async fn serve_bare(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/v1/orders", post(place))
        .route("/v1/products/{sku}", axum::routing::get(product))
        .with_state(Arc::new(std::sync::RwLock::new(std::collections::HashMap::new())));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("bare baseline server")
}

/// Starts the bare server in this process on a free loopback port; it stops when the token is cancelled.
pub async fn spawn_bare() -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the bare baseline")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = serve_bare(listener, async move {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("bare baseline server: {e:#}");
        }
    });
    Ok((addr, stop))
}

// ---------------------------------------------------------------------------------------------------
// Raw fjall: the commits one order costs the embedded pipeline, without the pipeline.

/// One write in a commit: a keyspace and the value size in bytes (`None`: a removal).
type Write = (&'static str, Option<usize>);

/// The commits (atomic write batches) one single-line order costs on the embedded default, happy path
/// (placed -> CONFIRMED -> shipment noted), in pipeline order. Counted by reading the adapters
/// (`platform/src/embedded/{store,log}.rs`) and the handlers: every `Db::write` and `publish` is one
/// commit, every consumer position is one single-key write; value sizes are those of the JSON rows
/// and Avro records of a small order. 23 commits, 39 keys.
pub const ORDER_WRITE_PLAN: &[&[Write]] = &[
    // intake: insert_new (order, 3 index keys, stats) + publish OrderPlaced
    &[
        ("orders", Some(700)),
        ("order_index", Some(0)),
        ("order_index", Some(0)),
        ("order_index", Some(0)),
        ("stats", Some(120)),
    ],
    &[("log", Some(300))],
    // saga on OrderPlaced: apply (index move, stats, order, effects) + publish ReserveStock + cursor
    &[
        ("order_index", None),
        ("order_index", Some(0)),
        ("stats", Some(120)),
        ("orders", Some(800)),
        ("saga_effects", Some(400)),
    ],
    &[("log", Some(300))],
    &[("cursors", Some(8))],
    // inventory: reserve (stock, movement, reservation) + publish StockReserved + cursor
    &[("stock", Some(60)), ("stock_moves", Some(120)), ("reservations", Some(150))],
    &[("log", Some(250))],
    &[("cursors", Some(8))],
    // saga on StockReserved: apply (order, effects; no status change) + publish CapturePayment + cursor
    &[("orders", Some(900)), ("saga_effects", Some(400))],
    &[("log", Some(300))],
    &[("cursors", Some(8))],
    // payment: provider ledger entry, payment record, publish PaymentCaptured, cursor
    &[("provider", Some(150))],
    &[("payments", Some(120))],
    &[("log", Some(300))],
    &[("cursors", Some(8))],
    // saga on PaymentCaptured: apply (index move, stats, order, effects) + publish CreateShipment + cursor
    &[
        ("order_index", None),
        ("order_index", Some(0)),
        ("stats", Some(120)),
        ("orders", Some(1100)),
        ("saga_effects", Some(400)),
    ],
    &[("log", Some(300))],
    &[("cursors", Some(8))],
    // fulfillment: shipment + publish ShipmentCreated + cursor
    &[("shipments", Some(200))],
    &[("log", Some(250))],
    &[("cursors", Some(8))],
    // saga on ShipmentCreated: apply (order, effects; no outputs, so no publish) + cursor
    &[("orders", Some(1200)), ("saga_effects", Some(2))],
    &[("cursors", Some(8))],
];

/// The raw-fjall figures.
#[derive(Debug, Clone, Serialize)]
pub struct FjallReport {
    pub threads: usize,
    pub duration_s: f64,
    pub commits_per_order: usize,
    pub keys_per_order: usize,
    pub orders: u64,
    pub orders_per_s: f64,
    pub commits_per_s: f64,
    pub keys_per_s: f64,
    pub sync_writes: bool,
}

fn value(len: usize, seed: u64) -> Vec<u8> {
    // JSON-like, mildly compressible, like the real rows.
    let mut v = format!("{{\"id\":\"ld-{seed}\",\"pad\":\"").into_bytes();
    while v.len() < len {
        v.extend_from_slice(b"SKU-LOAD-0 quantity 2 unit_price 4.50 ");
    }
    v.truncate(len);
    v
}

/// Writes the plan's commits for as many orders as fit in `duration`, from `threads` threads, into a
/// fresh fjall database in `dir` (fjall's single-writer transactions, as the product uses).
pub fn run_fjall(dir: &Path, threads: usize, duration: Duration, sync_writes: bool) -> anyhow::Result<FjallReport> {
    let db = fjall::SingleWriterTxDatabase::builder(dir.join("fjall")).open().context("opening fjall")?;
    let names = [
        "log",
        "cursors",
        "stock",
        "stock_moves",
        "reservations",
        "orders",
        "order_index",
        "saga_effects",
        "stats",
        "payments",
        "provider",
        "shipments",
    ];
    let mut keyspaces = std::collections::HashMap::new();
    for name in names {
        keyspaces.insert(name, db.keyspace(name, fjall::KeyspaceCreateOptions::default).context("keyspace")?);
    }
    // The product's modes: every commit handed to the OS (survives kill -9), fdatasync with --sync-writes.
    let durability = Some(if sync_writes { fjall::PersistMode::SyncData } else { fjall::PersistMode::Buffer });
    let (db, keyspaces) = (Arc::new(db), Arc::new(keyspaces));
    let orders = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for t in 0..threads.max(1) {
        let (db, keyspaces, orders, seq) =
            (Arc::clone(&db), Arc::clone(&keyspaces), Arc::clone(&orders), Arc::clone(&seq));
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut n = 0u64;
            // Bounded by time, and by a count no run can reach.
            while Instant::now() < deadline && n < 100_000_000 {
                let order = format!("ld-{t}-{n}");
                for (step, commit) in ORDER_WRITE_PLAN.iter().enumerate() {
                    let ks = |name: &str| keyspaces.get(name).context("keyspace missing");
                    if let [("cursors", Some(len))] = commit {
                        // Consumer positions are plain single-key writes in the product too.
                        ks("cursors")?.insert(format!("group-{step}"), value(*len, n)).context("cursor write")?;
                        continue;
                    }
                    let mut tx = db.write_tx().durability(durability);
                    for (i, (name, len)) in commit.iter().enumerate() {
                        let key = match *name {
                            "stats" => "orders".to_owned(),
                            "log" => format!("topic-{step}\0{:020}", seq.fetch_add(1, Ordering::Relaxed)),
                            "order_index" => format!("s\0{step}-{i}\0{order}"),
                            _ => format!("{order}\0{step}"),
                        };
                        match len {
                            Some(len) => tx.insert(ks(name)?, key, value(*len, n)),
                            None => tx.remove(ks(name)?, key),
                        }
                    }
                    tx.commit().context("commit")?;
                }
                orders.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let orders = orders.load(Ordering::Relaxed);
    let commits = ORDER_WRITE_PLAN.len();
    let keys = ORDER_WRITE_PLAN.iter().map(|c| c.len()).sum::<usize>();
    Ok(FjallReport {
        threads: threads.max(1),
        duration_s: secs,
        commits_per_order: commits,
        keys_per_order: keys,
        orders,
        orders_per_s: orders as f64 / secs,
        commits_per_s: (orders as usize * commits) as f64 / secs,
        keys_per_s: (orders as usize * keys) as f64 / secs,
        sync_writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_23_commits_of_39_keys_and_runs() {
        assert_eq!(ORDER_WRITE_PLAN.len(), 23);
        assert_eq!(ORDER_WRITE_PLAN.iter().map(|c| c.len()).sum::<usize>(), 39);
        let dir = tempfile::tempdir().unwrap();
        let r = run_fjall(dir.path(), 1, Duration::from_millis(200), false).unwrap();
        assert!(r.orders > 0);
    }
}
