//! Parsed, validated message types: no HTTP and no I/O here.

pub mod bots;
mod fields;
pub mod flow_message;
pub mod members;
pub mod phone;
pub mod strict_json;
pub mod text;

pub use bots::{Bot, BotRegistry, RateSettings};
pub use flow_message::{FieldError, Flow, FlowAction, FlowMessage, FlowMode};
pub use phone::Recipient;
pub use text::{Caption, Cta, Text, Title};
