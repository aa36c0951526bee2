//! The rate limit on order placement: so many orders per second per caller, with a burst, answered
//! `429 rate_limited` with `Retry-After` past it (GCRA from `governor`, one bucket per key).
//!
//! **Who is a caller.** By [`RateLimitKey::User`] the key is the authenticated user where the request
//! carries one (a signed-in customer, see `orderflow_identity`), and otherwise the `user_id` the request
//! claims. A claimed `user_id` is whatever the body says, so keyed that way the limit stops a runaway
//! anonymous client, not an adversary: that is why the limit is off by default. By [`RateLimitKey::Ip`] the key is the TCP
//! peer's address (an IPv6 address by its /64, which one host usually holds whole); behind a reverse
//! proxy every client then shares the proxy's address, so use it only where clients connect directly.
//!
//! **Memory.** The limiter keeps a small state per key. Keys that have been idle long enough to be back
//! at a full burst are dropped by [`OrderRateLimiter::sweep`] (the binary runs it every
//! [`SWEEP_INTERVAL`]), and at most [`MAX_TRACKED_KEYS`] are kept: when a flood of distinct keys fills
//! the table and a sweep frees nothing, further requests share one overflow bucket until keys age out,
//! so the table never grows past the bound.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use orderflow_schemas::UserId;

/// How often the binary drops idle keys from the limiter.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The most keys the limiter tracks at once (a few dozen bytes each).
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// The shortest time between two sweeps triggered by a full table (each is a pass over the table).
const MIN_SWEEP_GAP: Duration = Duration::from_secs(1);

/// What the order rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The authenticated user, else the `user_id` the order claims.
    User,
    /// The TCP peer's address (IPv6 by its /64).
    Ip,
}

impl RateLimitKey {
    fn noun(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Ip => "address",
        }
    }
}

/// The configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRateLimit {
    /// Orders per second per key, on average.
    pub per_second: NonZeroU32,
    /// Orders one key may place at once after being idle.
    pub burst: NonZeroU32,
    pub key: RateLimitKey,
}

/// What the server knows of who is placing an order.
#[derive(Debug, Clone, Copy)]
pub struct Placer<'a> {
    pub authenticated: Option<&'a UserId>,
    /// The `user_id` in the order.
    pub claimed: &'a UserId,
    /// The TCP peer, where the transport knows it.
    pub peer: Option<IpAddr>,
}

/// A refused placement: how long until the key has room for one more order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub retry_after: Duration,
    pub key: RateLimitKey,
}

impl RateLimited {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }

    /// The message clients see.
    pub fn message(&self) -> String {
        format!(
            "too many orders from this {}; retry after {} s (an order retried with the same order_id is placed once)",
            self.key.noun(),
            self.retry_after_secs()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(UserId),
    Ip(IpAddr),
    /// Requests whose peer is unknown (in-process callers), all in one bucket.
    UnknownPeer,
    /// Every request while the table is full (see the module docs).
    Overflow,
}

/// The order rate limiter; shared by every route that places orders.
pub struct OrderRateLimiter {
    limiter: DefaultKeyedRateLimiter<Key>,
    clock: DefaultClock,
    config: OrderRateLimit,
    max_keys: usize,
    last_sweep: Mutex<Instant>,
}

impl fmt::Debug for OrderRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderRateLimiter")
            .field("config", &self.config)
            .field("tracked_keys", &self.limiter.len())
            .finish()
    }
}

impl OrderRateLimiter {
    pub fn new(config: OrderRateLimit) -> Self {
        Self::with_max_keys(config, MAX_TRACKED_KEYS)
    }

    fn with_max_keys(config: OrderRateLimit, max_keys: usize) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        Self {
            limiter: DefaultKeyedRateLimiter::dashmap(quota),
            clock: DefaultClock::default(),
            config,
            max_keys,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    pub fn config(&self) -> OrderRateLimit {
        self.config
    }

    /// Counts one order of `caller`; `Err` if its key is over the limit.
    pub fn check(&self, caller: &Placer<'_>) -> Result<(), RateLimited> {
        let mut key = match self.config.key {
            RateLimitKey::User => Key::User(caller.authenticated.unwrap_or(caller.claimed).clone()),
            RateLimitKey::Ip => caller.peer.map_or(Key::UnknownPeer, |ip| Key::Ip(prefix(ip))),
        };
        if self.limiter.len() >= self.max_keys {
            self.sweep_if_due();
            if self.limiter.len() >= self.max_keys {
                key = Key::Overflow;
            }
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            metrics::counter!("orderflow_orders_rate_limited_total").increment(1);
            RateLimited { retry_after: not_until.wait_time_from(self.clock.now()), key: self.config.key }
        })
    }

