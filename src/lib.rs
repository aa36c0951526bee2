//! The `orderflow` binary's library: assembling roles into a running process. `main.rs` only parses
//! the command line; tests start the same [`App`] on port 0.

pub mod backend;
pub mod config;
pub mod demo;
pub mod health;
pub mod server;
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use orderflow_graphql::ApiState;
use orderflow_graphql::catalog::{CacheInvalidator, CatalogCache, invalidation_group};
use orderflow_identity::http::Authenticator;
use orderflow_ingest::Intake;
use orderflow_ingest::http::{ApiError, OrdersApi};
use orderflow_ingest::rate_limit::{OrderRateLimiter, SWEEP_INTERVAL};
use orderflow_platform::backend::BackendOptions;
use orderflow_platform::{BackendUrl, Backends};
use orderflow_processors::catalog::CatalogObserver;
use orderflow_processors::runtime::{Role, spawn_role};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::classify::ServerErrorsFailureClass;

pub use config::{AuthModeArg, Environment, Seed, Settings};
use health::{Probes, RoleHealth, supervise};

/// What one process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub graphql: bool,
    pub processors: Vec<Role>,
}

impl Roles {
    /// Every role: `orderflow serve`.
    pub fn all() -> Self {
        Self { ingest: true, graphql: true, processors: Role::ALL.to_vec() }
    }
}

/// A running orderflow process.
#[derive(Debug)]
pub struct App {
    pub addr: SocketAddr,
    pub backends: Backends,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// How long [`App::stop`] waits for in-flight requests and records.
    grace: Duration,
    /// Which roles ended unexpectedly (see [`health::supervise`]).
    health: RoleHealth,
}

async fn metrics() -> impl IntoResponse {
    match orderflow_platform::telemetry::prometheus() {
        Some(handle) => {
            (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "metrics recorder not installed")
            .into_response(),
    }
}

/// What operators and their tools read: `/healthz`, `/readyz` and `/metrics`. On the main listener
/// outside production, and on `--admin-listen` when it is set.
fn operator_routes(backends: &Backends, health: &RoleHealth) -> Router {
    health::router(Probes { backends: backends.clone(), health: health.clone() }).route("/metrics", get(metrics))
}

fn router(
    roles: &Roles,
    backends: &Backends,
    settings: &Settings,
    catalog: &Arc<CatalogCache>,
    health: &RoleHealth,
    rate_limit: Option<&Arc<OrderRateLimiter>>,
    auth: &Arc<Authenticator>,
) -> Router {
    let rate_limit = rate_limit.cloned();
    let intake = Intake::new(backends.stores.clone(), Arc::clone(&backends.bus))
        .requiring_payment_method(settings.payment_method_required())
        .in_currency(settings.currency)
        .capturing_on(settings.capture_on.into());
    let mut api = Router::new();
    if roles.ingest {
        api = api.merge(orderflow_ingest::http::router(OrdersApi {
            intake: intake.clone(),
            stores: backends.stores.clone(),
            bus: Arc::clone(&backends.bus),
            rate_limit: rate_limit.clone(),
            auth_mode: auth.mode,
        }));
    }
    if roles.ingest
        && let Some(secrets) = settings.stripe_webhook_secrets()
    {
        api = api.merge(orderflow_ingest::webhooks::router(orderflow_ingest::webhooks::StripeWebhooks {
            stores: backends.stores.clone(),
            bus: Arc::clone(&backends.bus),
            secrets: secrets.into(),
        }));
    }
    if roles.graphql {
        let state = ApiState {
            stores: backends.stores.clone(),
            catalog: Arc::clone(catalog),
            bus: Arc::clone(&backends.bus),
            intake,
            auth_mode: auth.mode,
        };
        let options = orderflow_graphql::HttpOptions {
            timeout: settings.graphql_timeout,
            rate_limit,
            introspection: settings.graphql_introspection(),
        };
        api = api.merge(orderflow_graphql::router_with(state, options));
    }
    // Every API request is authenticated once, here, into a `Caller` (a bad token: 401 before any handler).
    let api = api.layer(axum::middleware::from_fn_with_state(Arc::clone(auth), orderflow_identity::http::authenticate));
    let mut api = server::limit_api(api, &settings.http_limits());
    // Outside the limits, so their 503s (and the 429s and 413s inside) carry the CORS headers a
    // browser needs to let the page read them.
    if let Some(cors) = server::cors(&settings.cors_allow_origin) {
        api = api.layer(cors);
    }
    // Health and metrics stay outside the limits: a liveness probe shed under load would have a
    // supervisor restart a process that is merely busy.
    let app = if settings.metrics_on_main_listener() {
        operator_routes(backends, health)
    } else {
        health::router(Probes { backends: backends.clone(), health: health.clone() })
    };
    let app = app.merge(api);
    app.fallback(|| async { ApiError::not_found() })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
                .into_response()
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(log_failure))
}

