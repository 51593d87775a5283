//! Quoting words for a POSIX shell: the one place that knows how.

/// Quotes `s` as one shell word, leaving words of only safe characters bare (`/srv/app`).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_string();
    }
    quote_always(s)
}

/// Single-quotes `s` even when it need not be: nothing inside is special but the quote itself.
///
/// Generated init scripts use this form so they match the Chef cookbook's rendering byte for byte.
pub fn quote_always(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("/srv/app"), "/srv/app");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(id)"), "'$(id)'");
        assert_eq!(quote_always("web"), "'web'");
    }
}
