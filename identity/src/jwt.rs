//! Bearer JWTs from an identity provider (Auth0, Keycloak, Cognito, Entra ID, ...), verified offline
//! against the provider's public keys: its JWKS URL (`jwks_uri`), a JWKS file, or one PEM public key.
//! Nothing is fetched per request: the keys are cached.
//!
//! - The algorithms are pinned by configuration (`ORDERFLOW_AUTH_ALGORITHMS`); a token signed with any
//!   other (`none`, `HS256` with a public key as the secret) is refused before its signature is looked at.
//! - `exp` and `sub` are required; `nbf` is checked when present; `iss` and `aud` when configured; all
//!   with [`LEEWAY_SECS`] of clock skew.
//! - Rotation: a token naming a key id (`kid`) the cached keys do not have makes the verifier fetch the
//!   URL (or read the file) again, at most once per [`RELOAD_AT_MOST_EVERY`], so a provider's new key is
//!   picked up as soon as it signs with it; and keys older than [`REFRESH_EVERY`] are fetched again before
//!   the next token is checked, so a key the provider withdrew stops being accepted. A failed fetch keeps
//!   the keys already loaded.
//! - Roles come from a claim (`ORDERFLOW_AUTH_ROLES_CLAIM`, default `roles`; a dotted path such as
//!   Keycloak's `realm_access.roles` reaches into objects), a list of strings or one space-separated
//!   string; `admin` beats `staff`, which beats `customer`, and a token with none of them is a customer's.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use orderflow_schemas::UserId;

use crate::{Caller, Principal};

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// How often at most an unknown `kid` makes the verifier fetch the keys again.
pub const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again before the next token is checked.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The largest JWKS document fetched (providers serve a few KB).
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch of a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the identity provider's public keys come from (`ORDERFLOW_AUTH_JWKS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS or PEM file (kept current by a sidecar, a cron job or a mounted secret).
    File(PathBuf),
    /// The provider's `jwks_uri`: `https`, or `http` on a loopback address for development.
    Url(reqwest::Url),
}

impl KeySource {
    /// A URL (`https://...`, or `http://` to a loopback address) or else a file path.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if !(s.starts_with("https://") || s.starts_with("http://")) {
            return Ok(Self::File(PathBuf::from(s)));
        }
        let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if url.scheme() == "http" && !loopback {
            return Err(format!(
                "{s}: a JWKS URL must be https (plain http only to a loopback address, for development)"
            ));
        }
        Ok(Self::Url(url))
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Url(url) => write!(f, "{url}"),
        }
    }
}

/// The asymmetric algorithms accepted in `ORDERFLOW_AUTH_ALGORITHMS`. Shared-secret ones (HS256, ...)
/// are not: a secret shared with the identity provider is not "verified offline against its public keys".
pub const SUPPORTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// How customer and staff tokens are verified.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The JWKS URL, or a JWKS (JSON) or PEM public-key file.
    pub keys: KeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub roles_claim: String,
}

/// Parses `ORDERFLOW_AUTH_ALGORITHMS` (comma-separated, e.g. `RS256,ES256`).
pub fn parse_algorithms(list: &str) -> Result<Vec<Algorithm>, String> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let alg = Algorithm::from_str(name).map_err(|_| format!("unknown JWT algorithm {name:?}"))?;
        if !SUPPORTED.contains(&alg) {
            return Err(format!(
                "JWT algorithm {name} is not accepted; use one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, EdDSA"
            ));
        }
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    if out.is_empty() {
        return Err("name at least one JWT algorithm".into());
    }
    Ok(out)
}

/// Why a bearer token was refused. The message is safe to return to the client.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    #[error("the bearer token's subject {0:?} is not a valid user id (1-128 visible characters)")]
    BadSubject(String),
}

/// Why the key file could not be used (at start: the server refuses to start).
#[derive(Debug, thiserror::Error)]
#[error("JWT keys from {path}: {reason}")]
pub struct KeysError {
    pub path: String,
    pub reason: String,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

struct Keys {
    keys: Vec<Key>,
    loaded_at: Instant,
    /// Bumped at every successful load.
    generation: u64,
}

/// Verifies bearer JWTs into [`Caller`]s.
pub struct JwtVerifier {
    config: JwtConfig,
    validation: Validation,
    keys: RwLock<Keys>,
    http: reqwest::Client,
    /// Held while the keys are fetched again: one fetch at a time, the other requests wait for it.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("config", &self.config).finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Fetches or reads the keys; fails when they cannot be had or none is usable.
    pub async fn new(config: JwtConfig) -> Result<Self, KeysError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| KeysError { path: config.keys.to_string(), reason: format!("HTTP client: {e}") })?;
        let keys = load(&config, &http).await?;
        let mut validation = Validation::new(config.algorithms[0]);
        validation.algorithms = config.algorithms.clone();
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            config,
            validation,
            keys: RwLock::new(Keys { keys, loaded_at: Instant::now(), generation: 0 }),
            http,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// How many keys are loaded (for the start-up line).
    pub fn key_count(&self) -> usize {
        self.keys.read().map(|k| k.keys.len()).unwrap_or(0)
    }

