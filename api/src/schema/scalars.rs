//! The `Decimal` scalar: money as a decimal string ("129.90"), held as integer minor units.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};

/// An amount with at most two decimals, as integer hundredths. Never a float.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decimal(pub i64);

impl Decimal {
    /// Parse "129.9", "129.90", "-3", "0.05"; refuse exponents, more than two decimals and
    /// amounts beyond 10^15.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (negative, digits) = match raw.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let valid = !whole.is_empty()
            && whole.len() <= 15
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.len() <= 2
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && !(digits.contains('.') && fraction.is_empty());
        if !valid {
            return Err(format!(
                "{raw:?} is not a decimal amount with at most two decimals, like \"129.90\""
            ));
        }
        let whole: i64 = whole
            .parse()
            .map_err(|_| "amount out of range".to_owned())?;
        let cents: i64 = match fraction.len() {
            0 => 0,
            1 => fraction.parse::<i64>().unwrap_or(0) * 10,
            _ => fraction.parse::<i64>().unwrap_or(0),
        };
        let minor = whole * 100 + cents;
        Ok(Self(if negative { -minor } else { minor }))
    }

    pub fn minor(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// A decimal string such as "129.90" (numbers are accepted on input too).
#[Scalar(name = "Decimal")]
impl ScalarType for Decimal {
    fn parse(value: Value) -> InputValueResult<Self> {
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(InputValueError::expected_type(value)),
        };
        Decimal::parse(&text).map_err(InputValueError::custom)
    }

    fn to_value(&self) -> Value {
        Value::String(self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::Decimal;

    #[test]
    fn decimals_parse_to_exact_minor_units() {
        assert_eq!(Decimal::parse("129.90"), Ok(Decimal(12_990)));
        assert_eq!(Decimal::parse("129.9"), Ok(Decimal(12_990)));
        assert_eq!(Decimal::parse("-3"), Ok(Decimal(-300)));
        assert_eq!(Decimal::parse("0.05"), Ok(Decimal(5)));
        for bad in [
            "",
            "1.",
            ".5",
            "1.234",
            "1e3",
            "abc",
            "1,5",
            "9999999999999999",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Decimal(12_990).to_string(), "129.90");
        assert_eq!(Decimal(-5).to_string(), "-0.05");
    }
}
