//! The one configuration struct, from flags or `ORDERFLOW_*` environment variables (flags win).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use orderflow_identity::http::Authenticator;
use orderflow_identity::jwt::KeySource;
use orderflow_identity::{AdminToken, AuthMode, JwtConfig, JwtVerifier, Secret};
use orderflow_ingest::rate_limit::{OrderRateLimit, RateLimitKey};
use orderflow_platform::BackendUrl;
use orderflow_platform::backend::{BackendOptions, CqlReplication, EmbeddedMemory, Namespace};
use orderflow_platform::bus::limits::{DEFAULT_MAX_RECORD_BYTES, RecordLimits};
pub use orderflow_processors::payment::stripe::STRIPE_API;
use orderflow_processors::payment::{SimulatedRules, StripeConfig, StripeProvider};
use orderflow_processors::runtime::{ProcessorSettings, ProviderChoice};
use orderflow_schemas::{Currency, Money, UserId};

/// What to put in an empty catalog at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Seed {
    /// A handful of demo products with stock, so a new user can place an order at once.
    Demo,
    /// Nothing: staff create products with `createProduct`.
    None,
}

/// See [`Settings::environment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

/// See [`Settings::auth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthModeArg {
    Open,
    Required,
}

/// What the order rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderRateLimitKey {
    /// The authenticated user; until customers authenticate (issue 11), the `user_id` the order claims,
    /// which stops a runaway client but not one that makes up user ids.
    User,
    /// The client's IP address (IPv6 by its /64), as the TCP connection shows it: only where clients
    /// connect directly, since behind a proxy every client has the proxy's address.
    Ip,
}

