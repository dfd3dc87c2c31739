//! The MQTT link's TLS files (`[mqtt] ca_file`, `cert_file`, `key_file`): read (bounded),
//! PEM-decoded and checked: a CA file holding certificates, a client certificate valid now, a
//! private key that is a well-formed DER structure. Each problem is a message for the field that
//! names the file, so config loading locates it like any other error; the link reads the files
//! again through [`TlsFiles::read`] on every connection and when their contents change.
//!
//! Pure: no TLS library and no cryptography here (the link's rustls does the handshake and
//! checks that the key belongs to the certificate).

use super::MqttConfig;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Tagged};

/// Largest TLS file read: a CA bundle of a few hundred certificates fits.
pub const MAX_TLS_FILE: u64 = 1 << 20;

/// A client certificate that expires sooner than this draws a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// One problem with a TLS file, for the config field that names it (`mqtt.cert_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIssue {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for TlsIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The client's identity: its certificate chain (leaf first) and private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf's subject, e.g. `CN=box-a,O=Example`.
    pub subject: String,
    /// The leaf's common name: the user name a broker with `use_identity_as_username` sees.
    pub common_name: Option<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// What the TLS files of an `[mqtt]` table hold.
#[derive(Debug)]
pub struct TlsFiles {
    /// Certificates the broker's certificate must chain to.
    pub ca: Vec<CertificateDer<'static>>,
    /// For mutual TLS; `None` when `cert_file`/`key_file` are not set.
    pub identity: Option<Identity>,
    /// The files' contents, to tell when they change.
    pub contents: Vec<u8>,
    /// With [`Validity::Warn`]: why the client certificate is not valid now (expired, or not
    /// yet valid by this box's clock).
    pub validity: Option<TlsIssue>,
}

/// Whether a client certificate outside its validity period (by this box's clock) is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// An error: `vigil check-config`.
    Required,
    /// A warning ([`TlsFiles::validity`]): `vigil run`, reloads and the link.
    Warn,
}

impl TlsFiles {
    /// Reads and checks the TLS files; `Ok(None)` when TLS is off (no `ca_file`). Every
    /// problem is reported, not only the first. A client certificate not valid at `now` is an
    /// error with [`Validity::Required`] (`vigil check-config`), and with [`Validity::Warn`]
    /// (starting, reloading, connecting) only [`TlsFiles::validity`]: a box that boots with a
    /// wrong clock, or whose renewal is late, still starts, analyses and spools its events,
    /// and its link connects once the clock is right or the renewed files are in place (the
    /// broker decides on the certificate).
    pub fn read(
        mqtt: &MqttConfig,
        now: SystemTime,
        validity: Validity,
    ) -> Result<Option<Self>, Vec<TlsIssue>> {
        let Some(ca_path) = &mqtt.ca_file else {
            return Ok(None);
        };
        let mut issues = Vec::new();
        let mut contents = Vec::new();
        let mut read = |field: &'static str, path: &Path, what: &str| match read_bounded(path) {
            Ok(bytes) => {
                contents.extend_from_slice(&bytes);
                contents.push(0);
                Some(bytes)
            }
            Err(message) => {
                issues.push(TlsIssue {
                    field,
                    message: format!("{message} (expected {what}; a relative path is relative to the config file's directory)"),
                });
                None
            }
        };
        let ca_text = read("mqtt.ca_file", ca_path, "a PEM file of CA certificates");
        let (cert_text, key_text) = match (&mqtt.cert_file, &mqtt.key_file) {
            (Some(c), Some(k)) => (
                read("mqtt.cert_file", c, "the PEM client certificate"),
                read(
                    "mqtt.key_file",
                    k,
                    "the PEM private key of the client certificate",
                ),
            ),
            _ => (None, None),
        };
        let ca = ca_text
            .and_then(|t| certificates("mqtt.ca_file", ca_path, &t, "CA certificates", &mut issues))
            .unwrap_or_default();
        let chain = match (&mqtt.cert_file, cert_text) {
            (Some(p), Some(t)) => {
                certificates("mqtt.cert_file", p, &t, "a client certificate", &mut issues)
            }
            _ => None,
        };
        let key = match (&mqtt.key_file, key_text) {
            (Some(p), Some(t)) => private_key(p, &t, &mut issues),
            _ => None,
        };
        let mut out_of_date = None;
        let identity = match (chain, key, &mqtt.cert_file) {
            (Some(chain), Some(key), Some(path)) => {
                leaf_identity(path, chain, key, now, &mut out_of_date)
            }
            _ => None,
        };
        if let Some(problem) = out_of_date.take() {
            match validity {
                Validity::Required => issues.push(problem),
                Validity::Warn => out_of_date = Some(problem),
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Some(Self {
            ca,
            identity,
            contents,
            validity: out_of_date,
        }))
    }

