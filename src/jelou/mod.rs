//! Jelou's side: the exact request it receives, the HTTP client that sends it, and the
//! sandbox that answers in its place.

pub mod client;
pub mod request;
pub mod sandbox;
pub mod simulator;

pub use client::JelouClient;
pub use request::build_outbound;
pub use sandbox::Sandbox;
