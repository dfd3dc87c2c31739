//! Staged OTA rollouts from the fleet console to four real Vigil boxes (real mosquitto, the
//! demo clip over RTSP, a real HTTP server for the bundles): releases are verified by the
//! console before any box gets them (a wrong digest or an unknown signer is refused); a good
//! bundle goes out wave by wave (canary 1, then up to 50 %, then the rest; each wave only after
//! the previous one finished and baked), survives a SIGKILL of the console midway, and ends
//! with every box committed; a bundle whose model fails on probation pauses the rollout after
//! the canary, the other boxes untouched (never sent the update, still on the good set). The
//! rollout is started and paused from headless Chromium; a viewer has no rollout forms and a
//! forged control POST is refused.

use crate::common::ota::*;
use crate::common::*;
use crate::fleet::{add_user, browser_login, click, console, csrf, get, login, request_as, wait};
use std::time::{Duration, Instant};

const BOXES: [&str; 4] = ["r1", "r2", "r3", "r4"];

fn rollout(addr: &str, id: &str, cookie: &str) -> serde_json::Value {
    serde_json::from_str(&get(addr, &format!("/api/rollouts/{id}"), cookie)).unwrap()
}

/// (box, wave) of a rollout.
fn waves(r: &serde_json::Value) -> Vec<(String, u64)> {
    r["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["device"].as_str().unwrap().to_string(),
                b["wave"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn phase(r: &serde_json::Value, device: &str) -> String {
    r["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["device"] == device)
        .map(|b| b["phase"].as_str().unwrap().to_string())
        .unwrap()
}

/// When each box first said `phase` for a request of `rollout` on `ota/progress`.
fn first_at(sub: &Subscriber, rollout: &str, phase: &str) -> Vec<(String, Instant)> {
    let prefix = format!("ro-{rollout}-");
    let mut seen: Vec<(String, Instant)> = Vec::new();
    for m in sub.on("/ota/progress") {
        let device = m.topic.split('/').nth(1).unwrap().to_string();
        let ours = m.json["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with(&prefix));
        if ours && m.json["phase"] == phase && !seen.iter().any(|(d, _)| *d == device) {
            seen.push((device, m.at));
        }
    }
    seen
}

/// The id of the release of `version` on the Rollouts page.
fn release_id(page: &str, version: &str) -> String {
    page.split("<option value=\"")
        .skip(1)
        .find(|s| s.contains(&format!(">{version} (")))
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("release {version} on the page"))
        .to_string()
}

fn start_rollout(addr: &str, cookie: &str, release: &str) -> String {
    let page = get(addr, "/rollouts", cookie);
    let form = format!(
        "csrf={}&release={release}&devices=r*&canary=1&waves=50&bake_s=3&threshold=0&offline_s=60&stall_s=120",
        csrf(&page)
    );
    let (code, head, body) = request_as(addr, "POST", "/rollouts", cookie, &form);
    assert_eq!(code, 303, "{head}{body}");
    head.lines()
        .find_map(|l| l.strip_prefix("location: /rollouts/"))
        .expect("the new rollout's page")
        .trim()
        .to_string()
}

#[test]
fn staged_rollouts_go_wave_by_wave_and_pause_when_the_canary_fails() {
    let _cpu = exclusive();
    let p = plaza("fleet-rollout");
    let (dir, mqtt, url) = (p.dir.clone(), p.mqtt, p.url.clone());
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let http = FileServer::start(&srv);
    let (key, public) = keygen(&dir, "fleet.key");
    let (stranger, _) = keygen(&dir, "stranger.key");
    let _boxes: Vec<_> = BOXES
        .iter()
        .map(|id| {
            let cfg = dir.join(format!("{id}.toml"));
            let text = config_toml(id, mqtt, &url, "fps = 2", "").replace(
                "telemetry_interval = \"1s\"",
                "telemetry_interval = \"1s\"\nkeep_alive = \"5s\"",
            ) + &format!(
                "\n[ota]\ntrusted_keys = [\"{public}\"]\ndir = \"{}\"\nprobation = \"3s\"\nprobation_min_inferences = 3\n",
                dir.join(format!("ota-{id}")).display()
            );
            std::fs::write(&cfg, text).unwrap();
            vigil_run(&cfg)
        })
        .collect();
    let sub = Subscriber::start(mqtt, &["vigil/+/ota/progress", "vigil/+/ota/status"]);

    // The bundles: the real model (good), a model returning NaNs (fails its probation), the
    // good one signed by a key the console does not trust.
    let overlay = "[models.nanodet]\npath = \"models/nanodet.onnx\"\nkind = \"nanodet\"\nbackend = \"cpu\"\nthreads = 2\n";
    let real = std::fs::read(model()).unwrap();
    let good = bundle_dir(
        &dir.join("b-good"),
        &[
            ("config.toml", overlay.as_bytes()),
            ("models/nanodet.onnx", &real),
        ],
    );
    let good_sha = pack(&key, 10, &good, &srv.join("good.vigil"), &[]);
    let strange_sha = pack(&stranger, 10, &good, &srv.join("strange.vigil"), &[]);
    let garbage = crate::e2e_ota::garbage_model(&dir.join("garbage.onnx"));
    let bad = bundle_dir(
        &dir.join("b-bad"),
        &[
            ("config.toml", overlay.as_bytes()),
            ("models/nanodet.onnx", &garbage),
        ],
    );
    let bad_sha = pack(&key, 11, &bad, &srv.join("bad.vigil"), &[]);

    let db = dir.join("fleet.db");
    let alerts = dir.join("alerts.toml");
    std::fs::write(&alerts, "").unwrap();
    add_user(&db, "op", "operator", "operator-password-1");
    add_user(&db, "view", "viewer", "viewer-password-1");
    let web = free_port();
    let downloads = dir.join("downloads");
    let extra = [
        "--ota-key",
        public.as_str(),
        "--download-dir",
        downloads.to_str().unwrap(),
    ];
    let mut fleet = console(&db, mqtt, web, &alerts, &extra);
    let addr = format!("127.0.0.1:{web}");
    let op = login(&addr, "op", "operator-password-1");
    let view = login(&addr, "view", "viewer-password-1");
    wait("all four boxes online", Duration::from_secs(60), || {
        let page = get(&addr, "/fragments/fleet", &op);
        BOXES
            .iter()
            .all(|b| page.contains(&format!("data-device=\"{b}\"")))
            && page.matches("online for").count() >= 4
    });

    // Releases: verified before they are kept.
    let add = |u: &str, sha: &str| {
        let page = get(&addr, "/rollouts", &op);
        let form = format!("csrf={}&url={u}&sha256={sha}", csrf(&page));
        request_as(&addr, "POST", "/rollouts/releases", &op, &form)
    };
    let (code, _, body) = add(&http.url("good.vigil"), &bad_sha);
    assert_eq!(code, 400);
    assert!(body.contains("release refused: digest"), "{body}");
    let (code, _, body) = add(&http.url("strange.vigil"), &strange_sha);
    assert_eq!(code, 400);
    assert!(
        body.contains("release refused: signature"),
        "an unknown signer: {body}"
    );
    let (code, _, _) = add(&http.url("good.vigil"), &good_sha);
    assert_eq!(code, 303);
    let (code, _, _) = add(&http.url("bad.vigil"), &bad_sha);
    assert_eq!(code, 303);
    let page = get(&addr, "/rollouts", &op);
    assert!(page.contains("v10") && page.contains("v11"), "{page}");
    assert_eq!(
        std::fs::read_dir(downloads.join("download"))
            .unwrap()
            .count(),
        0,
        "checked bundles are not kept"
    );
    // A viewer sees no rollout forms; a forged start is refused.
    let vpage = get(&addr, "/rollouts", &view);
    assert!(!vpage.contains("new-rollout") && !vpage.contains("add-release"));
    let forged = format!(
        "csrf={}&release={}&devices=*&canary=1&waves=&bake_s=1&threshold=0&offline_s=60&stall_s=60",
        csrf(&vpage),
        release_id(&page, "v10")
    );
    let (code, _, _) = request_as(&addr, "POST", "/rollouts", &view, &forged);
    assert_eq!(code, 403, "a viewer cannot start a rollout");

    // 1. The good release, started in the browser, wave by wave; the console is killed after
    //    the canary and the restarted one carries on.
    let id = in_a_browser(&addr, &dir, &release_id(&page, "v10"));
    let r = rollout(&addr, &id, &op);
    assert_eq!(r["state"], "running", "resumed in the browser: {r}");
    let plan = waves(&r);
    assert_eq!(plan.iter().filter(|(_, w)| *w == 0).count(), 1);
    assert_eq!(plan.iter().filter(|(_, w)| *w == 1).count(), 1);
    assert_eq!(plan.iter().filter(|(_, w)| *w == 2).count(), 2);
    let canary = plan.iter().find(|(_, w)| *w == 0).unwrap().0.clone();
    wait("the canary committed", Duration::from_secs(60), || {
        phase(&rollout(&addr, &id, &op), &canary) == "succeeded"
    });
    fleet.child.kill().unwrap();
    let _ = fleet.child.wait();
    fleet = console(&db, mqtt, web, &alerts, &extra);
    let op = login(&addr, "op", "operator-password-1");
    wait("the rollout completed", Duration::from_secs(120), || {
        rollout(&addr, &id, &op)["state"] == "completed"
    });
    let r = rollout(&addr, &id, &op);
    for b in BOXES {
        assert_eq!(phase(&r, b), "succeeded", "{r}");
    }
    // Wave by wave: no box of a wave started downloading before every box of the previous
    // wave had committed, plus the bake (3 s).
    let started = first_at(&sub, &id, "downloading");
    let done = first_at(&sub, &id, "done");
    assert_eq!((started.len(), done.len()), (4, 4), "{started:?} {done:?}");
    for w in 1..3u64 {
        let prev_done = plan
            .iter()
            .filter(|(_, x)| *x == w - 1)
            .map(|(d, _)| done.iter().find(|(b, _)| b == d).unwrap().1)
            .max()
            .unwrap();
        for (d, _) in plan.iter().filter(|(_, x)| *x == w) {
            let at = started.iter().find(|(b, _)| b == d).unwrap().1;
            assert!(
                at >= prev_done + Duration::from_millis(2500),
                "wave {} box {d} started {:?} after wave {w} was done",
                w + 1,
                at.saturating_duration_since(prev_done)
            );
        }
    }
    // Every box reports sequence 10 active.
    wait("every box on sequence 10", Duration::from_secs(20), || {
        BOXES.iter().all(|b| {
            sub.on(&format!("{b}/ota/status"))
                .last()
                .is_some_and(|m| m.json["active"]["sequence"] == 10)
        })
    });

    wait(
        "the OTA set on the Fleet page",
        Duration::from_secs(10),
        || {
            get(&addr, "/fragments/fleet", &op)
                .matches("v10 (10)")
                .count()
                == 4
        },
    );
    let device = get(&addr, &format!("/devices/{canary}"), &op);
    assert!(
        device.contains("active: sequence 10 (v10)") && device.contains("ota-history"),
        "the box's OTA state on its page"
    );

    // 2. The bad release: the canary rolls back on probation, the rollout pauses, the others
    //    are never sent it.
    let id2 = start_rollout(
        &addr,
        &op,
        &release_id(&get(&addr, "/rollouts", &op), "v11"),
    );
    wait("the rollout paused", Duration::from_secs(90), || {
        rollout(&addr, &id2, &op)["state"] == "paused"
    });
    let r = rollout(&addr, &id2, &op);
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("1 of 1 boxes of wave 1"),
        "{r}"
    );
    let plan2 = waves(&r);
    let canary2 = plan2.iter().find(|(_, w)| *w == 0).unwrap().0.clone();
    let b = r["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["device"] == canary2.as_str())
        .unwrap();
    assert_eq!(b["phase"], "rolled_back", "{b}");
    assert!(
        b["detail"].as_str().unwrap().starts_with("probation"),
        "{b}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let r = rollout(&addr, &id2, &op);
    for (d, w) in &plan2 {
        if *w > 0 {
            assert_eq!(phase(&r, d), "pending", "{d} untouched: {r}");
        }
    }
    let touched: Vec<String> = sub
        .on("/ota/progress")
        .iter()
        .filter(|m| {
            m.json["request_id"]
                .as_str()
                .is_some_and(|x| x.starts_with(&format!("ro-{id2}-")))
        })
        .map(|m| m.topic.split('/').nth(1).unwrap().to_string())
        .collect();
    assert!(touched.iter().all(|d| *d == canary2), "{touched:?}");
    for b in BOXES.iter().filter(|b| **b != canary2) {
        let last = sub
            .on(&format!("{b}/ota/status"))
            .last()
            .unwrap()
            .json
            .clone();
        assert_eq!(last["active"]["sequence"], 10, "{b} still on the good set");
    }
    // A viewer's forged control is refused; the operator aborts: the rest is skipped.
    let vpage = get(&addr, &format!("/rollouts/{id2}"), &view);
    assert!(!vpage.contains("Abort"), "a viewer has no control buttons");
    let (code, _, _) = request_as(
        &addr,
        "POST",
        &format!("/rollouts/{id2}/abort"),
        &view,
        &format!("csrf={}", csrf(&vpage)),
    );
    assert_eq!(code, 403);
    let opage = get(&addr, &format!("/rollouts/{id2}"), &op);
    let (code, _, _) = request_as(
        &addr,
        "POST",
        &format!("/rollouts/{id2}/abort"),
        &op,
        &format!("csrf={}", csrf(&opage)),
    );
    assert_eq!(code, 303);
    let r = rollout(&addr, &id2, &op);
    assert_eq!(r["state"], "aborted");
    for (d, w) in &plan2 {
        if *w > 0 {
            assert_eq!(phase(&r, d), "skipped", "{d}");
        }
    }
    let audit_ok = {
        let (code, _, _) = request_as(&addr, "GET", "/audit", &op, "");
        code
    };
    assert_eq!(audit_ok, 403, "the audit log is an admin's");
    drop(fleet);
}

/// Starts the rollout of `release` from the Rollouts page in headless Chromium, pauses it
/// on its page, then resumes it; its id.
fn in_a_browser(addr: &str, dir: &std::path::Path, release: &str) -> String {
    use fantoccini::Locator;
    let wd = free_port();
    let _driver = chromedriver(wd);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = chromium(wd, &dir.join("chromium")).await;
        browser_login(&c, addr, "op", "operator-password-1").await;
        c.wait()
            .for_element(Locator::Css("table#fleet"))
            .await
            .unwrap();
        c.goto(&format!("http://{addr}/rollouts")).await.unwrap();
        let form = c
            .wait()
            .for_element(Locator::Id("new-rollout"))
            .await
            .unwrap();
        let sel = form
            .find(Locator::Css(&format!("option[value='{release}']")))
            .await
            .unwrap();
        sel.click().await.unwrap();
        for (name, value) in [
            ("devices", "r*"),
            ("canary", "1"),
            ("waves", "50"),
            ("bake_s", "3"),
            ("offline_s", "60"),
            ("stall_s", "120"),
        ] {
            let input = form
                .find(Locator::Css(&format!("input[name={name}]")))
                .await
                .unwrap();
            input.clear().await.unwrap();
            input.send_keys(value).await.unwrap();
        }
        form.find(Locator::Css("button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.wait()
            .for_element(Locator::Css("table#boxes"))
            .await
            .expect("the rollout's page");
        let url = c.current_url().await.unwrap();
        let id = url.path().trim_start_matches("/rollouts/").to_string();
        click(&c, "#controls button[value=pause]").await;
        c.wait()
            .for_element(Locator::Css("#controls button[value=resume]"))
            .await
            .expect("paused: a Resume button");
        let src = c.source().await.unwrap();
        assert!(src.contains("paused by op"), "the page says who paused it");
        std::fs::write(dir.join("fleet-rollout.png"), c.screenshot().await.unwrap()).unwrap();
        println!("screenshot: {}", dir.join("fleet-rollout.png").display());
        click(&c, "#controls button[value=resume]").await;
        c.wait()
            .for_element(Locator::Css("#controls button[value=pause]"))
            .await
            .expect("running again: a Pause button");
        c.close().await.unwrap();
        id
    })
}
