//! jelou-relay: an internal relay that sends WhatsApp Flow messages through Jelou.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod jelou;
pub mod metrics;
pub mod store;
pub mod telemetry;
pub mod workers;
