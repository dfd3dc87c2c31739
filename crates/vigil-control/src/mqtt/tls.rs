//! TLS for the MQTT link: a rustls client configuration (ring) from the files of `[mqtt]`
//! (the broker verified against `ca_file`, for `server_name` or else `host`; the client
//! certificate of `cert_file`/`key_file` for mutual TLS), and connection errors turned into one
//! line that says which side refused what, naming the file to look at.
//!
//! The files are read by vigil-core's [`TlsFiles`] (the same checks as config loading), again
//! for every connection, so a renewed certificate is used by the next one; the link compares
//! their contents every few seconds and reconnects when they change.

use rumqttc::ConnectionError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct};
use std::sync::Arc;
use vigil_core::config::{MqttConfig, TlsFiles, TlsIssue, Validity};

/// Reads the TLS files and makes the client configuration as the link would (`Ok(None)`: TLS
/// off): what `vigil check-config` runs beyond config loading (that the key goes with the
/// certificate, that rustls can use them).
pub fn check(mqtt: &MqttConfig) -> Result<Option<Arc<ClientConfig>>, Vec<TlsIssue>> {
    match TlsFiles::read(mqtt, std::time::SystemTime::now(), Validity::Required)? {
        Some(files) => client_config(mqtt, &files).map(Some).map_err(|e| vec![e]),
        None => Ok(None),
    }
}

fn issue(field: &'static str, message: String) -> TlsIssue {
    TlsIssue { field, message }
}

/// A rustls client configuration for the link; the error names the field.
pub fn client_config(mqtt: &MqttConfig, files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsIssue> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(files.ca.iter().cloned());
    if roots.is_empty() {
        return Err(issue(
            "mqtt.ca_file",
            format!(
                "none of the {ignored} certificates is usable as a trust anchor (expected CA certificates in PEM)"
            ),
        ));
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| issue("mqtt", format!("TLS set-up: {e}")))?;
    let builder = match &mqtt.server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let name = ServerName::try_from(name.clone()).map_err(|e| {
                issue(
                    "mqtt.server_name",
                    format!("{name:?}: {e} (expected a DNS name or IP address)"),
                )
            })?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| issue("mqtt.ca_file", e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NameOverride { inner, name }))
        }
    };
    let config = match &files.identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| {
                issue(
                    "mqtt.key_file",
                    format!(
                        "the key does not go with the certificate of mqtt.cert_file, or is not a key rustls can use: {e} (expected the private key of {})",
                        id.subject
                    ),
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Checks the broker's certificate for a configured name (`server_name`) instead of the host
/// the link connects to; everything else is webpki's verification.
#[derive(Debug)]
struct NameOverride {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a connection failed, in one line, and whether retrying soon is pointless (the broker
/// or this box refused: a certificate, a name, credentials), which slows the back-off.
pub fn explain(e: &ConnectionError, mqtt: &MqttConfig) -> (String, bool) {
    let file = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or_else(|| "(not set)".to_string(), |p| p.display().to_string())
    };
    if let ConnectionError::ConnectionRefused(code) = e {
        let hint = match code {
            rumqttc::ConnectReturnCode::NotAuthorized
            | rumqttc::ConnectReturnCode::BadUserNamePassword => {
                " (check mqtt.username/password, or that the client certificate's CN is a user the broker's ACL knows)"
            }
            _ => "",
        };
        return (
            format!("the broker refused the connection: {code:?}{hint}"),
            true,
        );
    }
    let Some(tls) = find_rustls(e) else {
        return (e.to_string(), false);
    };
    let name = mqtt.server_name.as_deref().unwrap_or(&mqtt.host);
    let ca = file(&mqtt.ca_file);
    let cert = file(&mqtt.cert_file);
    let text = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the broker's certificate is not signed by a CA of mqtt.ca_file {ca} ({c:?}); the broker is not trusted"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the broker's certificate has expired ({c:?})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!(
                    "the broker's certificate is not valid yet ({c:?}); is this box's clock right?"
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the broker's certificate is not valid for {name:?} (expected mqtt.server_name, or mqtt.host, to be a name in the broker's certificate)"
                )
            }
            other => format!("the broker's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => {
            let why = match alert {
                AlertDescription::CertificateExpired => {
                    format!("says this box's client certificate mqtt.cert_file {cert} has expired")
                }
                AlertDescription::UnknownCA => format!(
                    "does not trust this box's client certificate mqtt.cert_file {cert}: it is not signed by a CA the broker knows"
                ),
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied => {
                    format!("refused this box's client certificate mqtt.cert_file {cert}")
                }
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
                    if mqtt.cert_file.is_none() =>
                {
                    "requires a client certificate (expected mqtt.cert_file and mqtt.key_file)"
                        .to_string()
                }
                _ => "ended the TLS handshake".to_string(),
            };
            format!("the broker {why} (TLS alert {alert:?})")
        }
        other => format!("TLS: {other}"),
    };
    (text, true)
}

/// The rustls error inside a connection error, if any (an `io::Error` carries it as its inner
/// error, which `source()` skips).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_tls(e: rustls::Error) -> ConnectionError {
        ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )))
    }

    #[test]
    fn refusals_name_the_side_and_the_file() {
        let mqtt = MqttConfig {
            ca_file: Some("/etc/vigil/ca.pem".into()),
            cert_file: Some("/etc/vigil/box.crt".into()),
            ..MqttConfig::default()
        };
        let (text, refused) = explain(
            &io_tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            &mqtt,
        );
        assert!(refused);
        assert!(
            text.contains("not signed by a CA of mqtt.ca_file /etc/vigil/ca.pem"),
            "{text}"
        );
        let (text, _) = explain(
            &io_tls(rustls::Error::AlertReceived(
                AlertDescription::CertificateExpired,
            )),
            &mqtt,
        );
        assert!(
            text.contains("client certificate mqtt.cert_file /etc/vigil/box.crt has expired"),
            "{text}"
        );
        let plain = ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(explain(&plain, &mqtt), ("I/O: refused".to_string(), false));
    }
}
