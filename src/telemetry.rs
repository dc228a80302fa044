//! The tracing subscriber: JSON lines in production, readable text locally.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// The filter: `RUST_LOG` when set, else the configured level.
pub fn filter(settings: &LogSettings) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| format!("RUST_LOG '{directives}' is not a valid filter: {e}")),
        _ => EnvFilter::try_new(&settings.level)
            .map_err(|e| format!("log.level '{}' is not a valid filter: {e}", settings.level)),
    }
}

/// Installs the global subscriber. Logs go to stdout, as containers expect.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let filter = filter(settings)?;
    let installed = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
