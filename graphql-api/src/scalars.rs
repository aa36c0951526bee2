//! Custom scalars.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use orderflow_schemas::Money;

/// An amount of money as a decimal string with at most two decimals, such as `"12.50"`. Never a
/// float: a JSON number is refused on input, because binary floats cannot hold every amount of cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal(pub Money);

/// Money as a decimal string with at most two decimals, such as "12.50". Input must be a string too.
#[Scalar(name = "Decimal")]
impl ScalarType for Decimal {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => Money::parse("Decimal", s).map(Decimal).map_err(|e| InputValueError::custom(e.reason)),
            Value::Number(n) => Err(InputValueError::custom(format!(
                "send amounts as a string such as \"{n}\", not as a number (floats cannot hold cents exactly)"
            ))),
            _ => Err(InputValueError::custom(format!("expected a decimal string such as \"12.50\", found {value}"))),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

impl From<Money> for Decimal {
    fn from(m: Money) -> Self {
        Decimal(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strings_and_refuses_numbers() {
        let ok = <Decimal as ScalarType>::parse(Value::String("12.5".into()));
        assert_eq!(ok.ok().map(|d| d.0.cents()), Some(1250));
        let number = <Decimal as ScalarType>::parse(Value::from(12.5));
        assert!(number.err().is_some_and(|e| { e.into_server_error(Default::default()).message.contains("string") }));
        let bad = <Decimal as ScalarType>::parse(Value::String("1.234".into()));
        assert!(
            bad.err().is_some_and(|e| { e.into_server_error(Default::default()).message.contains("two decimals") })
        );
        assert_eq!(Decimal(Money::from_cents(1205).unwrap_or_default()).to_value(), Value::String("12.05".into()));
    }
}
