//! A message object read in one pass straight into the slots of the members it knows.
//!
//! `strict_json::parse_object` builds a `serde_json::Map` (an ordered map hashing every
//! key), which the message parser then empties key by key: each member hashed about three
//! times, and an allocation per map. Here the members a message knows go straight into a
//! slot found by name among a handful of static names, a duplicate is an occupied slot,
//! and only a member the message does not know (an error in any case) is kept by name.
//! Nested free-form objects (`context`, `flow.data`) are still `Map`s, read by the same
//! strict visitor: duplicates refused and depth bounded at every level.
//!
//! Before and after (`bash benches/callgrind.sh relay target/profiling/jelou-relay`,
//! user-space instructions per proxied request, 2026-12-01): parsing and checking the
//! body took 19,900 instructions (`parse_object` 12,200, `FlowMessage::parse` 7,700);
//! the figure after is in `benches/README.md`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::strict_json::{JsonError, StrictSeed, kind};

/// The members an object may have, and which of them are objects with a shape of their own.
#[derive(Debug)]
pub struct Shape {
    pub members: &'static [(&'static str, Option<&'static Shape>)],
}

impl Shape {
    fn slot(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|(known, _)| *known == name)
    }
}

/// A member's value: an object of a known shape read into its slots, or any JSON value.
#[derive(Debug)]
pub enum Member {
    Object(Members),
    Value(Value),
}

/// An object's members by slot, and the names of those its shape does not know, in the
/// order they came.
#[derive(Debug)]
pub struct Members {
    shape: &'static Shape,
    slots: Vec<Option<Member>>,
    unknown: Vec<String>,
}

impl Members {
    fn new(shape: &'static Shape) -> Members {
        Members {
            shape,
            slots: shape.members.iter().map(|_| None).collect(),
            unknown: Vec::new(),
        }
    }

    /// The same members from an already parsed object (an item of a batch).
    pub fn from_map(map: Map<String, Value>, shape: &'static Shape) -> Members {
        let mut members = Members::new(shape);
        for (name, value) in map {
            match shape.slot(&name) {
                Some(at) => {
                    let nested = shape.members[at].1;
                    members.slots[at] = Some(match (nested, value) {
                        (Some(nested), Value::Object(map)) => {
                            Member::Object(Members::from_map(map, nested))
                        }
                        (_, value) => Member::Value(value),
                    });
                }
                None => members.unknown.push(name),
            }
        }
        members
    }

    /// Takes the member `name` out; `name` must be one of the shape's.
    pub fn take(&mut self, name: &str) -> Option<Member> {
        let at = self.shape.slot(name)?;
        self.slots[at].take()
    }

    /// The member `name` when it is a string, left in place.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.slots[self.shape.slot(name)?].as_ref()? {
            Member::Value(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The members the shape does not know, in the order they came.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }
}

