//! Staff changes of a SKU's stock (`schemas/avro/stock_command.avsc`): published to
//! [`crate::topics::INVENTORY`] keyed by SKU, beside the orders' reservation commands, so that the
//! inventory processor owning the SKU's partition is the one writer of its stock. Avro single-object
//! encoding; a reader tells them from order envelopes by the writer schema's fingerprint
//! ([`is_stock_command`]).

use std::sync::LazyLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, fingerprint, single_object, split_single_object};
use crate::values::{Sku, ValueError};

/// The stock command schema as shipped.
pub const STOCK_COMMAND_SCHEMA: &str = include_str!("../avro/stock_command.avsc");

/// Longest request key accepted (in characters).
pub const MAX_REQUEST_KEY_CHARS: usize = 128;

/// The idempotency key of one stock change: the client's own (`idempotencyKey`), or one made up per
/// request. 1 to 128 characters, none of them control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestKey(String);

impl RequestKey {
    pub fn parse(field: &'static str, s: impl Into<String>) -> Result<Self, ValueError> {
        let s = s.into();
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_REQUEST_KEY_CHARS || s.chars().any(char::is_control) {
            return Err(ValueError::new(
                field,
                format!("must be 1 to {MAX_REQUEST_KEY_CHARS} characters without control characters"),
            ));
        }
        Ok(Self(s))
    }