    /// Drops the keys that are back at a full burst (indistinguishable from keys never seen) and gives
    /// the memory back. A pass over the table.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        if let Ok(mut last) = self.last_sweep.lock() {
            *last = Instant::now();
        }
        metrics::gauge!("orderflow_order_rate_limit_keys").set(self.limiter.len() as f64);
    }

    /// How many keys the limiter holds state for.
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }

    fn sweep_if_due(&self) {
        // One request sweeps; the others meanwhile go on (to the overflow bucket if still full).
        let due = match self.last_sweep.try_lock() {
            Ok(last) => last.elapsed() >= MIN_SWEEP_GAP,
            Err(_) => false,
        };
        if due {
            self.sweep();
        }
    }
}

/// An IPv6 address by its /64 (one host or home network usually has a whole one); IPv4, and IPv4 mapped
/// into IPv6, as is.
fn prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limit(per_second: u32, burst: u32, key: RateLimitKey) -> OrderRateLimit {
        OrderRateLimit { per_second: NonZeroU32::new(per_second).unwrap(), burst: NonZeroU32::new(burst).unwrap(), key }
    }

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn each_user_gets_its_own_burst_and_an_authenticated_identity_wins() {
        let limiter = OrderRateLimiter::new(limit(1, 2, RateLimitKey::User));
        let (alice, bob) = (user("alice"), user("bob"));
        let caller = |claimed| Placer { authenticated: None, claimed, peer: None };
        assert!(limiter.check(&caller(&alice)).is_ok());
        assert!(limiter.check(&caller(&alice)).is_ok());
        let refused = limiter.check(&caller(&alice)).unwrap_err();
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(refused.message().contains("user"), "{}", refused.message());
        assert!(limiter.check(&caller(&bob)).is_ok(), "bob has his own bucket");
        // Claiming to be someone else does not help once the caller is authenticated as alice.
        let as_alice = Placer { authenticated: Some(&alice), claimed: &bob, peer: None };
        assert!(limiter.check(&as_alice).is_err());
    }

    #[test]
    fn by_address_an_ipv6_host_is_its_64_prefix() {
        let limiter = OrderRateLimiter::new(limit(1, 1, RateLimitKey::Ip));
        let (a, b) = (user("a"), user("b"));
        let from = |claimed, ip: &str| Placer { authenticated: None, claimed, peer: Some(ip.parse().unwrap()) };
        assert!(limiter.check(&from(&a, "2001:db8::1")).is_ok());
        assert!(limiter.check(&from(&b, "2001:db8::2")).is_err(), "same /64, another user id");
        assert!(limiter.check(&from(&a, "2001:db8:0:1::1")).is_ok(), "another /64");
        assert!(limiter.check(&from(&a, "192.0.2.1")).is_ok());
        assert!(limiter.check(&from(&a, "::ffff:192.0.2.1")).is_err(), "the same IPv4 host, mapped");
    }

    #[test]
    fn the_table_is_bounded_and_idle_keys_are_swept() {
        let limiter = OrderRateLimiter::with_max_keys(limit(1000, 1, RateLimitKey::User), 3);
        for name in ["u1", "u2", "u3"] {
            assert!(limiter.check(&Placer { authenticated: None, claimed: &user(name), peer: None }).is_ok());
        }
        assert_eq!(limiter.tracked_keys(), 3);
        // Full, and every key was used within the last millisecond: new keys share the overflow bucket.
        let u4 = user("u4");
        let u5 = user("u5");
        let first = limiter.check(&Placer { authenticated: None, claimed: &u4, peer: None });
        let second = limiter.check(&Placer { authenticated: None, claimed: &u5, peer: None });
        assert!(first.is_ok() && second.is_err(), "{first:?} {second:?}");
        assert!(limiter.tracked_keys() <= 4, "{}", limiter.tracked_keys());
        // At 1000/s a burst of 1 is back in a millisecond: a sweep then forgets every key.
        std::thread::sleep(Duration::from_millis(20));
        limiter.sweep();
        assert_eq!(limiter.tracked_keys(), 0);
        assert!(limiter.check(&Placer { authenticated: None, claimed: &u5, peer: None }).is_ok());
    }
}
