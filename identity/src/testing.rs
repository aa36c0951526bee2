//! Keys and tokens for tests (feature `testing`): an Ed25519 key pair from a seed, its JWKS, and tokens
//! signed with it, as an identity provider would issue them.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// An Ed25519 signing key and the JWKS that publishes its public half under `kid`.
pub struct TestKeys {
    pub encoding: EncodingKey,
    pub jwks: String,
    pub kid: String,
}

impl std::fmt::Debug for TestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKeys").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// The key pair of `seed` (the same seed gives the same keys).
pub fn test_keys(seed: u8, kid: &str) -> TestKeys {
    let seed = [seed; 32];
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = signing.verifying_key().to_bytes();
    // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(&seed);
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
    let jwks =
        format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","kid":"{kid}","alg":"EdDSA","use":"sig"}}]}}"#);
    TestKeys { encoding: EncodingKey::from_ed_der(&der), jwks, kid: kid.into() }
}

/// A token with `claims`, signed with `keys` (EdDSA, with its `kid`).
pub fn sign(keys: &TestKeys, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(keys.kid.clone());
    jsonwebtoken::encode(&header, &claims, &keys.encoding).unwrap_or_else(|e| panic!("signing a test token: {e}"))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
