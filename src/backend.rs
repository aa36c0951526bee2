//! Backend selection: the one place that knows every adapter crate. It opens the bus and store adapters named
//! by `--bus` and `--store` ([`BackendUrl`]) (the simulated provider's ledger goes with the store), wraps the
//! bus in the record-size limits and the stores in the owner's order cache, and applies the CQL schema
//! (`orderflow migrate`). Everything above it sees `Arc<dyn Bus>` and the store traits only.

use std::path::Path;
use std::sync::Arc;

use orderflow_platform::backend::{BackendError, BackendOptions, BackendUrl, Backends, CqlReplication, Namespace};
use orderflow_platform::bus::limits::LimitedBus;
use orderflow_platform::connection::CqlSecurity;
use orderflow_platform::ledger::ProviderLedger;
use orderflow_platform::store::Stores;

/// Opens the adapters named by `bus` and `store`; `data_dir` holds whatever is embedded. For Kafka this
/// checks the cluster answers and creates missing topics.
pub async fn open(
    bus: &BackendUrl,
    store: &BackendUrl,
    data_dir: &Path,
    options: &BackendOptions,
) -> Result<Backends, BackendError> {
    let backends = match (bus, store) {
        (BackendUrl::Scylla(_), _) => {
            Err(BackendError::WrongRole { what: "ScyllaDB", url: bus.to_string(), role: "bus" })
        }
        (_, BackendUrl::Kafka(_)) => {
            Err(BackendError::WrongRole { what: "Kafka", url: store.to_string(), role: "store" })
        }
        (BackendUrl::Embedded, BackendUrl::Embedded) => orderflow_embedded::open(data_dir, options),
        (BackendUrl::Kafka(hosts), BackendUrl::Embedded) => {
            let embedded = orderflow_embedded::open(data_dir, options)?;
            Ok(Backends {
                bus: Arc::new(kafka_bus(hosts, options).await?),
                stores: embedded.stores,
                ledger: embedded.ledger,
            })
        }
        (BackendUrl::Embedded, BackendUrl::Scylla(points)) => {
            let embedded = orderflow_embedded::open(data_dir, options)?;
            let (stores, ledger) = cql_stores(points, options).await?;
            Ok(Backends { bus: embedded.bus, stores, ledger })
        }
        (BackendUrl::Kafka(hosts), BackendUrl::Scylla(points)) => {
            let (stores, ledger) = cql_stores(points, options).await?;
            Ok(Backends { bus: Arc::new(kafka_bus(hosts, options).await?), stores, ledger })
        }
    }?;
    // Every consumer dead-letters records over its topic's size limit before any decoder sees them.
    let bus = Arc::new(LimitedBus::new(backends.bus, options.record_limits.clone()));
    Ok(Backends {
        bus,
        stores: backends.stores.with_owned_orders(options.owned_order_entries),
        ledger: backends.ledger,
    })
}

/// [`open`], waiting up to `wait` for a Kafka or CQL server that does not answer yet (one
/// that is starting or restarting, as after a host reboot or in a chaos run), retrying with
/// exponential backoff and a warning per attempt. Any other error, or the wait spent, is returned.
pub async fn open_waiting(
    bus: &BackendUrl,
    store: &BackendUrl,
    data_dir: &Path,
    options: &BackendOptions,
    wait: std::time::Duration,
) -> Result<Backends, BackendError> {
    use backon::{BackoffBuilder, ExponentialBuilder};
    let deadline = tokio::time::Instant::now() + wait;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(250))
        .with_max_delay(std::time::Duration::from_secs(5))
        .without_max_times()
        .build();
    loop {
        match open(bus, store, data_dir, options).await {
            Err(e) if e.is_unreachable() && tokio::time::Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let next = delays.next().unwrap_or(std::time::Duration::from_secs(5)).min(left);
                tracing::warn!(error = %e, retry_in = ?next, "waiting for the bus and store to answer (--startup-wait)");
                tokio::time::sleep(next).await;
            }
            other => return other,
        }
    }
}

