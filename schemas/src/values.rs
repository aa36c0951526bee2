//! Domain value types. Each one is parsed once at the edge (HTTP, GraphQL, Avro, store rows) and is
//! valid from then on: an `OrderId` is never empty, a `Quantity` is never zero, `Money` is never negative.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Why a value was refused. `field` names the input field, `reason` says what is wrong in words a
/// client developer can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValueError {
    pub field: &'static str,
    pub reason: String,
}

impl ValueError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

fn check_token(field: &'static str, s: &str, max_len: usize) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::new(field, "must not be empty"));
    }
    if s.len() > max_len {
        return Err(ValueError::new(field, format!("must be at most {max_len} bytes")));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))) {
        return Err(ValueError::new(
            field,
            format!("may contain only letters, digits, '-', '_', '.' and ':' (found {c:?})"),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        string_id!($(#[$doc])* $name, $field, $max, |_: &str| Ok(()));
    };
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses untrusted input.
            pub fn parse(s: impl Into<String>) -> Result<Self, ValueError> {
                let s = s.into();
                check_token($field, &s, $max)?;
                let extra: fn(&str) -> Result<(), ValueError> = $extra;
                extra(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, ValueError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                Self::parse(s)
            }
        }
    };
}

string_id!(
    /// An order's id: chosen by the client (1-64 of `[A-Za-z0-9._:-]`) or generated as a UUID.
    OrderId, "order_id", 64
);
string_id!(
    /// The customer who placed an order.
    UserId, "user_id", 128
);
string_id!(
    /// A stock-keeping unit: the catalog key of a product.
    Sku, "sku", 64
);
string_id!(
    /// A client-chosen key that makes a retried placement return the first result.
    IdempotencyKey, "Idempotency-Key", 128
);

string_id!(
    /// A payment service provider's reference to a customer's payment method (Stripe's `pm_card_visa`,
    /// `pm_1Q...`), never card data: a run of 12 or more digits (ignoring `-` and `.`), which a card
    /// number would be, is refused.
    PaymentMethod, "payment_method", 255, no_card_number
);

/// The longest run of digits a [`PaymentMethod`] may hold: card numbers have 12 to 19.
const MAX_DIGIT_RUN: usize = 11;

fn no_card_number(s: &str) -> Result<(), ValueError> {
    // Separators a card number is written with do not end a run.
    let digits: String = s.chars().filter(|c| !matches!(c, '-' | '.')).collect();
    let longest = digits.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0);
    if longest > MAX_DIGIT_RUN {
        return Err(ValueError::new(
            "payment_method",
            "must be the provider's payment-method reference (e.g. \"pm_card_visa\"), never a card number",
        ));
    }
    Ok(())
}

/// Namespace for ids derived from idempotency keys (UUID v5), so the same key always names the same order.
const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f72_6465_7266_6c6f_7700_0000_0000_0001);

impl OrderId {
    /// A fresh random id for an order placed without `order_id` or `Idempotency-Key`.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id of the order placed by `user` with `key`: the same pair always gives the same id, so a
    /// retry finds the first order instead of creating a second.
    pub fn from_idempotency_key(user: &UserId, key: &IdempotencyKey) -> Self {
        let name = format!("{}\u{1f}{}", user.as_str(), key.as_str());
        Self(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string())
    }
}

impl OrderId {
    /// The id of partner `partner`'s order `external`: the same pair always names the same order.
    pub fn from_partner(partner: &str, external: &str) -> Self {
        let name = format!("partner\u{1f}{partner}\u{1f}{external}");
        Self(uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string())
    }
}

/// Units of one SKU in one order line: 1 to [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(u32);

impl Quantity {
    /// The most units of one SKU a single order may ask for.
    pub const MAX: u32 = 10_000;

