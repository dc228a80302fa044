//! Bounded message texts. Length is counted in Unicode scalar values (what Rust's
//! `char` is): "ñ", "中" and "😀" each count 1, whatever their UTF-8 size.

use std::fmt;

use unicode_properties::UnicodeEmoji;

/// Text of 1..=MAX characters that is not only whitespace. Never trimmed or rewritten.
#[derive(Clone, PartialEq, Eq)]
pub struct BoundedText<const MAX: usize>(String);

/// WhatsApp's limits, in characters; the OpenAPI document states the same numbers.
pub const TITLE_MAX: usize = 60;
pub const TEXT_MAX: usize = 1024;
pub const CAPTION_MAX: usize = 60;
pub const CTA_MAX: usize = 30;

/// Header above the Flow button: 1..=60 characters.
pub type Title = BoundedText<TITLE_MAX>;
/// Body text: 1..=1024 characters.
pub type Text = BoundedText<TEXT_MAX>;
/// Footer text: 1..=60 characters.
pub type Caption = BoundedText<CAPTION_MAX>;

impl<const MAX: usize> BoundedText<MAX> {
    pub fn parse(raw: String) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Err("must not be empty or only whitespace".into());
        }
        let count = raw.chars().count();
        if count > MAX {
            return Err(format!(
                "must be at most {MAX} characters (got {count}; characters are Unicode code points)"
            ));
        }
        if raw.contains('\0') {
            return Err("must not contain NUL characters".into());
        }
        Ok(BoundedText(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> fmt::Debug for BoundedText<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The Flow button's text: 1..=30 characters, no emoji.
#[derive(Clone, PartialEq, Eq)]
pub struct Cta(BoundedText<CTA_MAX>);

impl Cta {
    pub fn parse(raw: String) -> Result<Self, String> {
        let text = BoundedText::<CTA_MAX>::parse(raw)?;
        if let Some(c) = text.as_str().chars().find(|&c| is_emoji(c)) {
            return Err(format!(
                "must not contain emoji (found U+{:04X}); WhatsApp refuses emoji in the button text",
                c as u32
            ));
        }
        Ok(Cta(text))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Cta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Any character with Unicode's Emoji property outside ASCII (ASCII digits, `#` and `*`
/// carry it too, for keycaps), plus the joiners and selectors emoji sequences are built
/// from. So `©`, `®` and `™` count as emoji; plain text never does.
fn is_emoji(c: char) -> bool {
    (!c.is_ascii() && c.is_emoji_char())
        || matches!(c,
            '\u{200D}'              // zero-width joiner
            | '\u{FE0F}'            // emoji presentation selector
            | '\u{20E3}'            // combining enclosing keycap
            | '\u{1F1E6}'..='\u{1F1FF}' // regional indicators (flags)
            | '\u{1F3FB}'..='\u{1F3FF}' // skin tone modifiers
            | '\u{E0020}'..='\u{E007F}' // tag characters (subdivision flags)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_code_points_not_bytes() {
        assert!(Title::parse("ñ".repeat(60)).is_ok());
        assert!(Title::parse("ñ".repeat(61)).is_err());
        assert!(Title::parse("中".repeat(60)).is_ok());
        assert!(Caption::parse("😀".repeat(60)).is_ok());
        assert!(Caption::parse("😀".repeat(61)).is_err());
        assert!(Text::parse("é".repeat(1024)).is_ok());
        assert!(Text::parse("é".repeat(1025)).is_err());
    }

    #[test]
    fn rejects_blank() {
        for raw in ["", " ", "\n\t ", "\u{3000}"] {
            assert!(Title::parse(raw.to_string()).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn keeps_text_as_given() {
        assert_eq!(Title::parse("  Hola ".into()).unwrap().as_str(), "  Hola ");
    }

    #[test]
    fn cta_refuses_emoji_and_joiners() {
        for raw in [
            "Iniciar 🚀",
            "Go ❤",
            "Go ❤\u{FE0F}",
            "a\u{200D}b",
            "🇪🇨",
            "1\u{FE0F}\u{20E3}",
            "👍🏽",
        ] {
            assert!(Cta::parse(raw.to_string()).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn cta_accepts_plain_text_digits_and_accents() {
        for raw in ["Iniciar Flujo", "Paso 2 #1 *", "Continuar ñandú", "开始"] {
            assert!(Cta::parse(raw.to_string()).is_ok(), "{raw:?}");
        }
        assert!(Cta::parse("a".repeat(30)).is_ok());
        assert!(Cta::parse("a".repeat(31)).is_err());
    }
}
