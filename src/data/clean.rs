/// Text cleaning that is safe for BERT: NFKC normalisation, control characters removed,
/// runs of whitespace (tabs, newlines included) collapsed to one space, ends trimmed.
pub fn clean_text(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfkc() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else if !c.is_control() {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clean_text;

    #[test]
    fn normalises_and_collapses() {
        assert_eq!(clean_text("  Vit\tamin\n\n C\r\n "), "Vit amin C");
        assert_eq!(clean_text("ﬁbrosis ①"), "fibrosis 1");
        assert_eq!(clean_text("a\u{0}b\u{7}c"), "abc");
        assert_eq!(clean_text("\u{00a0}x\u{2003}y"), "x y");
        assert_eq!(clean_text(" \t\n"), "");
    }
}