    /// The caller a token names, if its signature and claims hold.
    pub async fn verify(&self, token: &str) -> Result<Caller, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| JwtError::Invalid(describe(&e)))?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(JwtError::Invalid(format!("algorithm {:?} is not accepted here", header.alg)));
        }
        if self.age() >= REFRESH_EVERY {
            self.reload_if_older_than(REFRESH_EVERY).await;
        }
        let claims = match self.decode(token, header.kid.as_deref()) {
            Err(Unknown) if self.reload_if_older_than(RELOAD_AT_MOST_EVERY).await => {
                self.decode(token, header.kid.as_deref())
            }
            other => other,
        };
        let claims = match claims {
            Ok(claims) => claims?,
            Err(Unknown) => return Err(JwtError::Invalid("it is signed with a key this server does not know".into())),
        };
        self.caller(&claims)
    }

    /// Tries the token against the key it names (or every key when it names none). `Err(Unknown)`: no
    /// key fits.
    fn decode(&self, token: &str, kid: Option<&str>) -> Result<Result<serde_json::Value, JwtError>, Unknown> {
        let keys = self.keys.read().map_err(|_| Unknown)?;
        let candidates: Vec<&Key> = match kid {
            Some(kid) => keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => keys.keys.iter().collect(),
        };
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &self.validation) {
                Ok(data) => return Ok(Ok(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        match last {
            // A key fitted the token's id (or, without an id, none verified it): that is the answer.
            Some(e) => Ok(Err(JwtError::Invalid(describe(&e)))),
            None => Err(Unknown),
        }
    }

    fn age(&self) -> Duration {
        self.keys.read().map_or(Duration::MAX, |k| k.loaded_at.elapsed())
    }

    fn generation(&self) -> u64 {
        self.keys.read().map_or(0, |k| k.generation)
    }

    /// Fetches the keys again unless that was done less than `min_age` ago; whether there are keys newer
    /// than when it was called (loaded here, or by a request it waited for). A failed fetch keeps the keys
    /// already loaded, and is tried again only after `min_age`.
    async fn reload_if_older_than(&self, min_age: Duration) -> bool {
        let seen = self.generation();
        let _one_at_a_time = self.reloading.lock().await;
        if self.generation() != seen {
            return true;
        }
        if self.age() < min_age {
            return false;
        }
        if let Ok(mut keys) = self.keys.write() {
            keys.loaded_at = Instant::now();
        }
        match load(&self.config, &self.http).await {
            Ok(fresh) => {
                tracing::info!(keys = fresh.len(), from = %self.config.keys, "JWT keys loaded again");
                if let Ok(mut keys) = self.keys.write() {
                    keys.keys = fresh;
                    keys.generation += 1;
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "loading the JWT keys again failed; keeping the ones loaded");
                false
            }
        }
    }

    fn caller(&self, claims: &serde_json::Value) -> Result<Caller, JwtError> {
        let sub = claims.get("sub").and_then(|s| s.as_str()).ok_or_else(|| JwtError::Invalid("no `sub`".into()))?;
        let mut roles = Vec::new();
        let mut at = Some(claims);
        for part in self.config.roles_claim.split('.') {
            at = at.and_then(|v| v.get(part));
        }
        match at {
            Some(serde_json::Value::Array(items)) => roles.extend(items.iter().filter_map(|v| v.as_str())),
            Some(serde_json::Value::String(s)) => roles.extend(s.split_whitespace()),
            _ => {}
        }
        // A staff principal names the person in audit records: bounded like a user id.
        let principal = || Principal::new(sub.chars().take(128).collect::<String>());
        if roles.contains(&"admin") {
            return Ok(Caller::Admin(principal()));
        }
        if roles.contains(&"staff") {
            return Ok(Caller::Staff(principal()));
        }
        UserId::parse(sub).map(Caller::Customer).map_err(|_| JwtError::BadSubject(sub.chars().take(200).collect()))
    }
}

/// No loaded key fits the token.
struct Unknown;

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "it has expired".into(),
        K::ImmatureSignature => "it is not valid yet (`nbf`)".into(),
        K::InvalidIssuer => "its issuer (`iss`) is not the one this server trusts".into(),
        K::InvalidAudience => "its audience (`aud`) is not this server".into(),
        K::InvalidSignature => "its signature does not verify".into(),
        K::InvalidAlgorithm => "its algorithm is not accepted here".into(),
        K::MissingRequiredClaim(c) => format!("it has no `{c}` claim"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => "it is not a well-formed JWT".into(),
        other => format!("{other:?}"),
    }
}

