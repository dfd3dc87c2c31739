//! OTA against a hostile network (issue 15), end to end over the real broker, the real binary
//! and a real HTTP server started here: bundles an outsider can make without a key (a 1 MiB GNU
//! long name, a header announcing a 256 MiB PAX record) and signed bundles a box must still
//! refuse (a `created` that is not a date, a sequence of 2^64 - 1, overlay model paths out of
//! the set, an overlay that sets `[device]`, a file named `manifest.json`, a file/directory
//! clash, a name part of 256 bytes) are refused with bounded reasons while the MQTT link stays
//! up, also across a broker restart; `vigil ota verify --config` refuses what the box refuses.
//! A trickling server cannot hold the update slot (`cmd/ota/cancel`, the minimum rate), failing
//! downloads keep at most one partial file, also across a restart, and a revoked key stays
//! revoked when an older bundle that trusted it is sent again with `allow_rollback`.

use crate::common::ota::*;
use crate::common::*;
use crate::e2e_ota::OtaBox;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vigil_ota::bundle::raw_header as header;
use vigil_ota::manifest::{FORMAT, FileEntry, Manifest, Target, parse_secret_key};

/// A device config without cameras: `[ota]` trusting `keys`, its store under `dir`, `extra`
/// `[ota]` lines.
fn device_config(dir: &Path, device: &str, mqtt: u16, keys: &[&str], extra: &str) -> PathBuf {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let text = format!(
        "[device]\nid = \"{device}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt}\n\n[storage]\ndir = \"{state}\"\n\n[http]\nlisten = \"\"\n\n[ota]\ntrusted_keys = [{keys}]\ndir = \"{ota}\"\nprobation = \"1s\"\n{extra}",
        state = dir.join("state").display(),
        ota = dir.join("ota").display(),
        keys = keys.join(", "),
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A fresh test directory, a broker on a free port, and an HTTP server of `dir/srv`.
fn setup(name: &str) -> (PathBuf, u16, Proc, PathBuf, FileServer) {
    let dir = temp_dir(name);
    let mqtt = free_port();
    let broker = mosquitto(&dir, mqtt);
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let http = FileServer::start(&srv);
    (dir, mqtt, broker, srv, http)
}

/// Vigil started on `config`, connected, with an [`OtaBox`] on its topics.
fn start(config: &Path, device: &str, mqtt: u16) -> (Proc, Lines, OtaBox) {
    let sub = Subscriber::start(mqtt, &[&format!("vigil/{device}/#")]);
    let (vigil, logs) = vigil_run(config);
    logs.wait_for(Duration::from_secs(20), |l| l.contains("MQTT connected"))
        .expect("vigil connects to the broker");
    std::thread::sleep(Duration::from_millis(200));
    let b = OtaBox {
        mqtt,
        sub,
        device: device.into(),
    };
    (vigil, logs, b)
}

fn pad(t: &mut Vec<u8>) {
    t.resize(t.len().div_ceil(512) * 512, 0);
}

/// A tar of regular files, names over 99 bytes through a GNU long name (as `tar` writes them).
fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = Vec::new();
    for (name, data) in entries {
        if name.len() > 99 {
            let mut long = name.as_bytes().to_vec();
            long.push(0);
            t.extend(header(b"././@LongLink", long.len() as u64, b'L'));
            t.extend(long);
            pad(&mut t);
        }
        let short = &name.as_bytes()[..name.len().min(99)];
        t.extend(header(short, data.len() as u64, b'0'));
        t.extend_from_slice(data);
        pad(&mut t);
    }
    t.extend([0u8; 1024]);
    t
}

/// A bundle signed by `key` whose manifest (sequence, created) lists `files` as they are:
/// what `vigil ota pack` would refuse to make, written the way an attacker or a careless
/// tool would.
struct Crafted<'a> {
    key: &'a SigningKey,
    sequence: u64,
    created: String,
    files: Vec<(String, Vec<u8>)>,
}

