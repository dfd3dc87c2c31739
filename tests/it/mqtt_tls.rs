//! MQTT over TLS against a real mosquitto with a TLS listener that requires a client
//! certificate, takes its CN as the user name and lets each box touch only `vigil/<CN>/#`
//! (`common::tls`). The link is Vigil's own (`common::link`, in this process) or `vigil run`;
//! certificates are made by the test (rcgen): a CA, the broker's, box A's and box B's, expired
//! and short-lived ones, and ones of a CA nobody trusts.

use crate::common::link::{TestLink, retained};
use crate::common::tls::*;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use vigil_core::config::{Dur, MqttConfig};

/// The `[mqtt]` table of box `device` on the TLS broker with the client certificate `pair`.
fn tls_mqtt(port: u16, pki: &Pki, pair: &Pair) -> MqttConfig {
    MqttConfig {
        host: "127.0.0.1".into(),
        port,
        keep_alive: Dur::secs(5),
        ca_file: Some(pki.ca.file.clone()),
        cert_file: Some(pair.cert.clone()),
        key_file: Some(pair.key.clone()),
        ..MqttConfig::default()
    }
}

fn no_status() -> vigil_control::mqtt::commands::StatusFn {
    Arc::new(|| serde_json::json!({"ok": true}))
}

fn setup(name: &str) -> (PathBuf, u16, Pki, Proc) {
    let dir = temp_dir(name);
    let port = free_port();
    let pki = Pki::new(&dir);
    let broker = mosquitto_tls(&dir, port, &pki);
    (dir, port, pki, broker)
}

