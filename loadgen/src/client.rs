//! The HTTP and GraphQL calls the scenarios make, and what counts as an error.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Why a request counts as an error.
#[derive(Debug)]
pub enum Failure {
    /// Connect, timeout, reset: no HTTP answer.
    Transport(String),
    /// An answer outside 2xx.
    Status(u16, String),
    /// A GraphQL answer with a non-empty `errors`.
    GraphQl(String),
    /// A 2xx answer whose body is not the expected JSON.
    Decode(String),
}

impl Failure {
    /// `(kind, message)` for the recorder.
    pub fn parts(&self) -> (String, String) {
        match self {
            Failure::Transport(m) => ("transport".into(), m.clone()),
            Failure::Status(s, m) => (format!("http_{s}"), format!("{s}: {m}")),
            Failure::GraphQl(m) => ("graphql_errors".into(), m.clone()),
            Failure::Decode(m) => ("decode".into(), m.clone()),
        }
    }
}

/// Refuses any target that is not on this machine: load is only ever sent to loopback.
pub fn check_loopback(target: &reqwest::Url) -> anyhow::Result<()> {
    let host = target.host_str().context("the target has no host")?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok().with_context(|| {
        format!("target host {host:?}: only loopback addresses (127.0.0.0/8, ::1, localhost) are allowed")
    })?;
    if !ip.is_loopback() {
        bail!("target {ip} is not a loopback address: orderflow-load only sends load to this machine");
    }
    Ok(())
}

/// A client for one orderflow (or bare baseline) server.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    admin_token: Option<String>,
}

fn truncate(mut s: String) -> String {
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Api {
    pub fn new(target: &str, admin_token: Option<String>, timeout: Duration) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(target).with_context(|| format!("target {target:?} is not a URL"))?;
        check_loopback(&url)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base: target.trim_end_matches('/').to_owned(), admin_token })
    }

    /// A client for one simulated user: it keeps (at most) one connection to the server, never closed for
    /// being idle, so a user that is pre-opened with [`Api::open`] sends every request on that connection.
    pub fn dedicated(target: &str, timeout: Duration) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(target).with_context(|| format!("target {target:?} is not a URL"))?;
        check_loopback(&url)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(None)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base: target.trim_end_matches('/').to_owned(), admin_token: None })
    }

    /// Opens the keep-alive connection before the load starts (`GET /healthz`): any HTTP answer will do,
    /// only a transport failure is an error.
    pub async fn open(&self) -> Result<(), Failure> {
        let resp = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        resp.bytes().await.map_err(|e| Failure::Transport(e.to_string()))?;
        Ok(())
    }

    async fn json_of(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Value, Failure> {
        let resp = resp.map_err(|e| Failure::Transport(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| Failure::Transport(e.to_string()))?;
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16(), truncate(String::from_utf8_lossy(&body).into_owned())));
        }
        serde_json::from_slice(&body).map_err(|e| Failure::Decode(e.to_string()))
    }

    /// `POST /v1/orders`; any 2xx is a success (202 normally, 200 for a replay).
    pub async fn place_order(&self, body: &Value) -> Result<Value, Failure> {
        Self::json_of(self.http.post(format!("{}/v1/orders", self.base)).json(body).send().await).await
    }

    /// `GET /v1/orders/{id}`.
    pub async fn get_order(&self, id: &str) -> Result<Value, Failure> {
        Self::json_of(self.http.get(format!("{}/v1/orders/{id}", self.base)).send().await).await
    }

    /// `GET /v1/products/{sku}` (the bare baseline server's product read).
    pub async fn get_product(&self, sku: &str) -> Result<Value, Failure> {
        Self::json_of(self.http.get(format!("{}/v1/products/{sku}", self.base)).send().await).await
    }

    /// `POST /graphql`; a 200 with `errors` is a failure. `staff` sends the admin token.
    pub async fn graphql(&self, query: &str, variables: Value, staff: bool) -> Result<Value, Failure> {
        let mut req =
            self.http.post(format!("{}/graphql", self.base)).json(&json!({"query": query, "variables": variables}));
        if staff && let Some(token) = &self.admin_token {
            req = req.bearer_auth(token);
        }
        let v = Self::json_of(req.send().await).await?;
        match v.get("errors") {
            Some(Value::Array(errors)) if !errors.is_empty() => {
                Err(Failure::GraphQl(truncate(Value::Array(errors.clone()).to_string())))
            }
            _ => Ok(v),
        }
    }

    /// Orders processed so far (CONFIRMED or REJECTED), from the GraphQL `metrics` query.
    pub async fn orders_processed(&self) -> Option<u64> {
        let v = self.graphql("{ metrics { ordersProcessed } }", json!({}), true).await.ok()?;
        v.pointer("/data/metrics/ordersProcessed").and_then(Value::as_u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_allowed() {
        for ok in ["http://127.0.0.1:8080", "http://127.3.4.5/", "http://localhost:1", "http://[::1]:80"] {
            check_loopback(&reqwest::Url::parse(ok).unwrap()).unwrap();
        }
        for bad in ["http://10.0.0.1:8080", "http://example.com", "http://192.168.1.1", "http://[2001:db8::1]/"] {
            assert!(check_loopback(&reqwest::Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