impl Crafted<'_> {
    fn write(&self, scratch: &Path, out: &Path) -> String {
        let now = std::time::SystemTime::now();
        let digest = |data: &[u8]| {
            let f = scratch.join("digest.tmp");
            std::fs::write(&f, data).unwrap();
            sha256(&f)
        };
        let m = Manifest {
            format: FORMAT,
            version: "crafted".into(),
            sequence: self.sequence,
            created: self.created.clone(),
            expires: humantime::format_rfc3339_seconds(now + Duration::from_secs(3600)).to_string(),
            target: Target::default(),
            files: self
                .files
                .iter()
                .map(|(p, d)| FileEntry {
                    path: p.clone(),
                    size: d.len() as u64,
                    sha256: digest(d),
                })
                .collect(),
        };
        let bytes = m.to_bytes();
        let sig = self.key.sign(&bytes).to_bytes();
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(p, _)| format!("files/{p}"))
            .collect();
        let mut entries: Vec<(&str, &[u8])> =
            vec![("manifest.json", &bytes), ("manifest.sig", &sig)];
        for (name, (_, data)) in names.iter().zip(&self.files) {
            entries.push((name, data));
        }
        std::fs::write(out, tar(&entries)).unwrap();
        sha256(out)
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// `vigil ota verify --config CONFIG BUNDLE`: (accepted, output).
fn verify(config: &Path, bundle: &Path) -> (bool, String) {
    let o = Command::new(vigil_bin())
        .args(["ota", "verify", "--config"])
        .arg(config)
        .arg(bundle)
        .output()
        .expect("vigil ota verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// Files in the store's `download/` (name, size).
fn downloads(ota_dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(ota_dir.join("download"))
        .unwrap()
        .flatten()
        .map(|e| {
            let len = e.metadata().unwrap().len();
            (e.file_name().to_string_lossy().to_string(), len)
        })
        .collect();
    v.sort();
    v
}

/// The link answers a command.
fn answers(b: &OtaBox, id: &str) {
    let r = b.command("ping", json!({ "request_id": id }));
    assert_eq!(r["message"], "pong", "{r}");
}

#[test]
fn hostile_bundles_are_refused_with_bounded_reasons_and_the_link_stays_up() {
    let _cpu = exclusive();
    let (dir, mqtt, mut broker, srv, http) = setup("ota-hostile");
    let (key_file, public) = keygen(&dir, "fleet.key");
    let key = parse_secret_key(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let config = device_config(&dir, "hostile", mqtt, &[&public], "");
    let (_vigil, logs, b) = start(&config, "hostile", mqtt);

    // Unsigned: the first entry has a 1 MiB GNU long name of control characters (its {:?}
    // was 6 MiB), and a header announcing a 256 MiB PAX record (the file stops after it).
    let mut long = header(b"././@LongLink", 1 << 20, b'L');
    long.extend(vec![1u8; 1 << 20]);
    long.extend(tar(&[("x", b"x")]));
    std::fs::write(srv.join("long.vigil"), &long).unwrap();
    let mut pax = header(b"././@PaxHeader", 256 << 20, b'x');
    pax.extend([b'a'; 4096]);
    std::fs::write(srv.join("pax.vigil"), &pax).unwrap();
    // Signed by the trusted key, refused all the same.
    let crafted = |name: &str, sequence: u64, created: &str, files: &[(&str, &[u8])]| {
        let c = Crafted {
            key: &key,
            sequence,
            created: created.into(),
            files: files
                .iter()
                .map(|(p, d)| (p.to_string(), d.to_vec()))
                .collect(),
        };
        c.write(&dir, &srv.join(name))
    };
    let now = now_rfc3339();
    let model = |path: &str| {
        format!("[models.evil]\npath = \"{path}\"\nkind = \"nanodet\"\nbackend = \"cpu\"\n")
    };
    let overlay_bundle = |name: &str, seq: u64, overlay: &str| {
        let src = bundle_dir(
            &dir.join(format!("src-{name}")),
            &[("config.toml", overlay.as_bytes()), ("models/a.onnx", b"a")],
        );
        pack(&key_file, seq, &src, &srv.join(name), &[])
    };
    let deep = format!("{}etc/passwd", "../".repeat(40));
    let part = "p".repeat(256);
    let cases: Vec<(&str, String, &str, &str, bool)> = vec![
        (
            "long.vigil",
            sha256(&srv.join("long.vigil")),
            "bundle",
            "entry 0: a GNU long name of 1048576 bytes (expected at most 4103)",
            false,
        ),
        (
            "pax.vigil",
            sha256(&srv.join("pax.vigil")),
            "bundle",
            "entry 0: a PAX extended header of 268435456 bytes",
            false,
        ),
        (
            "date.vigil",
            crafted("date.vigil", 5, "not a date", &[("models/a.onnx", b"a")]),
            "manifest",
            "created \"not a date\"",
            true,
        ),
        (
            "max.vigil",
            crafted("max.vigil", u64::MAX, &now, &[("models/a.onnx", b"a")]),
            "manifest",
            "expected at most 9007199254740991",
            true,
        ),
        (
            "traversal.vigil",
            overlay_bundle("traversal.vigil", 6, &model(&deep)),
            "config",
            "models.evil.path: \"../../",
            true,
        ),
        (
            "device.vigil",
            overlay_bundle("device.vigil", 7, "[device]\nid = \"stolen\"\n"),
            "config",
            "may not set [device]",
            true,
        ),
        (
            "reserved.vigil",
            crafted("reserved.vigil", 8, &now, &[("manifest.json", b"{}")]),
            "manifest",
            "is reserved",
            true,
        ),
        (
            "clash.vigil",
            crafted(
                "clash.vigil",
                9,
                &now,
                &[("models", b"a"), ("models/a.onnx", b"b")],
            ),
            "manifest",
            "both a file and a directory",
            true,
        ),
        (
            "part.vigil",
            crafted("part.vigil", 10, &now, &[(&part, b"a")]),
            "manifest",
            "has a part of 256 bytes (expected at most 255)",
            true,
        ),
    ];
    for (file, sha, kind, needle, signed) in &cases {
        let id = format!("bad-{file}");
        let out = b.apply(&id, &http.url(file), sha, json!({}));
        let reason = out["reason"].as_str().unwrap_or_default();
        assert_eq!(
            (out["phase"].as_str(), out["error"].as_str()),
            (Some("failed"), Some(*kind)),
            "{file}: {reason:.300}"
        );
        assert!(reason.contains(needle), "{file}: {reason:.300}");
        assert!(reason.len() <= 1024, "{file}: {} bytes", reason.len());
        // The operator's tool says the same as the box.
        if *signed {
            let (ok, text) = verify(&config, &srv.join(file));
            assert!(!ok, "vigil ota verify accepted {file}: {text:.500}");
            assert!(text.contains(needle), "verify {file}: {text:.500}");
        }
        answers(&b, &format!("ping-{file}"));
    }
    assert!(current(&dir.join("ota")).is_none(), "nothing was installed");
    assert!(
        logs.snapshot().iter().all(|(_, l)| l.len() < 4096),
        "no log line of kilobytes"
    );
    // The retained status is small, and is published again after the broker comes back.
    let status = b.status();
    assert!(status.to_string().len() < 2048, "{status}");
    assert_eq!(status["last"]["result"], "rejected", "{status}");
    broker.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let _broker = mosquitto(&dir, mqtt);
    let t0 = Instant::now();
    while logs
        .snapshot()
        .iter()
        .filter(|(_, l)| l.contains("MQTT connected"))
        .count()
        < 2
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "vigil reconnects");
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = Subscriber::start(mqtt, &["vigil/hostile/ota/status"]);
    let st = late
        .wait(Duration::from_secs(10), |m| {
            m.topic.ends_with("/ota/status")
        })
        .expect("the retained ota/status after the broker's restart");
    assert_eq!(st.json["last"]["error"], "manifest", "{}", st.json);
    let b = OtaBox {
        mqtt,
        sub: Subscriber::start(mqtt, &["vigil/hostile/#"]),
        device: "hostile".into(),
    };
    answers(&b, "ping-after-restart");

    // A good bundle still goes through, and verify agrees.
    let good = overlay_bundle("good.vigil", 12, &model("models/a.onnx"));
    let (ok, text) = verify(&config, &srv.join("good.vigil"));
    assert!(ok, "{text}");
    let out = b.apply("good", &http.url("good.vigil"), &good, json!({}));
    assert_eq!(out["phase"], "done", "{out}");
}

#[test]
fn slow_or_failing_downloads_cannot_hold_the_slot_or_fill_the_disk() {
    let _cpu = exclusive();
    let (dir, mqtt, _broker, srv, http) = setup("ota-downloads");
    let (key_file, public) = keygen(&dir, "fleet.key");
    let config = device_config(&dir, "dl", mqtt, &[&public], "");
    let ota_dir = dir.join("ota");
    std::fs::write(srv.join("big.bin"), noise(1, 1_000_000)).unwrap();
    // One byte every 20 s: the slow loris.
    http.trickle
        .lock()
        .unwrap()
        .insert("/big.bin".into(), Duration::from_secs(20));
    // The same body from another path, each response cut after 50 kB: it never completes.
    std::fs::write(srv.join("cut.bin"), noise(1, 1_000_000)).unwrap();
    http.cut_always
        .lock()
        .unwrap()
        .insert("/cut.bin".into(), 50_000);
    let src = bundle_dir(&dir.join("src"), &[("models/a.onnx", b"a")]);
    let good = pack(&key_file, 3, &src, &srv.join("good.vigil"), &[]);
    let (mut vigil, _logs, b) = start(&config, "dl", mqtt);

    // 1. cmd/ota/cancel stops a trickling download at once and frees the slot.
    let r = b.command(
        "ota/apply",
        json!({"request_id": "slow", "url": http.url("big.bin"), "sha256": "a".repeat(64)}),
    );
    assert_eq!(r["status"], "ok", "{r}");
    b.sub
        .wait(Duration::from_secs(10), |m| {
            m.topic.ends_with("/ota/progress") && m.json["phase"] == "downloading"
        })
        .expect("the download starts");
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let r = b.command("ota/cancel", json!({"request_id": "c1"}));
    assert_eq!(r["status"], "ok", "{r}");
    let out = b.outcome("slow");
    assert_eq!(
        (out["phase"].as_str(), out["error"].as_str()),
        (Some("cancelled"), Some("cancelled")),
        "{out}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(downloads(&ota_dir), [], "a cancelled download is removed");
    let out = b.apply("good", &http.url("good.vigil"), &good, json!({}));
    assert_eq!(out["phase"], "done", "the slot is free at once: {out}");
    let r = b.command("ota/cancel", json!({"request_id": "c2"}));
    assert_eq!(r["status"], "error", "nothing to cancel: {r}");

    // 2. Without a cancel, the minimum rate ends it after one window (10 s by default).
    let t0 = Instant::now();
    let out = b.apply("slow2", &http.url("big.bin"), &"b".repeat(64), json!({}));
    let reason = out["reason"].as_str().unwrap_or_default();
    assert_eq!(out["error"], "download", "{out}");
    assert!(reason.contains("min_rate_bytes_per_s"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());

    // 3. Downloads that keep failing keep one partial file at most.
    for (i, c) in ["1", "2"].iter().enumerate() {
        let sha = c.repeat(64);
        let out = b.apply(&format!("cut{i}"), &http.url("cut.bin"), &sha, json!({}));
        assert_eq!(out["error"], "download", "{out}");
        let held = downloads(&ota_dir);
        assert_eq!(
            held.iter().map(|h| h.0.clone()).collect::<Vec<_>>(),
            [format!("{sha}.part")],
            "only the last failed download's part is kept (resumable): {held:?}"
        );
    }
    // 4. Also across a restart, with a stray file and an older part left there.
    std::fs::write(ota_dir.join("download/stray.bundle"), b"x").unwrap();
    vigil.terminate(Duration::from_secs(10));
    std::fs::write(
        ota_dir.join(format!("download/{}.part", "0".repeat(64))),
        vec![0u8; 10],
    )
    .unwrap();
    let (_vigil, _logs, _b) = start(&config, "dl", mqtt);
    let held = downloads(&ota_dir);
    assert_eq!(held.len(), 1, "{held:?}");
}

#[test]
fn a_revoked_key_stays_revoked_when_an_older_bundle_is_sent_again() {
    let _cpu = exclusive();
    let (dir, mqtt, _broker, srv, http) = setup("ota-revoked");
    let (fleet, fleet_pub) = keygen(&dir, "fleet.key");
    let (old, old_pub) = keygen(&dir, "old.key");
    let config = device_config(&dir, "revoked", mqtt, &[&fleet_pub], "");
    let trusting = |name: &str, keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        let overlay = format!("[ota]\ntrusted_keys = [{}]\n", keys.join(", "));
        bundle_dir(&dir.join(name), &[("config.toml", overlay.as_bytes())])
    };
    let s10 = pack(
        &fleet,
        10,
        &trusting("b10", &[&fleet_pub, &old_pub]),
        &srv.join("b10.vigil"),
        &[],
    );
    let s20 = pack(
        &fleet,
        20,
        &trusting("b20", &[&fleet_pub]),
        &srv.join("b20.vigil"),
        &[],
    );
    let s30 = pack(
        &old,
        30,
        &trusting("b30", &[&fleet_pub, &old_pub]),
        &srv.join("b30.vigil"),
        &[],
    );
    let (mut vigil, _logs, b) = start(&config, "revoked", mqtt);
    let out = b.apply("10", &http.url("b10.vigil"), &s10, json!({}));
    assert_eq!(out["phase"], "done", "{out}");
    let out = b.apply("20", &http.url("b20.vigil"), &s20, json!({}));
    assert_eq!(
        out["phase"], "done",
        "sequence 20 revokes the old key: {out}"
    );
    let again = |b: &OtaBox, id: &str| {
        let out = b.apply(
            id,
            &http.url("b10.vigil"),
            &s10,
            json!({"allow_rollback": true}),
        );
        assert_eq!(
            (out["phase"].as_str(), out["error"].as_str()),
            (Some("failed"), Some("sequence")),
            "{out}"
        );
        assert!(
            out["reason"].as_str().unwrap().contains("trusted_keys"),
            "{out}"
        );
    };
    again(&b, "10-again");
    let r = b.command("ota/rollback", json!({"request_id": "rb"}));
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["message"].as_str().unwrap().contains("below 20"), "{r}");
    let out = b.apply("30", &http.url("b30.vigil"), &s30, json!({}));
    assert_eq!(out["error"], "signature", "{out}");
    // The floor is on disk: a restart does not lower it.
    vigil.terminate(Duration::from_secs(10));
    let (_vigil, _logs, b) = start(&config, "revoked", mqtt);
    again(&b, "10-after-restart");
    assert_eq!(b.status()["active"]["sequence"], 20);
}
