//! Taking a message object's members out one by one, each problem reported under the
//! member's path (`flow.cta`), whatever is left over reported as unknown.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::members::{Member, Members};
use super::strict_json::kind;

/// One problem with one field of the request, by its JSON path (`flow.cta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `flow.cta`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub(super) fn type_error(field: &str, expected: &str, got: &Value) -> FieldError {
    FieldError::new(field, format!("must be {expected}, not {}", kind(got)))
}

/// Takes the members of one JSON object out one by one, reporting each problem under the
/// member's path.
pub(super) struct Fields {
    members: Members,
    prefix: &'static str,
}

impl Fields {
    pub(super) fn new(members: Members, prefix: &'static str) -> Self {
        Fields { members, prefix }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(super) fn take(&mut self, key: &str) -> Option<Member> {
        self.members.take(key)
    }

    /// A member that is any JSON value (a member of a known shape read as a value again).
    fn take_value(&mut self, key: &str) -> Option<Value> {
        match self.take(key)? {
            Member::Value(value) => Some(value),
            Member::Object(_) => None,
        }
    }

    /// Records `result`'s error under `key`; returns its value otherwise.
    pub(super) fn check<T>(
        &self,
        key: &str,
        result: Result<T, String>,
        errors: &mut Vec<FieldError>,
    ) -> Option<T> {
        result
            .map_err(|message| errors.push(FieldError::new(self.path(key), message)))
            .ok()
    }

    pub(super) fn required_string(
        &mut self,
        key: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<String> {
        match self.take_value(key) {
            None | Some(Value::Null) => {
                errors.push(FieldError::new(self.path(key), "is required"));
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                errors.push(type_error(&self.path(key), "a string", &other));
                None
            }
        }
    }

    /// Absent and `null` both mean "not given".
    pub(super) fn optional_string(
        &mut self,
        key: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<String> {
        match self.take_value(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                errors.push(type_error(&self.path(key), "a string", &other));
                None
            }
        }
    }

    pub(super) fn optional_object(
        &mut self,
        key: &str,
        errors: &mut Vec<FieldError>,
    ) -> Option<Map<String, Value>> {
        match self.take_value(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map),
            Some(other) => {
                errors.push(type_error(&self.path(key), "an object", &other));
                None
            }
        }
    }

    pub(super) fn reject_unknown(self, errors: &mut Vec<FieldError>) {
        for key in self.members.unknown() {
            errors.push(FieldError::new(
                self.path(key),
                "is not a known field; check its spelling",
            ));
        }
    }
}
