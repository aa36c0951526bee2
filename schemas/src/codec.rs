//! Avro single-object encoding of [`Envelope`]s: `C3 01`, the 8-byte CRC-64-AVRO (Rabin) fingerprint of
//! the writer schema, then the binary datum. The same bytes go on every bus backend.
//!
//! Decoding looks the writer schema up by fingerprint and picks the body by its record *name* (not by
//! shape, which Avro's union resolution would do and which is ambiguous for look-alike records), then
//! reads it into this build's struct; fields a newer writer added are ignored and fields it lacks take
//! their defaults, so old and new writers can share a topic.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::types::Value;

use crate::events::{Envelope, Event, EventId};
use crate::values::OrderId;

/// The envelope schema this build writes, as shipped in `schemas/avro/envelope.avsc`.
pub const ENVELOPE_SCHEMA: &str = include_str!("../avro/envelope.avsc");

/// Every earlier envelope schema, oldest first (`schemas/avro/history/`). Records written with any of
/// them stay readable: a topic or log may still hold them after an upgrade. A schema change copies the
/// shipped `envelope.avsc` here first; `every_earlier_schema_is_compatible_both_ways` checks the pair.
pub const ENVELOPE_HISTORY: &[&str] = &[
    include_str!("../avro/history/envelope.v1.avsc"),
    include_str!("../avro/history/envelope.v2.avsc"),
    include_str!("../avro/history/envelope.v3.avsc"),
    include_str!("../avro/history/envelope.v4.avsc"),
];

pub(crate) const MAGIC: [u8; 2] = [0xC3, 0x01];
pub(crate) const HEADER_LEN: usize = 10;

/// Frames an Avro datum as a single object written with the schema of `fingerprint`.
pub(crate) fn single_object(fingerprint: &[u8; 8], datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(datum);
    out
}

/// Reads an Avro datum written with `schema`, after [`crate::avro_bounds::check`] has made sure no
/// length or count in it makes apache-avro allocate more than the datum's own size allows. Every
/// decoder of bus records goes through here.
pub(crate) fn read_datum(schema: &Schema, datum: &[u8]) -> Result<Value, CodecError> {
    crate::avro_bounds::check(schema, datum)?;
    let mut reader = datum;
    Ok(apache_avro::from_avro_datum(schema, &mut reader, None)?)
}

/// Splits a single object into the writer's fingerprint and the datum.
pub(crate) fn split_single_object(bytes: &[u8]) -> Result<([u8; 8], &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(CodecError::NotSingleObject);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok((fp, &bytes[HEADER_LEN..]))
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not an Avro single-object record (missing C3 01 marker)")]
    NotSingleObject,
    #[error("written with an unknown schema (fingerprint {0:016x})")]
    UnknownSchema(u64),
    #[error("malformed Avro: {0}")]
    Avro(#[from] apache_avro::Error),
    /// Refused before decoding: a length or count the record cannot hold, or a datum its schema does not
    /// describe (see [`crate::avro_bounds`]).
    #[error("refused before decoding: {0}")]
    Bounds(#[from] crate::avro_bounds::BoundsError),
    #[error("field {0} is missing or has the wrong type")]
    Field(&'static str),
    #[error("unknown event body {0:?}")]
    UnknownBody(String),
    #[error("invalid value: {0}")]
    Value(#[from] crate::ValueError),
}

struct WriterSchema {
    schema: Schema,
    body_names: Vec<String>,
}

struct Codec {
    fingerprint: [u8; 8],
    schema: Schema,
    /// Body branch schemas of the current schema, by name, with their union index.
    branches: HashMap<String, (u32, Schema)>,
    known: HashMap<[u8; 8], WriterSchema>,
}

fn body_variants(schema: &Schema) -> Option<&[Schema]> {
    let Schema::Record(rec) = schema else { return None };
    let body = rec.fields.iter().find(|f| f.name == "body")?;
    let Schema::Union(u) = &body.schema else { return None };
    Some(u.variants())
}

fn variant_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => r.name.name.clone(),
        other => format!("{other:?}"),
    }
}

pub(crate) fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>().bytes;
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp[..8]);
    out
}

impl Codec {
    fn load() -> Codec {
        // The schema is compiled in; `envelope_schema_parses` in this module's tests rules out a panic here.
        #[allow(clippy::expect_used)]
        let schema = Schema::parse_str(ENVELOPE_SCHEMA).expect("bundled envelope.avsc is valid Avro");
        let variants = body_variants(&schema).unwrap_or_default();
        let branches = variants.iter().enumerate().map(|(i, s)| (variant_name(s), (i as u32, s.clone()))).collect();
        let fp = fingerprint(&schema);
        let mut known = HashMap::new();
        // The history is compiled in too; the compatibility test parses every entry.
        for old in ENVELOPE_HISTORY.iter().filter_map(|s| Schema::parse_str(s).ok()) {
            let body_names = body_variants(&old).unwrap_or_default().iter().map(variant_name).collect();
            known.insert(fingerprint(&old), WriterSchema { body_names, schema: old });
        }
        known.insert(
            fp,
            WriterSchema { body_names: variants.iter().map(variant_name).collect(), schema: schema.clone() },
        );
        Codec { fingerprint: fp, schema, branches, known }
    }
}

