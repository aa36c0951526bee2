//! Applies `schemas/cql/*.cql` (embedded in the binary) to a cluster. Every statement in them is idempotent
//! (`IF NOT EXISTS`, and `ALTER TABLE ... ADD` runs only for a column the table lacks), so this runs at every
//! deploy; run it from one process (a deploy step or the first
//! instance), not from every instance at once, since concurrent schema changes are what makes a cluster's
//! schema disagree.

use crate::keyspaces::Keyspaces;
use scylla::client::session::Session;

use orderflow_platform::store::{Result, StoreError};

/// The schema files, in the order they are applied.
const FILES: [(&str, &str); 7] = [
    ("catalog.cql", include_str!("../../../schemas/cql/catalog.cql")),
    ("inventory.cql", include_str!("../../../schemas/cql/inventory.cql")),
    ("orders.cql", include_str!("../../../schemas/cql/orders.cql")),
    ("payments.cql", include_str!("../../../schemas/cql/payments.cql")),
    ("fulfillment.cql", include_str!("../../../schemas/cql/fulfillment.cql")),
    ("fencing.cql", include_str!("../../../schemas/cql/fencing.cql")),
    ("provider.cql", include_str!("../../../schemas/cql/provider.cql")),
];

/// The replication map every `CREATE KEYSPACE` in the files carries: right for one development node only.
pub const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

/// Creates the keyspaces (with [`DEFAULT_REPLICATION`]) and tables that do not exist yet, then waits until
/// every node agrees on the schema.
pub async fn migrate(session: &Session) -> Result<()> {
    migrate_with_replication(session, DEFAULT_REPLICATION).await
}

/// Like [`migrate`], creating missing keyspaces with `replication` instead, e.g.
/// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}` for production. A keyspace that already exists keeps its
/// replication: change it with `ALTER KEYSPACE ... WITH replication = ...` and then run a full repair.
pub async fn migrate_with_replication(session: &Session, replication: &str) -> Result<()> {
    migrate_in(session, replication, &Keyspaces::default()).await
}

/// [`migrate_with_replication`] for the keyspaces of a namespace (see [`Keyspaces`]).
pub async fn migrate_in(session: &Session, replication: &str, keyspaces: &Keyspaces) -> Result<()> {
    refuse_earlier_format_in(session, keyspaces).await?;
    let options = keyspace_options(replication, has_tablets(session).await?);
    for (file, text) in FILES {
        for stmt in statements(text) {
            let stmt = keyspaces.qualify(&stmt.replace(DEFAULT_REPLICATION, &options));
            if let Some((keyspace, table, column)) = added_column(&stmt)
                && column_exists(session, keyspace, table, column).await?
            {
                continue;
            }
            session
                .query_unpaged(stmt.as_str(), ())
                .await
                .map_err(|e| StoreError::Unavailable(format!("{file}: `{stmt}` failed: {e}")))?;
        }
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| StoreError::Unavailable(format!("schema agreement not reached: {e}")))?;
    Ok(())
}

/// Whether the cluster is a ScyllaDB that can place keyspaces on tablets (6.0 and later: it has
/// `system_schema.scylla_keyspaces`). Apache Cassandra and older ScyllaDB answer no.
async fn has_tablets(session: &Session) -> Result<bool> {
    let failed = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("reading the system schema: {e}"));
    let rows = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'system_schema' \
             AND table_name = 'scylla_keyspaces'",
            (),
        )
        .await
        .map_err(|e| failed(&e))?
        .into_rows_result()
        .map_err(|e| failed(&e))?
        .rows_num();
    Ok(rows > 0)
}

/// What follows `WITH replication =` in a `CREATE KEYSPACE`: the replication map and, on a ScyllaDB with
/// tablets, `tablets = {'enabled': false}` for `NetworkTopologyStrategy` keyspaces, which would otherwise
/// default to tablets, on which some ScyllaDB versions refuse lightweight transactions (orderflow still
/// makes some). `SimpleStrategy` keyspaces never use tablets.
fn keyspace_options(replication: &str, tablets: bool) -> String {
    if tablets && replication.contains("NetworkTopologyStrategy") {
        format!("{replication} AND tablets = {{'enabled': false}}")
    } else {
        replication.to_owned()
    }
}

/// Tables of stored formats this version cannot read, and why. Their rows cannot be carried over: the tables
/// that replace them are written with epoch timestamps, which rows written at wall-clock timestamps (or with
/// lightweight transactions) would always beat.
const EARLIER_FORMAT_TABLES: [(&str, &str, &str); 4] = [
    (
        "orderflow_orders",
        "orders",
        "orders, payments and shipments are now partition-owned. Drop the keyspaces orderflow_orders, \
         orderflow_payments and orderflow_fulfillment",
    ),
    ("orderflow_payments", "payments", "payments are now partition-owned. Drop the keyspace orderflow_payments"),
    (
        "orderflow_fulfillment",
        "shipments",
        "shipments are now partition-owned. Drop the keyspace orderflow_fulfillment",
    ),
    (
        "orderflow_inventory",
        "stock",
        "stock is now owned by the SKU's partition and written without lightweight transactions. Note each \
         SKU's stock (`SELECT DISTINCT sku, available, reserved FROM orderflow_inventory.stock`), drop the \
         keyspace orderflow_inventory, run `orderflow migrate` and set the stock again with `adjustStock`",
    ),
];