/// Logs a failed response, except 503s: those are shed or timed-out requests (counted by
/// `orderflow_http_requests_shed_total` and `..._timed_out_total`) or store/bus outages (logged with
/// their cause where they happen). An error line per shed request would flood the log exactly while the
/// process is overloaded.
fn log_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &tracing::Span) {
    if !matches!(class, ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE)) {
        tracing::error!(classification = %class, latency_ms = latency.as_millis(), "response failed");
    }
}

impl App {
    /// Opens the backends, seeds the catalog if asked, starts the processors and serves HTTP on
    /// `listener`.
    pub async fn start(settings: &Settings, roles: Roles, listener: TcpListener) -> anyhow::Result<App> {
        let _ = orderflow_platform::telemetry::prometheus();
        settings.check_replication()?;
        let auth = Arc::new(settings.authenticator().await.context("checking the auth settings")?);
        if roles.ingest || roles.graphql {
            tracing::info!("access: {}", auth.describe());
        }
        if roles != Roles::all() && (settings.bus == BackendUrl::Embedded || settings.store == BackendUrl::Embedded) {
            anyhow::bail!(
                "the embedded bus and store live inside one process: run `orderflow serve`, or give every role \
                 --bus kafka://HOST:PORT and --store scylla://HOST:PORT"
            );
        }
        // One process with every role applies the CQL schema itself; separate roles expect `orderflow migrate`.
        let options = BackendOptions { migrate_cql: roles == Roles::all(), ..settings.backend_options()? };
        settings.warn_unauthenticated_connections(&options);
        let backends = crate::backend::open_waiting(
            &settings.bus,
            &settings.store,
            &settings.data_dir,
            &options,
            settings.startup_wait,
        )
        .await
        .with_context(|| format!("opening bus {} and store {}", settings.bus, settings.store))?;
        if settings.seed_catalog == Seed::Demo && roles.graphql {
            let n = demo::seed_if_empty(&backends).await.context("seeding the demo catalog")?;
            if n > 0 {
                tracing::info!(
                    products = n,
                    "empty catalog: added the demo products (start with --seed-catalog none to skip)"
                );
            }
        }
        let shutdown = CancellationToken::new();
        let health = RoleHealth::new();
        let mut tasks = JoinSet::new();
        let mut fault = settings.fault_end_role.clone();
        // The GraphQL catalog cache. A catalog projector in this process evicts from it right after it
        // stores a change; on a shared bus (Kafka) the projector of another process may handle the
        // change instead, so this process also follows the catalog topic in a group of its own.
        let catalog_cache = Arc::new(CatalogCache::new(Arc::clone(&backends.stores.catalog_view)));
        let mut processor_settings = settings.processors()?;
        if roles.ingest
            && settings.payment_provider == crate::config::PaymentProviderName::Stripe
            && settings.stripe_webhook_secrets().is_none()
        {
            tracing::warn!(
                "ORDERFLOW_STRIPE_WEBHOOK_SECRET is not set: POST /v1/webhooks/stripe is not served, so an order \
                 whose card asks for authentication (3-D Secure) can only time out"
            );
        }
        if roles.graphql {
            processor_settings.catalog_observer = Some(Arc::clone(&catalog_cache) as Arc<dyn CatalogObserver>);
            if settings.bus != BackendUrl::Embedded {
                let consumer = orderflow_platform::bus::run_consumer(
                    Arc::clone(&backends.bus),
                    invalidation_group(),
                    orderflow_schemas::topics::CATALOG,
                    Arc::new(CacheInvalidator { cache: Arc::clone(&catalog_cache) }),
                    shutdown.clone(),
                );
                supervise_role(&mut tasks, &health, &shutdown, &mut fault, "graphql catalog-cache invalidation", |t| {
                    t.spawn(consumer);
                });
            }
        }
        for role in &roles.processors {
            let name = format!("process {role:?}").to_lowercase();
            supervise_role(&mut tasks, &health, &shutdown, &mut fault, name, |t| {
                spawn_role(*role, &backends, &processor_settings, &shutdown, t);
            });
        }
        if roles.ingest {
            let intake = Intake::new(backends.stores.clone(), Arc::clone(&backends.bus))
                .in_currency(settings.currency)
                .capturing_on(settings.capture_on.into());
            let consumer = orderflow_platform::bus::run_consumer(
                Arc::clone(&backends.bus),
                orderflow_schemas::topics::groups::PARTNER_INTAKE,
                orderflow_schemas::topics::PARTNER_ORDERS,
                Arc::new(orderflow_ingest::partner::PartnerIntake { intake }),
                shutdown.clone(),
            );
            supervise_role(&mut tasks, &health, &shutdown, &mut fault, "ingest partner-order consumer", |t| {
                t.spawn(consumer);
            });
        }
        let rate_limit = settings.order_rate_limit().map(|limit| Arc::new(OrderRateLimiter::new(limit)));
        if let Some(limiter) = rate_limit.clone().filter(|_| roles.ingest || roles.graphql) {
            let stop = shutdown.clone();
            supervise_role(&mut tasks, &health, &shutdown, &mut fault, "order rate-limit sweeper", |t| {
                t.spawn(sweep_rate_limiter(limiter, stop));
            });
        }
        let addr = listener.local_addr()?;
        if let Some(admin_addr) = settings.admin_listen {
            let admin = TcpListener::bind(admin_addr)
                .await
                .with_context(|| format!("cannot listen on {admin_addr} (--admin-listen, ORDERFLOW_ADMIN_LISTEN)"))?;
            let app = operator_routes(&backends, &health).fallback(|| async { ApiError::not_found() });
            let server = server::serve(admin, app, settings.header_read_timeout, shutdown.clone());
            supervise_role(&mut tasks, &health, &shutdown, &mut fault, "admin http server", |t| {
                t.spawn(server);
            });
            tracing::info!(%admin_addr, "operators' listener: /metrics, /healthz, /readyz");
        } else if !settings.metrics_on_main_listener() {
            tracing::warn!("--env production serves /metrics only on --admin-listen, which is not set: no metrics");
        }
        if roles.ingest || roles.graphql || !roles.processors.is_empty() {
            let app = router(&roles, &backends, settings, &catalog_cache, &health, rate_limit.as_ref(), &auth);
            let server = server::serve(listener, app, settings.header_read_timeout, shutdown.clone());
            supervise_role(&mut tasks, &health, &shutdown, &mut fault, "http server", |t| {
                t.spawn(server);
            });
        }
        if let Some(fault) = fault {
            shutdown.cancel();
            anyhow::bail!("--fault-end-role names {:?}, which this process does not run", fault.role);
        }
        tracing::info!(%addr, bus = %settings.bus, store = %settings.store, data_dir = %settings.data_dir.display(), "orderflow is up");
        Ok(App { addr, backends, shutdown, tasks, grace: settings.shutdown_grace, health })
    }

