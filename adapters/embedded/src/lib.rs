//! The embedded adapters: one fjall database in the data directory holds the log (the bus), the tables (the
//! store) and, in a keyspace of its own, the simulated payment provider's ledger. fjall is an LSM engine with
//! a write-ahead journal; with the default settings every write reaches the OS before it is acknowledged, so
//! a crash or `kill -9` of the process loses nothing (an OS crash or power loss can lose the last second
//! unless `sync_writes` is on).
//!
//! All writes go through fjall's single-writer transactions, which serialise them; that is what makes
//! the conditional writes (insert-if-absent, compare-and-set, reservations that never oversell) safe.

mod ledger;
mod log;
mod store;

use std::path::Path;
use std::sync::Arc;

use fjall::{KeyspaceCreateOptions, PersistMode, SingleWriterTxDatabase, SingleWriterTxKeyspace, SingleWriterWriteTx};

pub use ledger::EmbeddedLedger;
pub use log::EmbeddedLog;
pub use store::EmbeddedStore;

use orderflow_platform::backend::{BackendError, BackendOptions, Backends};
use orderflow_platform::store::{StoreError, Stores};

/// The open database and its keyspaces ("tables").
pub(crate) struct Db {
    pub(crate) db: SingleWriterTxDatabase,
    pub(crate) durability: Option<PersistMode>,
    pub(crate) log: SingleWriterTxKeyspace,
    pub(crate) cursors: SingleWriterTxKeyspace,
    pub(crate) products: SingleWriterTxKeyspace,
    /// The catalog read model: `product_view[sku]` = Product, `product_listing[sku]` = ProductSummary.
    pub(crate) product_view: SingleWriterTxKeyspace,
    pub(crate) product_listing: SingleWriterTxKeyspace,
    pub(crate) stock: SingleWriterTxKeyspace,
    pub(crate) stock_moves: SingleWriterTxKeyspace,
    pub(crate) stock_alerts: SingleWriterTxKeyspace,
    pub(crate) reservations: SingleWriterTxKeyspace,
    pub(crate) orders: SingleWriterTxKeyspace,
    pub(crate) order_index: SingleWriterTxKeyspace,
    pub(crate) saga_effects: SingleWriterTxKeyspace,
    /// Requests orderflow made on orders: `order_requests[id 0x00 event_id]` = what was asked.
    pub(crate) order_requests: SingleWriterTxKeyspace,
    pub(crate) stats: SingleWriterTxKeyspace,
    pub(crate) payments: SingleWriterTxKeyspace,
    /// The simulated provider's ledger (not the store's: see [`EmbeddedLedger`]).
    pub(crate) provider: SingleWriterTxKeyspace,
    pub(crate) shipments: SingleWriterTxKeyspace,
    /// The last epoch claimed per (group, topic, partition).
    pub(crate) epochs: SingleWriterTxKeyspace,
    /// Last value handed out by [`Db::next_seq`].
    last_seq: std::sync::atomic::AtomicU64,
    /// Write transactions in hand (see [`WRITERS_IN_HAND`]).
    writers: tokio::sync::Semaphore,
}

/// Write transactions handed to blocking threads at a time. fjall runs one at a time under its write lock,
/// so a second one waiting on the lock keeps it busy; every further one parked a blocking thread on the
/// lock (under a backlog, up to tokio's 512), each with its own stack and allocator pages: resident memory
/// grew with concurrency. The rest wait as tasks, holding no thread.
const WRITERS_IN_HAND: usize = 2;

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Db {
    fn open(dir: &Path, options: &BackendOptions) -> Result<Db, fjall::Error> {
        const MIB: u64 = 1024 * 1024;
        let memory = &options.embedded_memory;
        let db = SingleWriterTxDatabase::builder(dir.join("fjall"))
            .cache_size(memory.cache_mib.max(1) * MIB)
            .max_journaling_size(memory.journal_mib.max(64) * MIB)
            .open()?;
        let memtable = memory.memtable_mib.max(1) * MIB;
        let ks = |name: &str| db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(memtable));
        Ok(Db {
            // Every commit leaves the process before the call returns (a write(2) of the journal buffer),
            // so a `kill -9` loses nothing acknowledged; `--sync-writes` adds fdatasync for power loss.
            // Without a mode fjall keeps the commit in its in-process journal buffer, where a crash
            // loses it: the flash-sale kill test caught an acknowledged order vanishing that way.
            durability: Some(if options.sync_writes { PersistMode::SyncData } else { PersistMode::Buffer }),
            log: ks("log")?,
            cursors: ks("cursors")?,
            products: ks("products")?,
            product_view: ks("product_view")?,
            product_listing: ks("product_listing")?,
            stock: ks("stock")?,
            stock_moves: ks("stock_moves")?,
            stock_alerts: ks("stock_alerts")?,
            reservations: ks("reservations")?,
            orders: ks("orders")?,
            order_index: ks("order_index")?,
            saga_effects: ks("saga_effects")?,
            order_requests: ks("order_requests")?,
            stats: ks("stats")?,
            payments: ks("payments")?,
            provider: ks("provider")?,
            shipments: ks("shipments")?,
            epochs: ks("epochs")?,
            last_seq: std::sync::atomic::AtomicU64::new(0),
            writers: tokio::sync::Semaphore::new(WRITERS_IN_HAND),
            db,
        })
    }

    /// A strictly increasing sequence that also follows the clock (microseconds since the epoch, bumped
    /// when two calls fall in the same microsecond), so keys built from it sort in the order of events
    /// within a process and across restarts.
    pub(crate) fn next_seq(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let prev = self.last_seq.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now_us.max(last + 1)));
        let last = prev.unwrap_or_else(|v| v);
        now_us.max(last + 1)
    }

    /// Runs `f` in a write transaction on a blocking thread and commits if it returns `Ok`.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db, &mut SingleWriterWriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.writing(move |db| {
            let mut tx = db.db.write_tx().durability(db.durability);
            let out = f(db, &mut tx)?;
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }

    /// Runs `f`, which opens and commits its own write transaction, on a blocking thread once one of the
    /// [`WRITERS_IN_HAND`] slots is free.
    pub(crate) async fn writing<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let _slot = self.writers.acquire().await.map_err(unavailable)?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&this)).await.map_err(unavailable)?
    }
}

/// Opens (creating if needed) the embedded bus, store and ledger in `dir`.
pub fn open(dir: &Path, options: &BackendOptions) -> Result<Backends, BackendError> {
    let err = |reason: String| BackendError::Embedded { path: dir.to_owned(), reason };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let db = Arc::new(Db::open(dir, options).map_err(|e| err(e.to_string()))?);
    store::upgrade_reservations(&db).map_err(|e| err(format!("upgrading reservations: {e}")))?;
    let store = Arc::new(EmbeddedStore::new(Arc::clone(&db)));
    let ledger = Arc::new(EmbeddedLedger::new(Arc::clone(&db)));
    let bus = Arc::new(EmbeddedLog::new(db));
    Ok(Backends {
        bus,
        ledger,
        stores: Stores {
            catalog: store.clone(),
            catalog_view: store.clone(),
            inventory: store.clone(),
            orders: store.clone(),
            payments: store.clone(),
            shipments: store.clone(),
            epochs: store.clone(),
            readiness: store,
            owned_orders: Arc::new(orderflow_platform::store::OwnedOrders::off()),
        },
    })
}

/// serde_json row encoding shared by the tables.
pub(crate) fn to_row<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn from_row<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
