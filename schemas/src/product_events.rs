//! The catalog's event (`schemas/avro/product_updated.avsc`): one `ProductUpdated` per staff catalog write,
//! on [`crate::topics::CATALOG`] keyed by SKU, in Avro single-object encoding. It carries the whole product
//! after the write, so the catalog projector, caches and other systems apply it without reading the catalog:
//! the highest version of a SKU wins.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::catalog::{Attributes, Category, Product};
use crate::codec::{CodecError, fingerprint, single_object, split_single_object};
use crate::events::EventId;
use crate::values::{Currency, Money, Sku};

/// The ProductUpdated schema as shipped.
pub const PRODUCT_UPDATED_SCHEMA: &str = include_str!("../avro/product_updated.avsc");

/// Every earlier ProductUpdated schema, oldest first (`schemas/avro/history/`): events written with them
/// stay readable (the catalog topic keeps a SKU's last event for as long as it is compacted).
pub const PRODUCT_UPDATED_HISTORY: &[&str] = &[include_str!("../avro/history/product_updated.v1.avsc")];

/// A product as it is after one write, and when the event was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductUpdated {
    pub product: Product,
    pub occurred_at_ms: i64,
}

impl ProductUpdated {
    pub fn new(product: Product) -> Self {
        Self { product, occurred_at_ms: crate::now_ms() }
    }

    /// Deterministic per (SKU, version): publishing the same version again gives the same id.
    pub fn event_id(&self) -> EventId {
        event_id(&self.product.sku, self.product.version)
    }
}