    /// Which roles of this process ended unexpectedly (what `/readyz` reports).
    pub fn health(&self) -> &RoleHealth {
        &self.health
    }

    /// A token that stops the app when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting work, finishes in-flight requests and records (for at most the grace period), and
    /// returns.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!(grace = ?self.grace, "shutdown grace period over; abandoning the remaining tasks");
            self.tasks.abort_all();
        }
    }

    /// Runs until the shutdown token is cancelled (e.g. by SIGTERM) or a role ends unexpectedly, then
    /// stops gracefully. A watchdog ends the process once the grace period (plus a second for the last
    /// log lines) has passed, whatever is still blocked: a Kafka client flushing to a broker that went
    /// away, a store call that hangs, a blocking thread. Returns only if the stop finished in time: an
    /// error if a role had ended, so the process exits non-zero and its supervisor restarts it rather
    /// than leaving it half-working.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let failed = self.health.failed();
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = failed.cancelled() => {
                tracing::error!(ended = ?self.health.ended(), "a role ended unexpectedly; stopping the process");
            }
        }
        let ended = self.health.ended();
        let grace = self.grace;
        std::thread::spawn(move || {
            std::thread::sleep(grace + Duration::from_secs(1));
            tracing::error!(?grace, "still not stopped after the shutdown grace period; exiting now");
            std::process::exit(1);
        });
        self.stop().await;
        if ended.is_empty() { Ok(()) } else { anyhow::bail!("roles ended unexpectedly: {}", ended.join(", ")) }
    }
}

/// [`supervise`], plus the test-only fault of [`Settings::fault_end_role`]: if `fault` names this role, one
/// more task of the role ends after the fault's delay (or at shutdown), as a role's task that ends
/// unexpectedly would; `fault` is taken, so that the caller can tell a name no role has.
fn supervise_role(
    tasks: &mut JoinSet<()>,
    health: &RoleHealth,
    shutdown: &CancellationToken,
    fault: &mut Option<config::EndRoleFault>,
    role: impl Into<String>,
    start: impl FnOnce(&mut JoinSet<()>),
) {
    let role = role.into();
    let injected = fault.take_if(|f| f.role == role);
    let stop = shutdown.clone();
    supervise(tasks, health, shutdown, role, |t| {
        start(t);
        if let Some(fault) = injected {
            t.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(fault.after) => {
                        tracing::warn!(role = %fault.role, "fault injection (--fault-end-role): ending a task of the role");
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
    });
}

/// Drops idle keys from the order rate limiter every [`SWEEP_INTERVAL`], so its memory follows the
/// callers of the last few seconds, not every caller ever seen.
async fn sweep_rate_limiter(limiter: Arc<OrderRateLimiter>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => limiter.sweep(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down: finishing in-flight work");
        token.cancel();
    });
}
