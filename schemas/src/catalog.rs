//! Products and their stock.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::values::{Currency, Money, Sku, ValueError};

/// A product in the catalog: the write model's row, the read model's row and the snapshot in every
/// `ProductUpdated` event. Rows written before categories, attributes, archiving and versions existed
/// read with their defaults (`uncategorized`, none, not archived, version 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub price: Money,
    /// The currency of `price` (ISO 4217); `None`: the shop's (`--currency`), which is also how rows
    /// written before products had a currency read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    #[serde(default)]
    pub category: Category,
    #[serde(default)]
    pub attributes: Attributes,
    /// An archived product is hidden from the catalog listing and cannot be ordered; it keeps its SKU.
    #[serde(default)]
    pub archived: bool,
    /// 1 when created, bumped by every write (the write model's compare-and-set and the read model's
    /// "newer wins" both compare it).
    #[serde(default)]
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Product {
    /// The longest product name accepted.
    pub const MAX_NAME_LEN: usize = 200;
    /// The longest description accepted.
    pub const MAX_DESCRIPTION_LEN: usize = 5_000;

    /// A new product (version 1, not archived) created at `now_ms`.
    pub fn new(sku: Sku, name: String, description: String, price: Money, now_ms: i64) -> Self {
        Self {
            sku,
            name,
            description,
            price,
            currency: None,
            category: Category::default(),
            attributes: Attributes::default(),
            archived: false,
            version: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// Same SKU and same content, whatever the version and timestamps: a retried write that finds its
    /// change already made.
    pub fn same_content_as(&self, other: &Product) -> bool {
        self.sku == other.sku
            && self.name == other.name
            && self.description == other.description
            && self.price == other.price
            && self.currency == other.currency
            && self.category == other.category
            && self.attributes == other.attributes
            && self.archived == other.archived
    }

    /// The currency of the price, `shop`'s when the product names none.
    pub fn currency_or(&self, shop: Currency) -> Currency {
        self.currency.unwrap_or(shop)
    }

    /// Checks a name: trimmed, 1 to [`Product::MAX_NAME_LEN`] characters.
    pub fn parse_name(name: &str) -> Result<String, ValueError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ValueError::new("name", "must not be empty"));
        }
        if name.chars().count() > Self::MAX_NAME_LEN {
            return Err(ValueError::new("name", format!("must be at most {} characters", Self::MAX_NAME_LEN)));
        }
        Ok(name.to_owned())
    }

    /// Checks a description: at most [`Product::MAX_DESCRIPTION_LEN`] characters.
    pub fn parse_description(description: &str) -> Result<String, ValueError> {
        if description.chars().count() > Self::MAX_DESCRIPTION_LEN {
            return Err(ValueError::new(
                "description",
                format!("must be at most {} characters", Self::MAX_DESCRIPTION_LEN),
            ));
        }
        Ok(description.to_owned())
    }
}

/// A product's category: 1 to 64 of `[a-z0-9_-]`, compared and stored in lower case (input is trimmed
/// and lower-cased first, so `Hot-Drinks` is `hot-drinks`). Products created without one are
/// [`Category::UNCATEGORIZED`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Category(String);

impl Category {
    pub const UNCATEGORIZED: &'static str = "uncategorized";
    pub const MAX_LEN: usize = 64;

