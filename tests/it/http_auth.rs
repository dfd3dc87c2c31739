//! The HTTP API's bearer tokens and the secrets out of the config file, on the real binary:
//! tokens made by `vigil token new`, their digests read from a systemd credential and a 0600
//! file; 401 without a token, 403 for a read token on an admin route; the MQTT password from a
//! credential, never shown by `/api/config`, `cmd/config/get` or the logs; HTTPS with a
//! certificate made here; located errors for a key file others can read and a missing
//! credential.

use crate::common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A config with no camera: the API, the spool and the link only. `http` is the body of the
/// `[http]` table, `mqtt_extra` more lines of `[mqtt]`.
pub fn bare_config(device: &str, dir: &Path, mqtt: u16, mqtt_extra: &str, http: &str) -> String {
    format!(
        "[device]\nid = \"{device}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt}\n{mqtt_extra}\n\n\
         [storage]\ndir = \"{}\"\n\n[http]\n{http}\n",
        dir.join("state").display()
    )
}

/// Writes `text` to `path` with `mode`.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `vigil token new --scope SCOPE`: (token, digest).
fn new_token(scope: &str) -> (String, String) {
    let out = Command::new(vigil_bin())
        .args(["token", "new", "--scope", scope])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().nth(1).unwrap().trim().to_string();
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    assert!(text.contains(&format!("scope = \"{scope}\"")), "{text}");
    (token, digest)
}

#[test]
fn tokens_scopes_and_secrets_kept_out_of_every_view() {
    let _cpu = shared();
    let dir = temp_dir("http-auth");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    let sub = Subscriber::start(mqtt, &["vigil/auth/#"]);
    let (read_token, read_digest) = new_token("read");
    let (admin_token, admin_digest) = new_token("admin");
    assert_ne!(read_token, admin_token);
    // The read digest and the broker password as systemd credentials, the admin digest in a
    // private file.
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    write_mode(&creds.join("dash"), &format!("{read_digest}\n"), 0o400);
    let password = "br0ker-Pa55word";
    write_mode(&creds.join("mqtt"), password, 0o400);
    write_mode(&dir.join("admin.sha256"), &admin_digest, 0o600);
    let http = "listen = \"127.0.0.1:0\"\n\
         [[http.tokens]]\nname = \"dash\"\nscope = \"read\"\nsha256 = \"${credential:dash}\"\n\
         [[http.tokens]]\nname = \"ops\"\nscope = \"admin\"\nsha256 = \"${file:admin.sha256}\"\n\
         # formerly: rtsp://viewer:oldpass@10.0.0.9/live\n";
    let cfg = dir.join("vigil.toml");
    let mqtt_extra = "username = \"vigil\"\npassword = \"${credential:mqtt}\"";
    std::fs::write(&cfg, bare_config("auth", &dir, mqtt, mqtt_extra, http)).unwrap();
    let (mut vigil, logs) = vigil_run_with(
        &cfg,
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
        true,
    );
    let addr = http_addr(&logs);
    let read = bearer(&read_token);
    let admin = bearer(&admin_token);

    // /healthz is open (200 or 503, never 401).
    let r = request(&addr, "GET", "/healthz", &[], "");
    assert!(r.code == 200 || r.code == 503, "{}", r.body);

    // No token: 401 with the challenge, on every read and admin route.
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/api/cameras"),
        ("GET", "/api/events"),
        ("GET", "/api/config"),
        ("POST", "/api/reload"),
    ] {
        let r = request(&addr, method, path, &[], "");
        assert_eq!(r.code, 401, "{method} {path}: {}", r.body);
        assert!(
            r.head.contains("www-authenticate: bearer realm=\"vigil\""),
            "{method} {path}: {}",
            r.head
        );
    }
    let r = request(
        &addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer vgl_nope")],
        "",
    );
    assert_eq!(r.code, 401);
    assert!(r.head.contains("error=\"invalid_token\""), "{}", r.head);

    // A read token reads, and is refused the admin routes with 403.
    for path in ["/metrics", "/api/cameras", "/api/events?from_seq=1"] {
        let r = request(&addr, "GET", path, &[("Authorization", &read)], "");
        assert_eq!(r.code, 200, "{path}: {}", r.body);
    }
    for (method, path) in [("GET", "/api/config"), ("POST", "/api/reload")] {
        let r = request(&addr, method, path, &[("Authorization", &read)], "");
        assert_eq!(r.code, 403, "{method} {path}: {}", r.body);
        assert!(
            r.head.contains("error=\"insufficient_scope\""),
            "{}",
            r.head
        );
    }

    // The admin token: the config view (the reference as written, no secret), a reload, and a
    // camera that does not exist.
    let r = request(
        &addr,
        "GET",
        "/api/config",
        &[("Authorization", &admin)],
        "",
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let view: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let toml = view["toml"].as_str().unwrap();
    assert!(toml.contains("password = \"${credential:mqtt}\""), "{toml}");
    assert!(toml.contains("rtsp://***@10.0.0.9/live"), "{toml}");
    assert!(
        !toml.contains("oldpass") && !toml.contains(password),
        "{toml}"
    );
    let r = request(
        &addr,
        "POST",
        "/api/reload",
        &[("Authorization", &admin)],
        "",
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let r = request(
        &addr,
        "POST",
        "/api/cameras/nope/restart",
        &[("Authorization", &admin)],
        "",
    );
    assert_eq!(r.code, 404, "{}", r.body);

    // cmd/config/get over MQTT shows the same masked text.
    let t0 = Instant::now();
    while sub.on("/status").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the link connects");
        std::thread::sleep(Duration::from_millis(100));
    }
    mqtt_publish(mqtt, "vigil/auth/cmd/config/get", r#"{"request_id": "g1"}"#);
    let reply = sub
        .wait(Duration::from_secs(20), |m| {
            m.topic.ends_with("/config/get/reply") && m.json["request_id"] == "g1"
        })
        .expect("config/get reply")
        .json;
    let text = reply["data"]["toml"].as_str().unwrap();
    assert_eq!(text, toml, "the MQTT and HTTP views are the same text");

    vigil.terminate(Duration::from_secs(10));
    let logged: String = logs.snapshot().into_iter().map(|(_, l)| l + "\n").collect();
    for secret in [password, "oldpass", &read_token, &admin_token] {
        assert!(!logged.contains(secret), "{secret} logged");
    }
}

#[test]
fn https_serves_with_a_token_and_bad_key_files_are_located_errors() {
    let _cpu = shared();
    let dir = temp_dir("http-tls");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("http.crt"), dir.join("http.key"));
    write_mode(&cert_path, &cert.cert.pem(), 0o644);
    write_mode(&key_path, &cert.key_pair.serialize_pem(), 0o644);
    let (token, digest) = new_token("read");
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!(
        "listen = \"{addr}\"\n[http.tls]\ncert = \"http.crt\"\nkey = \"http.key\"\n\
         [[http.tokens]]\nname = \"dash\"\nscope = \"read\"\nsha256 = \"{digest}\"\n"
    );
    let cfg = dir.join("vigil.toml");
    std::fs::write(&cfg, bare_config("tls", &dir, mqtt, "", &http)).unwrap();

    // A key file others can read: a located error, and `run` refuses to start.
    let out = Command::new(vigil_bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let key_line = http_line(&cfg, "key = ");
    assert!(
        err.contains(&format!("{}:{key_line}:", cfg.display()))
            && err.contains("http.tls.key: ")
            && err.contains("mode 0644")
            && err.contains("0600"),
        "{err}"
    );
    write_mode(&key_path, &cert.key_pair.serialize_pem(), 0o600);

    let (_vigil, logs) = vigil_run(&cfg);
    logs.wait_for(Duration::from_secs(20), |l| {
        l.contains(&format!("HTTP API on https://{addr} "))
    })
    .expect("HTTPS API started");
    let root = ureq::tls::Certificate::from_der(cert.cert.der().as_ref()).to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    root,
                ])))
                .build(),
        )
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("https://{addr}/api/events");
    let r = agent
        .get(&url)
        .header("Authorization", &bearer(&token))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = agent.get(&url).call().unwrap();
    assert_eq!(r.status(), 401, "no token over TLS either");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "{buf:?}");
}

