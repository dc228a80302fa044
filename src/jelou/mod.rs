//! Jelou's side: the exact request it receives, the client that sends it with the
//! credentials, what its answers mean, and the sandbox that answers in its place.

pub mod classify;
pub mod client;
pub mod credentials;
pub mod request;
pub mod sandbox;
pub mod simulator;

pub use classify::{UpstreamError, Verdict};
pub use client::JelouClient;
pub use credentials::{CredentialBook, Credentials};
pub use request::{FlowRequest, JelouUrls};
pub use sandbox::Sandbox;
