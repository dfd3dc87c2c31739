//! Bounded texts: every OTA text that reaches MQTT or a log line comes from here, so that a
//! name or a reason an outsider controls can never make a message too long to publish (the
//! broker drops the link on a packet over its limit, and the retained `ota/status` would be sent
//! again on every reconnection) or a log line of megabytes.

/// Most bytes of one reason (`ota/progress` and `ota/status` `reason`, a refusal's log line).
pub const MAX_REASON: usize = 1024;

/// Most bytes of a quoted name inside a reason (an entry name, a path, a URL).
pub const MAX_NAME: usize = 200;

/// `s` cut to at most `max` bytes at a character boundary; a cut text ends with a marker that
/// says how much was left out (the marker is counted in `max`).
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let marker = |cut: usize| format!("… ({cut} more bytes)");
    // The marker's own length depends on the number it shows; the longest is with all of `s`.
    let room = max.saturating_sub(marker(s.len()).len());
    let mut end = room.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{}", &s[..end], marker(s.len() - end))
}

/// `s` quoted and escaped as `{:?}` writes it, at most about [`MAX_NAME`] bytes: a longer name
/// is cut (escapes never split) and its length in bytes follows.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        // As `{:?}` of a str: char::escape_debug also escapes `'`, a str's Debug does not.
        let escaped: String = match c {
            '\'' => "'".into(),
            c => c.escape_debug().collect(),
        };
        if out.len() + escaped.len() > MAX_NAME {
            out.push_str(&format!("\"… ({} bytes)", s.len()));
            return out;
        }
        out.push_str(&escaped);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_unchanged_and_long_ones_cut_at_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(5000);
        let b = bounded(&long, MAX_REASON);
        assert!(b.len() <= MAX_REASON, "{}", b.len());
        assert!(b.ends_with("more bytes)"), "{b}");
        assert!(b.starts_with("éé"));
        assert_eq!(bounded(&long, 3).len(), "… (10000 more bytes)".len());
    }

    #[test]
    fn quoting_matches_debug_for_short_names_and_is_bounded_for_long_ones() {
        for s in [
            "models/a.onnx",
            "tab\there",
            "quote\"d",
            "\u{1}x",
            "\u{301}accent",
            "it's",
            "a\u{301}",
        ] {
            assert_eq!(quote(s), format!("{s:?}"));
        }
        let hostile = "\u{1}".repeat(1 << 20);
        let q = quote(&hostile);
        assert!(q.len() <= MAX_NAME + 32, "{}", q.len());
        assert!(q.ends_with("\"… (1048576 bytes)"), "{q}");
    }
}