#[test]
fn a_box_with_its_own_certificate_is_online_delivers_events_and_answers_commands() {
    let _cpu = shared();
    let (dir, port, pki, _broker) = setup("mqtt-tls-own");
    let sub = admin_subscriber(port, &pki, &["vigil/boxa/#"]);
    let boxa = pki.ca.client("boxa", "boxa");
    let link = TestLink::start(&dir, &tls_mqtt(port, &pki, &boxa), "boxa", no_status());
    assert!(
        link.wait(Duration::from_secs(10), TestLink::connected),
        "box A did not connect: {:?}",
        link.last_error()
    );
    let seqs: Vec<u64> = (0..3).map(|_| link.event("door")).collect();
    let online = sub.wait(Duration::from_secs(5), |m| {
        m.topic == "vigil/boxa/status" && m.json["state"] == "online"
    });
    assert!(online.is_some(), "status online: {:?}", sub.messages());
    assert!(
        sub.wait(Duration::from_secs(5), |_| sub.on("/events/door").len()
            >= 3)
            .is_some(),
        "3 events: {:?}",
        sub.messages()
    );
    let got: Vec<u64> = sub
        .on("/events/door")
        .iter()
        .filter_map(|m| m.json["seq"].as_u64())
        .collect();
    assert_eq!(got, seqs);
    assert!(link.wait(Duration::from_secs(5), |l| l.acked() == 3));
    admin_publish(port, &pki, "vigil/boxa/cmd/ping", r#"{"request_id": "p1"}"#);
    let reply = sub.wait(Duration::from_secs(5), |m| {
        m.topic == "vigil/boxa/cmd/ping/reply"
    });
    assert_eq!(reply.map(|m| m.json["status"].clone()), Some("ok".into()));
    assert_eq!(link.last_error(), None);

    // The broker's name may differ from the host connected to: server_name is what is checked.
    let named = MqttConfig {
        server_name: Some(BROKER_NAME.into()),
        ..tls_mqtt(port, &pki, &pki.ca.client("boxa2", "boxa"))
    };
    let link2 = TestLink::start(&dir, &named, "boxa", no_status());
    assert!(
        link2.wait(Duration::from_secs(10), TestLink::connected),
        "with server_name {BROKER_NAME}: {:?}",
        link2.last_error()
    );
}

#[test]
fn another_boxs_certificate_can_neither_publish_to_nor_read_this_boxs_topics() {
    let _cpu = shared();
    let (dir, port, pki, _broker) = setup("mqtt-tls-other");
    let sub = admin_subscriber(port, &pki, &["vigil/boxa/#"]);
    // Box B's certificate in a Vigil that says it is box A.
    let boxb = pki.ca.client("boxb", "boxb");
    let impostor = TestLink::start(&dir, &tls_mqtt(port, &pki, &boxb), "boxa", no_status());
    // mosquitto accepts the connection and drops, silently, what it may not do: the link
    // notices that its own status never comes back, and says why.
    let reason = impostor.wait_error(Duration::from_secs(12), "ACL");
    eprintln!("box B's certificate as box A: {reason}");
    assert!(reason.contains("CN is \"boxb\""), "{reason}");
    impostor.event("door");
    admin_publish(port, &pki, "vigil/boxa/cmd/ping", r#"{"request_id": "p2"}"#);
    std::thread::sleep(Duration::from_secs(3));
    let leaked: Vec<Msg> = sub
        .messages()
        .into_iter()
        .filter(|m| m.topic != "vigil/boxa/cmd/ping")
        .collect();
    assert!(
        leaked.is_empty(),
        "box B's certificate reached box A's topics: {leaked:?}"
    );
    assert_eq!(
        impostor
            .link()
            .stats
            .commands
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "box B's certificate read a command of box A"
    );
    assert_eq!(impostor.acked(), 0);

    // The same certificate on its own box's topics works.
    let own = TestLink::start(&dir, &tls_mqtt(port, &pki, &boxb), "boxb", no_status());
    assert!(
        own.wait(Duration::from_secs(10), |l| l.connected()
            && l.last_error().is_none()),
        "{:?}",
        own.last_error()
    );
}

#[test]
fn untrusted_expired_and_misnamed_certificates_are_refused_and_the_link_says_why() {
    let _cpu = shared();
    let (dir, port, pki, broker) = setup("mqtt-tls-refused");
    let boxa = pki.ca.client("boxa", "boxa");

    // This box's certificate from a CA the broker does not trust.
    let rogue = pki.rogue.client("boxa-rogue", "boxa");
    let link = TestLink::start(&dir, &tls_mqtt(port, &pki, &rogue), "boxa", no_status());
    let e = link.wait_error(Duration::from_secs(10), "client certificate");
    assert!(
        e.contains(&rogue.cert.display().to_string()) && e.contains("the broker"),
        "{e}"
    );
    drop(link);

    // A broker this box cannot verify (ca_file of another CA).
    let cfg = MqttConfig {
        ca_file: Some(pki.rogue.file.clone()),
        ..tls_mqtt(port, &pki, &boxa)
    };
    let link = TestLink::start(&dir, &cfg, "boxa", no_status());
    let e = link.wait_error(
        Duration::from_secs(10),
        "not signed by a CA of mqtt.ca_file",
    );
    assert!(e.contains(&pki.rogue.file.display().to_string()), "{e}");
    drop(link);

    // A name the broker's certificate does not have.
    let cfg = MqttConfig {
        server_name: Some("wrong.vigil.test".into()),
        ..tls_mqtt(port, &pki, &boxa)
    };
    let link = TestLink::start(&dir, &cfg, "boxa", no_status());
    link.wait_error(
        Duration::from_secs(10),
        "not valid for \"wrong.vigil.test\"",
    );
    drop(link);

    // A certificate that expires while the box runs: the next connection is refused, and the
    // link says the broker found it expired.
    let now = SystemTime::now();
    let short = pki.ca.client_valid(
        "boxa-short",
        "boxa",
        (
            now - Duration::from_secs(3600),
            now + Duration::from_secs(6),
        ),
    );
    let link = TestLink::start(&dir, &tls_mqtt(port, &pki, &short), "boxa", no_status());
    assert!(link.wait(Duration::from_secs(5), TestLink::connected));
    while SystemTime::now() < now + Duration::from_secs(7) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut broker = broker;
    broker.kill9();
    let _broker = mosquitto_tls(&dir, port, &pki);
    // The link tries it all the same (this box's clock may be the wrong one): the broker
    // refuses it with a "certificate expired" alert, and the link says so.
    let e = link.wait_error(Duration::from_secs(10), "expired");
    assert!(
        e.contains(&short.cert.display().to_string()) && e.contains("mqtt.cert_file"),
        "{e}"
    );
    assert!(!link.connected());
}

#[test]
fn renewed_certificate_files_are_used_without_a_restart() {
    let _cpu = shared();
    let (dir, port, pki, _broker) = setup("mqtt-tls-renew");
    let sub = admin_subscriber(port, &pki, &["vigil/boxa/status"]);
    // The box starts with a certificate the broker refuses...
    let live = Pair {
        cert: dir.join("live.crt"),
        key: dir.join("live.key"),
    };
    let install = |p: &Pair| {
        std::fs::copy(&p.cert, &live.cert).unwrap();
        std::fs::copy(&p.key, &live.key).unwrap();
        set_mode_600(&live.key);
    };
    install(&pki.rogue.client("rogue", "boxa"));
    let link = TestLink::start(&dir, &tls_mqtt(port, &pki, &live), "boxa", no_status());
    link.wait_error(Duration::from_secs(10), "client certificate");
    // ...and a good one written over it is used by the next attempt, without a restart (the
    // refusal's back-off is longer than this wait: the change itself triggers the attempt).
    install(&pki.ca.client("good1", "boxa"));
    let t0 = Instant::now();
    assert!(
        link.wait(Duration::from_secs(6), TestLink::connected),
        "not connected with the renewed files: {:?}",
        link.last_error()
    );
    eprintln!("connected {:?} after the files were renewed", t0.elapsed());
    // A renewal while connected: the link reconnects with the new files, cleanly (DISCONNECT:
    // the broker publishes no last will).
    std::thread::sleep(Duration::from_secs(1));
    install(&pki.ca.client("good2", "boxa"));
    assert!(
        link.wait(Duration::from_secs(8), |l| l.connects() == 2
            && l.connected()),
        "no reconnection with the second renewal: connects {}",
        link.connects()
    );
    std::thread::sleep(Duration::from_millis(500));
    let states: Vec<String> = sub
        .on("/status")
        .iter()
        .map(|m| m.json["state"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        !states.iter().any(|s| s == "offline"),
        "a renewal published offline: {states:?}"
    );
    assert_eq!(
        retained(port, &tls_args(&pki, &pki.admin), "vigil/boxa/status")
            .map(|v| v["state"].clone()),
        Some("online".into())
    );
}

/// The first line of `text` that contains `needle`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn check_config(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(vigil_bin())
        .arg("check-config")
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_locates_tls_file_errors_and_warns_about_plain_tcp() {
    let dir = temp_dir("mqtt-tls-check");
    let pki = Pki::new(&dir);
    let cfg = dir.join("vigil.toml");
    let write = |mqtt: &str| {
        let text = format!(
            "[device]\nid = \"boxa\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = 8883\n{mqtt}\n\n[storage]\ndir = \"{}\"\n",
            dir.join("state").display()
        );
        std::fs::write(&cfg, &text).unwrap();
        text
    };
    let files = |pair: &Pair| {
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.ca.file.display(),
            pair.cert.display(),
            pair.key.display()
        )
    };

    // Plain TCP: allowed, with a located warning, exit 0.
    write("");
    let (code, err) = check_config(&cfg);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "{}:4:1: warning: mqtt: MQTT over plain TCP",
            cfg.display()
        )),
        "{err}"
    );

    // TLS with good files: no warning at all.
    write(&files(&pki.ca.client("boxa", "boxa")));
    let (code, err) = check_config(&cfg);
    assert_eq!((code, err.as_str()), (Some(0), ""));

    // An expired certificate: a located error naming the file and the date (`vigil run` starts
    // all the same and says why: vigil_run_with_an_expired_certificate_starts_…).
    let now = SystemTime::now();
    let old = pki.ca.client_valid(
        "old",
        "boxa",
        (
            now - Duration::from_secs(90 * 86_400),
            now - Duration::from_secs(86_400),
        ),
    );
    let text = write(&files(&old));
    let (code, err) = check_config(&cfg);
    assert_eq!(code, Some(2), "{err}");
    let at = format!("{}:{}:", cfg.display(), line_of(&text, "cert_file"));
    assert!(
        err.contains(&at)
            && err.contains("mqtt.cert_file: client certificate")
            && err.contains(&old.cert.display().to_string())
            && err.contains("expired on"),
        "{err}"
    );

    // Not yet valid.
    let future = pki.ca.client_valid(
        "future",
        "boxa",
        (
            now + Duration::from_secs(86_400),
            now + Duration::from_secs(900 * 86_400),
        ),
    );
    write(&files(&future));
    let (code, err) = check_config(&cfg);
    assert!(
        code == Some(2) && err.contains("is not valid before"),
        "{err}"
    );

    // A missing key file, a CA file without certificates, a key of another certificate, a
    // certificate whose CN is not the device id (a warning).
    let good = pki.ca.client("boxa-ok", "boxa");
    let other = pki.ca.client("boxb", "boxb");
    let empty_ca = dir.join("empty-ca.pem");
    std::fs::write(&empty_ca, "# no certificates\n").unwrap();
    let text = write(&format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        empty_ca.display(),
        good.cert.display(),
        dir.join("nope.key").display()
    ));
    let (code, err) = check_config(&cfg);
    assert_eq!(code, Some(2), "{err}");
    for (field, needle) in [
        ("ca_file", "holds no certificate"),
        ("key_file", "not found"),
    ] {
        let at = format!("{}:{}:", cfg.display(), line_of(&text, field));
        assert!(
            err.lines().any(|l| l.starts_with(&at)
                && l.contains(&format!("mqtt.{field}: "))
                && l.contains(needle)),
            "{field}: {err}"
        );
    }
    let text = write(&format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.ca.file.display(),
        good.cert.display(),
        other.key.display()
    ));
    let (code, err) = check_config(&cfg);
    let at = format!("{}:{}:", cfg.display(), line_of(&text, "key_file"));
    assert!(
        code == Some(2)
            && err.contains(&at)
            && err.contains("mqtt.key_file: the key does not go with the certificate"),
        "{err}"
    );
    write(&files(&other));
    let (code, err) = check_config(&cfg);
    assert!(
        code == Some(0)
            && err
                .contains("warning: mqtt.cert_file: client certificate's common name is \"boxb\""),
        "{err}"
    );
}

