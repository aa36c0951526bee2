//! Identity and access: who sent a request, and what that caller may do.
//!
//! Every HTTP request is authenticated once, at the edge ([`http::authenticate`]), into a [`Caller`]:
//! anonymous, a customer (a verified JWT's `sub`), staff, or an admin (a JWT with that role, or the
//! admin token). Handlers never look at headers; they ask the caller ([`Caller::may_read_order`],
//! [`Caller::is_staff`], ...). The rules are the role table of the README ("Who may do what"), kept in
//! this one file so that a reader can check them against it:
//!
//! | who | may |
//! |---|---|
//! | anonymous | browse the catalog (availability, not counts); in open mode also place orders and read one order by its id |
//! | customer | everything anonymous may; place orders as themselves; read and list only their own orders |
//! | staff | the catalog, stock, order status, all orders, `metrics` |
//! | admin | everything staff may, and the pipeline's administration |

pub mod admin_token;
pub mod http;
pub mod jwt;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::fmt;

use orderflow_schemas::UserId;

pub use admin_token::{AdminToken, AdminTokenError};
pub use jwt::{JwtConfig, JwtError, JwtVerifier};

pub use orderflow_platform::secret::Secret;

/// Whether a caller without credentials may place orders and read an order by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// The quick start: anyone may place an order and read one by its id (ids are unguessable UUIDs
    /// unless the client chose its own); listing orders still needs an identity.
    #[default]
    Open,
    /// Placing and reading orders needs a customer (or staff) identity.
    Required,
}

/// The roles, from least to most trusted; each may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Anonymous,
    Customer,
    Staff,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Anonymous => "anonymous",
            Role::Customer => "customer",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent a request, as established by [`http::authenticate`]. A customer always has an id; staff
/// and admins are named by a principal for the audit trail (a JWT's `sub`, or `admin-token:<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Caller {
    #[default]
    Anonymous,
    Customer(UserId),
    Staff(Principal),
    Admin(Principal),
}

/// Names a staff member or admin in logs and audit records; never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(String);

impl Principal {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a caller may not place an order as the user it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceAsError {
    #[error("placing an order needs a signed-in customer on this server: send `Authorization: Bearer <token>`")]
    Unauthenticated,
    #[error("user_id {claimed} is not the signed-in customer; leave user_id out or send your own")]
    NotYou { claimed: UserId },
    #[error("user_id is required")]
    MissingUserId,
}

impl Caller {
    pub fn role(&self) -> Role {
        match self {
            Caller::Anonymous => Role::Anonymous,
            Caller::Customer(_) => Role::Customer,
            Caller::Staff(_) => Role::Staff,
            Caller::Admin(_) => Role::Admin,
        }
    }

    /// Staff or admin.
    pub fn is_staff(&self) -> bool {
        self.role() >= Role::Staff
    }

    pub fn is_admin(&self) -> bool {
        self.role() == Role::Admin
    }

    /// The customer's id, for a customer.
    pub fn customer(&self) -> Option<&UserId> {
        match self {
            Caller::Customer(user) => Some(user),
            _ => None,
        }
    }

    /// Who to name in logs and audit records.
    pub fn audit_name(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".into(),
            Caller::Customer(user) => format!("customer:{user}"),
            Caller::Staff(p) => format!("staff:{p}"),
            Caller::Admin(p) => format!("admin:{p}"),
        }
    }

    /// Whether the caller may see an order of `owner`: staff any, a customer their own, anyone in open
    /// mode. Someone else's order must look exactly like a missing one (404, `null`), so that ids
    /// cannot be probed.
    pub fn may_read_order(&self, owner: &UserId, mode: AuthMode) -> bool {
        match self {
            Caller::Staff(_) | Caller::Admin(_) => true,
            Caller::Customer(user) => user == owner,
            Caller::Anonymous => mode == AuthMode::Open,
        }
    }

    /// Whether the caller may cancel an order of `owner` (`None`: no such order): staff any, a customer
    /// their own. Anonymous callers never, also on an open server: a cancellation is tied to an identity.
    /// Someone else's order answers exactly as a missing one.
    pub fn may_cancel_order(&self, owner: Option<&UserId>) -> CancelAccess {
        match (self, owner) {
            (Caller::Anonymous, _) => CancelAccess::NotSignedIn,
            (Caller::Staff(_) | Caller::Admin(_), Some(_)) => CancelAccess::Allowed,
            (Caller::Customer(me), Some(owner)) if me == owner => CancelAccess::Allowed,
            _ => CancelAccess::NoSuchOrder,
        }
    }

    /// Whether the caller may place or read orders at all on a server in `mode`: anonymous callers not
    /// when sign-in is required. (Which orders, and as whom: [`Caller::may_read_order`], [`Caller::place_as`].)
    pub fn signed_in_if_required(&self, mode: AuthMode) -> Result<(), NotSignedIn> {
        if *self == Caller::Anonymous && mode == AuthMode::Required { Err(NotSignedIn) } else { Ok(()) }
    }

    /// The user an order is placed for: a customer places as themselves (`claimed` must be absent or
    /// their own id); staff may place for any user (an order taken by phone); anonymous callers only in
    /// open mode, and must name the user.
    pub fn place_as(&self, claimed: Option<UserId>, mode: AuthMode) -> Result<UserId, PlaceAsError> {
        self.signed_in_if_required(mode).map_err(|_| PlaceAsError::Unauthenticated)?;
        match (self, claimed) {
            (Caller::Customer(me), None) => Ok(me.clone()),
            (Caller::Customer(me), Some(claimed)) if &claimed == me => Ok(claimed),
            (Caller::Customer(_), Some(claimed)) => Err(PlaceAsError::NotYou { claimed }),
            (_, Some(claimed)) => Ok(claimed),
            (_, None) => Err(PlaceAsError::MissingUserId),
        }
    }

