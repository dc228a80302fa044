//! Secrets given inline or as mounted files, read without ever echoing them.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

/// A secret given inline or as a file path (for mounted secrets), under `{key}.{field}`
/// and `{key}.{field}_file`; both at once is an error.
pub(super) fn resolve_secret(
    key: &str,
    field: &str,
    inline: Option<&SecretString>,
    file: Option<&Path>,
    problem: &mut impl FnMut(&str, String),
) -> Option<SecretString> {
    let inline = inline.filter(|s| !s.expose_secret().is_empty());
    let file_key = format!("{key}.{field}_file");
    match (inline, file) {
        (Some(_), Some(_)) => {
            problem(
                &file_key,
                format!("set either {key}.{field} or {file_key}, not both"),
            );
            None
        }
        (Some(secret), None) => Some(secret.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(contents) => {
                let trimmed = contents.trim_end_matches(['\n', '\r']);
                if trimmed.is_empty() {
                    problem(&file_key, format!("'{}' is empty", path.display()));
                    None
                } else {
                    Some(SecretString::from(trimmed.to_string()))
                }
            }
            Err(error) => {
                problem(
                    &file_key,
                    format!("cannot read '{}': {error}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
}
