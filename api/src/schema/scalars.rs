//! The `Decimal` scalar: money as a decimal string ("129.90", "5000" yen, "1.250" dinars), held
//! exactly as integer units of a power of ten. Never a float.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use domain::Currency;

/// The most decimals an amount may have (ISO 4217 minor units go up to 3).
const MAX_SCALE: u32 = 3;

/// An exact decimal amount: `units × 10^-scale`, as written or as a currency's minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decimal {
    units: i64,
    scale: u32,
}

impl Decimal {
    /// Parse "129.9", "129.90", "-3", "0.005"; refuse exponents, more than three decimals and
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
            && fraction.len() <= MAX_SCALE as usize
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && !(digits.contains('.') && fraction.is_empty());
        if !valid {
            return Err(format!(
                "{raw:?} is not a decimal amount with at most three decimals, like \"129.90\""
            ));
        }
        let units: i64 = format!("{whole}{fraction}")
            .parse()
            .map_err(|_| "amount out of range".to_owned())?;
        Ok(Self {
            units: if negative { -units } else { units },
            scale: fraction.len() as u32,
        })
    }

    /// `minor` units of a currency with `exponent` decimals.
    pub fn of_minor(minor: i64, exponent: u32) -> Self {
        Self {
            units: minor,
            scale: exponent,
        }
    }

    /// The amount in `currency`'s minor units; more decimals than it has (a fraction of a yen)
    /// is an error saying so.
    pub fn to_minor(self, currency: Currency) -> Result<i64, String> {
        let exponent = currency.exponent();
        let Some(shift) = exponent.checked_sub(self.scale) else {
            return Err(match exponent {
                0 => format!("{currency} has no minor unit: give a whole amount"),
                n => format!("{currency} has {n} decimal(s) at most"),
            });
        };
        10i64
            .checked_pow(shift)
            .and_then(|factor| self.units.checked_mul(factor))
            .ok_or_else(|| "amount out of range".to_owned())
    }

    pub fn is_zero(self) -> bool {
        self.units == 0
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&domain::money::decimal(self.units, self.scale))
    }
}

/// An amount as a decimal string, with its currency's minor units: "129.90" euros, "5000"
/// yen, "1.250" dinars (numbers are accepted on input too; more decimals than the currency
/// has are refused).
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
    use domain::Currency;

    use super::Decimal;

    #[test]
    fn decimals_convert_exactly_to_each_currency_minor_units() {
        let (eur, jpy, bhd) = (
            Currency::EUR,
            Currency::parse("JPY").unwrap(),
            Currency::parse("BHD").unwrap(),
        );
        let minor = |raw: &str, c: Currency| Decimal::parse(raw).and_then(|d| d.to_minor(c));
        assert_eq!(minor("129.90", eur), Ok(12_990));
        assert_eq!(minor("129.9", eur), Ok(12_990));
        assert_eq!(minor("-3", eur), Ok(-300));
        assert_eq!(minor("0.05", eur), Ok(5));
        assert_eq!(minor("5000", jpy), Ok(5_000));
        assert_eq!(minor("1.25", bhd), Ok(1_250));
        assert_eq!(minor("0.005", bhd), Ok(5));
        assert_eq!(
            minor("5000.5", jpy),
            Err("JPY has no minor unit: give a whole amount".into())
        );
        assert_eq!(
            minor("0.005", eur),
            Err("EUR has 2 decimal(s) at most".into())
        );
        assert_eq!(
            minor("999999999999999.999", bhd),
            Ok(999_999_999_999_999_999)
        );
        for bad in [
            "",
            "1.",
            ".5",
            "1.2345",
            "1e3",
            "abc",
            "1,5",
            "9999999999999999",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Decimal::of_minor(12_990, 2).to_string(), "129.90");
        assert_eq!(Decimal::of_minor(-5, 2).to_string(), "-0.05");
        assert_eq!(Decimal::of_minor(5_000, 0).to_string(), "5000");
        assert_eq!(Decimal::of_minor(1_250, 3).to_string(), "1.250");
    }
}