/// A `vigil run` config for box A with these certificate files, HTTP on a free port.
fn run_config(dir: &Path, port: u16, pki: &Pki, pair: &Pair) -> PathBuf {
    let cfg = dir.join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[device]\nid = \"boxa\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[storage]\ndir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
            pki.ca.file.display(),
            pair.cert.display(),
            pair.key.display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn vigil_run_logs_why_the_broker_refuses_its_certificate() {
    let _cpu = shared();
    let (dir, port, pki, _broker) = setup("mqtt-tls-run");
    let rogue = pki.rogue.client("rogue", "boxa");
    let cfg = run_config(&dir, port, &pki, &rogue);
    let (_vigil, logs) = vigil_run(&cfg);
    let line = logs.wait_for(Duration::from_secs(20), |l| {
        l.contains("MQTT not connected") && l.contains("client certificate")
    });
    let line = line.map(|(_, l)| l).unwrap_or_default();
    assert!(
        line.contains(&rogue.cert.display().to_string()),
        "no log line naming the refused certificate: {line:?}"
    );
    // /healthz says it too (healthy: a link that is not connected keeps retrying).
    let (code, body) = http_get(&http_addr(&logs), "/healthz");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(health["mqtt"]["connected"], false);
    let why = health["mqtt"]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("client certificate") && why.contains(&rogue.cert.display().to_string()),
        "{body}"
    );
}