    /// A fresh key for a request that came without one.
    pub fn random() -> Self {
        Self(format!("request:{}", uuid::Uuid::new_v4()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestKey {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse("request_id", s)
    }
}

impl From<RequestKey> for String {
    fn from(k: RequestKey) -> String {
        k.0
    }
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a stock command changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockChange {
    /// Adds `delta` available units (removes them when negative), with the ledger's reason.
    Adjust { delta: i64, reason: String },
    /// Sets the SKU's low-stock threshold.
    SetLowStockThreshold { threshold: u64 },
}

/// One staff change of one SKU's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockCommand {
    pub request: RequestKey,
    pub sku: Sku,
    pub requested_at_ms: i64,
    pub requested_by: String,
    pub change: StockChange,
}

#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    request_id: String,
    sku: String,
    requested_at_ms: i64,
    requested_by: String,
    adjust_delta: Option<i64>,
    adjust_reason: Option<String>,
    low_stock_threshold: Option<i64>,
}

struct CommandCodec {
    schema: Schema,
    fingerprint: [u8; 8],
}

static CODEC: LazyLock<CommandCodec> = LazyLock::new(|| {
    // Compiled in; `commands_round_trip` rules out a panic here.
    #[allow(clippy::expect_used)]
    let schema = Schema::parse_str(STOCK_COMMAND_SCHEMA).expect("bundled stock_command.avsc is valid Avro");
    CommandCodec { fingerprint: fingerprint(&schema), schema }
});

/// Whether `bytes` is a single object written with the stock command schema (and not, say, an order
/// envelope on the same topic).
pub fn is_stock_command(bytes: &[u8]) -> bool {
    split_single_object(bytes).is_ok_and(|(fp, _)| fp == CODEC.fingerprint)
}

/// Encodes a command as an Avro single object.
pub fn encode(cmd: &StockCommand) -> Result<Vec<u8>, CodecError> {
    let (adjust_delta, adjust_reason, low_stock_threshold) = match &cmd.change {
        StockChange::Adjust { delta, reason } => (Some(*delta), Some(reason.clone()), None),
        StockChange::SetLowStockThreshold { threshold } => {
            (None, None, Some(i64::try_from(*threshold).map_err(|_| CodecError::Field("low_stock_threshold"))?))
        }
    };
    let wire = Wire {
        request_id: cmd.request.as_str().to_owned(),
        sku: cmd.sku.as_str().to_owned(),
        requested_at_ms: cmd.requested_at_ms,
        requested_by: cmd.requested_by.clone(),
        adjust_delta,
        adjust_reason,
        low_stock_threshold,
    };
    let value = apache_avro::to_value(&wire)?.resolve(&CODEC.schema)?;
    Ok(single_object(&CODEC.fingerprint, &apache_avro::to_avro_datum(&CODEC.schema, value)?))
}

/// Decodes a command; any framing, schema or value problem (including a command that sets no change,
/// or two) is an error naming it.
pub fn decode(bytes: &[u8]) -> Result<StockCommand, CodecError> {
    let (fp, datum) = split_single_object(bytes)?;
    if fp != CODEC.fingerprint {
        return Err(CodecError::UnknownSchema(u64::from_le_bytes(fp)));
    }
    let value = crate::codec::read_datum(&CODEC.schema, datum)?;
    let w: Wire = apache_avro::from_value(&value)?;
    let change = match (w.adjust_delta, w.adjust_reason, w.low_stock_threshold) {
        (Some(delta), reason, None) => StockChange::Adjust { delta, reason: reason.unwrap_or_default() },
        (None, None, Some(threshold)) => StockChange::SetLowStockThreshold {
            threshold: u64::try_from(threshold).map_err(|_| CodecError::Field("low_stock_threshold"))?,
        },
        _ => return Err(CodecError::Field("adjust_delta or low_stock_threshold (exactly one)")),
    };
    Ok(StockCommand {
        request: RequestKey::parse("request_id", w.request_id)?,
        sku: Sku::parse(w.sku)?,
        requested_at_ms: w.requested_at_ms,
        requested_by: w.requested_by,
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(change: StockChange) -> StockCommand {
        StockCommand {
            request: RequestKey::parse("k", "d-42").unwrap(),
            sku: Sku::parse("SKU-1").unwrap(),
            requested_at_ms: 1_700_000_000_000,
            requested_by: "staff".into(),
            change,
        }
    }

    #[test]
    fn commands_round_trip() {
        for change in [
            StockChange::Adjust { delta: -3, reason: "breakage".into() },
            StockChange::Adjust { delta: i64::MAX, reason: String::new() },
            StockChange::SetLowStockThreshold { threshold: 8 },
        ] {
            let cmd = command(change);
            let bytes = encode(&cmd).unwrap();
            assert!(is_stock_command(&bytes));
            assert_eq!(decode(&bytes).unwrap(), cmd);
        }
    }

    #[test]
    fn order_envelopes_are_not_stock_commands_and_back() {
        let env = crate::Envelope::new(
            crate::EventId::random(),
            crate::OrderId::parse("o").unwrap(),
            crate::events::StockReserved { units_reserved: 1, sku: None },
        );
        let env = crate::codec::encode(&env).unwrap();
        assert!(!is_stock_command(&env));
        assert!(matches!(decode(&env), Err(CodecError::UnknownSchema(_))));
        let cmd = encode(&command(StockChange::SetLowStockThreshold { threshold: 1 })).unwrap();
        assert!(crate::codec::decode(&cmd).is_err());
        assert!(!is_stock_command(b"{}"));
    }

    #[test]
    fn a_command_with_no_change_or_two_is_refused() {
        for (delta, threshold) in [(None, None), (Some(1), Some(2))] {
            let wire = Wire {
                request_id: "k".into(),
                sku: "SKU-1".into(),
                requested_at_ms: 0,
                requested_by: "staff".into(),
                adjust_delta: delta,
                adjust_reason: None,
                low_stock_threshold: threshold,
            };
            let value = apache_avro::to_value(&wire).unwrap().resolve(&CODEC.schema).unwrap();
            let bytes = single_object(&CODEC.fingerprint, &apache_avro::to_avro_datum(&CODEC.schema, value).unwrap());
            assert!(matches!(decode(&bytes), Err(CodecError::Field(_))), "{delta:?} {threshold:?}");
        }
    }

    #[test]
    fn request_keys_are_bounded() {
        assert!(RequestKey::parse("k", "").is_err());
        assert!(RequestKey::parse("k", "a\nb").is_err());
        assert!(RequestKey::parse("k", "x".repeat(129)).is_err());
        assert!(RequestKey::parse("k", "é".repeat(128)).is_ok());
        assert_ne!(RequestKey::random(), RequestKey::random());
    }
}