/// Settings shared by every role. Each flag can also be set with the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the HTTP server (REST, GraphQL, health, metrics) listens on.
    #[arg(long, env = "ORDERFLOW_LISTEN", default_value = "127.0.0.1:8080", global = true)]
    pub listen: SocketAddr,

    /// Directory of the embedded store and log.
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Bus backend: `embedded`, or `kafka://HOST:PORT[,HOST:PORT]`.
    #[arg(long, env = "ORDERFLOW_BUS", default_value = "embedded", global = true)]
    pub bus: BackendUrl,

    /// Store backend: `embedded`, or `scylla://HOST:PORT[,HOST:PORT]`.
    #[arg(long, env = "ORDERFLOW_STORE", default_value = "embedded", global = true)]
    pub store: BackendUrl,

    /// The admin token (carries the admin role; at least 32 bytes), from the environment only
    /// (`ORDERFLOW_ADMIN_TOKEN`), never a flag, so it does not show in `ps` or shell history.
    #[arg(skip = std::env::var("ORDERFLOW_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()).map(Secret::new))]
    pub admin_token: Option<Secret>,

    /// How orderflow logs in to Kafka and the CQL database.
    #[command(flatten)]
    pub connections: orderflow_platform::connection::Connections,

    /// A file holding the admin token (a mounted secret), instead of `ORDERFLOW_ADMIN_TOKEN`.
    #[arg(long, env = "ORDERFLOW_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,

    /// `development` (the default) or `production`: production requires sign-in for orders, turns off
    /// GraphiQL, introspection and field suggestions unless `--graphql-introspection true`, serves
    /// `/metrics` only on `--admin-listen`, and refuses replication below 3 unless
    /// `--allow-low-replication`.
    #[arg(long = "env", env = "ORDERFLOW_ENV", value_enum, default_value_t = Environment::Development, global = true)]
    pub environment: Environment,

    /// `open`: anyone may place an order and read an order by its id (the quick start); `required`:
    /// placing and reading orders needs a customer (or staff) identity. Default: `open`, `required` in
    /// production.
    #[arg(long, env = "ORDERFLOW_AUTH", value_enum, global = true)]
    pub auth: Option<AuthModeArg>,

    /// GraphQL introspection and the GraphiQL explorer (`true`/`false`). Default: on, off in production.
    #[arg(long, env = "ORDERFLOW_GRAPHQL_INTROSPECTION", action = clap::ArgAction::Set, global = true)]
    pub graphql_introspection: Option<bool>,

    /// A second listener for operators: `/metrics`, `/healthz` and `/readyz`. In production `/metrics` is
    /// served only here.
    #[arg(long, env = "ORDERFLOW_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<SocketAddr>,

    /// How the CQL keyspaces are replicated when `migrate` (or a single-process `serve`) creates them:
    /// a factor (`3`, SimpleStrategy) or `NetworkTopologyStrategy:dc1=3,dc2=3`.
    #[arg(long, env = "ORDERFLOW_CQL_REPLICATION", default_value = "1", value_parser = CqlReplication::parse, global = true)]
    pub cql_replication: CqlReplication,

    /// `min.insync.replicas` of the Kafka topics orderflow creates (2 with 3 replicas). Unset: the
    /// broker's default.
    #[arg(long, env = "ORDERFLOW_KAFKA_MIN_INSYNC_REPLICAS", global = true)]
    pub kafka_min_insync_replicas: Option<i32>,

    /// This deployment's namespace on a shared Kafka and CQL cluster (1-16 of `a-z0-9_`): topics and
    /// consumer groups become `<namespace>.<name>`, keyspaces `<namespace>_<name>`. Unset: the plain names.
    #[arg(long, env = "ORDERFLOW_NAMESPACE", value_parser = Namespace::parse, global = true)]
    pub namespace: Option<Namespace>,

    /// In production, accept Kafka topics or CQL keyspaces with fewer than 3 replicas.
    #[arg(long, env = "ORDERFLOW_ALLOW_LOW_REPLICATION", global = true)]
    pub allow_low_replication: bool,

    /// Customer and staff JWTs: the identity provider's public keys, its JWKS URL (`jwks_uri`, https), a
    /// JWKS file or a PEM public key. Unset: no customer identities.
    #[arg(long, env = "ORDERFLOW_AUTH_JWKS", value_parser = KeySource::parse, global = true)]
    pub auth_jwks: Option<KeySource>,

    /// The `iss` a JWT must carry. Unset: not checked.
    #[arg(long, env = "ORDERFLOW_AUTH_ISSUER", global = true)]
    pub auth_issuer: Option<String>,

    /// The `aud` a JWT must carry. Unset: not checked.
    #[arg(long, env = "ORDERFLOW_AUTH_AUDIENCE", global = true)]
    pub auth_audience: Option<String>,

    /// The JWT signature algorithms accepted, comma-separated: RS256, RS384, RS512, PS256, PS384, PS512,
    /// ES256, EdDSA.
    #[arg(long, env = "ORDERFLOW_AUTH_ALGORITHMS", default_value = "RS256", global = true)]
    pub auth_algorithms: String,

    /// The JWT claim with the caller's roles (`customer`, `staff`, `admin`); a dotted path reaches into
    /// objects (Keycloak: `realm_access.roles`).
    #[arg(long, env = "ORDERFLOW_AUTH_ROLES_CLAIM", default_value = "roles", global = true)]
    pub auth_roles_claim: String,

    /// Who takes the payments: `simulated` (the built-in provider that takes no real money) or `stripe`
    /// (with `ORDERFLOW_STRIPE_SECRET_KEY`; every customer order then needs a `payment_method`).
    #[arg(long, env = "ORDERFLOW_PAYMENT_PROVIDER", value_enum, default_value_t = PaymentProviderName::Simulated, global = true)]
    pub payment_provider: PaymentProviderName,

    /// Stripe's API, or a stand-in such as stripe-mock (`http://127.0.0.1:12111`).
    #[arg(long, env = "ORDERFLOW_STRIPE_API_BASE", default_value = STRIPE_API, global = true)]
    pub stripe_api_base: orderflow_processors::payment::stripe::Url,

    /// Stripe's secret key (`sk_test_...`, `sk_live_...`), from the environment only
    /// (`ORDERFLOW_STRIPE_SECRET_KEY`), never a flag.
    #[arg(skip = std::env::var("ORDERFLOW_STRIPE_SECRET_KEY").ok().filter(|k| !k.is_empty()).map(Secret::new))]
    pub stripe_secret_key: Option<Secret>,

    /// Stripe's webhook signing secret (`whsec_...`; several, comma-separated, while one is rolled), from
    /// the environment only (`ORDERFLOW_STRIPE_WEBHOOK_SECRET`). Without it `POST /v1/webhooks/stripe` is
    /// not served, and a payment that waits for the customer (3-D Secure) can only time out.
    #[arg(skip = std::env::var("ORDERFLOW_STRIPE_WEBHOOK_SECRET").ok().filter(|k| !k.trim().is_empty()).map(Secret::new))]
    pub stripe_webhook_secret: Option<Secret>,

    /// The shop's currency (ISO 4217): every price and order total is in it, and amounts go to the
    /// payment provider in its minor units.
    #[arg(long, env = "ORDERFLOW_CURRENCY", default_value = "EUR", value_parser = parse_currency, global = true)]
    pub currency: Currency,

    /// When payments are captured: `confirmation` (authorised and captured before the order is
    /// CONFIRMED) or `dispatch` (authorised before CONFIRMED, captured when staff move the order to
    /// OUT_FOR_DELIVERY; a failed capture cancels it). Each order keeps the setting it was placed under.
    #[arg(long, env = "ORDERFLOW_CAPTURE_ON", value_enum, default_value_t = CaptureOnArg::Confirmation, global = true)]
    pub capture_on: CaptureOnArg,

    /// Latency of each call to the simulated payment provider, in milliseconds.
    #[arg(long, env = "ORDERFLOW_PAYMENT_LATENCY_MS", default_value_t = 20, global = true)]
    pub payment_latency_ms: u64,

    /// The simulated provider declines charges above this amount (e.g. `500.00`).
    #[arg(long, env = "ORDERFLOW_PAYMENT_DECLINE_ABOVE", value_parser = parse_money, global = true)]
    pub payment_decline_above: Option<Money>,

    /// The simulated provider declines every charge of these user ids (comma-separated).
    #[arg(long, env = "ORDERFLOW_PAYMENT_DECLINE_USERS", value_delimiter = ',', value_parser = parse_user, global = true)]
    pub payment_decline_users: Vec<UserId>,

    /// What to put in an empty catalog at start-up.
    #[arg(long, env = "ORDERFLOW_SEED_CATALOG", value_enum, default_value_t = Seed::Demo, global = true)]
    pub seed_catalog: Seed,

    /// fsync every embedded write: survives power loss, at a cost in write speed. Without it, writes
    /// survive a crash or `kill -9` of the process.
    #[arg(long, env = "ORDERFLOW_SYNC_WRITES", global = true)]
    pub sync_writes: bool,

    /// Embedded store: block cache shared by every table, in MiB.
    #[arg(long, env = "ORDERFLOW_CACHE_MIB", default_value_t = EmbeddedMemory::default().cache_mib, global = true)]
    pub cache_mib: u64,

    /// Embedded store: largest in-memory write buffer (memtable) per table before it is flushed to disk,
    /// in MiB. Resident memory levels off at about cache + this x 17 tables.
    #[arg(long, env = "ORDERFLOW_MEMTABLE_MIB", default_value_t = EmbeddedMemory::default().memtable_mib, global = true)]
    pub memtable_mib: u64,

    /// Embedded store: largest write-ahead journal, in MiB, before the tables it covers are flushed and it
    /// is recycled (bounds disk use and recovery time after a crash); at least 64.
    #[arg(long, env = "ORDERFLOW_JOURNAL_MIB", default_value_t = EmbeddedMemory::default().journal_mib, global = true)]
    pub journal_mib: u64,

    /// Orders a process keeps in memory as the owner of their partition of the orders topic, so that the
    /// saga's next step and customers polling an order read them without the store (0 turns it off).
    /// About 2 KB each; an entry is dropped once the partition moves to another process.
    #[arg(long, env = "ORDERFLOW_OWNED_ORDER_ENTRIES", default_value_t = orderflow_platform::backend::DEFAULT_OWNED_ORDER_ENTRIES, global = true)]
    pub owned_order_entries: u64,

    /// On Kafka + CQL: the most statements of plain writes, made at the same time by any role of this
    /// process, that go to the database as one request (an unlogged batch). Groups form only while the
    /// database is behind, so this adds no wait; 1 sends every write on its own.
    #[arg(long, env = "ORDERFLOW_CQL_WRITE_GROUP", default_value_t = orderflow_platform::backend::DEFAULT_CQL_WRITE_GROUP, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=1024), usize::from), global = true)]
    pub cql_write_group: usize,

    /// Replication factor of the topics orderflow creates on Kafka (use 3 on a production cluster).
    #[arg(long, env = "ORDERFLOW_KAFKA_REPLICATION_FACTOR", default_value_t = 1, global = true)]
    pub kafka_replication_factor: i32,

    /// At start-up, how long to wait for Kafka and the CQL store to answer (a server starting or restarting
    /// at the same time), retrying with backoff, before exiting with the error; `0s` fails at once.
    #[arg(long, env = "ORDERFLOW_STARTUP_WAIT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub startup_wait: Duration,

    /// On SIGTERM or Ctrl-C: how long to finish in-flight requests and records before the process exits
    /// anyway (also when Kafka or the database has become unreachable), e.g. `10s`.
    #[arg(long, env = "ORDERFLOW_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Most HTTP requests handled at once on the API routes (REST and GraphQL); one more is answered
    /// 503 `overloaded` with `Retry-After` at once instead of waiting in a queue.
    #[arg(long, env = "ORDERFLOW_MAX_CONCURRENT_REQUESTS", default_value_t = 4096, global = true)]
    pub max_concurrent_requests: usize,

    /// Longest time from an API request's arrival to its response, body included (e.g. `30s`); past it
    /// the answer is 503 `timeout`.
    #[arg(long, env = "ORDERFLOW_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub request_timeout: Duration,

    /// Longest time a client may take to send a request's headers, and to start the next request on a
    /// kept-alive connection (e.g. `10s`); past it the connection is closed.
    #[arg(long, env = "ORDERFLOW_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub header_read_timeout: Duration,

    /// Orders per second each caller may place (REST `POST /v1/orders` and GraphQL `placeOrder`), on
    /// average; past it the answer is 429 `rate_limited` with `Retry-After`. Unset: no limit.
    #[arg(long, env = "ORDERFLOW_ORDER_RATE_LIMIT", global = true)]
    pub order_rate_limit: Option<NonZeroU32>,

    /// Orders a caller may place at once after being idle (the limit's burst). Default: the rate.
    #[arg(long, env = "ORDERFLOW_ORDER_RATE_LIMIT_BURST", global = true)]
    pub order_rate_limit_burst: Option<NonZeroU32>,

    /// What the order rate limit counts by: `user` or `ip`.
    #[arg(long, env = "ORDERFLOW_ORDER_RATE_LIMIT_KEY", value_enum, default_value_t = OrderRateLimitKey::User, global = true)]
    pub order_rate_limit_key: OrderRateLimitKey,

    /// Origins browsers may call the REST and GraphQL API from (comma-separated, e.g.
    /// `https://shop.example.com,http://localhost:3000`; `*` for any). Unset: no cross-origin access.
    #[arg(long, env = "ORDERFLOW_CORS_ALLOW_ORIGIN", value_delimiter = ',', value_parser = parse_origin, global = true)]
    pub cors_allow_origin: Vec<String>,

    /// Longest time one GraphQL request may run (e.g. `10s`); past it the answer is a GraphQL error with
    /// code `timeout`.
    #[arg(long, env = "ORDERFLOW_GRAPHQL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub graphql_timeout: Duration,

    /// Re-publish PENDING orders older than this many milliseconds, once the saga has handled everything
    /// published before them (recovers orders whose event was lost to a crash between storing and
    /// publishing; orders waiting in a lagging saga's backlog are left alone).
    #[arg(long, env = "ORDERFLOW_STALLED_AFTER_MS", default_value_t = 3000, global = true)]
    pub stalled_after_ms: u64,

    /// An order still PROCESSING this long after it was placed (a lost reply, a role that stopped) is
    /// compensated: its stock released, any capture refunded, and it ends REJECTED with reason
    /// `timed_out`, in its timeline. `0` turns this off. E.g. `5m`.
    #[arg(long, env = "ORDERFLOW_STUCK_ORDER_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub stuck_order_timeout: Duration,

    /// Largest record, in bytes, a consumer hands to its handler on any topic; a larger one goes to the
    /// dead-letter topic with `record_too_large` before it is decoded.
    #[arg(long, env = "ORDERFLOW_MAX_RECORD_BYTES", default_value_t = DEFAULT_MAX_RECORD_BYTES, value_parser = parse_record_bytes, global = true)]
    pub max_record_bytes: usize,

    /// Per-topic overrides of `--max-record-bytes`, as `TOPIC=BYTES` (comma-separated or repeated),
    /// e.g. `orderflow.partner-orders.v1=262144`.
    #[arg(long, env = "ORDERFLOW_TOPIC_MAX_RECORD_BYTES", value_delimiter = ',', value_parser = RecordLimits::parse_override, global = true)]
    pub topic_max_record_bytes: Vec<(String, usize)>,

    /// Fault injection for tests, hidden from `--help`: `ROLE@DURATION` (e.g. `process payment@3s`) ends
    /// one task of the role named ROLE (as `/readyz` names roles) DURATION after start-up, as a role whose
    /// task ends unexpectedly would. No role ends by itself otherwise (consumers restart on errors), so
    /// this is how the end-to-end tests show what the process does then: `/readyz` fails and the process
    /// exits non-zero. Never set in production.
    #[arg(long, env = "ORDERFLOW_FAULT_END_ROLE", value_parser = EndRoleFault::parse, hide = true, global = true)]
    pub fault_end_role: Option<EndRoleFault>,
}

