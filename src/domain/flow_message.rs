//! A WhatsApp Flow message as callers send it, parsed once with every field error collected.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub use super::fields::FieldError;
use super::fields::{Fields, type_error};
use super::members::{Member, Members, Shape, parse_members};
use super::phone::Recipient;
use super::strict_json::JsonError;
use super::text::{Caption, Cta, Text, Title};

/// The longest Flow name, first screen, flow token and flow type accepted, in characters;
/// the OpenAPI document states the same numbers.
pub const NAME_MAX: usize = 128;
pub const SCREEN_MAX: usize = 128;
pub const TOKEN_MAX: usize = 1024;
pub const TYPE_MAX: usize = 64;

/// The members of a message, in the order [`FlowMessage::parse`] reads them.
pub static MESSAGE: Shape = Shape {
    members: &[
        ("bot", None),
        ("to", None),
        ("title", None),
        ("text", None),
        ("caption", None),
        ("flow", Some(&FLOW)),
        ("type", None),
        ("context", None),
    ],
};

static FLOW: Shape = Shape {
    members: &[
        ("name", None),
        ("cta", None),
        ("screen", None),
        ("data", None),
        ("token", None),
        ("mode", None),
        ("action", None),
    ],
};

/// A request body read as a message's members, not yet checked.
#[derive(Debug)]
pub struct MessageObject(Members);

impl MessageObject {
    /// Reads a body that must be one JSON object at most `max_depth` deep, without
    /// duplicate keys.
    pub fn read(bytes: &[u8], max_depth: usize) -> Result<MessageObject, JsonError> {
        parse_members(bytes, max_depth, &MESSAGE).map(MessageObject)
    }

    /// The `bot` member when it is a string, whatever else is wrong with the message.
    pub fn bot(&self) -> Option<&str> {
        self.0.str("bot")
    }
}

impl From<Map<String, Value>> for MessageObject {
    fn from(map: Map<String, Value>) -> MessageObject {
        MessageObject(Members::from_map(map, &MESSAGE))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowMode {
    Draft,
    Published,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowAction {
    Navigate,
    DataExchange,
}

/// The Flow the button opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub name: String,
    pub cta: Cta,
    pub screen: Option<String>,
    pub data: Option<Map<String, Value>>,
    pub token: Option<String>,
    pub mode: Option<FlowMode>,
    pub action: Option<FlowAction>,
}

/// A validated message. Only [`FlowMessage::parse`] builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMessage {
    /// The caller's bot alias, syntax-checked; resolved against the configuration later.
    pub bot: Option<String>,
    pub to: Recipient,
    pub title: Title,
    pub text: Text,
    pub caption: Caption,
    pub flow: Flow,
    /// Passed on as `?type=`; Jelou does not publish its values, so none is invented.
    pub flow_type: Option<String>,
    pub context: Option<Map<String, Value>>,
}

impl FlowMessage {
    /// Parses a request object, reporting every field error at once, unknown fields included.
    pub fn parse(body: impl Into<MessageObject>) -> Result<FlowMessage, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fields = Fields::new(body.into().0, "");

        let bot = fields
            .optional_string("bot", &mut errors)
            .and_then(|v| fields.check("bot", alias(v), &mut errors));
        let to = fields
            .required_string("to", &mut errors)
            .and_then(|v| fields.check("to", Recipient::parse(&v), &mut errors));
        let title = fields
            .required_string("title", &mut errors)
            .and_then(|v| fields.check("title", Title::parse(v), &mut errors));
        let text = fields
            .required_string("text", &mut errors)
            .and_then(|v| fields.check("text", Text::parse(v), &mut errors));
        let caption = fields
            .required_string("caption", &mut errors)
            .and_then(|v| fields.check("caption", Caption::parse(v), &mut errors));
        let flow = match fields.take("flow") {
            None | Some(Member::Value(Value::Null)) => {
                errors.push(FieldError::new("flow", "is required"));
                None
            }
            Some(Member::Object(members)) => parse_flow(members, &mut errors),
            Some(Member::Value(other)) => {
                errors.push(type_error("flow", "an object", &other));
                None
            }
        };
        let flow_type = fields
            .optional_string("type", &mut errors)
            .and_then(|v| fields.check("type", token("type", v, TYPE_MAX), &mut errors));
        let context = fields.optional_object("context", &mut errors);
        fields.reject_unknown(&mut errors);

        match (to, title, text, caption, flow) {
            (Some(to), Some(title), Some(text), Some(caption), Some(flow)) if errors.is_empty() => {
                Ok(FlowMessage {
                    bot,
                    to,
                    title,
                    text,
                    caption,
                    flow,
                    flow_type,
                    context,
                })
            }
            _ => Err(errors),
        }
    }
}