/// Parses a request body that must be one JSON object of `shape`, nested at most
/// `max_depth` deep, refusing duplicate keys at any depth (as `parse_object` does).
pub fn parse_members(
    bytes: &[u8],
    max_depth: usize,
    shape: &'static Shape,
) -> Result<Members, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let member = MemberSeed {
        strict: StrictSeed::top(max_depth),
        shape: Some(shape),
    }
    .deserialize(&mut deserializer)
    .and_then(|v| deserializer.end().map(|()| v))
    .map_err(|e| JsonError(format!("body is not valid JSON: {e}")))?;
    match member {
        Member::Object(members) => Ok(members),
        Member::Value(other) => Err(JsonError(format!(
            "body must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

/// Reads one value; an object is read into slots when a shape is given.
#[derive(Clone, Copy)]
struct MemberSeed {
    strict: StrictSeed,
    shape: Option<&'static Shape>,
}

impl<'de> DeserializeSeed<'de> for MemberSeed {
    type Value = Member;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Member, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MemberSeed {
    type Value = Member;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Member, E> {
        self.strict.visit_bool(v).map(|v| Member::Value(v.0))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Member, E> {
        self.strict.visit_i64(v).map(|v| Member::Value(v.0))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Member, E> {
        self.strict.visit_u64(v).map(|v| Member::Value(v.0))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Member, E> {
        self.strict.visit_f64(v).map(|v| Member::Value(v.0))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Member, E> {
        self.strict.visit_str(v).map(|v| Member::Value(v.0))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Member, E> {
        self.strict.visit_string(v).map(|v| Member::Value(v.0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Member, E> {
        self.strict.visit_unit().map(|v| Member::Value(v.0))
    }
    fn visit_none<E: de::Error>(self) -> Result<Member, E> {
        self.strict.visit_none().map(|v| Member::Value(v.0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Member, A::Error> {
        self.strict.visit_seq(seq).map(|v| Member::Value(v.0))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Member, A::Error> {
        let Some(shape) = self.shape else {
            return self.strict.visit_map(access).map(|v| Member::Value(v.0));
        };
        let inner = self.strict.nested()?;
        let mut members = Members::new(shape);
        // Unknown names are checked for duplicates too; a set only once there are many.
        let mut seen: Option<HashSet<String>> = None;
        while let Some(name) = access.next_key_seed(Key)? {
            match shape.slot(&name) {
                Some(at) => {
                    if members.slots[at].is_some() {
                        return Err(de::Error::custom(format_args!("duplicate key {name:?}")));
                    }
                    let seed = MemberSeed {
                        strict: inner,
                        shape: shape.members[at].1,
                    };
                    members.slots[at] = Some(access.next_value_seed(seed)?);
                }
                None => {
                    let name = name.into_owned();
                    let duplicate = match &mut seen {
                        Some(seen) => !seen.insert(name.clone()),
                        None => members.unknown.contains(&name),
                    };
                    if duplicate {
                        return Err(de::Error::custom(format_args!("duplicate key {name:?}")));
                    }
                    if seen.is_none() && members.unknown.len() >= 16 {
                        let mut set: HashSet<String> = members.unknown.iter().cloned().collect();
                        set.insert(name.clone());
                        seen = Some(set);
                    }
                    // Its value is read (and checked) like any other, then dropped.
                    access.next_value_seed(inner)?;
                    members.unknown.push(name);
                }
            }
        }
        Ok(Member::Object(members))
    }
}

/// An object's key, borrowed from the body unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::strict_json::parse_object;

    static INNER: Shape = Shape {
        members: &[("x", None)],
    };
    static OUTER: Shape = Shape {
        members: &[("a", None), ("b", Some(&INNER))],
    };

    #[test]
    fn known_members_fill_slots_and_unknown_ones_keep_their_order() {
        let mut members = parse_members(
            br#"{"z": 1, "b": {"x": "1", "y": 2}, "a": [1], "c": null}"#,
            8,
            &OUTER,
        )
        .unwrap();
        assert_eq!(members.unknown(), ["z", "c"]);
        let Some(Member::Object(mut inner)) = members.take("b") else {
            panic!("b is an object of its shape")
        };
        assert_eq!(inner.str("x"), Some("1"));
        assert_eq!(inner.unknown(), ["y"]);
        assert!(matches!(
            inner.take("x"),
            Some(Member::Value(Value::String(_)))
        ));
        assert!(matches!(
            members.take("a"),
            Some(Member::Value(Value::Array(_)))
        ));
        assert!(members.take("a").is_none());
    }

    #[test]
    fn a_member_of_a_known_shape_may_be_any_value() {
        let mut members = parse_members(br#"{"b": "text"}"#, 8, &OUTER).unwrap();
        assert!(matches!(
            members.take("b"),
            Some(Member::Value(Value::String(_)))
        ));
    }

    #[test]
    fn duplicates_are_refused_known_unknown_and_nested() {
        for body in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"b": {"x": 1, "x": 2}}"#,
            br#"{"q": 1, "q": 2}"#,
            br#"{"a": {"k": 1, "k": 2}}"#,
        ] {
            let error = parse_members(body, 8, &OUTER).unwrap_err();
            assert!(error.0.contains("duplicate key"), "{error}");
        }
        let many: Vec<String> = (0..40).map(|n| format!("\"u{n}\": {n}")).collect();
        let body = format!("{{{}, \"u3\": 0}}", many.join(","));
        assert!(
            parse_members(body.as_bytes(), 8, &OUTER)
                .unwrap_err()
                .0
                .contains("duplicate key \"u3\"")
        );
    }

    #[test]
    fn errors_read_as_the_plain_parser_s() {
        for body in [
            &b"[]"[..],
            b"\"x\"",
            b"null",
            b"{} {}",
            b"{\"a\": \"\xff\"}",
            b"",
        ] {
            let members = parse_members(body, 8, &OUTER).unwrap_err();
            assert_eq!(members, parse_object(body, 8).unwrap_err(), "{body:?}");
        }
        let nested =
            |levels: usize| format!("{}{}", "{\"a\":".repeat(levels) + "1", "}".repeat(levels));
        for levels in [4, 5] {
            assert_eq!(
                parse_members(nested(levels).as_bytes(), 4, &OUTER).map(|_| ()),
                parse_object(nested(levels).as_bytes(), 4).map(|_| ()),
                "{levels} levels"
            );
        }
    }

    #[test]
    fn from_map_gives_the_same_members() {
        let body = br#"{"z": 1, "b": {"x": "1", "y": 2}, "a": [1]}"#;
        let mut read = parse_members(body, 8, &OUTER).unwrap();
        let mut converted = Members::from_map(parse_object(body, 8).unwrap(), &OUTER);
        assert_eq!(read.unknown(), converted.unknown());
        assert_eq!(
            format!("{:?}", read.take("b")),
            format!("{:?}", converted.take("b"))
        );
    }
}
