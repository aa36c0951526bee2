//! The partner order contract (`schemas/avro/partner_order.avsc`): what partner systems produce to
//! [`crate::topics::PARTNER_ORDERS`], in Avro single-object encoding. Fields are read as sent; intake
//! validates them and dead-letters what it refuses.

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, fingerprint, single_object, split_single_object};

/// The partner order schema as shipped.
pub const PARTNER_ORDER_SCHEMA: &str = include_str!("../avro/partner_order.avsc");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerItem {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerOrder {
    pub partner_id: String,
    pub external_order_id: String,
    pub user_id: String,
    pub items: Vec<PartnerItem>,
    #[serde(default)]
    pub total_amount: Option<String>,
    #[serde(default)]
    pub placed_at_ms: Option<i64>,
}

struct PartnerCodec {
    schema: Schema,
    fingerprint: [u8; 8],
}

static CODEC: LazyLock<PartnerCodec> = LazyLock::new(|| {
    // Compiled in; `partner_orders_round_trip` rules out a panic here.
    #[allow(clippy::expect_used)]
    let schema = Schema::parse_str(PARTNER_ORDER_SCHEMA).expect("bundled partner_order.avsc is valid Avro");
    PartnerCodec { fingerprint: fingerprint(&schema), schema }
});

/// Encodes a partner order the way partners must (used by `orderflow partner-order` and tests).
pub fn encode(order: &PartnerOrder) -> Result<Vec<u8>, CodecError> {
    let value = apache_avro::to_value(order)?.resolve(&CODEC.schema)?;
    Ok(single_object(&CODEC.fingerprint, &apache_avro::to_avro_datum(&CODEC.schema, value)?))
}

/// Decodes a partner order; any framing or schema problem is an error naming it.
pub fn decode(bytes: &[u8]) -> Result<PartnerOrder, CodecError> {
    let (fp, datum) = split_single_object(bytes)?;
    if fp != CODEC.fingerprint {
        return Err(CodecError::UnknownSchema(u64::from_le_bytes(fp)));
    }
    let value = crate::codec::read_datum(&CODEC.schema, datum)?;
    Ok(apache_avro::from_value(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_orders_round_trip() {
        let order = PartnerOrder {
            partner_id: "acme".into(),
            external_order_id: "A-1".into(),
            user_id: "u1".into(),
            items: vec![PartnerItem { sku: "SKU-1".into(), quantity: 2 }],
            total_amount: Some("7.00".into()),
            placed_at_ms: None,
        };
        assert_eq!(decode(&encode(&order).unwrap()).unwrap(), order);
    }

    #[test]
    fn a_tiny_record_claiming_a_huge_array_is_refused_before_decoding() {
        // partner_id "a", external_order_id "b", user_id "c", then an item count of 2^60 (zig-zag varint).
        let mut datum = vec![2, b'a', 2, b'b', 2, b'c'];
        let mut z = (1u64 << 60) << 1;
        while z >= 0x80 {
            datum.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        datum.push(z as u8);
        let record = single_object(&CODEC.fingerprint, &datum);
        assert!(record.len() < 30);
        let e = decode(&record).unwrap_err();
        assert!(
            matches!(
                e,
                CodecError::Bounds(crate::avro_bounds::BoundsError::ClaimBeyondRecord {
                    what: "an array item count",
                    claimed: 1_152_921_504_606_846_976,
                    ..
                })
            ),
            "{e}"
        );
        // A string length of 2^60 in the first field.
        let record = single_object(&CODEC.fingerprint, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
        assert!(matches!(decode(&record), Err(CodecError::Bounds(_))), "{:?}", decode(&record));
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert!(decode(b"{\"partner_id\": \"acme\"}").is_err());
        let order_event = crate::codec::encode(&crate::Envelope::new(
            crate::EventId::random(),
            crate::OrderId::parse("o").unwrap(),
            crate::events::StockReserved { units_reserved: 1, sku: None },
        ))
        .unwrap();
        assert!(
            matches!(decode(&order_event), Err(CodecError::UnknownSchema(_))),
            "an orderflow event is not a partner order"
        );
    }
}