/// Applies the CQL schema (keyspaces and tables) idempotently: `orderflow migrate`.
pub async fn migrate_cql(
    store: &BackendUrl,
    replication: &CqlReplication,
    namespace: Option<&Namespace>,
    security: &CqlSecurity,
) -> Result<(), BackendError> {
    let BackendUrl::Scylla(points) = store else {
        return Err(BackendError::WrongRole {
            what: "this store",
            url: store.to_string(),
            role: "CQL store to migrate",
        });
    };
    let session = orderflow_cql::session(points, security).await.map_err(|e| BackendError::Cql(e.to_string()))?;
    let keyspaces = orderflow_cql::keyspaces::Keyspaces::new(namespace.map(Namespace::as_str));
    orderflow_cql::schema::migrate_in(&session, &replication.to_cql(), &keyspaces)
        .await
        .map_err(|e| BackendError::Cql(e.to_string()))
}

/// The CQL store and, on the same session, the simulated provider's ledger.
async fn cql_stores(
    points: &[String],
    options: &BackendOptions,
) -> Result<(Stores, Arc<dyn ProviderLedger>), BackendError> {
    let session = orderflow_cql::session(points, &options.cql_security).await.map_err(|e| {
        BackendError::Unreachable { what: "the CQL store", url: points.join(","), reason: e.to_string() }
    })?;
    let keyspaces = orderflow_cql::keyspaces::Keyspaces::new(options.namespace.as_ref().map(Namespace::as_str));
    let opened = async {
        let store = if options.migrate_cql {
            orderflow_cql::connect_and_migrate_in(session, &options.cql_replication.to_cql(), keyspaces).await
        } else {
            orderflow_cql::CqlStore::new_in(session, keyspaces).await
        }?;
        let store =
            store.with_owned_order_entries(options.owned_order_entries).with_write_group(options.cql_write_group);
        let ledger = store.ledger().await?;
        Ok::<_, orderflow_platform::store::StoreError>((store, ledger))
    };
    match opened.await {
        Ok((store, ledger)) => Ok((Arc::new(store).stores(), Arc::new(ledger) as Arc<dyn ProviderLedger>)),
        // A server that went away between connecting and preparing is unreachable, not unmigrated: worth
        // waiting for (`--startup-wait`) rather than a schema hint and an exit.
        Err(e) if !cql_answers(points, &options.cql_security).await => {
            Err(BackendError::Unreachable { what: "the CQL store", url: points.join(","), reason: e.to_string() })
        }
        Err(e) => Err(BackendError::Cql(format!("{e} (has the schema been applied? run `orderflow migrate`)"))),
    }
}

/// Whether a CQL server at `points` answers a trivial query now.
async fn cql_answers(points: &[String], security: &CqlSecurity) -> bool {
    match orderflow_cql::session(points, security).await {
        Ok(session) => session.query_unpaged("SELECT release_version FROM system.local", ()).await.is_ok(),
        Err(_) => false,
    }
}

async fn kafka_bus(hosts: &[String], options: &BackendOptions) -> Result<orderflow_kafka::KafkaBus, BackendError> {
    let bus = orderflow_kafka::KafkaBus::connect(kafka_options(hosts, options))
        .map_err(|e| BackendError::Kafka(e.to_string()))?;
    bus.ensure_topics().await.map_err(|e| BackendError::Unreachable {
        what: "Kafka",
        url: hosts.join(","),
        reason: e.to_string(),
    })?;
    Ok(bus)
}

/// The Kafka adapter's options for the brokers `hosts`.
pub fn kafka_options(hosts: &[String], options: &BackendOptions) -> orderflow_kafka::KafkaOptions {
    orderflow_kafka::KafkaOptions {
        bootstrap: hosts.to_vec(),
        replication_factor: options.kafka_replication_factor,
        min_insync_replicas: options.kafka_min_insync_replicas,
        namespace: options.namespace.as_ref().map(|n| n.as_str().to_owned()),
        security: options.kafka_security.clone(),
    }
}