/// The id of the `ProductUpdated` of `sku` at `version`.
pub fn event_id(sku: &Sku, version: u64) -> EventId {
    EventId::for_key(&format!("sku:{}", sku.as_str()), &format!("product-v{version}"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    event_id: String,
    sku: String,
    version: i64,
    name: String,
    description: String,
    price_cents: i64,
    /// Absent from writers of v1.
    #[serde(default)]
    currency: Option<String>,
    category: String,
    attributes: BTreeMap<String, String>,
    archived: bool,
    created_at_ms: i64,
    updated_at_ms: i64,
    occurred_at_ms: i64,
}

struct ProductCodec {
    schema: Schema,
    fingerprint: [u8; 8],
    /// Every schema a readable event may have been written with, by fingerprint (this one included).
    writers: HashMap<[u8; 8], Schema>,
}

static CODEC: LazyLock<ProductCodec> = LazyLock::new(|| {
    // Compiled in; `product_updates_round_trip` rules out a panic here.
    #[allow(clippy::expect_used)]
    let schema = Schema::parse_str(PRODUCT_UPDATED_SCHEMA).expect("bundled product_updated.avsc is valid Avro");
    // The history is compiled in too; `earlier_schemas_are_compatible_both_ways` parses every entry.
    let mut writers: HashMap<[u8; 8], Schema> = PRODUCT_UPDATED_HISTORY
        .iter()
        .filter_map(|s| Schema::parse_str(s).ok())
        .map(|old| (fingerprint(&old), old))
        .collect();
    writers.insert(fingerprint(&schema), schema.clone());
    ProductCodec { fingerprint: fingerprint(&schema), schema, writers }
});

/// Encodes the event as an Avro single object.
pub fn encode(event: &ProductUpdated) -> Result<Vec<u8>, CodecError> {
    let p = &event.product;
    let wire = Wire {
        event_id: event.event_id().to_string(),
        sku: p.sku.as_str().to_owned(),
        version: i64::try_from(p.version).map_err(|_| CodecError::Field("version"))?,
        name: p.name.clone(),
        description: p.description.clone(),
        price_cents: p.price.cents(),
        currency: p.currency.map(String::from),
        category: p.category.as_str().to_owned(),
        attributes: p.attributes.as_map().clone(),
        archived: p.archived,
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
        occurred_at_ms: event.occurred_at_ms,
    };
    let value = apache_avro::to_value(&wire)?.resolve(&CODEC.schema)?;
    Ok(single_object(&CODEC.fingerprint, &apache_avro::to_avro_datum(&CODEC.schema, value)?))
}

/// Decodes an event; any framing, schema or value problem is an error naming it.
pub fn decode(bytes: &[u8]) -> Result<ProductUpdated, CodecError> {
    let (fp, datum) = split_single_object(bytes)?;
    let writer = CODEC.writers.get(&fp).ok_or(CodecError::UnknownSchema(u64::from_le_bytes(fp)))?;
    // Read with the writer's schema; a field it lacks takes its default in `Wire`.
    let value = crate::codec::read_datum(writer, datum)?;
    let w: Wire = apache_avro::from_value(&value)?;
    let product = Product {
        sku: Sku::parse(w.sku)?,
        name: w.name,
        description: w.description,
        price: Money::from_cents(w.price_cents)?,
        currency: w.currency.map(|c| Currency::parse("currency", &c)).transpose()?,
        category: Category::parse(&w.category)?,
        attributes: Attributes::parse(w.attributes)?,
        archived: w.archived,
        version: u64::try_from(w.version).map_err(|_| CodecError::Field("version"))?,
        created_at_ms: w.created_at_ms,
        updated_at_ms: w.updated_at_ms,
    };
    if event_id(&product.sku, product.version).to_string() != w.event_id {
        return Err(CodecError::Field("event_id"));
    }
    Ok(ProductUpdated { product, occurred_at_ms: w.occurred_at_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProductUpdated {
        let mut p = Product::new(
            Sku::parse("SKU-1").unwrap(),
            "Mug".into(),
            "Blue".into(),
            Money::from_cents(1250).unwrap(),
            1_700_000_000_000,
        );
        p.category = Category::parse("kitchen").unwrap();
        p.attributes = Attributes::parse([("color".to_owned(), "blue".to_owned())]).unwrap();
        p.archived = true;
        p.currency = Some("USD".parse().unwrap());
        p.version = 7;
        ProductUpdated { product: p, occurred_at_ms: 1_700_000_000_123 }
    }

    #[test]
    fn product_updates_round_trip() {
        let event = sample();
        let bytes = encode(&event).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(decode(&bytes).unwrap(), event);
    }

    #[test]
    fn earlier_schemas_are_compatible_both_ways() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        let current = Schema::parse_str(PRODUCT_UPDATED_SCHEMA).unwrap();
        for (i, old) in PRODUCT_UPDATED_HISTORY.iter().enumerate() {
            let old = Schema::parse_str(old).unwrap_or_else(|e| panic!("history entry {i} does not parse: {e}"));
            assert!(SchemaCompatibility::can_read(&old, &current).is_ok(), "this build cannot read v{}", i + 1);
            assert!(SchemaCompatibility::can_read(&current, &old).is_ok(), "v{} readers cannot read this build", i + 1);
            assert!(CODEC.writers.contains_key(&fingerprint(&old)), "v{} is not a known writer", i + 1);
        }
    }

    #[test]
    fn events_written_with_v1_read_in_the_shops_currency() {
        use apache_avro::types::Value;
        let v1 = Schema::parse_str(PRODUCT_UPDATED_HISTORY[0]).unwrap();
        let mut event = sample();
        event.product.currency = None;
        let p = &event.product;
        let record = Value::Record(vec![
            ("event_id".into(), Value::String(event.event_id().to_string())),
            ("sku".into(), Value::String(p.sku.as_str().into())),
            ("version".into(), Value::Long(7)),
            ("name".into(), Value::String(p.name.clone())),
            ("description".into(), Value::String(p.description.clone())),
            ("price_cents".into(), Value::Long(1250)),
            ("category".into(), Value::String("kitchen".into())),
            ("attributes".into(), Value::Map([("color".to_owned(), Value::String("blue".into()))].into())),
            ("archived".into(), Value::Boolean(true)),
            ("created_at_ms".into(), Value::Long(p.created_at_ms)),
            ("updated_at_ms".into(), Value::Long(p.updated_at_ms)),
            ("occurred_at_ms".into(), Value::Long(event.occurred_at_ms)),
        ]);
        let bytes = single_object(&fingerprint(&v1), &apache_avro::to_avro_datum(&v1, record).unwrap());
        assert_eq!(decode(&bytes).unwrap(), event);
    }

    #[test]
    fn event_ids_are_per_sku_and_version() {
        let a = sample();
        let mut b = sample();
        b.occurred_at_ms += 1;
        assert_eq!(a.event_id(), b.event_id(), "a republished version keeps its id");
        b.product.version += 1;
        assert_ne!(a.event_id(), b.event_id());
    }

    #[test]
    fn foreign_or_broken_bytes_are_errors() {
        assert!(decode(b"{}").is_err());
        let good = encode(&sample()).unwrap();
        for cut in 10..good.len() {
            assert!(decode(&good[..cut]).is_err());
        }
        let alert = crate::partner::encode(&crate::partner::PartnerOrder {
            partner_id: "p".into(),
            external_order_id: "e".into(),
            user_id: "u".into(),
            items: vec![],
            total_amount: None,
            placed_at_ms: None,
        })
        .unwrap();
        assert!(matches!(decode(&alert), Err(CodecError::UnknownSchema(_))));
    }
}