/// Refuses a cluster whose keyspaces were written by an earlier orderflow in a stored format this version
/// cannot read, with what to do about it, instead of running on a mix of both formats.
pub async fn refuse_earlier_format(session: &Session) -> Result<()> {
    refuse_earlier_format_in(session, &Keyspaces::default()).await
}

/// [`refuse_earlier_format`] for the keyspaces of a namespace.
pub async fn refuse_earlier_format_in(session: &Session, keyspaces: &Keyspaces) -> Result<()> {
    for (keyspace, table, what_to_do) in EARLIER_FORMAT_TABLES {
        let keyspace = keyspaces.name(keyspace);
        let keyspace = keyspace.as_str();
        let result = session
            .query_unpaged(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
                (keyspace, table),
            )
            .await
            .map_err(|e| StoreError::Unavailable(format!("reading the schema of {keyspace}: {e}")))?;
        let rows = result.into_rows_result().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        if rows.rows_num() > 0 {
            return Err(StoreError::Unavailable(format!(
                "{keyspace}.{table} was written by an earlier orderflow whose stored format this version cannot \
                 read (see the README's \"Upgrading\"): {what_to_do} (or use a new cluster), then run \
                 `orderflow migrate` again"
            )));
        }
    }
    Ok(())
}

/// `ALTER TABLE <keyspace>.<table> ADD <column> <type>` as (keyspace, table, column). Such statements add a
/// column to a table created by an earlier release; CQL has no portable `ADD IF NOT EXISTS` (ScyllaDB lacks
/// it), so [`migrate`] runs them only when the column is missing.
fn added_column(stmt: &str) -> Option<(&str, &str, &str)> {
    let mut words = stmt.strip_prefix("ALTER TABLE ")?.split_whitespace();
    let (keyspace, table) = words.next()?.split_once('.')?;
    if words.next()? != "ADD" {
        return None;
    }
    Some((keyspace, table, words.next()?))
}

async fn column_exists(session: &Session, keyspace: &str, table: &str, column: &str) -> Result<bool> {
    let result = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await
        .map_err(|e| StoreError::Unavailable(format!("reading the schema of {keyspace}.{table}: {e}")))?;
    let rows = result.into_rows_result().map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(rows.rows_num() > 0)
}

/// The statements of a `.cql` file: `--` comment lines dropped, split at `;`. (The files keep `;` out of
/// string literals and comments, which is all this needs.)
fn statements(text: &str) -> Vec<String> {
    let without_comments: String =
        text.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
    without_comments.split(';').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_columns_are_recognised() {
        assert_eq!(
            added_column("ALTER TABLE orderflow_catalog.products ADD version bigint"),
            Some(("orderflow_catalog", "products", "version"))
        );
        assert_eq!(added_column("ALTER TABLE orderflow_catalog.products DROP version"), None);
        assert_eq!(added_column("CREATE TABLE IF NOT EXISTS orderflow_x.t (k int PRIMARY KEY)"), None);
    }

    #[test]
    fn every_file_splits_into_idempotent_statements() {
        for (file, text) in FILES {
            let stmts = statements(text);
            assert!(stmts.len() >= 2, "{file}: a keyspace and at least one table");
            assert!(stmts[0].starts_with("CREATE KEYSPACE IF NOT EXISTS"), "{file}: {}", stmts[0]);
            assert!(stmts[0].contains(DEFAULT_REPLICATION), "{file}: the replication map is replaceable");
            assert!(stmts[0].trim_end().ends_with(DEFAULT_REPLICATION), "{file}: options can follow the map");
            for s in &stmts[1..] {
                let added = added_column(s).is_some_and(|(ks, _, _)| ks.starts_with("orderflow_"));
                assert!(s.starts_with("CREATE TABLE IF NOT EXISTS orderflow_") || added, "{file}: {s}");
            }
        }
    }

    #[test]
    fn tablets_are_turned_off_only_where_scylladb_would_use_them() {
        let nts = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}";
        assert_eq!(keyspace_options(nts, true), format!("{nts} AND tablets = {{'enabled': false}}"));
        assert_eq!(keyspace_options(nts, false), nts, "Apache Cassandra knows no tablets option");
        assert_eq!(keyspace_options(DEFAULT_REPLICATION, true), DEFAULT_REPLICATION, "SimpleStrategy: no tablets");
    }

    #[test]
    fn every_table_has_a_comment_saying_what_it_serves() {
        for (file, text) in FILES {
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.starts_with("CREATE TABLE") {
                    let comment_above = lines[..i].iter().rev().take_while(|l| l.starts_with("--")).count();
                    assert!(comment_above > 0, "{file}: no comment above `{line}`");
                    let block = lines[i - comment_above..i].join("\n");
                    assert!(block.contains("Serves:") && block.contains("Key:"), "{file}: `{line}`");
                }
            }
        }
    }
}