    /// What is allowed but probably a mistake: a client certificate about to expire, one whose
    /// common name is not the device id (a broker mapping the CN to the user name, with a
    /// per-device ACL, will refuse this box's topics), a private key others may read.
    pub fn warnings(&self, mqtt: &MqttConfig, device_id: &str, now: SystemTime) -> Vec<TlsIssue> {
        let mut out = Vec::new();
        let Some(id) = &self.identity else {
            return out;
        };
        if let Some(v) = &self.validity {
            out.push(v.clone());
        } else if let Ok(left) = id.not_after.duration_since(now)
            && left < EXPIRY_WARNING
        {
            out.push(TlsIssue {
                field: "mqtt.cert_file",
                message: format!(
                    "client certificate ({}) expires in {} days, on {} (expected a renewal before then; the broker will refuse it after)",
                    id.subject,
                    left.as_secs() / 86_400,
                    rfc3339(id.not_after)
                ),
            });
        }
        if id.common_name.as_deref() != Some(device_id) {
            out.push(TlsIssue {
                field: "mqtt.cert_file",
                message: format!(
                    "client certificate's common name is {} but device.id is {device_id:?} (expected CN={device_id} where the broker maps the certificate to the user name and allows each box only its own topics)",
                    id.common_name.as_deref().map_or("missing".into(), |cn| format!("{cn:?}"))
                ),
            });
        }
        #[cfg(unix)]
        if let Some(key) = &mqtt.key_file
            && let Ok(meta) = std::fs::metadata(key)
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                out.push(TlsIssue {
                    field: "mqtt.key_file",
                    message: format!(
                        "private key {} has mode {mode:o}: other users may read it (expected 600 or 400, owned by the user vigil runs as)",
                        key.display()
                    ),
                });
            }
        }
        out
    }
}

/// The paths of the TLS files that are set.
pub fn tls_paths(mqtt: &MqttConfig) -> Vec<PathBuf> {
    [&mqtt.ca_file, &mqtt.cert_file, &mqtt.key_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// The TLS files' contents as [`TlsFiles::contents`] holds them (a file that cannot be read
/// counts as empty), to tell when they change without parsing them.
pub fn tls_contents(mqtt: &MqttConfig) -> Vec<u8> {
    let mut out = Vec::new();
    for p in tls_paths(mqtt) {
        out.extend(read_bounded(&p).unwrap_or_default());
        out.push(0);
    }
    out
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file {} not found", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_TLS_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_TLS_FILE {
        return Err(format!(
            "{} is larger than {} KiB",
            path.display(),
            MAX_TLS_FILE >> 10
        ));
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block of a PEM text, each parsed as X.509; `None` (with an issue) when
/// there is none or one is malformed.
fn certificates(
    field: &'static str,
    path: &Path,
    text: &[u8],
    what: &str,
    issues: &mut Vec<TlsIssue>,
) -> Option<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(text).enumerate() {
        let problem = match item {
            Ok(der) => match Certificate::from_der(der.as_ref()) {
                Ok(_) => {
                    out.push(der);
                    continue;
                }
                Err(e) => format!(
                    "certificate {} of {} is not valid X.509: {e}",
                    i + 1,
                    path.display()
                ),
            },
            Err(e) => format!("{} is not valid PEM: {e}", path.display()),
        };
        issues.push(TlsIssue {
            field,
            message: format!("{problem} (expected {what} in PEM)"),
        });
        return None;
    }
    if out.is_empty() {
        issues.push(TlsIssue {
            field,
            message: format!(
                "{} holds no certificate (expected {what} in PEM, each between -----BEGIN CERTIFICATE----- and -----END CERTIFICATE-----)",
                path.display()
            ),
        });
        return None;
    }
    Some(out)
}

fn private_key(
    path: &Path,
    text: &[u8],
    issues: &mut Vec<TlsIssue>,
) -> Option<PrivateKeyDer<'static>> {
    let expected =
        "expected an unencrypted PEM private key: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY";
    let mut err = |message: String| {
        issues.push(TlsIssue {
            field: "mqtt.key_file",
            message: format!("{message} ({expected})"),
        });
        None
    };
    if text.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY") {
        return err(format!("{} is an encrypted private key", path.display()));
    }
    let mut found = None;
    for item in rustls_pki_types::pem::SliceIter::<(SectionKind, Vec<u8>)>::new(text) {
        match item {
            Ok((kind, der)) => {
                let key = match kind {
                    SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
                    SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
                    SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
                    _ => continue,
                };
                found = Some(key);
                break;
            }
            Err(e) => return err(format!("{} is not valid PEM: {e}", path.display())),
        }
    }
    let Some(key) = found else {
        return err(format!("{} holds no private key", path.display()));
    };
    // A key is one DER SEQUENCE; the link's rustls checks the rest (algorithm, that it
    // belongs to the certificate).
    match x509_cert::der::asn1::AnyRef::from_der(key.secret_der()) {
        Ok(any) if any.tag() == x509_cert::der::Tag::Sequence => Some(key),
        Ok(_) => err(format!(
            "the private key in {} is not a DER SEQUENCE",
            path.display()
        )),
        Err(e) => err(format!(
            "the private key in {} is malformed: {e}",
            path.display()
        )),
    }
}