    pub fn new(n: i64) -> Result<Self, ValueError> {
        if n <= 0 {
            return Err(ValueError::new("quantity", format!("must be at least 1 (got {n})")));
        }
        if n > i64::from(Self::MAX) {
            return Err(ValueError::new("quantity", format!("must be at most {} (got {n})", Self::MAX)));
        }
        Ok(Self(n as u32))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = ValueError;
    fn try_from(n: i64) -> Result<Self, ValueError> {
        Self::new(n)
    }
}

impl From<Quantity> for i64 {
    fn from(q: Quantity) -> i64 {
        i64::from(q.0)
    }
}

/// A non-negative amount of money in minor units (cents). Written and read as a decimal string with at
/// most two decimals, such as `"12.50"`; never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_cents(cents: i64) -> Result<Self, ValueError> {
        if cents < 0 {
            return Err(ValueError::new("amount", "must not be negative"));
        }
        Ok(Self(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    /// Parses a decimal string such as `"12.50"`, `"3"` or `"0.99"`.
    pub fn parse(field: &'static str, s: &str) -> Result<Self, ValueError> {
        let d = Decimal::from_str_exact(s.trim())
            .map_err(|_| ValueError::new(field, format!("{s:?} is not a decimal amount such as \"12.50\"")))?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(ValueError::new(field, "must not be negative"));
        }
        if d.normalize().scale() > 2 {
            return Err(ValueError::new(field, "must have at most two decimals"));
        }
        // rust_decimal's `*` panics on overflow (a 28-digit amount): multiply with a check.
        let too_large = || ValueError::new(field, "is too large");
        let cents = d.checked_mul(Decimal::ONE_HUNDRED).ok_or_else(too_large)?.trunc();
        let cents = i64::try_from(cents).map_err(|_| too_large())?;
        Ok(Self(cents))
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_mul(self, q: Quantity) -> Option<Money> {
        self.0.checked_mul(i64::from(q.get())).map(Money)
    }
}

/// An ISO 4217 currency code (`EUR`, `USD`, `JPY`): the currency of the shop's prices and its orders'
/// totals. [`Money`] holds two decimals; a currency with none (`JPY`) takes whole amounts only, and one
/// with three (`KWD`) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// Currencies without minor units, as payment service providers count them (Stripe's list).
const ZERO_DECIMAL: [&str; 16] =
    ["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"];
/// Currencies with three decimals, which [`Money`] cannot hold.
const THREE_DECIMAL: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");

    /// Parses a code such as `EUR` or `eur` (stored upper-case).
    pub fn parse(field: &'static str, s: &str) -> Result<Self, ValueError> {
        let upper = s.trim().to_ascii_uppercase();
        let bytes: [u8; 3] = upper
            .as_bytes()
            .try_into()
            .ok()
            .filter(|b: &[u8; 3]| b.iter().all(u8::is_ascii_uppercase))
            .ok_or_else(|| ValueError::new(field, format!("{s:?} is not an ISO 4217 code such as \"EUR\"")))?;
        if THREE_DECIMAL.contains(&upper.as_str()) {
            return Err(ValueError::new(field, format!("{upper} has three decimals; amounts here have at most two")));
        }
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// The amount in the currency's minor units, as payment service providers take it: cents for `EUR`,
    /// yen for `JPY` (where an amount with cents is refused).
    pub fn minor_units(self, amount: Money) -> Result<i64, ValueError> {
        if ZERO_DECIMAL.contains(&self.as_str()) {
            if amount.cents() % 100 != 0 {
                return Err(ValueError::new("amount", format!("{amount} {self}: {self} has no minor units")));
            }
            return Ok(amount.cents() / 100);
        }
        Ok(amount.cents())
    }

    /// The amount of `units` of the currency's minor units, as payment service providers report it
    /// (the inverse of [`Currency::minor_units`]).
    pub fn from_minor_units(self, units: i64) -> Result<Money, ValueError> {
        let cents = if ZERO_DECIMAL.contains(&self.as_str()) {
            units.checked_mul(100).ok_or_else(|| ValueError::new("amount", format!("{units} {self} is too large")))?
        } else {
            units
        };
        Money::from_cents(cents)
    }
}

impl Default for Currency {
    fn default() -> Self {
        Self::EUR
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Currency {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        Self::parse("currency", s)
    }
}

impl TryFrom<String> for Currency {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse("currency", &s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Decimal::new(self.0, 2))
    }
}

impl TryFrom<String> for Money {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse("amount", &s)
    }
}

impl From<Money> for String {
    fn from(m: Money) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_and_prints_two_decimals() {
        assert_eq!(Money::parse("a", "12.5").map(|m| m.cents()), Ok(1250));
        assert_eq!(Money::parse("a", "12.50").map(|m| m.to_string()), Ok("12.50".into()));
        assert_eq!(Money::parse("a", "3").map(|m| m.to_string()), Ok("3.00".into()));
        assert_eq!(Money::parse("a", "0.01").map(|m| m.cents()), Ok(1));
        assert_eq!(Money::parse("a", "1.230").map(|m| m.cents()), Ok(123));
        assert!(Money::parse("a", "1.234").is_err());
        assert!(Money::parse("a", "-1").is_err());
        assert!(Money::parse("a", "abc").is_err());
        assert!(Money::parse("a", "1e3").is_err());
    }