/// See [`Settings::fault_end_role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndRoleFault {
    /// The role's name as `/readyz` reports it, e.g. `process payment` or `http server`.
    pub role: String,
    /// How long after start-up the task ends.
    pub after: Duration,
}

impl EndRoleFault {
    fn parse(s: &str) -> Result<Self, String> {
        let (role, after) = s.rsplit_once('@').ok_or_else(|| format!("{s:?}: expected ROLE@DURATION"))?;
        let after = humantime::parse_duration(after.trim()).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self { role: role.trim().to_owned(), after })
    }
}

fn parse_currency(s: &str) -> Result<Currency, String> {
    Currency::parse("currency", s).map_err(|e| e.reason)
}

/// `--capture-on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureOnArg {
    Confirmation,
    Dispatch,
}

impl From<CaptureOnArg> for orderflow_schemas::CaptureOn {
    fn from(arg: CaptureOnArg) -> Self {
        match arg {
            CaptureOnArg::Confirmation => Self::Confirmation,
            CaptureOnArg::Dispatch => Self::Dispatch,
        }
    }
}

/// `--payment-provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PaymentProviderName {
    Simulated,
    Stripe,
}

fn parse_money(s: &str) -> Result<Money, String> {
    Money::parse("amount", s).map_err(|e| e.to_string())
}

