//! The guards on staff fields, over the request's [`Caller`] (put in the request data by the HTTP layer
//! from the `orderflow_identity` middleware; tests and in-process callers add one themselves).

use async_graphql::{Context, Guard};
use orderflow_identity::{AuthMode, Caller};

use crate::error::ApiError;

/// The request's caller; anonymous when none was given.
pub(crate) fn caller<'a>(ctx: &Context<'a>) -> &'a Caller {
    static ANONYMOUS: Caller = Caller::Anonymous;
    ctx.data_opt::<Caller>().unwrap_or(&ANONYMOUS)
}

/// Whether anonymous callers may place and read orders (open mode when not given).
pub(crate) fn mode(ctx: &Context<'_>) -> AuthMode {
    ctx.data_opt::<crate::ApiState>().map(|s| s.auth_mode).unwrap_or_default()
}

/// Admits the field only for staff and admins. Runs before the resolver, so a refused call changes
/// nothing. Without credentials: `unauthorized`; with a customer's: `forbidden`.
pub(crate) struct StaffGuard;

impl Guard for StaffGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        Ok(require_staff(ctx)?)
    }
}

/// `Ok` for staff and admins; otherwise `unauthorized` (no credentials) or `forbidden` (a customer's).
pub(crate) fn require_staff(ctx: &Context<'_>) -> Result<(), ApiError> {
    match caller(ctx) {
        c if c.is_staff() => Ok(()),
        Caller::Anonymous => {
            Err(ApiError::Unauthorized("this is for staff: send `Authorization: Bearer <staff JWT or admin token>`"))
        }
        _ => Err(ApiError::Forbidden("this is for staff; your identity is a customer's")),
    }
}