/// The 1-based line of the config file that starts with `prefix`.
fn http_line(cfg: &Path, prefix: &str) -> usize {
    std::fs::read_to_string(cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with(prefix))
        .unwrap()
        + 1
}

#[test]
fn secrets_that_cannot_be_read_are_located_errors() {
    let _cpu = shared();
    let dir = temp_dir("http-secrets");
    write_mode(&dir.join("open.pass"), "x", 0o644);
    let cfg = dir.join("vigil.toml");
    let mqtt_extra = "password = \"${credential:mqtt}\"";
    let http = "listen = \"\"\n[[http.tokens]]\nname = \"a\"\nscope = \"admin\"\nsha256 = \"${file:open.pass}\"\n";
    std::fs::write(&cfg, bare_config("secrets", &dir, 1883, mqtt_extra, http)).unwrap();
    let out = Command::new(vigil_bin())
        .arg("check-config")
        .arg(&cfg)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let at = |prefix: &str| format!("{}:{}:", cfg.display(), http_line(&cfg, prefix));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&at("password = "))
            && lines[0]
                .contains("mqtt.password: credential \"mqtt\": $CREDENTIALS_DIRECTORY is not set")
            && lines[0].contains("LoadCredential=mqtt:"),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&at("sha256 = "))
            && lines[1].contains("http.tokens[0].sha256: secret file: ")
            && lines[1].contains("mode 0644"),
        "{err}"
    );
}