    #[test]
    fn money_too_large_is_an_error_not_a_panic() {
        for s in ["999999999999999999999999999", "79228162514264337593543950335", "92233720368547758.08"] {
            let e = Money::parse("total_amount", s).expect_err(s);
            assert_eq!(e.reason, "is too large", "{s}");
        }
        assert_eq!(Money::parse("a", "92233720368547758.07").map(|m| m.cents()), Ok(i64::MAX));
    }

    #[test]
    fn currencies_parse_and_count_their_minor_units() {
        let eur: Currency = "eur".parse().unwrap();
        assert_eq!(eur, Currency::EUR);
        assert_eq!(eur.minor_units(Money::from_cents(1250).unwrap()), Ok(1250));
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(jpy.minor_units(Money::from_cents(50_000).unwrap()), Ok(500));
        assert!(jpy.minor_units(Money::from_cents(50_050).unwrap()).is_err());
        assert!("KWD".parse::<Currency>().unwrap_err().reason.contains("three decimals"));
        for bad in ["", "EU", "EURO", "E1R", "€€€"] {
            assert!(bad.parse::<Currency>().is_err(), "{bad}");
        }
    }

    #[test]
    fn payment_methods_are_references_never_card_numbers() {
        assert!(PaymentMethod::parse("pm_card_visa").is_ok());
        assert!(PaymentMethod::parse("pm_1QabcDEF23456789012").is_ok());
        let card = PaymentMethod::parse("4242424242424242").unwrap_err();
        assert_eq!(card.field, "payment_method");
        assert!(card.reason.contains("never a card number"), "{card}");
        assert!(PaymentMethod::parse("4242-4242-4242-4242").is_err(), "separators do not hide a card number");
        assert!(PaymentMethod::parse("pm_2024_12_01_0001").is_ok(), "short runs are not a card");
        assert!(PaymentMethod::parse("pm card").is_err());
        assert!(PaymentMethod::parse("").is_err());
    }

    proptest::proptest! {
        #[test]
        fn money_prints_and_parses_back(cents in 0i64..=i64::MAX) {
            let m = Money::from_cents(cents).unwrap();
            proptest::prop_assert_eq!(Money::parse("a", &m.to_string()), Ok(m));
        }

        #[test]
        fn money_parse_never_panics_and_what_parses_prints_back(s in "[-+ 0-9.eE]{0,40}") {
            if let Ok(m) = Money::parse("a", &s) {
                proptest::prop_assert!(m.cents() >= 0);
                proptest::prop_assert_eq!(Money::parse("a", &m.to_string()), Ok(m));
            }
        }

        #[test]
        fn checked_money_ops_agree_with_wide_arithmetic(a in 0i64..=i64::MAX, b in 0i64..=i64::MAX, q in 1i64..=10_000) {
            let (ma, mb, q) = (Money::from_cents(a).unwrap(), Money::from_cents(b).unwrap(), Quantity::new(q).unwrap());
            let sum = i128::from(a) + i128::from(b);
            proptest::prop_assert_eq!(ma.checked_add(mb).map(|m| i128::from(m.cents())), (sum <= i128::from(i64::MAX)).then_some(sum));
            let product = i128::from(a) * i128::from(q.get());
            proptest::prop_assert_eq!(ma.checked_mul(q).map(|m| i128::from(m.cents())), (product <= i128::from(i64::MAX)).then_some(product));
        }
    }

    #[test]
    fn quantity_is_positive_and_bounded() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-3).is_err());
        assert!(Quantity::new(i64::from(Quantity::MAX) + 1).is_err());
        assert_eq!(Quantity::new(7).map(Quantity::get), Ok(7));
    }

    #[test]
    fn ids_refuse_empty_long_and_odd_characters() {
        assert!(OrderId::parse("").is_err());
        assert!(OrderId::parse("a".repeat(65)).is_err());
        assert!(OrderId::parse("has space").is_err());
        assert!(Sku::parse("SKU-1").is_ok());
        assert!(Sku::parse("drop table;").is_err());
    }

    #[test]
    fn idempotency_key_names_one_order_per_user() {
        let u1 = UserId::parse("u1").unwrap();
        let u2 = UserId::parse("u2").unwrap();
        let k = IdempotencyKey::parse("k-1").unwrap();
        assert_eq!(OrderId::from_idempotency_key(&u1, &k), OrderId::from_idempotency_key(&u1, &k));
        assert_ne!(OrderId::from_idempotency_key(&u1, &k), OrderId::from_idempotency_key(&u2, &k));
    }
}