fn parse_record_bytes(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?}: a whole number of bytes, at least 1")),
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, no path; or `*`.
fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(s.to_owned());
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?}: an origin starts with http:// or https://"))?;
    let valid = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !valid {
        return Err(format!("{s:?}: an origin is scheme://host[:port], without a path or a trailing slash"));
    }
    Ok(s.to_ascii_lowercase())
}

fn parse_user(s: &str) -> Result<UserId, String> {
    UserId::parse(s.trim()).map_err(|e| e.to_string())
}

impl Settings {
    fn production(&self) -> bool {
        self.environment == Environment::Production
    }

    /// `--auth`, or its default for `--env`; production refuses `open`.
    pub fn auth_mode(&self) -> anyhow::Result<AuthModeArg> {
        match (self.auth, self.production()) {
            (Some(AuthModeArg::Open), true) => {
                anyhow::bail!("--env production refuses --auth open (ORDERFLOW_AUTH): orders need a signed-in customer")
            }
            (Some(mode), _) => Ok(mode),
            (None, true) => Ok(AuthModeArg::Required),
            (None, false) => Ok(AuthModeArg::Open),
        }
    }

    /// Whether GraphQL introspection and GraphiQL are on: `--graphql-introspection`, else on outside
    /// production.
    pub fn graphql_introspection(&self) -> bool {
        self.graphql_introspection.unwrap_or(!self.production())
    }

