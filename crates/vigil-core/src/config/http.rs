//! The `[http]` table: its checks (address, tokens, limits), its TLS files (read and checked
//! when the config is loaded), its warnings, and the address the API really listens on: with
//! no tokens the API is unauthenticated, so it is served on the loopback address only.

use super::checks::{Checker, check_min_duration, check_name};
use super::diagnostics::Issue;
use super::secrets::read_file_bounded;
use super::{Config, HttpConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Largest TLS certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

impl HttpConfig {
    /// Where the API listens: `listen`, except that with no tokens an address other than a
    /// loopback one is replaced by the loopback address of its family (same port). `None`: the
    /// API is off (or `listen` is not an address, which the checks report).
    pub fn effective_listen(&self) -> Option<SocketAddr> {
        let mut addr: SocketAddr = self.listen.parse().ok()?;
        if self.tokens.is_empty() && !addr.ip().is_loopback() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        Some(addr)
    }
}

impl HttpConfig {
    /// What the table allows but is probably not meant, as (field path, message): a
    /// non-loopback `listen` without tokens (served on loopback instead), and tokens sent in
    /// clear text to other hosts. `check-config` prints them; `vigil run` logs them.
    pub fn warnings(&self) -> Vec<(&'static str, String)> {
        let (Ok(asked), Some(used)) = (self.listen.parse::<SocketAddr>(), self.effective_listen())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if asked != used {
            out.push((
                "http.listen",
                format!(
                    "no [[http.tokens]]: the API is unauthenticated, so it listens on {used} \
                     only, not {asked} (expected tokens from `vigil token new` to serve other \
                     hosts)"
                ),
            ));
        } else if !self.tokens.is_empty() && self.tls.is_none() && !used.ip().is_loopback() {
            out.push((
                "http",
                format!(
                    "HTTP on {used} without TLS: bearer tokens cross the network in clear text \
                     (expected [http.tls] with cert and key)"
                ),
            ));
        }
        out
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn check_http(c: &mut Checker, config: &Config) {
    let h = &config.http;
    let l = &h.listen;
    if !l.is_empty() && l.parse::<SocketAddr>().is_err() {
        c.err("http.listen", format!("{l:?} is not an address:port (expected e.g. \"127.0.0.1:8080\" or \"\" for no HTTP API)"));
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut digests: BTreeMap<String, usize> = BTreeMap::new();
    for (i, t) in h.tokens.iter().enumerate() {
        let tp = format!("http.tokens[{i}]");
        check_name(c, &format!("{tp}.name"), &t.name, "token name");
        if let Some(j) = names.insert(&t.name, i) {
            c.err(
                format!("{tp}.name"),
                format!(
                    "token name {:?} is also http.tokens[{j}]'s (expected unique names)",
                    t.name
                ),
            );
        }
        if !is_sha256_hex(&t.sha256) {
            c.err(
                format!("{tp}.sha256"),
                "not a SHA-256 digest (expected the 64 hex digits `vigil token new` prints, or \
                 ${credential:NAME} / ${file:PATH} naming a file that holds them)",
            );
        } else if let Some(j) = digests.insert(t.sha256.to_ascii_lowercase(), i) {
            c.err(
                format!("{tp}.sha256"),
                format!("the same token as http.tokens[{j}] (expected each token once)"),
            );
        }
    }
    if !(1..=65_536).contains(&h.max_connections) {
        c.err(
            "http.max_connections",
            format!("{} out of range (expected 1 to 65536)", h.max_connections),
        );
    }
    check_min_duration(
        c,
        "http.idle_timeout",
        h.idle_timeout,
        Duration::from_secs(1),
    );
    check_min_duration(
        c,
        "http.header_timeout",
        h.header_timeout,
        Duration::from_secs(1),
    );
    if !(1024..=16 << 20).contains(&h.max_body_bytes) {
        c.err(
            "http.max_body_bytes",
            format!(
                "{} out of range (expected 1024 to 16777216)",
                h.max_body_bytes
            ),
        );
    }
    if !(64..=8192).contains(&h.max_query_bytes) {
        c.err(
            "http.max_query_bytes",
            format!("{} out of range (expected 64 to 8192)", h.max_query_bytes),
        );
    }
    if let Some(tls) = &h.tls {
        for (field, p) in [("http.tls.cert", &tls.cert), ("http.tls.key", &tls.key)] {
            if p.as_os_str().is_empty() {
                c.err(field, "empty path (expected a PEM file)");
            }
        }
    }
}

/// The HTTPS certificate and key files (after their paths were made absolute): readable, PEM,
/// holding a certificate and a private key; the key file private. Whether the key belongs to
/// the certificate is checked by the TLS library when the API starts.
pub(super) fn check_http_files(config: &Config) -> Vec<Issue> {
    let Some(tls) = &config.http.tls else {
        return Vec::new();
    };
    let mut issues = Vec::new();
    let mut problem = |path: &str, message: String| {
        issues.push(Issue {
            path: path.to_owned(),
            message,
        })
    };
    let relative = "a relative path is relative to the config file's directory";
    match read_file_bounded(&tls.cert, MAX_PEM_BYTES, false) {
        Ok(pem) => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            if !matches!(certs, Ok(ref c) if !c.is_empty()) {
                problem(
                    "http.tls.cert",
                    format!(
                        "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE----- \
                         blocks, the server's first)",
                        tls.cert.display()
                    ),
                );
            }
        }
        Err(e) => problem(
            "http.tls.cert",
            format!("{e} (expected a PEM certificate chain; {relative})"),
        ),
    }
    match read_file_bounded(&tls.key, MAX_PEM_BYTES, true) {
        Ok(pem) => {
            if PrivateKeyDer::from_pem_slice(&pem).is_err() {
                problem(
                    "http.tls.key",
                    format!(
                        "{} holds no PEM private key (expected an unencrypted PKCS#8, PKCS#1 or \
                         SEC1 key)",
                        tls.key.display()
                    ),
                );
            }
        }
        Err(e) => problem(
            "http.tls.key",
            format!("{e} (expected the PEM private key of the certificate; {relative})"),
        ),
    }
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpToken, TokenScope};

    fn token(name: &str, digest: &str) -> HttpToken {
        HttpToken {
            name: name.into(),
            scope: TokenScope::Read,
            sha256: digest.into(),
        }
    }

    #[test]
    fn without_tokens_only_loopback_is_served() {
        let mut h = HttpConfig {
            listen: "0.0.0.0:8080".into(),
            ..HttpConfig::default()
        };
        assert_eq!(
            h.effective_listen(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        h.listen = "[::]:9".into();
        assert_eq!(h.effective_listen(), Some("[::1]:9".parse().unwrap()));
        h.listen = "127.0.0.2:9".into();
        assert_eq!(h.effective_listen(), Some("127.0.0.2:9".parse().unwrap()));
        h.tokens.push(token("ops", &"a".repeat(64)));
        h.listen = "0.0.0.0:8080".into();
        assert_eq!(h.effective_listen(), Some("0.0.0.0:8080".parse().unwrap()));
        h.listen = String::new();
        assert_eq!(h.effective_listen(), None);
    }

    #[test]
    fn warnings_name_the_loopback_fallback_and_clear_text_tokens() {
        let mut h = HttpConfig {
            listen: "0.0.0.0:8080".into(),
            ..HttpConfig::default()
        };
        let w = h.warnings();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "http.listen");
        assert!(
            w[0].1
                .contains("listens on 127.0.0.1:8080 only, not 0.0.0.0:8080")
        );
        h.tokens.push(token("ops", &"a".repeat(64)));
        assert_eq!(h.warnings()[0].0, "http");
        h.listen = "127.0.0.1:8080".into();
        assert_eq!(h.warnings(), vec![]);
    }

    #[test]
    fn tokens_and_limits_are_checked() {
        let mut config: Config = toml::from_str("[device]\nid = \"x\"\n").unwrap();
        config.http.tokens = vec![
            token("ops", &"a".repeat(64)),
            token("ops", &"A".repeat(64)),
            token("bad name", "abc"),
        ];
        config.http.max_connections = 0;
        config.http.max_query_bytes = 10;
        let mut c = Checker::default();
        check_http(&mut c, &config);
        let paths: Vec<&str> = c.issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "http.tokens[1].name",
                "http.tokens[1].sha256",
                "http.tokens[2].name",
                "http.tokens[2].sha256",
                "http.max_connections",
                "http.max_query_bytes"
            ]
        );
        assert!(c.issues[1].message.contains("same token as http.tokens[0]"));
    }
}