/// The leaf certificate's names and validity; `out_of_date` says why when it is not valid at
/// `now` (the identity is returned all the same).
fn leaf_identity(
    path: &Path,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    now: SystemTime,
    out_of_date: &mut Option<TlsIssue>,
) -> Option<Identity> {
    let leaf = Certificate::from_der(chain.first()?.as_ref()).ok()?;
    let tbs = &leaf.tbs_certificate;
    let subject = tbs.subject.to_string();
    let common_name = subject
        .split(',')
        .find_map(|part| part.trim().strip_prefix("CN="))
        .map(str::to_string);
    let at = |t: x509_cert::time::Time| UNIX_EPOCH + t.to_unix_duration();
    let (not_before, not_after) = (at(tbs.validity.not_before), at(tbs.validity.not_after));
    let problem = if now > not_after {
        Some(format!(
            "client certificate {} ({subject}) expired on {}",
            path.display(),
            rfc3339(not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "client certificate {} ({subject}) is not valid before {} (is the clock right? it reads {})",
            path.display(),
            rfc3339(not_before),
            rfc3339(now)
        ))
    } else {
        None
    };
    if let Some(p) = problem {
        *out_of_date = Some(TlsIssue {
            field: "mqtt.cert_file",
            message: format!("{p} (expected a certificate valid now)"),
        });
    }
    Some(Identity {
        chain,
        key,
        subject,
        common_name,
        not_before,
        not_after,
    })
}

/// `2026-01-31T12:00:00Z` (UTC, seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_as_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
    }

    #[test]
    fn files_that_are_missing_empty_or_not_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("vigil-core-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let bad_key = dir.join("bad.key");
        std::fs::write(
            &bad_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let mqtt = MqttConfig {
            ca_file: Some(empty.clone()),
            cert_file: Some(dir.join("missing.crt")),
            key_file: Some(bad_key),
            ..MqttConfig::default()
        };
        let issues = TlsFiles::read(&mqtt, SystemTime::now(), Validity::Required).unwrap_err();
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(issues.len(), 3, "{text:?}");
        assert!(text[0].starts_with("mqtt.cert_file: file ") && text[0].contains("not found"));
        assert!(text[1].starts_with("mqtt.ca_file: ") && text[1].contains("holds no certificate"));
        assert!(
            text[2].starts_with("mqtt.key_file: ") && text[2].contains("malformed"),
            "{}",
            text[2]
        );
        let off = MqttConfig::default();
        assert!(
            TlsFiles::read(&off, SystemTime::now(), Validity::Required)
                .unwrap()
                .is_none()
        );
    }
}