static CODEC: LazyLock<Codec> = LazyLock::new(Codec::load);

/// Encodes an envelope as an Avro single object.
pub fn encode(env: &Envelope) -> Result<Vec<u8>, CodecError> {
    let codec = &*CODEC;
    let name = env.body.name();
    let (index, branch) = codec.branches.get(name).ok_or_else(|| CodecError::UnknownBody(name.to_owned()))?;
    let body = env.body.to_avro()?.resolve(branch)?;
    let record = Value::Record(vec![
        ("event_id".into(), Value::String(env.event_id.0.to_string())),
        ("order_id".into(), Value::String(env.order_id.as_str().to_owned())),
        ("occurred_at_ms".into(), Value::Long(env.occurred_at_ms)),
        ("body".into(), Value::Union(*index, Box::new(body))),
    ]);
    let datum = apache_avro::to_avro_datum(&codec.schema, record)?;
    Ok(single_object(&codec.fingerprint, &datum))
}

/// Decodes an Avro single object written with any schema version this build knows.
pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    let (fp, datum) = split_single_object(bytes)?;
    let writer = CODEC.known.get(&fp).ok_or(CodecError::UnknownSchema(u64::from_le_bytes(fp)))?;
    let value = read_datum(&writer.schema, datum)?;
    let Value::Record(fields) = value else { return Err(CodecError::Field("envelope")) };
    let field =
        |name: &'static str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or(CodecError::Field(name));
    let Value::String(event_id) = field("event_id")? else { return Err(CodecError::Field("event_id")) };
    let event_id = uuid::Uuid::parse_str(event_id).map_err(|_| CodecError::Field("event_id"))?;
    let Value::String(order_id) = field("order_id")? else { return Err(CodecError::Field("order_id")) };
    let Value::Long(occurred_at_ms) = field("occurred_at_ms")? else {
        return Err(CodecError::Field("occurred_at_ms"));
    };
    let Value::Union(index, body) = field("body")? else { return Err(CodecError::Field("body")) };
    let name = writer.body_names.get(*index as usize).ok_or(CodecError::Field("body"))?;
    let body = Event::from_avro(name, body).ok_or_else(|| CodecError::UnknownBody(name.clone()))??;
    Ok(Envelope {
        event_id: EventId(event_id),
        order_id: OrderId::parse(order_id.clone())?,
        occurred_at_ms: *occurred_at_ms,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;
    use crate::values::*;

    fn sample_bodies() -> Vec<Event> {
        let sku = Sku::parse("SKU-1").unwrap();
        let q = Quantity::new(2).unwrap();
        vec![
            OrderPlaced {
                user_id: UserId::parse("u1").unwrap(),
                lines: vec![PlacedLine { sku: sku.clone(), quantity: q, unit_price_cents: 1250 }],
                total_cents: 2500,
                channel: "http".into(),
                payment_method: Some(PaymentMethod::parse("pm_card_visa").unwrap()),
                currency: Some(crate::Currency::EUR),
            }
            .into(),
            ReserveStock { lines: vec![ReserveLine { sku: sku.clone(), quantity: q }] }.into(),
            StockReserved { units_reserved: 2, sku: None }.into(),
            StockRejected { reason: "out_of_stock".into(), sku: Some(sku.clone()) }.into(),
            StockRejected { reason: "unknown_sku".into(), sku: None }.into(),
            ReleaseStock { release_reason: "cancelled".into(), skus: vec![sku.clone()] }.into(),
            CommitStock { commit_reason: "shipped".into(), skus: vec![sku.clone()] }.into(),
            CapturePayment {
                user_id: UserId::parse("u1").unwrap(),
                amount_cents: 2500,
                idempotency_key: "k".into(),
                payment_method: None,
                currency: Some(crate::Currency::EUR),
                authorise_only: true,
            }
            .into(),
            PaymentCaptured {
                charge_id: "pi_1".into(),
                captured_cents: 2500,
                authorisation_id: Some("pi_1".into()),
                authorised_only: false,
            }
            .into(),
            PaymentCaptured {
                charge_id: "pi_1".into(),
                captured_cents: 0,
                authorisation_id: Some("pi_1".into()),
                authorised_only: true,
            }
            .into(),
            PaymentDeclined { decline_reason: "limit".into() }.into(),
            RefundPayment { refund_reason: "cancelled".into(), ..Default::default() }.into(),
            RefundPayment {
                refund_reason: "damaged".into(),
                amount_cents: Some(250),
                refund_key: Some("k1".into()),
                currency: Some("JPY".parse().unwrap()),
                ..Default::default()
            }
            .into(),
            RefundPayment {
                refund_reason: "refunded at the provider".into(),
                refund_key: Some("stripe:evt_1".into()),
                provider_refunded_cents: Some(300),
                provider_refund_id: Some("re_2".into()),
                ..Default::default()
            }
            .into(),
            PaymentRefunded::refund("re_1", 2500).into(),
            PaymentRefunded::void("pi_1").into(),
            CreateShipment {
                ship_to_user_id: UserId::parse("u1").unwrap(),
                lines: vec![ShipmentLine { sku, quantity: q }],
            }
            .into(),
            ShipmentCreated { shipment_id: "sh_1".into() }.into(),
            CancelRequested { cancel_reason: "changed mind".into(), requested_by: "staff".into() }.into(),
            StatusChangeRequested { status: crate::OrderStatus::Preparing, changed_by: "staff".into() }.into(),
        ]
    }

    #[test]
    fn envelope_schema_parses_and_every_body_has_a_branch() {
        let codec = Codec::load();
        for body in sample_bodies() {
            assert!(codec.branches.contains_key(body.name()), "no Avro branch for {}", body.name());
        }
        assert_eq!(codec.branches.len(), 15, "a body in envelope.avsc has no Rust struct");
    }

    #[test]
    fn every_body_round_trips_through_single_object_encoding() {
        let order = OrderId::parse("o-1").unwrap();
        for body in sample_bodies() {
            let env = Envelope::new(EventId::derived(&order, body.name()), order.clone(), body);
            let bytes = encode(&env).unwrap();
            assert_eq!(&bytes[..2], &MAGIC);
            assert_eq!(decode(&bytes).unwrap(), env);
        }
    }

    #[test]
    fn look_alike_bodies_keep_their_names() {
        // ReleaseStock, CommitStock and RefundPayment each hold one string; decoding must not confuse them.
        let order = OrderId::parse("o-1").unwrap();
        let env = Envelope::new(EventId::random(), order, CommitStock { commit_reason: "x".into(), skus: vec![] });
        assert_eq!(decode(&encode(&env).unwrap()).unwrap().body.name(), "CommitStock");
    }

    #[test]
    fn every_earlier_schema_is_compatible_both_ways() {
        use apache_avro::schema_compatibility::SchemaCompatibility;
        let current = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
        for (i, old) in ENVELOPE_HISTORY.iter().enumerate() {
            let old = Schema::parse_str(old).unwrap_or_else(|e| panic!("history entry {i} does not parse: {e}"));
            assert!(SchemaCompatibility::can_read(&old, &current).is_ok(), "this build cannot read v{}", i + 1);
            assert!(SchemaCompatibility::can_read(&current, &old).is_ok(), "v{} readers cannot read this build", i + 1);
            assert!(CODEC.known.contains_key(&fingerprint(&old)), "v{} is not a known writer", i + 1);
        }
    }

    #[test]
    fn records_written_with_v1_decode_with_defaults_for_new_fields() {
        let v1 = Schema::parse_str(ENVELOPE_HISTORY[0]).unwrap();
        let names: Vec<String> = body_variants(&v1).unwrap().iter().map(variant_name).collect();
        let index = names.iter().position(|n| n == "ReleaseStock").unwrap() as u32;
        let record = Value::Record(vec![
            ("event_id".into(), Value::String(uuid::Uuid::nil().to_string())),
            ("order_id".into(), Value::String("o-1".into())),
            ("occurred_at_ms".into(), Value::Long(7)),
            (
                "body".into(),
                Value::Union(
                    index,
                    Box::new(Value::Record(vec![("release_reason".into(), Value::String("cancelled".into()))])),
                ),
            ),
        ]);
        let bytes = single_object(&fingerprint(&v1), &apache_avro::to_avro_datum(&v1, record).unwrap());
        let env = decode(&bytes).unwrap();
        assert_eq!(env.body, Event::ReleaseStock(ReleaseStock { release_reason: "cancelled".into(), skus: vec![] }));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode(b""), Err(CodecError::NotSingleObject)));
        assert!(matches!(decode(b"{\"json\":1}"), Err(CodecError::NotSingleObject)));
        assert!(matches!(decode(&[0xC3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]), Err(CodecError::UnknownSchema(_))));
        let order = OrderId::parse("o-1").unwrap();
        let good =
            encode(&Envelope::new(EventId::random(), order, StockReserved { units_reserved: 1, sku: None })).unwrap();
        for cut in HEADER_LEN..good.len() {
            assert!(decode(&good[..cut]).is_err());
        }
        let mut bad_index = good.clone();
        // The body's union index sits just before its two fields (a one-byte long, the null of `sku`).
        let last = bad_index.len() - 3;
        bad_index[last] = 0x7f;
        assert!(decode(&bad_index).is_err());
    }
}
