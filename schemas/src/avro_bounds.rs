//! A pass over an Avro datum, before apache-avro decodes it, that refuses any length or count the
//! record's own bytes cannot back.
//!
//! apache-avro sizes its buffers from what the record claims: a string or bytes field allocates its
//! claimed length, an array or map reserves room for its claimed item count (as `Value`s, tens of bytes
//! each). Its only guard is a process-wide cap on the claimed number (512 MiB by default, counted in
//! items for arrays), so a 30-byte record claiming 2^28 array items asks for gigabytes before it reads
//! one. This pass walks the datum against the writer schema without allocating and checks that every
//! string or bytes length fits in the bytes that follow it, and that every block of array items or map
//! entries fits in them at the smallest encoded size of an item. After it passes, what apache-avro
//! allocates is bounded by a small multiple of the record's size.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, Namespace, RecordSchema, ResolvedSchema};

/// Nesting deeper than this is refused (no orderflow schema comes close; a recursive schema could).
const MAX_DEPTH: usize = 64;

/// Items that take no bytes (`null`) a block may claim even in a record shorter than this.
const ZERO_SIZE_ITEMS_FLOOR: usize = 1024;

/// Why a datum was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// A length or count larger than the record can hold: decoding it would allocate for data that is
    /// not there.
    #[error("{what} at byte {at} claims {claimed}, more than the {remaining} bytes left in the record allow")]
    ClaimBeyondRecord { what: &'static str, at: usize, claimed: i128, remaining: usize },
    /// The datum is not valid for its schema (cut short, a bad union or enum index, a runaway varint).
    #[error("malformed datum at byte {at}: {reason}")]
    Malformed { at: usize, reason: &'static str },
}

/// Checks `datum` against `schema` (see the module docs). Never allocates in proportion to the datum.
pub fn check(schema: &Schema, datum: &[u8]) -> Result<(), BoundsError> {
    let resolved = ResolvedSchema::try_from(schema)
        .map_err(|_| BoundsError::Malformed { at: 0, reason: "the writer schema has unresolvable names" })?;
    let mut walker = Walker { bytes: datum, at: 0, names: resolved.get_names() };
    walker.walk(schema, &None, 0)
}

struct Walker<'a, 's> {
    bytes: &'a [u8],
    at: usize,
    names: &'a HashMap<Name, &'s Schema>,
}

impl<'s> Walker<'_, 's> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn malformed(&self, reason: &'static str) -> BoundsError {
        BoundsError::Malformed { at: self.at, reason }
    }

    /// A zig-zag varint, as Avro writes `int` and `long`: at most 10 bytes.
    fn long(&mut self) -> Result<i64, BoundsError> {
        let mut z = 0u64;
        for i in 0..10 {
            let Some(&b) = self.bytes.get(self.at) else { return Err(self.malformed("cut short in a number")) };
            self.at += 1;
            z |= u64::from(b & 0x7f) << (i * 7);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(self.malformed("a number longer than 10 bytes"))
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), BoundsError> {
        if n > self.remaining() {
            return Err(BoundsError::ClaimBeyondRecord {
                what,
                at: self.at,
                claimed: n as i128,
                remaining: self.remaining(),
            });
        }
        self.at += n;
        Ok(())
    }

    /// A length prefix followed by that many bytes.
    fn sized(&mut self, what: &'static str) -> Result<(), BoundsError> {
        let at = self.at;
        let len = self.long()?;
        let remaining = self.remaining();
        match usize::try_from(len) {
            Ok(n) if n <= remaining => self.skip(n, what),
            _ => Err(BoundsError::ClaimBeyondRecord { what, at, claimed: i128::from(len), remaining }),
        }
    }

    /// The blocks of an array or map: each a count (negative: followed by the block's byte size), that
    /// many items, until a zero count.
    fn blocks(
        &mut self,
        what: &'static str,
        item_min_bytes: usize,
        mut item: impl FnMut(&mut Self) -> Result<(), BoundsError>,
    ) -> Result<(), BoundsError> {
        loop {
            let at = self.at;
            let raw = self.long()?;
            if raw == 0 {
                return Ok(());
            }
            if raw < 0 {
                let size = self.long()?;
                if usize::try_from(size).map_or(true, |s| s > self.remaining()) {
                    return Err(BoundsError::ClaimBeyondRecord {
                        what: "a block size",
                        at,
                        claimed: i128::from(size),
                        remaining: self.remaining(),
                    });
                }
            }
            let count = i128::from(raw).abs();
            // An item of a type that takes no bytes (null) still costs a `Value` to decode: such counts
            // are held to the record's whole length, or a small floor.
            let room = match item_min_bytes {
                0 => self.bytes.len().max(ZERO_SIZE_ITEMS_FLOOR),
                n => self.remaining() / n,
            } as i128;
            if count > room {
                return Err(BoundsError::ClaimBeyondRecord { what, at, claimed: count, remaining: self.remaining() });
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    fn resolve(&self, name: &Name, ns: &Namespace) -> Result<&'s Schema, BoundsError> {
        let full = name.fully_qualified_name(ns);
        self.names.get(&full).copied().ok_or_else(|| self.malformed("a reference to an unknown named type"))
    }

    /// The fewest bytes one value of `schema` can take.
    fn min_bytes(&self, schema: &Schema, ns: &Namespace, depth: usize) -> usize {
        if depth > MAX_DEPTH {
            return 0;
        }
        match schema {
            Schema::Null => 0,
            Schema::Float => 4,
            Schema::Double => 8,
            Schema::Duration => 12,
            Schema::Fixed(f) => f.size,
            Schema::Decimal(d) => self.min_bytes(&d.inner, ns, depth + 1),
            Schema::Union(u) => 1 + u.variants().iter().map(|v| self.min_bytes(v, ns, depth + 1)).min().unwrap_or(0),
            Schema::Record(RecordSchema { name, fields, .. }) => {
                let ns = name.fully_qualified_name(ns).namespace;
                fields.iter().map(|f| self.min_bytes(&f.schema, &ns, depth + 1)).fold(0, usize::saturating_add)
            }
            Schema::Ref { name } => self.resolve(name, ns).map_or(0, |s| self.min_bytes(s, ns, depth + 1)),
            // A varint, a length prefix, a union index or an empty array's/map's closing zero: one byte.
            _ => 1,
        }
    }

    fn walk(&mut self, schema: &Schema, ns: &Namespace, depth: usize) -> Result<(), BoundsError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed("nested too deep"));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.skip(1, "a boolean"),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.skip(4, "a float"),
            Schema::Double => self.skip(8, "a double"),
            Schema::Duration => self.skip(12, "a duration"),
            Schema::Fixed(f) => self.skip(f.size, "a fixed"),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid => self.sized("a bytes length"),
            Schema::String => self.sized("a string length"),
            Schema::Decimal(d) => self.walk(&d.inner, ns, depth + 1),
            Schema::Enum(e) => {
                let index = self.long()?;
                if usize::try_from(index).map_or(true, |i| i >= e.symbols.len()) {
                    return Err(self.malformed("an enum index out of range"));
                }
                Ok(())
            }
            Schema::Union(u) => {
                let index = self.long()?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| self.malformed("a union index out of range"))?;
                self.walk(variant, ns, depth + 1)
            }
            Schema::Array(a) => {
                let min = self.min_bytes(&a.items, ns, depth + 1);
                self.blocks("an array item count", min, |w| w.walk(&a.items, ns, depth + 1))
            }
            Schema::Map(m) => {
                // A key (length prefix) plus the value.
                let min = 1 + self.min_bytes(&m.types, ns, depth + 1);
                self.blocks("a map entry count", min, |w| {
                    w.sized("a map key length")?;
                    w.walk(&m.types, ns, depth + 1)
                })
            }
            Schema::Record(RecordSchema { name, fields, .. }) => {
                let ns = name.fully_qualified_name(ns).namespace;
                fields.iter().try_for_each(|f| self.walk(&f.schema, &ns, depth + 1))
            }
            Schema::Ref { name } => {
                let schema = self.resolve(name, ns)?;
                self.walk(schema, ns, depth + 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zigzag(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return out;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    #[test]
    fn claims_the_record_cannot_hold_are_refused() {
        let strings = schema(r#"{"type": "array", "items": "string"}"#);
        // 2^60 items, 2^28 items (apache-avro's own cap lets this one through to reserve ~10 GiB), and
        // 3 items in 2 bytes.
        for (count, tail) in [(1i64 << 60, vec![]), (1 << 28, vec![0]), (3, vec![0, 0])] {
            let mut datum = zigzag(count);
            datum.extend(tail);
            let e = check(&strings, &datum).unwrap_err();
            assert!(
                matches!(e, BoundsError::ClaimBeyondRecord { what: "an array item count", claimed, .. } if claimed == i128::from(count)),
                "{e}"
            );
        }
        let e = check(&Schema::String, &zigzag(1 << 60)).unwrap_err();
        assert!(matches!(e, BoundsError::ClaimBeyondRecord { what: "a string length", .. }), "{e}");
        let mut negative_block = zigzag(-2);
        negative_block.extend(zigzag(1 << 40));
        let e = check(&strings, &negative_block).unwrap_err();
        assert!(matches!(e, BoundsError::ClaimBeyondRecord { what: "a block size", .. }), "{e}");
        let mut i64_min = zigzag(i64::MIN);
        i64_min.extend(zigzag(0));
        assert!(check(&strings, &i64_min).is_err());
    }

    #[test]
    fn valid_data_passes_and_nulls_are_held_to_the_record_length() {
        let strings = schema(r#"{"type": "array", "items": "string"}"#);
        let mut datum = zigzag(2);
        datum.extend([zigzag(1), b"a".to_vec(), zigzag(0), zigzag(0)].concat());
        assert_eq!(check(&strings, &datum), Ok(()));
        let nulls = schema(r#"{"type": "array", "items": "null"}"#);
        assert_eq!(check(&nulls, &[zigzag(3), zigzag(0)].concat()), Ok(()));
        assert!(check(&nulls, &[zigzag(1 << 20), zigzag(0)].concat()).is_err());
    }

    #[test]
    fn cut_short_and_bad_indexes_are_malformed() {
        let u = schema(r#"["null", "long"]"#);
        assert!(matches!(check(&u, &zigzag(2)), Err(BoundsError::Malformed { .. })));
        assert!(matches!(check(&u, &zigzag(1)), Err(BoundsError::Malformed { .. })));
        assert!(matches!(check(&Schema::Long, &[0xff; 11]), Err(BoundsError::Malformed { .. })));
        assert_eq!(check(&u, &[zigzag(1), zigzag(-5)].concat()), Ok(()));
    }
}
