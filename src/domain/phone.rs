//! The recipient's phone number, as Jelou wants it in the path: E.164 digits without `+`.

use std::fmt;

/// 8 to 15 ASCII digits, the first not 0. Built only by [`Recipient::parse`].
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(String);

impl Recipient {
    /// Strips `+`, spaces, dashes, dots and parentheses; never rewrites a digit
    /// (WhatsApp ids differ from dialable numbers in Brazil, Mexico, Argentina).
    pub fn parse(raw: &str) -> Result<Recipient, String> {
        // No written phone number has "..": refuse the path-traversal marker outright
        // rather than strip it into something that looks valid.
        if raw.contains("..") {
            return Err("must not contain \"..\"".into());
        }
        let mut digits = String::with_capacity(raw.len());
        digits.extend(
            raw.chars()
                .filter(|c| !matches!(c, '+' | ' ' | '-' | '.' | '(' | ')')),
        );
        if digits.is_empty() {
            return Err("must be a phone number with country code, e.g. +593987654321".into());
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("may hold only ASCII digits and the separators + - . ( ) and space".into());
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(format!(
                "must have 8 to 15 digits including the country code (got {})",
                digits.len()
            ));
        }
        if digits.starts_with('0') {
            return Err("must start with the country code, not 0".into());
        }
        Ok(Recipient(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For logs: first and last three digits kept, like `593******321`.
    pub fn masked(&self) -> String {
        let n = self.0.len();
        let mut masked = String::with_capacity(n);
        masked.push_str(&self.0[..3]);
        masked.extend(std::iter::repeat_n('*', n - 6));
        masked.push_str(&self.0[n - 3..]);
        masked
    }
}

/// Masked, so a recipient printed by accident does not leak.
impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_separators_and_keeps_digits() {
        for raw in [
            "+593 98 765 4321",
            "593987654321",
            "+593-98-765-4321",
            "(593) 98.765.4321",
        ] {
            assert_eq!(Recipient::parse(raw).unwrap().as_str(), "593987654321");
        }
    }

    #[test]
    fn length_bounds() {
        assert!(Recipient::parse("12345678").is_ok());
        assert!(Recipient::parse("1234567").is_err());
        assert!(Recipient::parse("123456789012345").is_ok());
        assert!(Recipient::parse("1234567890123456").is_err());
    }

    #[test]
    fn rejects_leading_zero_letters_and_non_ascii_digits() {
        for raw in [
            "0593987654321",
            "59398765432a",
            "٥٩٣٩٨٧٦٥٤٣٢١",
            "５９３９８７６５４３２１",
            "593/98765432",
            "593987654321\n",
            "..593987654321",
            "593..987654321",
            "",
            "+",
        ] {
            assert!(Recipient::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn never_rewrites_brazil_or_mexico_digits() {
        assert_eq!(
            Recipient::parse("+55 11 9 8765 4321").unwrap().as_str(),
            "5511987654321"
        );
        assert_eq!(
            Recipient::parse("+52 1 55 1234 5678").unwrap().as_str(),
            "5215512345678"
        );
    }

    #[test]
    fn masks_middle_digits() {
        let r = Recipient::parse("593987654321").unwrap();
        assert_eq!(r.masked(), "593******321");
        assert_eq!(format!("{r:?}"), "Recipient(593******321)");
        assert_eq!(Recipient::parse("12345678").unwrap().masked(), "123**678");
    }
}
