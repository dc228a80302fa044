//! jelou-relay: an internal relay that sends WhatsApp Flow messages through Jelou.
//!
//! A request's path, folder by folder: `api` (router, inbound layers, handler) →
//! `domain` (the message, parsed once) → `idempotency` (claim or replay a key) →
//! `delivery` (the tower stack: deadline, rate limits, concurrency, retry, attempt) →
//! `jelou` (the exact request, the client and its credentials, what an answer means).
//! An asynchronous send stops at `queue` (accepted, stored, 202) and goes on from its
//! worker through `delivery`'s paced path to `jelou`.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod callbacks;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod idempotency;
pub mod jelou;
pub mod metrics;
pub mod queue;
pub mod store;
pub mod telemetry;
pub mod workers;