    /// Whether the main listener serves `/metrics` (not in production: there only `--admin-listen` does).
    pub fn metrics_on_main_listener(&self) -> bool {
        !self.production()
    }

    /// The checks of `--env production` on replication: Kafka topics and CQL keyspaces with fewer than 3
    /// replicas are refused unless `--allow-low-replication`. Nothing is checked in development.
    pub fn check_replication(&self) -> anyhow::Result<()> {
        if !self.production() || self.allow_low_replication {
            return Ok(());
        }
        if matches!(self.bus, BackendUrl::Kafka(_)) && self.kafka_replication_factor < 3 {
            anyhow::bail!(
                "--env production: Kafka topics with {} replica(s) lose acknowledged orders with a broker; set \
                 --kafka-replication-factor 3 (ORDERFLOW_KAFKA_REPLICATION_FACTOR), or --allow-low-replication",
                self.kafka_replication_factor
            );
        }
        if matches!(self.store, BackendUrl::Scylla(_)) && self.cql_replication.min_factor() < 3 {
            anyhow::bail!(
                "--env production: CQL keyspaces with replication {} lose orders with a node; set \
                 --cql-replication 3 or NetworkTopologyStrategy:DC=3 (ORDERFLOW_CQL_REPLICATION), or \
                 --allow-low-replication",
                self.cql_replication
            );
        }
        Ok(())
    }

