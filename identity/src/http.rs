//! The edge: every HTTP request is authenticated once, here, into a [`Caller`] in its extensions.
//!
//! - No `Authorization` header: [`Caller::Anonymous`].
//! - `Authorization: Bearer <admin token>`: [`Caller::Admin`], named `admin-token:<id>`.
//! - `Authorization: Bearer <JWT>`: the caller the token names (see [`crate::jwt`]).
//! - Anything else (a wrong or expired token, another scheme): 401 `unauthorized` with
//!   `WWW-Authenticate: Bearer error="invalid_token"`, before any handler runs. A bad token is never
//!   treated as no token: a client whose token expired learns it at once instead of seeing an empty list.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{AdminToken, AuthMode, Caller, JwtVerifier, Principal};

/// The stable error code of a refused credential (REST `code`, GraphQL `extensions.code`).
pub const UNAUTHORIZED: &str = "unauthorized";

/// Turns credentials into callers.
#[derive(Debug, Default)]
pub struct Authenticator {
    pub mode: AuthMode,
    pub admin: Option<AdminToken>,
    pub jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// The caller an `Authorization` header value names, or why it names none.
    pub async fn caller(&self, authorization: Option<&str>) -> Result<Caller, String> {
        let Some(value) = authorization else { return Ok(Caller::Anonymous) };
        let Some(token) = bearer_token(value) else {
            return Err("send credentials as `Authorization: Bearer <token>`".into());
        };
        if let Some(admin) = &self.admin
            && admin.matches(token)
        {
            return Ok(Caller::Admin(Principal::new(format!("admin-token:{}", admin.id()))));
        }
        match &self.jwt {
            Some(jwt) if token.split('.').count() == 3 => jwt.verify(token).await.map_err(|e| e.to_string()),
            Some(_) => Err("the bearer token is neither the admin token nor a JWT".into()),
            None if self.admin.is_some() => Err("the bearer token is not the admin token (and this server is \
                                                 configured with no JWT keys, see ORDERFLOW_AUTH_JWKS)"
                .into()),
            None => Err("this server accepts no bearer tokens: no admin token and no JWT keys are configured".into()),
        }
    }

    /// What the server prints at start about who may do what.
    pub fn describe(&self) -> String {
        let customers = match &self.jwt {
            Some(jwt) => format!("customer and staff JWTs verified with {} key(s)", jwt.key_count()),
            None => "no customer identities (ORDERFLOW_AUTH_JWKS unset)".into(),
        };
        let admin = match &self.admin {
            Some(t) => format!("admin token {}", t.id()),
            None => "no admin token (staff operations only with a staff JWT)".into(),
        };
        let open = match self.mode {
            AuthMode::Open => "open mode: anyone may place an order and read an order by its id",
            AuthMode::Required => "auth required: placing and reading orders needs a customer or staff identity",
        };
        format!("{open}; {customers}; {admin}")
    }
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// axum middleware: puts the request's [`Caller`] in its extensions, or answers 401 (in the GraphQL
/// error shape on `/graphql`, in the REST one elsewhere).
pub async fn authenticate(State(auth): State<Arc<Authenticator>>, mut request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    match auth.caller(authorization.as_deref()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(message) => {
            let body = if request.uri().path().starts_with("/graphql") {
                serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": UNAUTHORIZED } }] })
            } else {
                serde_json::json!({ "code": UNAUTHORIZED, "message": message })
            };
            let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn headers_become_callers_or_refusals() {
        let auth = Authenticator { admin: AdminToken::parse(TOKEN).ok(), ..Default::default() };
        assert_eq!(auth.caller(None).await, Ok(Caller::Anonymous));
        assert!(auth.caller(Some(&format!("Bearer {TOKEN}"))).await.is_ok_and(|c| c.is_admin()));
        assert!(auth.caller(Some(&format!("bearer  {TOKEN} "))).await.is_ok_and(|c| c.is_admin()));
        assert!(auth.caller(Some(&format!("Bearer {TOKEN}x"))).await.is_err());
        assert!(auth.caller(Some(&format!("Basic {TOKEN}"))).await.is_err());
        assert!(auth.caller(Some("Bearer a.b.c")).await.is_err());
        assert!(Authenticator::default().caller(Some("Bearer x")).await.is_err());
    }
}
