//! JSON parsing that refuses duplicate object keys (serde_json keeps the last one
//! silently, so `{"to": "A", "to": "B"}` would send to B without a word).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a request body that must be one JSON object nested at most `max_depth` deep
/// (serde_json's own recursion limit of 128 backs this up), so deep input is an error,
/// never a stack overflow.
pub fn parse_object(bytes: &[u8], max_depth: usize) -> Result<Map<String, Value>, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed::top(max_depth)
        .deserialize(&mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v.0))
        .map_err(|e| JsonError(format!("body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(JsonError(format!(
            "body must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

/// A JSON type name for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) struct StrictValue(pub(crate) Value);

/// Deserializes one value at `depth`, refusing containers deeper than `max_depth`.
#[derive(Clone, Copy)]
pub(crate) struct StrictSeed {
    depth: usize,
    max_depth: usize,
}

impl StrictSeed {
    /// The seed for a whole body.
    pub(crate) fn top(max_depth: usize) -> StrictSeed {
        StrictSeed {
            depth: 0,
            max_depth,
        }
    }

    pub(crate) fn nested<E: de::Error>(self) -> Result<StrictSeed, E> {
        if self.depth >= self.max_depth {
            return Err(E::custom(format_args!(
                "nesting deeper than {} levels",
                self.max_depth
            )));
        }
        Ok(StrictSeed {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = StrictValue;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<StrictValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed {
    type Value = StrictValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(StrictValue(item)) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictValue, A::Error> {
        let inner = self.nested()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            // One lookup per key: the entry is vacant or the key is a duplicate.
            match map.entry(key) {
                serde_json::map::Entry::Occupied(entry) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate key {:?}",
                        entry.key()
                    )));
                }
                serde_json::map::Entry::Vacant(entry) => {
                    entry.insert(access.next_value_seed(inner)?.0);
                }
            }
        }
        Ok(StrictValue(Value::Object(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_and_keeps_numbers() {
        let map = parse_object(br#"{"a": 1, "b": [1.5, "x", null, {"c": true}]}"#, 32).unwrap();
        assert_eq!(
            Value::Object(map),
            serde_json::json!({"a": 1, "b": [1.5, "x", null, {"c": true}]})
        );
    }

    #[test]
    fn refuses_duplicates_at_any_depth() {
        assert!(
            parse_object(br#"{"to": "1", "to": "2"}"#, 32)
                .unwrap_err()
                .0
                .contains("duplicate key \"to\"")
        );
        assert!(parse_object(br#"{"flow": {"cta": "a", "cta": "b"}}"#, 32).is_err());
    }

    #[test]
    fn refuses_non_objects_trailing_data_and_bad_utf8() {
        for body in [
            &b"[]"[..],
            b"\"x\"",
            b"null",
            b"{} {}",
            b"{\"a\": \"\xff\"}",
            b"",
        ] {
            assert!(parse_object(body, 32).is_err(), "{body:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_object(deep.as_bytes(), 32).is_err());
    }

    #[test]
    fn depth_is_bounded_exactly() {
        let nested =
            |levels: usize| format!("{}{}", "{\"a\":".repeat(levels) + "1", "}".repeat(levels));
        assert!(parse_object(nested(4).as_bytes(), 4).is_ok());
        let error = parse_object(nested(5).as_bytes(), 4).unwrap_err();
        assert!(error.0.contains("nesting deeper than 4 levels"), "{error}");
    }
}
