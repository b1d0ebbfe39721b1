//! JSON values as the log stores them, so that what is read back equals what was appended.
//!
//! Payloads and metadata are stored as `jsonb`, which keeps a number as an exact decimal and
//! prints it back in its own form; serde_json (with `float_roundtrip`) parses that form to the
//! very same `f64`. Two shapes still change on the way: an `f64` of 1e16 or more is printed by
//! serde_json as `1e16` and comes back from PostgreSQL as the integer `10000000000000000`, and
//! `-0.0` comes back as `0.0` (a decimal has no negative zero). [`normalize`] gives such
//! numbers, before they are hashed and stored, the form they will be read back in, so the
//! recorded event, the stored row, a re-read, an export and the relay's message all agree bit
//! for bit, and the hash chain recomputes on re-read. Strings with a NUL character, which
//! `jsonb` cannot hold, are refused by [`find_unstorable`] rather than failing in the database.

use serde_json::{Number, Value};

/// 2^64: the first integral `f64` that no longer fits a `u64`.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
/// -2^63 (`i64::MIN`).
const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;
/// serde_json writes integral floats from here on in exponent form.
const EXPONENT_FORM: f64 = 1e16;

/// Rewrite numbers into the form PostgreSQL will give back (see the module docs).
pub fn normalize(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(exact) = n.as_f64().filter(|_| n.is_f64()).and_then(stored_form) {
                *n = exact;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(map) => map.values_mut().for_each(normalize),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// The number an `f64` becomes after a trip through `jsonb`, when that differs from itself.
fn stored_form(x: f64) -> Option<Number> {
    if x == 0.0 && x.is_sign_negative() {
        return Number::from_f64(0.0);
    }
    // Every f64 this large is integral, so the casts are exact.
    if (EXPONENT_FORM..TWO_POW_64).contains(&x) {
        return Some(Number::from(x as u64));
    }
    if (MINUS_TWO_POW_63..=-EXPONENT_FORM).contains(&x) {
        return Some(Number::from(x as i64));
    }
    None
}

/// The JSON path of the first string (or object key) that `jsonb` cannot store, if any.
pub fn find_unstorable(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(key, item)| {
                let len = path.len();
                path.push('.');
                path.push_str(&key.replace('\0', "\\u0000"));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    let mut path = String::from("$");
    walk(value, &mut path).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn large_floats_and_negative_zero_take_their_stored_form() {
        let mut v = json!([1e16, -1e16, 1.5e18, 2e19, -1e19, -0.0, 0.1, 1e308, 123.0]);
        normalize(&mut v);
        assert_eq!(
            v.to_string(),
            "[10000000000000000,-10000000000000000,1500000000000000000,2e+19,-1e+19,0.0,0.1,1e+308,123.0]"
        );
        assert!(v[0].is_u64() && v[1].is_i64() && v[3].is_f64() && v[5].is_f64());
        assert!(v[5].as_f64().unwrap().is_sign_positive());
    }

    #[test]
    fn integers_are_left_alone() {
        let mut v = json!({"a": u64::MAX, "b": i64::MIN, "c": 10_000_000_000_000_000u64});
        let before = v.clone();
        normalize(&mut v);
        assert_eq!(v, before);
    }

    #[test]
    fn a_nul_character_is_found_with_its_path() {
        assert_eq!(
            find_unstorable(&json!({"a": [1, "x\u{0}y"]})),
            Some("$.a[1]".into())
        );
        assert_eq!(
            find_unstorable(&json!({"k\u{0}": 1})),
            Some("$.k\\u0000".into())
        );
        assert_eq!(find_unstorable(&json!({"a": ["fine", {"b": "ok"}]})), None);
    }
}