/// The text of the JWKS URL's answer.
async fn fetch(http: &reqwest::Client, url: &reqwest::Url) -> Result<String, String> {
    let mut response = http.get(url.clone()).send().await.map_err(|e| format!("fetching failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("the server answered HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the answer failed: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("the answer is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "the answer is not UTF-8 text".into())
}

async fn load(config: &JwtConfig, http: &reqwest::Client) -> Result<Vec<Key>, KeysError> {
    let err = |reason: String| KeysError { path: config.keys.to_string(), reason };
    let text = match &config.keys {
        KeySource::File(path) => tokio::fs::read_to_string(path).await.map_err(|e| err(e.to_string()))?,
        KeySource::Url(url) => fetch(http, url).await.map_err(err)?,
    };
    let keys = if text.trim_start().starts_with("-----BEGIN") {
        let pem = text.as_bytes();
        let key = config
            .algorithms
            .iter()
            .find_map(|alg| match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem).ok(),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem).ok(),
                _ => DecodingKey::from_rsa_pem(pem).ok(),
            })
            .ok_or_else(|| err("the PEM file holds no public key for the configured algorithms".into()))?;
        vec![Key { kid: None, key }]
    } else {
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| err(format!("not a JWKS or PEM file: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => keys.push(Key { kid: jwk.common.key_id.clone(), key }),
                Err(e) => {
                    tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipping a JWKS key this server cannot use")
                }
            }
        }
        keys
    };
    if keys.is_empty() {
        return Err(err("no usable key".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestKeys, sign, test_keys};
    use base64::Engine as _;

    use crate::testing::now;

    fn config(keys: KeySource) -> JwtConfig {
        JwtConfig {
            keys,
            issuer: Some("https://id.example".into()),
            audience: Some("orderflow".into()),
            algorithms: vec![Algorithm::EdDSA],
            roles_claim: "realm_access.roles".into(),
        }
    }

    async fn verifier(dir: &tempfile::TempDir, keys: &TestKeys) -> JwtVerifier {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, &keys.jwks).unwrap_or_else(|e| panic!("{e}"));
        JwtVerifier::new(config(KeySource::File(path))).await.unwrap_or_else(|e| panic!("{e}"))
    }

    fn age_keys(v: &JwtVerifier, by: Duration) {
        if let Ok(mut keys) = v.keys.write() {
            keys.loaded_at = Instant::now() - by;
        }
    }

    fn claims(sub: &str, roles: &[&str]) -> serde_json::Value {
        serde_json::json!({"sub": sub, "iss": "https://id.example", "aud": "orderflow", "exp": now() + 600,
                           "realm_access": {"roles": roles}})
    }

    #[tokio::test]
    async fn a_valid_token_names_its_subject_with_its_highest_role() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let keys = test_keys(7, "k1");
        let v = verifier(&dir, &keys).await;
        let alice = UserId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.verify(&sign(&keys, claims("alice", &[]))).await.ok(), Some(Caller::Customer(alice)));
        assert_eq!(
            v.verify(&sign(&keys, claims("sam", &["customer", "staff"]))).await.ok(),
            Some(Caller::Staff(Principal::new("sam")))
        );
        assert_eq!(
            v.verify(&sign(&keys, claims("ann", &["staff", "admin"]))).await.ok(),
            Some(Caller::Admin(Principal::new("ann")))
        );
    }

    #[tokio::test]
    async fn expired_foreign_misaddressed_and_unsigned_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let keys = test_keys(7, "k1");
        let v = verifier(&dir, &keys).await;
        let mut expired = claims("alice", &[]);
        expired["exp"] = serde_json::json!(now() - 3600);
        let mut other_aud = claims("alice", &[]);
        other_aud["aud"] = serde_json::json!("someone-else");
        let mut other_iss = claims("alice", &[]);
        other_iss["iss"] = serde_json::json!("https://evil.example");
        let mut early = claims("alice", &[]);
        early["nbf"] = serde_json::json!(now() + 3600);
        for (what, token) in [
            ("expired", sign(&keys, expired)),
            ("audience", sign(&keys, other_aud)),
            ("issuer", sign(&keys, other_iss)),
            ("nbf", sign(&keys, early)),
            ("foreign key", sign(&test_keys(8, "k1"), claims("alice", &[]))),
            ("unknown kid", sign(&test_keys(8, "k9"), claims("alice", &[]))),
            ("garbage", "not.a.jwt".into()),
        ] {
            assert!(v.verify(&token).await.is_err(), "{what} was accepted");
        }
        // alg=none: the header names an algorithm that is not configured.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("alice", &[]).to_string());
        assert!(v.verify(&format!("{header}.{body}.")).await.is_err());
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_from_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let old = test_keys(7, "k1");
        let v = verifier(&dir, &old).await;
        let new = test_keys(9, "k2");
        std::fs::write(dir.path().join("jwks.json"), &new.jwks).unwrap_or_else(|e| panic!("{e}"));
        // Loaded just now: not read again yet.
        assert!(v.verify(&sign(&new, claims("alice", &[]))).await.is_err());
        age_keys(&v, RELOAD_AT_MOST_EVERY);
        assert!(v.verify(&sign(&new, claims("alice", &[]))).await.is_ok());
        // The old key was withdrawn: once the keys are stale, tokens it signed are refused.
        assert!(v.verify(&sign(&old, claims("alice", &[]))).await.is_err());
    }

    /// The keys from the provider's JWKS URL, served here over a real socket: cached, fetched again for
    /// a new key id, and a withdrawn key stops being accepted once the cache is stale.
    #[tokio::test]
    async fn keys_come_from_a_jwks_url_cached_and_rotated() {
        let served = std::sync::Arc::new(std::sync::Mutex::new(test_keys(7, "k1").jwks));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get({
                let (served, fetches) = (served.clone(), fetches.clone());
                move || async move {
                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    served.lock().map(|s| s.clone()).unwrap_or_default()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/.well-known/jwks.json");
        let v = JwtVerifier::new(config(KeySource::parse(&url).unwrap_or_else(|e| panic!("{e}"))))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let old = test_keys(7, "k1");
        for _ in 0..3 {
            assert!(v.verify(&sign(&old, claims("alice", &[]))).await.is_ok());
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "cached, not fetched per token");
        // The provider rotates: k2 is published and signs.
        let new = test_keys(9, "k2");
        if let Ok(mut s) = served.lock() {
            *s = new.jwks.clone();
        }
        age_keys(&v, RELOAD_AT_MOST_EVERY);
        assert!(v.verify(&sign(&new, claims("bob", &[]))).await.is_ok(), "the new key was fetched");
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
        // k1 is gone from the provider's set: refused once the cache is stale.
        age_keys(&v, REFRESH_EVERY);
        assert!(v.verify(&sign(&old, claims("alice", &[]))).await.is_err());
        // An unreachable provider keeps the keys already loaded.
        if let Ok(mut s) = served.lock() {
            *s = "not json".into();
        }
        age_keys(&v, REFRESH_EVERY);
        assert!(v.verify(&sign(&new, claims("bob", &[]))).await.is_ok());
    }

    #[test]
    fn a_jwks_url_is_https_or_loopback() {
        assert!(matches!(KeySource::parse("https://id.example/jwks"), Ok(KeySource::Url(_))));
        assert!(matches!(KeySource::parse("http://127.0.0.1:8080/jwks"), Ok(KeySource::Url(_))));
        assert!(matches!(KeySource::parse("http://[::1]:8080/jwks"), Ok(KeySource::Url(_))));
        assert!(matches!(KeySource::parse("http://localhost/jwks"), Ok(KeySource::Url(_))));
        assert!(KeySource::parse("http://id.example/jwks").is_err());
        assert_eq!(KeySource::parse("/etc/jwks.json"), Ok(KeySource::File("/etc/jwks.json".into())));
    }

    #[test]
    fn only_asymmetric_algorithms_are_configurable() {
        assert_eq!(parse_algorithms("RS256, EdDSA").ok(), Some(vec![Algorithm::RS256, Algorithm::EdDSA]));
        assert!(parse_algorithms("HS256").is_err());
        assert!(parse_algorithms("none").is_err());
        assert!(parse_algorithms("").is_err());
    }
}
