//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): the secret's format
//! (`whsec_` + base64) and `v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A callback's signing key: the bytes behind `whsec_…`. Never printed.
pub struct Secret(SecretBox<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl Secret {
    /// `whsec_` and the base64 of 24 to 64 random bytes.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text.trim().strip_prefix(PREFIX).ok_or_else(|| {
            "must start with whsec_ (jelou-relay new-callback-secret mints one)".to_string()
        })?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "after whsec_, must be base64".to_string())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "must hold 24 to 64 bytes after whsec_ (holds {})",
                key.len()
            ));
        }
        Ok(Secret(SecretBox::new(Box::new(key))))
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// A new secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> Result<String, String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("no randomness from the system: {e}"))?;
    Ok(format!("{PREFIX}{}", STANDARD.encode(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_reference_vector() {
        // From the specification's reference libraries' tests.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_minted_secret_parses_and_a_bad_one_is_refused() {
        let minted = new_secret().unwrap();
        assert!(minted.starts_with("whsec_"));
        assert!(Secret::parse(&minted).is_ok());
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_***",
            "whsec_c2hvcnQ=",
        ] {
            assert!(Secret::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            format!("{:?}", Secret::parse(&minted).unwrap()),
            "Secret([REDACTED])"
        );
    }
}