fn parse_flow(members: Members, errors: &mut Vec<FieldError>) -> Option<Flow> {
    let mut fields = Fields::new(members, "flow.");
    let name = fields
        .required_string("name", errors)
        .and_then(|v| fields.check("name", token("name", v, NAME_MAX), errors));
    let cta = fields
        .required_string("cta", errors)
        .and_then(|v| fields.check("cta", Cta::parse(v), errors));
    let screen = fields
        .optional_string("screen", errors)
        .and_then(|v| fields.check("screen", token("screen", v, SCREEN_MAX), errors));
    let data = fields.optional_object("data", errors).and_then(|data| {
        if data.is_empty() {
            errors.push(FieldError::new(
                "flow.data",
                "must be a non-empty object when given (omit it instead)",
            ));
            None
        } else {
            Some(data)
        }
    });
    let flow_token = fields
        .optional_string("token", errors)
        .and_then(|v| fields.check("token", token("token", v, TOKEN_MAX), errors));
    let mode = fields.optional_string("mode", errors).and_then(|v| {
        let parsed = match v.as_str() {
            "draft" => Ok(FlowMode::Draft),
            "published" => Ok(FlowMode::Published),
            _ => Err("must be \"draft\" or \"published\"".to_string()),
        };
        fields.check("mode", parsed, errors)
    });
    let action = fields.optional_string("action", errors).and_then(|v| {
        let parsed = match v.as_str() {
            "navigate" => Ok(FlowAction::Navigate),
            "data_exchange" => Ok(FlowAction::DataExchange),
            _ => Err("must be \"navigate\" or \"data_exchange\"".to_string()),
        };
        fields.check("action", parsed, errors)
    });
    fields.reject_unknown(errors);
    Some(Flow {
        name: name?,
        cta: cta?,
        screen,
        data,
        token: flow_token,
        mode,
        action,
    })
}

/// The alphabet of bot aliases and caller names: 1 to 64 of a-z, 0-9, '_' and '-'
/// (lower case, since environment variable names are read in lower case).
pub fn is_valid_alias(alias: &str) -> bool {
    (1..=64).contains(&alias.len())
        && alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The caller's bot alias: the same alphabet the configuration allows.
fn alias(value: String) -> Result<String, String> {
    if is_valid_alias(&value) {
        Ok(value)
    } else {
        Err("must be a configured bot alias: 1 to 64 characters of a-z, 0-9, '_' or '-'".into())
    }
}

/// An identifier-like string: not blank, no control characters, at most `max` characters.
fn token(name: &str, value: String, max: usize) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("must not be empty or only whitespace".into());
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} must not contain control characters"));
    }
    let count = value.chars().count();
    if count > max {
        return Err(format!("must be at most {max} characters (got {count})"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<FlowMessage, Vec<FieldError>> {
        match value {
            Value::Object(map) => FlowMessage::parse(map),
            _ => unreachable!("tests pass objects"),
        }
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    fn seed() -> Value {
        json!({
            "to": "+593 98 765 4321",
            "title": "Hola",
            "text": "Completa este flujo para comenzar",
            "caption": "Jelou",
            "flow": {"name": "flujo_de_bienvenida", "cta": "Iniciar Flujo", "screen": "RECOMMEND"}
        })
    }

    #[test]
    fn parses_the_seed_example() {
        let message = parse(seed()).unwrap();
        assert_eq!(message.to.as_str(), "593987654321");
        assert_eq!(message.flow.cta.as_str(), "Iniciar Flujo");
        assert_eq!(message.flow.screen.as_deref(), Some("RECOMMEND"));
        assert!(message.bot.is_none() && message.context.is_none());
    }

    #[test]
    fn reports_every_error_at_once() {
        let errors = parse(json!({
            "to": "0123",
            "title": "",
            "text": 5,
            "flow": {"cta": "🚀", "data": {}, "mode": "live", "action": "jump", "extra": 1},
            "titel": "typo",
            "context": []
        }))
        .unwrap_err();
        let mut got = fields(errors);
        got.sort();
        assert_eq!(
            got,
            vec![
                "caption",
                "context",
                "flow.action",
                "flow.cta",
                "flow.data",
                "flow.extra",
                "flow.mode",
                "flow.name",
                "text",
                "titel",
                "title",
                "to"
            ]
        );
    }

    #[test]
    fn null_optional_fields_are_absent_but_null_required_are_missing() {
        let mut value = seed();
        value["type"] = Value::Null;
        value["context"] = Value::Null;
        assert!(parse(value.clone()).is_ok());
        value["title"] = Value::Null;
        assert_eq!(fields(parse(value).unwrap_err()), vec!["title"]);
    }

    #[test]
    fn hostile_alias_and_type_are_refused() {
        for alias in ["../x", "a/b", "A", "a?b", "a#b", "a\r\nb", "a\0b", ""] {
            let mut value = seed();
            value["bot"] = json!(alias);
            assert_eq!(fields(parse(value).unwrap_err()), vec!["bot"], "{alias:?}");
        }
        let mut value = seed();
        value["type"] = json!("a\nb");
        assert_eq!(fields(parse(value).unwrap_err()), vec!["type"]);
    }

    #[test]
    fn flow_must_be_an_object() {
        let mut value = seed();
        value["flow"] = json!("flujo");
        assert_eq!(fields(parse(value).unwrap_err()), vec!["flow"]);
    }
}