    /// Whose orders a listing may show: `Ok(None)` every user's (staff, with no filter), `Ok(Some(u))`
    /// only `u`'s. A customer sees only their own (asking for another user's gives an empty list, as
    /// for a user without orders); anonymous callers may not list.
    pub fn listable_user(&self, asked: Option<UserId>) -> Result<ListScope, NotSignedIn> {
        match self {
            Caller::Staff(_) | Caller::Admin(_) => Ok(asked.map_or(ListScope::All, ListScope::User)),
            Caller::Customer(me) => match asked {
                Some(other) if &other != me => Ok(ListScope::Nothing),
                _ => Ok(ListScope::User(me.clone())),
            },
            Caller::Anonymous => Err(NotSignedIn),
        }
    }
}

/// The answer of [`Caller::may_cancel_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAccess {
    Allowed,
    /// An anonymous caller: 401.
    NotSignedIn,
    /// No such order, or someone else's: 404, the same answer for both.
    NoSuchOrder,
}

/// The caller has no identity, and the operation needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this needs a signed-in customer or staff: send `Authorization: Bearer <token>`")]
pub struct NotSignedIn;

/// What an order listing may show (see [`Caller::listable_user`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListScope {
    All,
    User(UserId),
    /// An empty list: the caller asked for another customer's orders.
    Nothing,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn roles_are_ordered_by_trust() {
        assert!(Role::Anonymous < Role::Customer && Role::Customer < Role::Staff && Role::Staff < Role::Admin);
        assert!(Caller::Admin(Principal::new("a")).is_staff());
        assert!(!Caller::Customer(user("u")).is_staff());
    }

    #[test]
    fn orders_are_read_by_their_owner_staff_and_in_open_mode_anyone() {
        let (alice, bob) = (user("alice"), user("bob"));
        let customer = Caller::Customer(alice.clone());
        assert!(customer.may_read_order(&alice, AuthMode::Required));
        assert!(!customer.may_read_order(&bob, AuthMode::Open), "someone else's order is hidden even in open mode");
        assert!(Caller::Staff(Principal::new("s")).may_read_order(&bob, AuthMode::Required));
        assert!(Caller::Anonymous.may_read_order(&bob, AuthMode::Open));
        assert!(!Caller::Anonymous.may_read_order(&bob, AuthMode::Required));
        assert_eq!(Caller::Anonymous.signed_in_if_required(AuthMode::Required), Err(NotSignedIn));
        assert_eq!(Caller::Anonymous.signed_in_if_required(AuthMode::Open), Ok(()));
        assert_eq!(customer.signed_in_if_required(AuthMode::Required), Ok(()));
    }

    #[test]
    fn orders_are_cancelled_by_their_owner_and_staff_never_anonymously() {
        let (alice, bob) = (user("alice"), user("bob"));
        let customer = Caller::Customer(alice.clone());
        assert_eq!(customer.may_cancel_order(Some(&alice)), CancelAccess::Allowed);
        assert_eq!(customer.may_cancel_order(Some(&bob)), CancelAccess::NoSuchOrder, "someone else's looks missing");
        assert_eq!(customer.may_cancel_order(None), CancelAccess::NoSuchOrder);
        assert_eq!(Caller::Staff(Principal::new("s")).may_cancel_order(Some(&bob)), CancelAccess::Allowed);
        assert_eq!(Caller::Anonymous.may_cancel_order(Some(&bob)), CancelAccess::NotSignedIn);
    }

    #[test]
    fn a_customer_places_only_as_themselves() {
        let alice = user("alice");
        let customer = Caller::Customer(alice.clone());
        assert_eq!(customer.place_as(None, AuthMode::Required), Ok(alice.clone()));
        assert_eq!(customer.place_as(Some(alice.clone()), AuthMode::Open), Ok(alice.clone()));
        assert_eq!(
            customer.place_as(Some(user("bob")), AuthMode::Open),
            Err(PlaceAsError::NotYou { claimed: user("bob") })
        );
        assert_eq!(Caller::Anonymous.place_as(Some(alice.clone()), AuthMode::Open), Ok(alice.clone()));
        assert_eq!(
            Caller::Anonymous.place_as(Some(alice.clone()), AuthMode::Required),
            Err(PlaceAsError::Unauthenticated)
        );
        assert_eq!(Caller::Anonymous.place_as(None, AuthMode::Open), Err(PlaceAsError::MissingUserId));
        assert_eq!(Caller::Staff(Principal::new("s")).place_as(Some(alice.clone()), AuthMode::Required), Ok(alice));
    }

    #[test]
    fn listings_are_scoped_to_the_caller() {
        let alice = user("alice");
        let customer = Caller::Customer(alice.clone());
        assert_eq!(customer.listable_user(None), Ok(ListScope::User(alice.clone())));
        assert_eq!(customer.listable_user(Some(user("bob"))), Ok(ListScope::Nothing));
        assert_eq!(Caller::Staff(Principal::new("s")).listable_user(None), Ok(ListScope::All));
        assert_eq!(Caller::Anonymous.listable_user(Some(alice)), Err(NotSignedIn));
    }
}
