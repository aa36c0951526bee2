//! Staff authentication: a bearer token compared in constant time, and the guard on staff fields.

use async_graphql::{Context, Guard};

use crate::ApiState;
use crate::error::ApiError;

/// Whether the request carried the staff bearer token. The HTTP layer puts it in the request data;
/// tests and in-process callers may add `Staff(true)` themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Staff(pub bool);

impl Staff {
    /// Checks an `Authorization` header value (`Bearer <token>`, scheme case-insensitive) against the
    /// configured token. No token configured (or an empty one) never matches.
    pub fn from_authorization(header: Option<&str>, admin_token: Option<&str>) -> Staff {
        let Some(expected) = admin_token.filter(|t| !t.is_empty()) else {
            return Staff(false);
        };
        let Some(sent) = header.and_then(bearer_token) else {
            return Staff(false);
        };
        Staff(constant_time_eq(sent.as_bytes(), expected.as_bytes()))
    }
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes matched.
/// (The length is not secret: a length mismatch returns at once.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Admits the field only for requests with [`Staff`]`(true)`; the error says whether the token is
/// missing or wrong, or staff operations are disabled. Runs before the resolver, so a refused call
/// changes nothing.
pub(crate) struct StaffGuard;

impl Guard for StaffGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        if ctx.data_opt::<Staff>().is_some_and(|s| s.0) {
            return Ok(());
        }
        let enabled = ctx.data_opt::<ApiState>().is_some_and(|s| s.staff_token().is_some());
        let why = if enabled {
            "this operation is for staff: send `Authorization: Bearer <admin token>`"
        } else {
            "staff operations are disabled on this server: no admin token is configured"
        };
        Err(ApiError::Unauthorized(why).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let admin = Some("s3cret");
        assert_eq!(Staff::from_authorization(Some("Bearer s3cret"), admin), Staff(true));
        assert_eq!(Staff::from_authorization(Some("bearer  s3cret "), admin), Staff(true));
        assert_eq!(Staff::from_authorization(Some("Bearer s3cre"), admin), Staff(false));
        assert_eq!(Staff::from_authorization(Some("Bearer s3cret!"), admin), Staff(false));
        assert_eq!(Staff::from_authorization(Some("Basic s3cret"), admin), Staff(false));
        assert_eq!(Staff::from_authorization(Some("s3cret"), admin), Staff(false));
        assert_eq!(Staff::from_authorization(None, admin), Staff(false));
    }

    #[test]
    fn no_configured_token_disables_staff() {
        assert_eq!(Staff::from_authorization(Some("Bearer x"), None), Staff(false));
        assert_eq!(Staff::from_authorization(Some("Bearer "), Some("")), Staff(false));
        assert_eq!(Staff::from_authorization(Some("Bearer"), Some("")), Staff(false));
    }
}
