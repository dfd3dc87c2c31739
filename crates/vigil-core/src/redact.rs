//! Camera credentials never leave the process: every URL and every free text that may carry one
//! (GStreamer error messages quote the location) goes through [`redact`] before it is logged,
//! exported as a metric or published on MQTT.

/// Replaces the `user:password@` part of every `scheme://user:password@host` in `text` with
/// `***@`. Text without credentials is returned unchanged.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', whitespace or quote.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '>' | ')') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn hides_user_and_password() {
        assert_eq!(
            redact("rtsp://admin:s3cr%40t@10.0.0.5:554/live"),
            "rtsp://***@10.0.0.5:554/live"
        );
        assert_eq!(redact("rtsp://user@cam/x"), "rtsp://***@cam/x");
    }

    #[test]
    fn keeps_urls_without_credentials_and_plain_text() {
        assert_eq!(redact("rtsp://cam:554/live"), "rtsp://cam:554/live");
        assert_eq!(redact("no url here"), "no url here");
    }

    #[test]
    fn redacts_every_url_inside_free_text() {
        let msg =
            "Could not open resource for reading (rtsp://a:b@h1/s) and 'rtsps://c:d@h2:322/t'";
        let r = redact(msg);
        assert!(!r.contains("a:b") && !r.contains("c:d"), "{r}");
        assert!(
            r.contains("rtsp://***@h1/s") && r.contains("rtsps://***@h2:322/t"),
            "{r}"
        );
    }
}
