//! Money: integer minor units with a currency. Never a float.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An ISO 4217 code: three ASCII capital letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");
    pub const EUR: Currency = Currency(*b"EUR");

    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let bytes: [u8; 3] = code
            .as_bytes()
            .try_into()
            .map_err(|_| MoneyError::Currency(code.to_owned()))?;
        if bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Self(bytes))
        } else {
            Err(MoneyError::Currency(code.to_owned()))
        }
    }

    /// A currency new prices may be set in: an ISO 4217 code in use, with its minor units
    /// (JPY 0, EUR 2, BHD 3). Codes without minor units (gold, special drawing rights, the
    /// testing codes) are refused. `parse` stays lenient, so that every stored event keeps
    /// decoding; this is the check for input.
    pub fn accept(code: &str) -> Result<Self, MoneyError> {
        let currency = Self::parse(code)?;
        match iso_currency::Currency::from_code(code).map(iso_currency::Currency::exponent) {
            Some(Some(0..=3)) => Ok(currency),
            Some(_) => Err(MoneyError::UnsupportedCurrency(code.to_owned())),
            None => Err(MoneyError::Currency(code.to_owned())),
        }
    }

    /// Digits after the decimal point (ISO 4217's minor unit): amounts are integers of
    /// `10^-exponent` of the currency. 2 for a code ISO 4217 does not list (stored before
    /// codes were checked: amounts were always written in hundredths then).
    pub fn exponent(&self) -> u32 {
        iso_currency::Currency::from_code(self.as_str())
            .and_then(iso_currency::Currency::exponent)
            .map_or(2, u32::from)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII capitals can be stored, so this is always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not an ISO 4217 currency code (e.g. EUR, USD, GBP)")]
    Currency(String),
    #[error("{0} has no minor unit (it is not money a rental is paid in)")]
    UnsupportedCurrency(String),
    #[error("amount must not be negative")]
    Negative,
    #[error("cannot combine {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

/// An amount in minor units (cents) of a currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// A price: zero or more.
    pub fn non_negative(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self { minor, currency })
    }

    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }

    pub fn checked_mul(self, factor: i64) -> Result<Money, MoneyError> {
        let minor = self.minor.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, ..self })
    }
}

impl Money {
    /// The amount as a decimal number with the currency's minor units: "129.90" (EUR),
    /// "5000" (JPY), "1.250" (BHD).
    pub fn decimal(&self) -> String {
        decimal(self.minor, self.currency.exponent())
    }
}

/// `minor` units of `10^-exponent` as a decimal number, every minor digit written.
pub fn decimal(minor: i64, exponent: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    match 10u64.checked_pow(exponent) {
        Some(scale) if exponent > 0 => {
            let width = exponent as usize;
            format!("{sign}{}.{:0width$}", abs / scale, abs % scale)
        }
        _ => format!("{sign}{abs}"),
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.decimal(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_prices_take_iso_currencies_with_their_minor_units() {
        for (ok, exponent) in [("EUR", 2), ("USD", 2), ("GBP", 2), ("JPY", 0), ("BHD", 3)] {
            let currency = Currency::accept(ok).unwrap();
            assert_eq!((currency.as_str(), currency.exponent()), (ok, exponent));
        }
        assert_eq!(
            Currency::accept("XYZ"),
            Err(MoneyError::Currency("XYZ".into()))
        );
        for other in ["XAU", "XXX"] {
            assert_eq!(
                Currency::accept(other),
                Err(MoneyError::UnsupportedCurrency(other.into()))
            );
        }
        // Stored events keep decoding whatever they hold, in hundredths.
        assert_eq!(Currency::parse("XYZ").map(|c| c.exponent()), Ok(2));
    }

    #[test]
    fn amounts_are_shown_with_the_currency_minor_units() {
        let jpy = Currency::parse("JPY").unwrap();
        let bhd = Currency::parse("BHD").unwrap();
        assert_eq!(Money::new(5_000, jpy).to_string(), "5000 JPY");
        assert_eq!(Money::new(1_250, bhd).to_string(), "1.250 BHD");
        assert_eq!(Money::new(-5, bhd).to_string(), "-0.005 BHD");
        assert_eq!(Money::new(12_990, Currency::EUR).to_string(), "129.90 EUR");
        assert_eq!(Money::new(i64::MIN, jpy).decimal(), "-9223372036854775808");
    }

    use super::*;

    #[test]
    fn currency_codes_are_three_capitals() {
        assert_eq!(Currency::parse("EUR"), Ok(Currency::EUR));
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arithmetic_is_exact_and_checked() {
        let rate = Money::new(4_599, Currency::USD);
        assert_eq!(rate.checked_mul(3), Ok(Money::new(13_797, Currency::USD)));
        assert_eq!(
            rate.checked_add(Money::new(1, Currency::EUR)),
            Err(MoneyError::CurrencyMismatch(Currency::USD, Currency::EUR))
        );
        assert_eq!(
            Money::new(i64::MAX, Currency::USD).checked_mul(2),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::non_negative(-1, Currency::USD),
            Err(MoneyError::Negative)
        );
        assert_eq!(Money::new(-1_050, Currency::EUR).to_string(), "-10.50 EUR");
    }
}
