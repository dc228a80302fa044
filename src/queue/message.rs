//! A queued message: what is stored, its states, and the status object callers read.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::delivery::{DeliveryFailure, DeliveryState};
use crate::domain::{BotRegistry, Recipient};
use crate::jelou::{FlowRequest, UpstreamError};

/// Where a queued message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for capacity, for a retry, or for Jelou to come back.
    Queued,
    /// An attempt is out.
    Sending,
    /// Jelou accepted it.
    Sent,
    /// Jelou refused it.
    Failed,
    /// An attempt may have reached Jelou and its fate is not known: never sent again.
    Unknown,
    /// Not sent before `expires_at`.
    Expired,
    /// Canceled by its caller while queued.
    Canceled,
}

impl Status {
    /// Every status, each at its [`Status::place`].
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Sending,
        Status::Sent,
        Status::Failed,
        Status::Unknown,
        Status::Expired,
        Status::Canceled,
    ];

    /// This status's place in [`Status::ALL`] (a match, so a new status cannot be missed).
    pub fn place(self) -> usize {
        match self {
            Status::Queued => 0,
            Status::Sending => 1,
            Status::Sent => 2,
            Status::Failed => 3,
            Status::Unknown => 4,
            Status::Expired => 5,
            Status::Canceled => 6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
            Status::Expired => "expired",
            Status::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Sending)
    }

    /// Whether the message reached Jelou: `sent`, `not_sent` or `unknown`, as in the
    /// synchronous answers. An attempt that is out may have reached it.
    pub fn delivery(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Sending | Status::Unknown => DeliveryState::Unknown.as_str(),
            Status::Queued | Status::Failed | Status::Expired | Status::Canceled => {
                DeliveryState::NotSent.as_str()
            }
        }
    }
}

/// Why a message did not end `sent`: a problem object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageError {
    /// Stable machine-readable code, e.g. `upstream_rejected`, `expired`.
    pub code: String,
    pub title: String,
    pub detail: String,
    /// Jelou's answer, when Jelou gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamError>,
}

impl MessageError {
    /// The problem the synchronous twin of this failure would have answered.
    pub fn from_failure(failure: &DeliveryFailure) -> Self {
        let (_, code, title, _) = failure.describe();
        MessageError {
            code: code.into(),
            title: title.into(),
            detail: failure.detail.clone(),
            upstream: failure.public_upstream(),
        }
    }

    pub fn expired(last: Option<&MessageError>) -> Self {
        let detail = match last {
            Some(last) => format!(
                "not sent before its expiry; the last attempt ended {}: {}",
                last.code, last.detail
            ),
            None => "not sent before its expiry".into(),
        };
        MessageError {
            code: "expired".into(),
            title: "The message expired".into(),
            detail,
            upstream: last.and_then(|last| last.upstream.clone()),
        }
    }

    pub fn interrupted() -> Self {
        MessageError {
            code: "send_interrupted".into(),
            title: "The attempt was interrupted".into(),
            detail: "the replica sending this message stopped before recording Jelou's answer, so it may or may not have been sent; it is not sent again".into(),
            upstream: None,
        }
    }

    pub fn bot_gone(alias: &str) -> Self {
        MessageError {
            code: "unknown_bot".into(),
            title: "Unknown bot".into(),
            detail: format!("the bot '{alias}' is no longer configured on this relay"),
            upstream: None,
        }
    }
}

/// One message as the queue stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    /// The caller that queued it: only it may read or cancel it.
    pub caller: String,
    pub status: Status,
    pub bot: String,
    pub to: String,
    pub attempts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub expires_ms: u64,
    pub request_id: String,
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The request Jelou receives, as built and checked at acceptance.
    pub url: String,
    pub body: JelouBody,
    /// It waits until then: a retry's backoff, or, from acceptance, its reserved cell
    /// or its expiry.
    #[serde(default)]
    pub not_before_ms: u64,
    /// A rate-limit cell reserved for this message at this time.
    #[serde(default)]
    pub slot_ms: Option<u64>,
    /// Jelou's answer to the attempt that sent it (scrubbed).
    #[serde(default)]
    pub upstream: Option<Value>,
    #[serde(default)]
    pub error: Option<MessageError>,
    /// Bumped by the store at every change: a change written against an older version
    /// is refused, so two replicas can never both start the same attempt.
    #[serde(default)]
    pub version: u64,
}

/// The body Jelou receives, kept in the record as the JSON it is rather than as a
/// string holding it: written and read back without escaping every quote (the
/// escaping was a tenth of a queued message's instructions, `benches/callgrind.sh
/// async`). Records that hold it as a string (written before) read the same.
#[derive(Debug, Clone)]
pub enum JelouBody {
    Json(Box<RawValue>),
    /// Bytes that are not JSON: kept as text (the relay builds JSON, so only records
    /// written as a string come here).
    Text(String),
}

