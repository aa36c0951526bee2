//! The keyspaces of one deployment. Statements and schema files name orderflow's keyspaces as
//! `orderflow_<part>`; in a namespace (`--namespace`) every one of them is `<namespace>_orderflow_<part>`,
//! so that several deployments (staging, production, tenants) share one cluster without sharing data.
//! [`Keyspaces::qualify`] rewrites a statement once, when it is prepared or run by the migration.

/// Every keyspace orderflow creates (`schemas/cql/*.cql`). `orderflow_provider` holds the simulated payment
/// provider's ledger, which is no table of the store's (see [`crate::CqlLedger`]).
pub const NAMES: [&str; 7] = [
    "orderflow_catalog",
    "orderflow_fencing",
    "orderflow_fulfillment",
    "orderflow_inventory",
    "orderflow_orders",
    "orderflow_payments",
    "orderflow_provider",
];

/// The longest keyspace name Cassandra (and ScyllaDB) accept.
pub const MAX_KEYSPACE_NAME: usize = 48;

/// How this deployment's keyspaces are named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyspaces {
    /// `""`, or `"<namespace>_"`.
    prefix: String,
}

impl Keyspaces {
    /// The keyspaces of `namespace` (`None`: the plain names).
    pub fn new(namespace: Option<&str>) -> Self {
        Self { prefix: namespace.map(|ns| format!("{ns}_")).unwrap_or_default() }
    }

    /// The name on the cluster of orderflow's keyspace `keyspace`.
    pub fn name(&self, keyspace: &str) -> String {
        format!("{}{keyspace}", self.prefix)
    }

    /// `cql` with each of orderflow's keyspace names, where it stands as a whole identifier, in this
    /// deployment's namespace.
    pub fn qualify(&self, cql: &str) -> String {
        if self.prefix.is_empty() {
            return cql.to_owned();
        }
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut out = String::with_capacity(cql.len() + 4 * self.prefix.len());
        let mut rest = cql;
        while let Some(at) = rest.find("orderflow_") {
            let before_ok = !rest[..at].chars().next_back().is_some_and(ident);
            let word_end = rest[at..].find(|c: char| !ident(c)).map_or(rest.len(), |e| at + e);
            let word = &rest[at..word_end];
            out.push_str(&rest[..at]);
            if before_ok && NAMES.contains(&word) {
                out.push_str(&self.prefix);
            }
            out.push_str(word);
            rest = &rest[word_end..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_keyspace_names_move_into_the_namespace() {
        let ks = Keyspaces::new(Some("staging"));
        assert_eq!(
            ks.qualify("SELECT x FROM orderflow_orders.orders WHERE k = 'orderflow_orders'"),
            "SELECT x FROM staging_orderflow_orders.orders WHERE k = 'staging_orderflow_orders'"
        );
        assert_eq!(
            ks.qualify("CREATE KEYSPACE IF NOT EXISTS orderflow_catalog WITH r"),
            "CREATE KEYSPACE IF NOT EXISTS staging_orderflow_catalog WITH r"
        );
        // Not a keyspace of orderflow's, or part of a longer identifier: unchanged.
        assert_eq!(
            ks.qualify("x_orderflow_orders orderflow_x orderflow_ordersx"),
            "x_orderflow_orders orderflow_x orderflow_ordersx"
        );
        assert_eq!(Keyspaces::default().qualify("FROM orderflow_orders.orders"), "FROM orderflow_orders.orders");
        assert_eq!(ks.name("orderflow_fencing"), "staging_orderflow_fencing");
        assert_eq!(ks.name("orderflow_provider"), "staging_orderflow_provider");
    }

    #[test]
    fn every_keyspace_name_fits_cassandras_limit_in_the_longest_namespace() {
        let longest = "n".repeat(16);
        assert!(orderflow_platform::backend::Namespace::parse(&longest).is_ok(), "16 characters is the most");
        assert!(orderflow_platform::backend::Namespace::parse(&format!("{longest}n")).is_err());
        let ks = Keyspaces::new(Some(&longest));
        for name in NAMES {
            let on_cluster = ks.name(name);
            assert!(on_cluster.len() <= MAX_KEYSPACE_NAME, "{on_cluster}: {} characters", on_cluster.len());
        }
    }
}