#[test]
fn vigil_run_with_an_expired_certificate_starts_and_says_why_it_is_offline() {
    // A box whose certificate renewal is late, or whose clock is wrong at boot (no RTC), still
    // starts and spools its events; the warning names the file and the date, the broker
    // refuses the certificate and /healthz says why.
    let _cpu = shared();
    let (dir, port, pki, _broker) = setup("mqtt-tls-expired-run");
    let now = SystemTime::now();
    let old = pki.ca.client_valid(
        "old",
        "boxa",
        (
            now - Duration::from_secs(90 * 86_400),
            now - Duration::from_secs(86_400),
        ),
    );
    let cfg = run_config(&dir, port, &pki, &old);
    let (code, err) = check_config(&cfg);
    assert!(code == Some(2) && err.contains("expired on"), "{err}");
    let (mut vigil, logs) = vigil_run(&cfg);
    let warned = logs.wait_for(Duration::from_secs(20), |l| {
        l.contains("WARN") && l.contains("expired on") && l.contains("starting anyway")
    });
    assert!(
        warned.is_some(),
        "no start-up warning about the expired certificate"
    );
    let refused = logs.wait_for(Duration::from_secs(20), |l| {
        l.contains("MQTT not connected") && l.contains("has expired")
    });
    assert!(
        refused.is_some(),
        "the link never said the broker refused the expired certificate"
    );
    let (code, body) = http_get(&http_addr(&logs), "/healthz");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(health["mqtt"]["connected"], false);
    let why = health["mqtt"]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("has expired")
            && why.contains(&old.cert.display().to_string())
            && why.contains("by this box's clock"),
        "{body}"
    );
    assert!(vigil.child.try_wait().unwrap().is_none(), "vigil exited");
}