impl JelouBody {
    pub fn new(bytes: &[u8]) -> Self {
        match serde_json::from_slice::<Box<RawValue>>(bytes) {
            Ok(raw) if !raw.get().starts_with('"') => JelouBody::Json(raw),
            _ => JelouBody::Text(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            JelouBody::Json(raw) => raw.get().as_bytes(),
            JelouBody::Text(text) => text.as_bytes(),
        }
    }
}

impl Serialize for JelouBody {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            JelouBody::Json(raw) => raw.serialize(serializer),
            JelouBody::Text(text) => text.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for JelouBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if raw.get().starts_with('"') {
            let text: String = serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?;
            return Ok(JelouBody::Text(text));
        }
        Ok(JelouBody::Json(raw))
    }
}

/// A final status to tell the message's caller (a signed callback), kept with the
/// message's last change so that one is never recorded without the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The `webhook-id`: the same on every try, so the receiver can deduplicate.
    pub id: String,
    pub caller: String,
    /// The status object, as `GET /v1/flow-messages/{id}` answers it.
    pub body: String,
    /// Tries made so far.
    pub attempts: u32,
    pub created_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A fresh id: opaque, URL-safe, 36 characters, ordered by creation.
pub fn new_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

impl Message {
    /// When a message being queued at `now` is due, when that is later; `None`: ready.
    pub fn due_later(&self, now: u64) -> Option<u64> {
        (self.not_before_ms > now).then_some(self.not_before_ms)
    }

    /// The request to send, rebuilt from what was stored; `None` when its bot is gone.
    pub fn request(&self, bots: &BotRegistry) -> Option<Arc<FlowRequest>> {
        let bot = bots.resolve(Some(&self.bot)).ok()?;
        let url = url::Url::parse(&self.url).ok()?;
        let recipient = Recipient::parse(&self.to).ok()?;
        Some(Arc::new(FlowRequest {
            bot,
            recipient,
            url,
            body: Bytes::copy_from_slice(self.body.as_bytes()),
            request_id: self.request_id.clone(),
            traceparent: self.traceparent.clone(),
        }))
    }

    /// Moves to `status` now.
    pub fn set(&mut self, status: Status) {
        self.status = status;
        self.updated_ms = now_ms().max(self.updated_ms);
    }

    /// The notice of this message's final status, when its caller subscribed.
    pub fn notice(&self, subscribers: &std::collections::BTreeSet<String>) -> Option<Notice> {
        if !self.status.is_final() || !subscribers.contains(&self.caller) {
            return None;
        }
        Some(Notice {
            id: self.id.clone(),
            caller: self.caller.clone(),
            body: serde_json::to_string(&self.view()).unwrap_or_default(),
            attempts: 0,
            created_ms: self.updated_ms,
        })
    }

    /// The status object: the body of `GET /v1/flow-messages/{id}`.
    pub fn view(&self) -> MessageStatus {
        MessageStatus {
            id: self.id.clone(),
            status: self.status,
            delivery: self.status.delivery(),
            bot: self.bot.clone(),
            to: self.to.clone(),
            attempts: self.attempts,
            created_at: rfc3339(self.created_ms),
            updated_at: rfc3339(self.updated_ms),
            expires_at: rfc3339(self.expires_ms),
            request_id: self.request_id.clone(),
            upstream: (self.status == Status::Sent)
                .then(|| self.upstream.clone())
                .flatten(),
            error: matches!(
                self.status,
                Status::Failed | Status::Unknown | Status::Expired
            )
            .then(|| self.error.clone())
            .flatten(),
        }
    }
}

/// A queued message's status, as callers read it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageStatus {
    pub id: String,
    pub status: Status,
    /// `sent`, `not_sent` or `unknown`, as in the synchronous answers.
    #[schema(value_type = String, example = "not_sent")]
    pub delivery: &'static str,
    pub bot: String,
    /// The recipient, as digits.
    pub to: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// Not sent after this, the message is `expired`.
    pub expires_at: String,
    pub request_id: String,
    /// Jelou's answer, when `sent` (credentials scrubbed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub upstream: Option<Value>,
    /// Why it is `failed`, `unknown` or `expired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<MessageError>,
}

#[cfg(test)]
mod tests {
    use super::{JelouBody, Status};

    #[test]
    fn every_status_is_at_its_own_place() {
        for (at, status) in Status::ALL.into_iter().enumerate() {
            assert_eq!(status.place(), at, "{status:?}");
        }
    }

    #[test]
    fn the_body_is_stored_as_json_and_read_back_byte_for_byte() {
        let sent = br#"{"title":"Hola \"amigo\"","parameters":{"flow_name":"f"}}"#;
        let record = serde_json::to_string(&JelouBody::new(sent)).unwrap();
        assert_eq!(record.as_bytes(), sent);
        let read: JelouBody = serde_json::from_str(&record).unwrap();
        assert_eq!(read.as_bytes(), sent);
    }

    #[test]
    fn a_body_stored_as_a_string_reads_as_the_same_bytes() {
        let sent = r#"{"title":"Hola \"amigo\"","parameters":{"flow_name":"f"}}"#;
        let old_record = serde_json::to_string(sent).unwrap();
        let read: JelouBody = serde_json::from_str(&old_record).unwrap();
        assert_eq!(read.as_bytes(), sent.as_bytes());
        // Written again, it stays readable as the same bytes.
        let again: JelouBody =
            serde_json::from_str(&serde_json::to_string(&read).unwrap()).unwrap();
        assert_eq!(again.as_bytes(), sent.as_bytes());
    }
}
