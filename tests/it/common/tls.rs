//! A test PKI (rcgen: a CA, the broker's certificate, client certificates with a chosen common
//! name and validity, and a second CA nobody trusts) and a real mosquitto with a TLS listener
//! that requires a client certificate, takes its CN as the user name, and lets each user touch
//! only `vigil/<user>/#` (`pattern readwrite vigil/%u/#`); the user `admin` may touch all.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::time::SystemTime;

/// The name the broker's certificate is issued for (besides `localhost` and 127.0.0.1).
pub const BROKER_NAME: &str = "broker.vigil.test";

/// A certificate authority that signs certificates into files of a directory.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub file: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, cert.pem()).unwrap();
        Self {
            cert,
            key,
            dir: dir.to_path_buf(),
            file,
        }
    }

    fn sign(
        &self,
        file: &str,
        cn: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        valid: (SystemTime, SystemTime),
    ) -> Pair {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        p.not_before = valid.0.into();
        p.not_after = valid.1.into();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        set_mode_600(&pair.key);
        pair
    }

    /// The broker's certificate: `localhost`, 127.0.0.1 and [`BROKER_NAME`].
    pub fn broker(&self) -> Pair {
        self.sign(
            "broker",
            BROKER_NAME,
            &["localhost", "127.0.0.1", BROKER_NAME],
            ExtendedKeyUsagePurpose::ServerAuth,
            around_now(),
        )
    }

    /// A client certificate with common name `cn`, valid from a day ago for a year.
    pub fn client(&self, file: &str, cn: &str) -> Pair {
        self.client_valid(file, cn, around_now())
    }

    /// A client certificate valid between the two times.
    pub fn client_valid(&self, file: &str, cn: &str, valid: (SystemTime, SystemTime)) -> Pair {
        self.sign(file, cn, &[], ExtendedKeyUsagePurpose::ClientAuth, valid)
    }
}

fn around_now() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(365 * 86_400),
    )
}

pub fn set_mode_600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The test's PKI: the trusted CA with the broker's certificate and an `admin` client, and a
/// CA nobody trusts.
pub struct Pki {
    pub ca: Ca,
    pub rogue: Ca,
    pub broker: Pair,
    pub admin: Pair,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let ca = Ca::new(dir, "vigil-test-ca");
        let rogue = Ca::new(dir, "rogue-ca");
        let broker = ca.broker();
        let admin = ca.client("admin", "admin");
        Self {
            ca,
            rogue,
            broker,
            admin,
        }
    }
}

/// A real mosquitto with one TLS listener on 127.0.0.1:`port`: client certificates required
/// and signed by the test CA, the CN as user name, each user only `vigil/<user>/#`. Its log
/// goes to `<dir>/mosquitto-tls-<port>.log`.
pub fn mosquitto_tls(dir: &Path, port: u16, pki: &Pki) -> Proc {
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user admin\ntopic readwrite #\n\npattern readwrite vigil/%u/#\n",
    )
    .unwrap();
    let conf = dir.join(format!("mosquitto-tls-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            // `user root`: started as root, mosquitto would become `mosquitto` and could not
            // read the keys (mode 600) or write its log; as another user it is ignored.
            "user root\nper_listener_settings false\nallow_anonymous false\npersistence false\n\
             acl_file {acl}\nlog_dest file {log}\nlog_type all\nconnection_messages true\n\
             listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\n",
            acl = acl.display(),
            log = dir.join(format!("mosquitto-tls-{port}.log")).display(),
            ca = pki.ca.file.display(),
            cert = pki.broker.cert.display(),
            key = pki.broker.key.display(),
        ),
    )
    .unwrap();
    mosquitto_with(&conf, port, "mosquitto-tls")
}

/// `mosquitto_sub`/`mosquitto_pub` arguments for the TLS broker as `pair`.
pub fn tls_args(pki: &Pki, pair: &Pair) -> Vec<String> {
    [
        "--cafile",
        &pki.ca.file.display().to_string(),
        "--cert",
        &pair.cert.display().to_string(),
        "--key",
        &pair.key.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A subscriber on the TLS broker as `admin` (which may read every topic).
pub fn admin_subscriber(port: u16, pki: &Pki, topics: &[&str]) -> Subscriber {
    Subscriber::start_with(port, &tls_args(pki, &pki.admin), topics)
}

/// Publishes one QoS 1 message on the TLS broker as `admin`; panics if it fails.
pub fn admin_publish(port: u16, pki: &Pki, topic: &str, payload: &str) {
    let ok = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(tls_args(pki, &pki.admin))
        .args(["-t", topic, "-m", payload])
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success(), "mosquitto_pub to {topic} failed");
}