    /// In production, says at start which connection to Kafka or the database goes without a login or
    /// without TLS (a lab cluster may; a shop's should not). Nothing outside production.
    pub fn warn_unauthenticated_connections(&self, options: &BackendOptions) {
        if !self.production() {
            return;
        }
        if matches!(self.bus, BackendUrl::Kafka(_)) {
            let protocol = options.kafka_security.protocol();
            if protocol != "SASL_SSL" {
                tracing::warn!(
                    protocol,
                    "--env production: Kafka is reached over {protocol}; a production cluster should require \
                     SASL over TLS (ORDERFLOW_KAFKA_USERNAME, ORDERFLOW_KAFKA_SSL_CA)"
                );
            }
        }
        if matches!(self.store, BackendUrl::Scylla(_)) {
            let (login, tls) = (options.cql_security.login.is_some(), options.cql_security.tls.is_some());
            if !(login && tls) {
                tracing::warn!(
                    login,
                    tls,
                    "--env production: the CQL database is reached without {}; a production cluster should \
                     require both (ORDERFLOW_CQL_USERNAME, ORDERFLOW_CQL_TLS_CA)",
                    if login {
                        "TLS"
                    } else if tls {
                        "a login"
                    } else {
                        "a login and TLS"
                    }
                );
            }
        }
    }