    /// Parses untrusted input.
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() {
            return Err(ValueError::new("category", "must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(ValueError::new("category", format!("must be at most {} characters", Self::MAX_LEN)));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))) {
            return Err(ValueError::new(
                "category",
                format!("may contain only letters, digits, '-' and '_' (found {c:?})"),
            ));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Category {
    fn default() -> Self {
        Self(Self::UNCATEGORIZED.to_owned())
    }
}

impl TryFrom<String> for Category {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}

impl From<Category> for String {
    fn from(c: Category) -> String {
        c.0
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A product's attributes (`color = blue`, `size = XL`): at most [`Attributes::MAX_COUNT`] entries,
/// ordered by key. Keys are 1 to [`Attributes::MAX_KEY_LEN`] of `[A-Za-z0-9_.-]` and unique; values are
/// at most [`Attributes::MAX_VALUE_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Attributes(BTreeMap<String, String>);

impl Attributes {
    pub const MAX_COUNT: usize = 32;
    pub const MAX_KEY_LEN: usize = 64;
    pub const MAX_VALUE_LEN: usize = 256;

    /// Parses untrusted pairs; a repeated key is refused (not silently merged).
    pub fn parse(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, ValueError> {
        let mut map = BTreeMap::new();
        for (key, value) in pairs {
            if map.len() >= Self::MAX_COUNT {
                return Err(ValueError::new("attributes", format!("at most {} attributes", Self::MAX_COUNT)));
            }
            let key = key.trim().to_owned();
            if key.is_empty() || key.len() > Self::MAX_KEY_LEN {
                return Err(ValueError::new(
                    "attributes",
                    format!("a key must be 1 to {} characters (got {key:?})", Self::MAX_KEY_LEN),
                ));
            }
            if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
                return Err(ValueError::new(
                    "attributes",
                    format!("key {key:?} may contain only letters, digits, '-', '_' and '.' (found {c:?})"),
                ));
            }
            if value.chars().count() > Self::MAX_VALUE_LEN {
                return Err(ValueError::new(
                    "attributes",
                    format!("the value of {key:?} must be at most {} characters", Self::MAX_VALUE_LEN),
                ));
            }
            if map.insert(key.clone(), value).is_some() {
                return Err(ValueError::new("attributes", format!("key {key:?} is given twice")));
            }
        }
        Ok(Self(map))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Attributes {
    type Error = ValueError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, ValueError> {
        Self::parse(map)
    }
}

impl From<Attributes> for BTreeMap<String, String> {
    fn from(a: Attributes) -> Self {
        a.0
    }
}

/// What the catalog listing keeps of a product: the fields `products` filters and sorts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSummary {
    pub sku: Sku,
    pub name: String,
    pub price: Money,
    pub category: Category,
    pub archived: bool,
    pub version: u64,
    pub updated_at_ms: i64,
}

impl From<&Product> for ProductSummary {
    fn from(p: &Product) -> Self {
        Self {
            sku: p.sku.clone(),
            name: p.name.clone(),
            price: p.price,
            category: p.category.clone(),
            archived: p.archived,
            version: p.version,
            updated_at_ms: p.updated_at_ms,
        }
    }
}

/// Units of one SKU. `available + reserved` are on the shelf; `sold` have left with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StockLevel {
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

#[cfg(test)]
mod catalog_tests {
    use super::*;

    #[test]
    fn categories_are_lower_case_slugs() {
        assert_eq!(Category::parse(" Hot-Drinks ").map(|c| c.to_string()), Ok("hot-drinks".into()));
        assert_eq!(Category::default().as_str(), "uncategorized");
        assert!(Category::parse("").is_err());
        assert!(Category::parse("hot drinks").is_err());
        assert!(Category::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn attributes_are_bounded_ordered_and_unique() {
        let a =
            Attributes::parse([("size".to_owned(), "XL".to_owned()), ("color".to_owned(), "blue".to_owned())]).unwrap();
        assert_eq!(a.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["color", "size"]);
        assert!(Attributes::parse([("k".to_owned(), "1".to_owned()), ("k".to_owned(), "2".to_owned())]).is_err());
        assert!(Attributes::parse([("bad key".to_owned(), "v".to_owned())]).is_err());
        assert!(Attributes::parse([("k".to_owned(), "v".repeat(257))]).is_err());
        assert!(Attributes::parse((0..33).map(|i| (format!("k{i}"), String::new()))).is_err());
    }

    #[test]
    fn old_rows_read_with_defaults() {
        let row = r#"{"sku":"S","name":"n","description":"","price":"1.00","created_at_ms":1,"updated_at_ms":2}"#;
        let p: Product = serde_json::from_str(row).unwrap();
        assert_eq!(
            (p.category.as_str(), p.attributes.is_empty(), p.archived, p.version),
            ("uncategorized", true, false, 0)
        );
    }
}
