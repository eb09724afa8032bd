//! Text for people: every status message and Event note is one bounded line, cut only between
//! characters, whatever Unicode a spec or an API answer holds.

/// The longest prefix of `s` of at most `max_bytes` bytes that ends between two characters.
pub fn truncate(s: &str, max_bytes: usize) -> &str {
    let end = s.char_indices().map(|(i, c)| i + c.len_utf8()).take_while(|&end| end <= max_bytes).last();
    s.get(..end.unwrap_or(0)).unwrap_or_default()
}

/// `s` on one line (every run of whitespace, newlines included, becomes one space), at most
/// `max_bytes` bytes long; a cut is marked with an ellipsis.
pub fn one_line(s: &str, max_bytes: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.len() <= max_bytes {
        return flat;
    }
    const MORE: &str = "…";
    format!("{}{MORE}", truncate(&flat, max_bytes.saturating_sub(MORE.len())))
}

/// The API server's own message for a failed call, without the client's debug formatting.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        kube::Error::Api(status) => format!("{} (HTTP {})", status.reason, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn cuts_between_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("🙂", 3), "");
        assert_eq!(one_line("a\n  b\tc", 100), "a b c");
        assert_eq!(one_line("ééééé", 7), "éé…");
    }

    proptest! {
        #[test]
        fn any_text_becomes_one_bounded_line(s in "\\PC*|[\\s\\S]{0,300}", max in 0usize..400) {
            let line = one_line(&s, max);
            prop_assert!(line.len() <= max.max("…".len()), "{} > {max}", line.len());
            prop_assert!(!line.contains('\n') && !line.contains('\r'));
            let t = truncate(&s, max);
            prop_assert!(t.len() <= max && s.starts_with(t));
        }
    }
}