    /// Who may do what, from the auth settings; an error names the setting to fix.
    pub async fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let admin =
            AdminToken::from_settings(self.admin_token.as_ref().map(Secret::expose), self.admin_token_file.as_deref())?;
        let jwt = match &self.auth_jwks {
            None => None,
            Some(keys) => {
                let algorithms = orderflow_identity::jwt::parse_algorithms(&self.auth_algorithms)
                    .map_err(|e| anyhow::anyhow!("ORDERFLOW_AUTH_ALGORITHMS: {e}"))?;
                Some(
                    JwtVerifier::new(JwtConfig {
                        keys: keys.clone(),
                        issuer: self.auth_issuer.clone().filter(|s| !s.is_empty()),
                        audience: self.auth_audience.clone().filter(|s| !s.is_empty()),
                        algorithms,
                        roles_claim: self.auth_roles_claim.clone(),
                    })
                    .await?,
                )
            }
        };
        let mode = match self.auth_mode()? {
            AuthModeArg::Open => AuthMode::Open,
            AuthModeArg::Required => AuthMode::Required,
        };
        Ok(Authenticator { mode, admin, jwt })
    }

    /// The adapters' options; an error names the connection setting to fix.
    pub fn backend_options(&self) -> anyhow::Result<BackendOptions> {
        Ok(BackendOptions {
            kafka_security: self.connections.kafka_security().map_err(anyhow::Error::msg)?,
            cql_security: self.connections.cql_security().map_err(anyhow::Error::msg)?,
            sync_writes: self.sync_writes,
            kafka_replication_factor: self.kafka_replication_factor,
            kafka_min_insync_replicas: self.kafka_min_insync_replicas,
            cql_replication: self.cql_replication.clone(),
            namespace: self.namespace.clone(),
            migrate_cql: false,
            embedded_memory: EmbeddedMemory {
                cache_mib: self.cache_mib,
                memtable_mib: self.memtable_mib,
                journal_mib: self.journal_mib,
            },
            owned_order_entries: self.owned_order_entries,
            cql_write_group: self.cql_write_group,
            record_limits: RecordLimits {
                default_bytes: self.max_record_bytes,
                per_topic: self.topic_max_record_bytes.iter().cloned().collect(),
            },
        })
    }

    pub fn http_limits(&self) -> crate::server::HttpLimits {
        crate::server::HttpLimits {
            max_concurrent_requests: self.max_concurrent_requests,
            request_timeout: self.request_timeout,
            header_read_timeout: self.header_read_timeout,
        }
    }

    /// The order rate limit, if one is configured.
    pub fn order_rate_limit(&self) -> Option<OrderRateLimit> {
        let per_second = self.order_rate_limit?;
        let key = match self.order_rate_limit_key {
            OrderRateLimitKey::User => RateLimitKey::User,
            OrderRateLimitKey::Ip => RateLimitKey::Ip,
        };
        Some(OrderRateLimit { per_second, burst: self.order_rate_limit_burst.unwrap_or(per_second), key })
    }

    /// The Stripe webhook secrets (`ORDERFLOW_STRIPE_WEBHOOK_SECRET`, comma-separated), when Stripe is the
    /// provider and one is configured.
    pub fn stripe_webhook_secrets(&self) -> Option<Vec<Secret>> {
        if self.payment_provider != PaymentProviderName::Stripe {
            return None;
        }
        let secrets: Vec<Secret> = (self.stripe_webhook_secret.as_ref()?.expose().split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect();
        (!secrets.is_empty()).then_some(secrets)
    }

    /// Whether intake refuses a customer's order without a `payment_method` (the provider needs one).
    pub fn payment_method_required(&self) -> bool {
        self.payment_provider == PaymentProviderName::Stripe
    }

    /// The payment provider, built and checked: Stripe without a secret key stops the process at start.
    fn provider(&self) -> anyhow::Result<ProviderChoice> {
        Ok(match self.payment_provider {
            PaymentProviderName::Simulated => ProviderChoice::Simulated,
            PaymentProviderName::Stripe => {
                let secret_key = self.stripe_secret_key.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--payment-provider stripe needs ORDERFLOW_STRIPE_SECRET_KEY (a test-mode key sk_test_... \
                         from the Stripe dashboard while you try it)"
                    )
                })?;
                let config = StripeConfig { api_base: self.stripe_api_base.clone(), secret_key };
                ProviderChoice::Stripe(Arc::new(StripeProvider::new(config).map_err(anyhow::Error::msg)?))
            }
        })
    }

    pub fn processors(&self) -> anyhow::Result<ProcessorSettings> {
        Ok(ProcessorSettings {
            provider: self.provider()?,
            currency: self.currency,
            payment: SimulatedRules {
                latency: Duration::from_millis(self.payment_latency_ms),
                decline_above: self.payment_decline_above,
                decline_users: self.payment_decline_users.iter().cloned().collect(),
            },
            stalled_after: Duration::from_millis(self.stalled_after_ms),
            stuck_after: (!self.stuck_order_timeout.is_zero()).then_some(self.stuck_order_timeout),
            ..ProcessorSettings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Cli::try_parse_from(std::iter::once("orderflow").chain(args.iter().copied())).map(|c| c.settings)
    }

    #[test]
    fn limits_are_off_by_default() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.order_rate_limit(), None);
        assert!(s.cors_allow_origin.is_empty());
        assert_eq!(s.fault_end_role, None);
        assert_eq!(s.startup_wait, Duration::from_secs(60));
        assert_eq!(s.graphql_timeout, Duration::from_secs(10));
    }

    #[test]
    fn rate_limit_and_origins_parse_and_bad_values_are_refused() {
        let s = parse(&[
            "--order-rate-limit",
            "5",
            "--order-rate-limit-key",
            "ip",
            "--cors-allow-origin",
            "https://Shop.example.com,http://localhost:3000",
            "--graphql-timeout",
            "2s",
        ])
        .unwrap();
        let limit = s.order_rate_limit().unwrap();
        assert_eq!((limit.per_second.get(), limit.burst.get(), limit.key), (5, 5, RateLimitKey::Ip));
        assert_eq!(s.cors_allow_origin, ["https://shop.example.com", "http://localhost:3000"]);
        assert_eq!(s.graphql_timeout, Duration::from_secs(2));
        let s = parse(&["--order-rate-limit", "5", "--order-rate-limit-burst", "20"]).unwrap();
        assert_eq!(s.order_rate_limit().map(|l| l.burst.get()), Some(20));
        let s = parse(&["--fault-end-role", "process payment@1500ms"]).unwrap();
        let fault = EndRoleFault { role: "process payment".into(), after: Duration::from_millis(1500) };
        assert_eq!(s.fault_end_role, Some(fault));

        for bad in [
            &["--order-rate-limit", "0"][..],
            &["--order-rate-limit-key", "cookie"],
            &["--cors-allow-origin", "https://shop.example.com/"],
            &["--cors-allow-origin", "shop.example.com"],
            &["--cors-allow-origin", "https://"],
            &["--fault-end-role", "process payment"],
            &["--fault-end-role", "process payment@soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
