//! Liveness (`/healthz`), readiness (`/readyz`) and the supervision of the roles' tasks that readiness
//! reports on.
//!
//! Liveness answers "is the process running", nothing else: a supervisor that restarts on a failed
//! liveness check must not restart every instance because the database is briefly away. Readiness
//! answers "can this process do its work now": the bus and the store answer and every role it started
//! still runs. Both are O(1): neither reads user data.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use orderflow_platform::Backends;
use serde_json::json;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// Upper bound on one readiness probe, in case an adapter does not bound its own (they do, at 2 s):
/// a readiness check must answer within a supervisor's usual probe timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Which roles of this process have ended while it was not shutting down.
#[derive(Debug, Clone, Default)]
pub struct RoleHealth {
    ended: Arc<Mutex<Vec<String>>>,
    failed: CancellationToken,
}

impl RoleHealth {
    pub fn new() -> Self {
        Self::default()
    }

    /// The roles that ended unexpectedly, in the order they ended.
    pub fn ended(&self) -> Vec<String> {
        match self.ended.lock() {
            Ok(ended) => ended.clone(),
            // A panic while holding this lock can only have happened in `role_ended`, after a role ended.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Cancelled as soon as a role ends unexpectedly: the process should stop and exit non-zero.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    fn role_ended(&self, role: &str, outcome: Result<(), JoinError>) {
        match outcome {
            Ok(()) => tracing::error!(role, "a role ended while the process was not shutting down"),
            Err(e) if e.is_panic() => tracing::error!(role, error = %e, "a role panicked"),
            Err(e) => tracing::error!(role, error = %e, "a role was cancelled"),
        }
        let mut ended = match self.ended.lock() {
            Ok(ended) => ended,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !ended.iter().any(|r| r == role) {
            ended.push(role.to_owned());
        }
        drop(ended);
        self.failed.cancel();
    }
}

/// Runs the tasks `start` spawns as the role `role`, inside `tasks`. Every one of them is meant to run until
/// `shutdown`; if one ends (returns or panics) before that, the role is recorded in `health` at once (so
/// `/readyz` fails) and `health.failed()` is cancelled. The role's other tasks keep running until the
/// process stops them, so a graceful stop still drains them.
pub fn supervise(
    tasks: &mut JoinSet<()>,
    health: &RoleHealth,
    shutdown: &CancellationToken,
    role: impl Into<String>,
    start: impl FnOnce(&mut JoinSet<()>),
) {
    let mut role_tasks = JoinSet::new();
    start(&mut role_tasks);
    let (health, shutdown, role) = (health.clone(), shutdown.clone(), role.into());
    tasks.spawn(async move {
        while let Some(outcome) = role_tasks.join_next().await {
            if !shutdown.is_cancelled() {
                health.role_ended(&role, outcome);
            }
        }
    });
}

/// What `/readyz` checks.
#[derive(Debug, Clone)]
pub struct Probes {
    pub backends: Backends,
    pub health: RoleHealth,
}

/// `GET /healthz` (liveness) and `GET /readyz` (readiness).
pub fn router(probes: Probes) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(probes)
}

/// The process runs and serves HTTP: that is all liveness means.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(probes): State<Probes>) -> Response {
    let bus = tokio::time::timeout(PROBE_TIMEOUT, probes.backends.bus.ready());
    let store = tokio::time::timeout(PROBE_TIMEOUT, probes.backends.stores.readiness.ping());
    let (bus, store) = tokio::join!(bus, store);
    let bus = match bus {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    let store = match store {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    // The causes are logged, not returned: the body says which part is not ready, for operators and
    // supervisors, without exposing addresses or driver messages to whoever can reach the port.
    if let Some(cause) = &bus {
        tracing::warn!(%cause, "readiness: the bus does not answer");
    }
    if let Some(cause) = &store {
        tracing::warn!(%cause, "readiness: the store does not answer");
    }
    let ended = probes.health.ended();
    let part = |failed: bool, what: &str| if failed { what.to_owned() } else { "ok".to_owned() };
    let ready = bus.is_none() && store.is_none() && ended.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "bus": part(bus.is_some(), "unreachable"),
        "store": part(store.is_some(), "unreachable"),
        "roles": part(!ended.is_empty(), "ended"),
        "ended_roles": ended,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}
