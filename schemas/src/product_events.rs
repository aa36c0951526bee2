//! The catalog's event (`schemas/avro/product_updated.avsc`): one `ProductUpdated` per staff catalog write,
//! on [`crate::topics::CATALOG`] keyed by SKU, in Avro single-object encoding. It carries the whole product
//! after the write, so the catalog projector, caches and other systems apply it without reading the catalog:
//! the highest version of a SKU wins.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::catalog::{Attributes, Category, Product};
use crate::codec::{CodecError, fingerprint, single_object, split_single_object};
use crate::events::EventId;
use crate::values::{Money, Sku};

/// The ProductUpdated schema as shipped.
pub const PRODUCT_UPDATED_SCHEMA: &str = include_str!("../avro/product_updated.avsc");

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
}

static CODEC: LazyLock<ProductCodec> = LazyLock::new(|| {
    // Compiled in; `product_updates_round_trip` rules out a panic here.
    #[allow(clippy::expect_used)]
    let schema = Schema::parse_str(PRODUCT_UPDATED_SCHEMA).expect("bundled product_updated.avsc is valid Avro");
    ProductCodec { fingerprint: fingerprint(&schema), schema }
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
    if fp != CODEC.fingerprint {
        return Err(CodecError::UnknownSchema(u64::from_le_bytes(fp)));
    }
    let value = crate::codec::read_datum(&CODEC.schema, datum)?;
    let w: Wire = apache_avro::from_value(&value)?;
    let product = Product {
        sku: Sku::parse(w.sku)?,
        name: w.name,
        description: w.description,
        price: Money::from_cents(w.price_cents)?,
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
