//! Errors as text: an error with its chain of sources on one line, the way logs, MQTT replies
//! and the command line show it (`outer: inner: innermost`).

use std::error::Error;

/// `err` and each of its sources, joined by `": "`.
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("camera {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn sources_follow_the_message() {
        let e = Outer("porch", std::io::Error::other("no route"));
        assert_eq!(chain(&e), "camera porch: no route");
        assert_eq!(chain(&std::io::Error::other("alone")), "alone");
    }
}
