//! Bearer JWTs from an identity provider (Auth0, Keycloak, Cognito, Entra ID, ...), verified offline
//! against the provider's public keys: a JWKS file (what the provider serves at its `jwks_uri`) or one
//! PEM public key. Nothing is fetched per request.
//!
//! - The algorithms are pinned by configuration (`ORDERFLOW_AUTH_ALGORITHMS`); a token signed with any
//!   other (`none`, `HS256` with a public key as the secret) is refused before its signature is looked at.
//! - `exp` and `sub` are required; `nbf` is checked when present; `iss` and `aud` when configured; all
//!   with [`LEEWAY_SECS`] of clock skew.
//! - Rotation: a token naming a key id (`kid`) the file does not have makes the verifier read the file
//!   again (at most once per [`RELOAD_AT_MOST_EVERY`]), so a provider's new key is picked up when
//!   whatever keeps the file current (a sidecar, a cron job, a mounted secret) has written it.
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
/// How often at most an unknown `kid` makes the verifier read the key file again.
pub const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(10);

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
    /// A JWKS (JSON) or PEM public-key file.
    pub keys: PathBuf,
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
}

/// Verifies bearer JWTs into [`Caller`]s.
pub struct JwtVerifier {
    config: JwtConfig,
    validation: Validation,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("config", &self.config).finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the keys; fails when the file cannot be read or holds no usable key.
    pub fn new(config: JwtConfig) -> Result<Self, KeysError> {
        let keys = load(&config)?;
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
        Ok(Self { config, validation, keys: RwLock::new(Keys { keys, loaded_at: Instant::now() }) })
    }

    /// How many keys are loaded (for the start-up line).
    pub fn key_count(&self) -> usize {
        self.keys.read().map(|k| k.keys.len()).unwrap_or(0)
    }

    /// The caller a token names, if its signature and claims hold.
    pub fn verify(&self, token: &str) -> Result<Caller, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| JwtError::Invalid(describe(&e)))?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(JwtError::Invalid(format!("algorithm {:?} is not accepted here", header.alg)));
        }
        let claims = match self.decode(token, header.kid.as_deref()) {
            Err(Unknown) if self.reload_if_due() => self.decode(token, header.kid.as_deref()),
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

    /// Reads the key file again unless that was done less than [`RELOAD_AT_MOST_EVERY`] ago; whether
    /// it did. A file that became unreadable keeps the keys already loaded.
    fn reload_if_due(&self) -> bool {
        let due = self.keys.read().is_ok_and(|k| k.loaded_at.elapsed() >= RELOAD_AT_MOST_EVERY);
        if !due {
            return false;
        }
        let Ok(mut keys) = self.keys.write() else { return false };
        keys.loaded_at = Instant::now();
        match load(&self.config) {
            Ok(fresh) => {
                tracing::info!(keys = fresh.len(), path = %self.config.keys.display(), "JWT keys read again");
                keys.keys = fresh;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the JWT keys again failed; keeping the ones loaded");
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

fn load(config: &JwtConfig) -> Result<Vec<Key>, KeysError> {
    let err = |reason: String| KeysError { path: config.keys.display().to_string(), reason };
    let text = std::fs::read_to_string(&config.keys).map_err(|e| err(e.to_string()))?;
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

    fn verifier(dir: &tempfile::TempDir, keys: &TestKeys) -> JwtVerifier {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, &keys.jwks).unwrap_or_else(|e| panic!("{e}"));
        JwtVerifier::new(JwtConfig {
            keys: path,
            issuer: Some("https://id.example".into()),
            audience: Some("orderflow".into()),
            algorithms: vec![Algorithm::EdDSA],
            roles_claim: "realm_access.roles".into(),
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn claims(sub: &str, roles: &[&str]) -> serde_json::Value {
        serde_json::json!({"sub": sub, "iss": "https://id.example", "aud": "orderflow", "exp": now() + 600,
                           "realm_access": {"roles": roles}})
    }

    #[test]
    fn a_valid_token_names_its_subject_with_its_highest_role() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let keys = test_keys(7, "k1");
        let v = verifier(&dir, &keys);
        let alice = UserId::parse("alice").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.verify(&sign(&keys, claims("alice", &[]))).ok(), Some(Caller::Customer(alice)));
        assert_eq!(
            v.verify(&sign(&keys, claims("sam", &["customer", "staff"]))).ok(),
            Some(Caller::Staff(Principal::new("sam")))
        );
        assert_eq!(
            v.verify(&sign(&keys, claims("ann", &["staff", "admin"]))).ok(),
            Some(Caller::Admin(Principal::new("ann")))
        );
    }

    #[test]
    fn expired_foreign_misaddressed_and_unsigned_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let keys = test_keys(7, "k1");
        let v = verifier(&dir, &keys);
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
            assert!(v.verify(&token).is_err(), "{what} was accepted");
        }
        // alg=none: the header names an algorithm that is not configured.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("alice", &[]).to_string());
        assert!(v.verify(&format!("{header}.{body}.")).is_err());
    }

    #[test]
    fn a_rotated_key_is_picked_up_from_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let old = test_keys(7, "k1");
        let v = verifier(&dir, &old);
        let new = test_keys(9, "k2");
        std::fs::write(dir.path().join("jwks.json"), &new.jwks).unwrap_or_else(|e| panic!("{e}"));
        // Loaded just now: not read again yet.
        assert!(v.verify(&sign(&new, claims("alice", &[]))).is_err());
        if let Ok(mut keys) = v.keys.write() {
            keys.loaded_at = Instant::now() - RELOAD_AT_MOST_EVERY;
        }
        assert!(v.verify(&sign(&new, claims("alice", &[]))).is_ok());
    }

    #[test]
    fn only_asymmetric_algorithms_are_configurable() {
        assert_eq!(parse_algorithms("RS256, EdDSA").ok(), Some(vec![Algorithm::RS256, Algorithm::EdDSA]));
        assert!(parse_algorithms("HS256").is_err());
        assert!(parse_algorithms("none").is_err());
        assert!(parse_algorithms("").is_err());
    }
}
