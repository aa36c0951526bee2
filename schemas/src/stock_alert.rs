//! Low-stock alerts (`schemas/avro/stock_alert.avsc`): what the inventory service publishes to
//! [`crate::topics::STOCK_ALERTS`] when a SKU's available units cross its threshold, in Avro
//! single-object encoding.

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, fingerprint, single_object, split_single_object};
use crate::events::EventId;
use crate::values::Sku;

/// The stock alert schema as shipped.
pub const STOCK_ALERT_SCHEMA: &str = include_str!("../avro/stock_alert.avsc");

/// The low-stock threshold of a SKU that has none set: alert when 5 units or fewer are left.
pub const DEFAULT_LOW_STOCK_THRESHOLD: u64 = 5;

/// Which way a SKU crossed its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StockAlertKind {
    /// Available units fell to the threshold or below.
    InventoryLow,
    /// Available units rose above the threshold again.
    InventoryRestocked,
}

impl StockAlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StockAlertKind::InventoryLow => "InventoryLow",
            StockAlertKind::InventoryRestocked => "InventoryRestocked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "InventoryLow" => Some(StockAlertKind::InventoryLow),
            "InventoryRestocked" => Some(StockAlertKind::InventoryRestocked),
            _ => None,
        }
    }

    /// The kind of the `seq`-th crossing of a SKU: a SKU starts above its threshold, so odd crossings
    /// go down and even ones come back up.
    pub fn of_seq(seq: u64) -> Self {
        if seq % 2 == 1 { StockAlertKind::InventoryLow } else { StockAlertKind::InventoryRestocked }
    }
}

impl std::fmt::Display for StockAlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One crossing of a SKU's low-stock threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAlert {
    pub sku: Sku,
    /// The SKU's crossing number, from 1.
    pub seq: u64,
    pub kind: StockAlertKind,
    /// Available units seen when the crossing was recorded.
    pub available: u64,
    pub threshold: u64,
    pub at_ms: i64,
}

impl StockAlert {
    /// Deterministic per (SKU, crossing): publishing an alert again gives the same id.
    pub fn event_id(&self) -> EventId {
        EventId::for_key(&format!("sku:{}", self.sku.as_str()), &format!("stock-alert-{}", self.seq))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    event_id: String,
    kind: String,
    sku: String,
    seq: i64,
    available: i64,
    threshold: i64,
    occurred_at_ms: i64,
}

struct AlertCodec {
    schema: Schema,
    fingerprint: [u8; 8],
}

static CODEC: LazyLock<AlertCodec> = LazyLock::new(|| {
    // Compiled in; `alerts_round_trip` rules out a panic here.
    #[allow(clippy::expect_used)]
    let schema = Schema::parse_str(STOCK_ALERT_SCHEMA).expect("bundled stock_alert.avsc is valid Avro");
    AlertCodec { fingerprint: fingerprint(&schema), schema }
});

fn long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Encodes an alert as an Avro single object.
pub fn encode(alert: &StockAlert) -> Result<Vec<u8>, CodecError> {
    let wire = Wire {
        event_id: alert.event_id().to_string(),
        kind: alert.kind.as_str().to_owned(),
        sku: alert.sku.as_str().to_owned(),
        seq: long(alert.seq),
        available: long(alert.available),
        threshold: long(alert.threshold),
        occurred_at_ms: alert.at_ms,
    };
    let value = apache_avro::to_value(&wire)?.resolve(&CODEC.schema)?;
    Ok(single_object(&CODEC.fingerprint, &apache_avro::to_avro_datum(&CODEC.schema, value)?))
}

/// Decodes an alert; any framing, schema or value problem is an error naming it.
pub fn decode(bytes: &[u8]) -> Result<StockAlert, CodecError> {
    let (fp, datum) = split_single_object(bytes)?;
    if fp != CODEC.fingerprint {
        return Err(CodecError::UnknownSchema(u64::from_le_bytes(fp)));
    }
    let value = crate::codec::read_datum(&CODEC.schema, datum)?;
    let w: Wire = apache_avro::from_value(&value)?;
    let unsigned = |v: i64, name: &'static str| u64::try_from(v).map_err(|_| CodecError::Field(name));
    Ok(StockAlert {
        sku: Sku::parse(w.sku)?,
        seq: unsigned(w.seq, "seq")?,
        kind: StockAlertKind::parse(&w.kind).ok_or(CodecError::Field("kind"))?,
        available: unsigned(w.available, "available")?,
        threshold: unsigned(w.threshold, "threshold")?,
        at_ms: w.occurred_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(seq: u64) -> StockAlert {
        StockAlert {
            sku: Sku::parse("SKU-1").unwrap(),
            seq,
            kind: StockAlertKind::of_seq(seq),
            available: 4,
            threshold: 5,
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn alerts_round_trip() {
        let a = alert(1);
        assert_eq!(decode(&encode(&a).unwrap()).unwrap(), a);
        assert_eq!(a.kind, StockAlertKind::InventoryLow);
        assert_eq!(alert(2).kind, StockAlertKind::InventoryRestocked);
    }

    #[test]
    fn event_ids_are_per_sku_and_crossing() {
        assert_eq!(alert(1).event_id(), alert(1).event_id());
        assert_ne!(alert(1).event_id(), alert(2).event_id());
        let mut other = alert(1);
        other.sku = Sku::parse("SKU-2").unwrap();
        assert_ne!(alert(1).event_id(), other.event_id());
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert!(matches!(decode(b"{}"), Err(CodecError::NotSingleObject)));
        let order_event = crate::codec::encode(&crate::Envelope::new(
            EventId::random(),
            crate::OrderId::parse("o").unwrap(),
            crate::events::StockReserved { units_reserved: 1, sku: None },
        ))
        .unwrap();
        assert!(matches!(decode(&order_event), Err(CodecError::UnknownSchema(_))));
    }
}
