//! The fleet console (`vigil-fleet`) against real boxes: a real mosquitto, two real Vigil boxes
//! analysing the demo clip over RTSP, the console with its SQLite store. A box's event appears
//! on Review with its picture (fetched and decoded); a box killed with SIGKILL shows offline
//! (its last will) within the keep-alive bound; events published while the console was down
//! leave a gap in its sequence that the console repairs by asking the box to replay exactly
//! the missing range. Logins: every page needs one; an operator's `ping` reaches the box and
//! its reply shows; a viewer has no command buttons and a forged command POST is refused with
//! 403, as is any form without the session's CSRF token; the audit log is an admin's.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn fleet_bin() -> std::path::PathBuf {
    // Built beside `vigil` (same workspace, same profile).
    std::path::Path::new(vigil_bin()).with_file_name("vigil-fleet")
}

pub(crate) fn console(
    db: &std::path::Path,
    mqtt: u16,
    port: u16,
    alerts: &std::path::Path,
    extra: &[&str],
) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(db.with_extension("log"))
        .unwrap();
    let child = Command::new(fleet_bin())
        .args(["serve", "--broker", &format!("127.0.0.1:{mqtt}")])
        .arg("--db")
        .arg(db)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--gap-grace-s", "1", "--gap-retry-s", "2"])
        .arg("--alerts")
        .arg(alerts)
        .args(extra)
        .env("VIGIL_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("vigil-fleet");
    wait_port(port, Duration::from_secs(20));
    Proc {
        name: "vigil-fleet".into(),
        child,
    }
}

/// An HTTP server on loopback that takes POSTs and keeps their bodies (an alert webhook).
fn webhook() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len.min(1 << 20)];
            let _ = r.read_exact(&mut body);
            g.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).to_string());
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// `vigil-fleet user add NAME --role ROLE` with `password` on standard input.
pub(crate) fn add_user(db: &std::path::Path, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut c = Command::new(fleet_bin())
        .args(["user", "add", name, "--role", role, "--db"])
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One form POST or GET with a session cookie: (status, head (lower-cased), body).
pub(crate) fn request_as(
    addr: &str,
    method: &str,
    path: &str,
    cookie: &str,
    form: &str,
) -> (u16, String, String) {
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let headers: Vec<(&str, &str)> = if cookie.is_empty() {
        vec![ctype]
    } else {
        vec![ctype, ("Cookie", cookie)]
    };
    let r = request(addr, method, path, &headers, form);
    (r.code, r.head, r.body)
}

/// Logs in; the session cookie (`vigil_session=…`, as sent: the token is case-sensitive).
pub(crate) fn login(addr: &str, name: &str, password: &str) -> String {
    let form = format!("name={name}&password={password}");
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let r = request(addr, "POST", "/login", &[ctype], &form);
    assert_eq!(r.code, 303, "{}{}", r.head, r.body);
    r.head_raw
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.eq_ignore_ascii_case("set-cookie").then_some(v)
        })
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string()
}

pub(crate) fn get(addr: &str, path: &str, cookie: &str) -> String {
    let (code, head, body) = request_as(addr, "GET", path, cookie, "");
    assert_eq!(code, 200, "{path}: {head}");
    body
}

/// The session's CSRF token, as the pages' forms carry it.
pub(crate) fn csrf(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a form with a CSRF token")
        .to_string()
}

pub(crate) fn stats(addr: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, "/api/stats");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub(crate) fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_console_shows_boxes_events_pictures_offline_and_repairs_gaps() {
    let _cpu = exclusive();
    let p = plaza("fleet");
    let (dir, mqtt, url) = (p.dir.clone(), p.mqtt, p.url.clone());
    let web = free_port();
    let mut boxes: Vec<_> = ["f1", "f2"]
        .iter()
        .map(|id| {
            let cfg = dir.join(format!("{id}.toml"));
            let text = config_toml(id, mqtt, &url, "fps = 5", PLAZA_ZONE)
                .replace(
                    "telemetry_interval = \"1s\"",
                    "telemetry_interval = \"1s\"\nkeep_alive = \"5s\"",
                )
                .replace(
                    "id = \"f1\"",
                    "id = \"f1\"\nsite = \"north\"\ntags = [\"pilot\", \"outdoor\"]",
                )
                + "\n[snapshots]\nmqtt_interval = \"1s\"\nwidth = 320\n";
            std::fs::write(&cfg, text).unwrap();
            vigil_run(&cfg)
        })
        .collect();
    let db = dir.join("fleet.db");
    let (hook_port, hooks) = webhook();
    let alerts = dir.join("alerts.toml");
    std::fs::write(
        &alerts,
        format!(
            "webhook = \"http://127.0.0.1:{hook_port}/hook\"\n[[rule]]\nname = \"box offline\"\nkind = \"offline\"\nfor_s = 1\n"
        ),
    )
    .unwrap();
    add_user(&db, "admin", "admin", "admin-password-1");
    add_user(&db, "op", "operator", "operator-password-1");
    add_user(&db, "view", "viewer", "viewer-password-1");
    let mut fleet = console(&db, mqtt, web, &alerts, &[]);
    let addr = format!("127.0.0.1:{web}");

    // Logins: no page without one; a wrong password gets 401.
    let (code, head, _) = request_as(&addr, "GET", "/", "", "");
    assert!(code == 303 && head.contains("location: /login"), "{head}");
    let (code, _, _) = request_as(
        &addr,
        "POST",
        "/login",
        "",
        "name=admin&password=wrong-password",
    );
    assert_eq!(code, 401);
    let admin = login(&addr, "admin", "admin-password-1");
    let op = login(&addr, "op", "operator-password-1");
    let view = login(&addr, "view", "viewer-password-1");

    // Both boxes online, events stored, an event picture matched and served.
    wait("events from both boxes", Duration::from_secs(60), || {
        let page = get(&addr, "/fragments/fleet", &admin);
        ["f1", "f2"]
            .iter()
            .all(|b| page.contains(&format!("data-device=\"{b}\"")))
            && stats(&addr)["events"].as_u64().unwrap_or(0) >= 4
    });
    let page = get(&addr, "/", &admin);
    assert!(page.contains("online for"), "{page}");
    // Filters: by the site and tags f1's config gives, by version, by part of the id; the
    // box's CPU share from its telemetry.
    wait("f1's labels and CPU share", Duration::from_secs(20), || {
        let only = |q: &str, b: &str| {
            let page = get(&addr, &format!("/fragments/fleet?{q}"), &view);
            page.contains(&format!("data-device=\"{b}\""))
                && page.matches("data-device=").count() == 1
        };
        let page = get(&addr, "/fragments/fleet?tag=pilot", &view);
        only("tag=pilot", "f1")
            && only("site=north", "f1")
            && only("q=f2", "f2")
            && page.contains("#outdoor")
            && page.contains(" %</td>")
    });
    let v = env!("CARGO_PKG_VERSION");
    let page = get(
        &addr,
        &format!("/fragments/fleet?version={v}&state=online"),
        &view,
    );
    assert_eq!(page.matches("data-device=").count(), 2, "{page}");
    let page = get(&addr, "/fragments/fleet?version=0.0.0-none", &view);
    assert!(page.contains("0 of 2 boxes"), "{page}");
    // The box's zone occupancy, from its telemetry.
    wait(
        "the zone's occupancy on the device page",
        Duration::from_secs(20),
        || get(&addr, "/devices/f1", &view).contains(" inside"),
    );
    let mut picture = None;
    wait(
        "an event with its picture on Review",
        Duration::from_secs(60),
        || {
            let review = get(&addr, "/review?device=f1", &view);
            picture = review
                .split("src=\"/snapshots/")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(String::from);
            picture.is_some()
        },
    );
    // The time window: the events just stored are in the last 15 minutes.
    let review = get(&addr, "/review?device=f1&within=15m", &view);
    assert!(review.contains("data-seq="), "{review}");
    let path = format!("/snapshots/{}", picture.unwrap());
    let (code, _, _) = http_get_bytes(&addr, &path);
    assert_eq!(code, 303, "a picture needs a login too");
    let jpeg = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {view}\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(raw.starts_with(b"HTTP/1.1 200"));
        raw[at..].to_vec()
    };
    let (w, h, _) = decode_jpeg(&jpeg);
    assert_eq!(
        (w, h),
        (320, 240),
        "the box's 320-wide picture of the 768x576 clip"
    );

    // Hostile payloads: counted, nothing stored for another box.
    mqtt_publish(mqtt, "vigil/f1/events/plaza", "{not json");
    mqtt_publish(
        mqtt,
        "vigil/f1/events/plaza",
        r#"{"seq":999999,"id":"x","device":"f2","camera":"plaza","rule":"plaza","kind":"zone_enter","track_id":1,"class":"person","score":0.5,"bbox":[0,0,1,1],"time":"t"}"#,
    );
    mqtt_publish(mqtt, "vigil/f1/snapshot/plaza", "not a jpeg");
    wait("hostile payloads refused", Duration::from_secs(10), || {
        stats(&addr)["refused"].as_u64().unwrap_or(0) >= 3
    });
    let f2 = get(&addr, "/review?device=f2", &admin);
    assert!(
        !f2.contains("data-seq=\"999999\""),
        "a payload from f1's topic never lands on f2"
    );

    // Commands: an operator's ping reaches f1 and its reply shows; a viewer has no buttons,
    // and a forged POST (with the viewer's own CSRF token) or one without a token gets 403.
    let page = get(&addr, "/devices/f1", &op);
    assert!(
        page.contains("id=\"cmd-ping\""),
        "the operator has the ping button"
    );
    let token = csrf(&page);
    let (code, _, _) = request_as(
        &addr,
        "POST",
        "/devices/f1/commands",
        &op,
        &format!("csrf={token}&command=ping"),
    );
    assert_eq!(code, 303);
    wait("the ping's reply", Duration::from_secs(15), || {
        get(&addr, "/devices/f1", &op).contains("pong")
    });
    // The box's config, fetched with config/get, shown on its page (to a viewer too).
    let (code, _, _) = request_as(
        &addr,
        "POST",
        "/devices/f1/commands",
        &op,
        &format!("csrf={token}&command=config/get"),
    );
    assert_eq!(code, 303);
    wait("f1's config on its page", Duration::from_secs(15), || {
        let page = get(&addr, "/devices/f1", &view);
        page.contains("<pre id=\"config\">") && page.contains("id = &quot;f1&quot;")
    });
    let page = get(&addr, "/devices/f1", &view);
    assert!(
        !page.contains("id=\"cmd-ping\""),
        "a viewer has no command buttons"
    );
    let (code, _, body) = request_as(
        &addr,
        "POST",
        "/devices/f1/commands",
        &view,
        &format!("csrf={}&command=ping", csrf(&page)),
    );
    assert_eq!(code, 403, "{body}");
    let (code, _, _) = request_as(&addr, "POST", "/devices/f1/commands", &op, "command=ping");
    assert_eq!(code, 403, "no CSRF token");
    let (code, _, _) = request_as(
        &addr,
        "POST",
        "/devices/f1/commands",
        &op,
        "csrf=forged&command=ping",
    );
    assert_eq!(code, 403, "a wrong CSRF token");
    let (code, _, _) = request_as(&addr, "GET", "/audit", &view, "");
    assert_eq!(code, 403, "the audit log is an admin's");
    let audit = get(&addr, "/audit", &admin);
    assert!(
        audit.contains("command ping") && audit.contains(">op<"),
        "{audit}"
    );

    // The same as a person sees it, in headless Chromium.
    in_a_browser(&addr, &dir);

    // SIGKILL: the broker publishes the box's last will (offline) within 1.5 × keep-alive.
    // (f1 stays in `boxes`, running.)
    let (mut f2_proc, _) = boxes.remove(1);
    let killed = Instant::now();
    f2_proc.kill9();
    wait("f2 offline", Duration::from_secs(15), || {
        get(&addr, "/devices/f2", &admin).contains("offline for")
    });
    assert!(
        killed.elapsed() <= Duration::from_secs(10),
        "offline within the keep-alive bound"
    );
    // One alert, on the page and to the webhook; it resolves when the box is back.
    let firing = |hooks: &[String]| {
        hooks
            .iter()
            .filter(|h| h.contains("\"state\":\"firing\"") && h.contains("\"device\":\"f2\""))
            .count()
    };
    wait("the offline alert", Duration::from_secs(15), || {
        get(&addr, "/alerts", &view).contains("data-state=\"firing\"")
            && firing(&hooks.lock().unwrap()) == 1
    });
    let (_f2_again, _) = vigil_run(&dir.join("f2.toml"));
    wait("the alert resolved", Duration::from_secs(30), || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.contains("\"state\":\"resolved\"") && h.contains("\"device\":\"f2\""))
    });
    assert_eq!(firing(&hooks.lock().unwrap()), 1, "once per incident");
    let page = get(&addr, "/alerts", &view);
    assert!(
        !page.contains("data-state=\"firing\"") && page.contains("resolved"),
        "{page}"
    );

    // The console down while f1 keeps publishing: a gap, repaired by a replay request.
    let before = stats(&addr)["events"].as_u64().unwrap();
    fleet.kill9();
    std::thread::sleep(Duration::from_secs(8));
    fleet = console(&db, mqtt, web, &alerts, &[]);
    let t0 = Instant::now();
    while stats(&addr)["replays_asked"].as_u64().unwrap_or(0) < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "a replay asked for within 60 s: {} {}",
            stats(&addr),
            std::fs::read_to_string(db.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    wait("every gap filled", Duration::from_secs(60), || {
        get(&addr, "/devices/f1", &admin)
            .contains("None: every event from the first one seen is here.")
    });
    let page = get(&addr, "/fragments/fleet", &admin);
    assert!(page.contains("none"), "{page}");
    assert!(stats(&addr)["events"].as_u64().unwrap() > 0 && before > 0);
    drop(fleet);
}

/// Headless Chromium: an operator logs in, sees the fleet, opens f1, sends `ping` with its
/// button and sees the reply; screenshots of the device page and of Review are left in the
/// test's directory. A viewer logged in the same way has no command buttons.
fn in_a_browser(addr: &str, dir: &std::path::Path) {
    use fantoccini::Locator;
    let wd = free_port();
    let _driver = chromedriver(wd);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = chromium(wd, &dir.join("chromium")).await;
        let log_in = |name: &'static str, pw: &'static str| {
            let c = c.clone();
            async move {
                browser_login(&c, addr, name, pw).await;
                c.wait()
                    .for_element(Locator::Css("table#fleet tr[data-device=f1]"))
                    .await
                    .expect("the fleet page after logging in");
            }
        };
        log_in("op", "operator-password-1").await;
        c.find(Locator::Css("a[href='/devices/f1']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.wait()
            .for_element(Locator::Id("cmd-ping"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let t0 = Instant::now();
        loop {
            let src = c.source().await.unwrap();
            if src.contains("<td>ping</td><td>ok</td><td>pong</td>") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "the ping's reply on the page"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.refresh().await.unwrap();
        }
        let shot = c.screenshot().await.unwrap();
        std::fs::write(dir.join("fleet-device.png"), shot).unwrap();
        c.goto(&format!("http://{addr}/review")).await.unwrap();
        c.wait()
            .for_element(Locator::Css("table#events"))
            .await
            .unwrap();
        std::fs::write(dir.join("fleet-review.png"), c.screenshot().await.unwrap()).unwrap();
        println!("screenshots: {}", dir.join("fleet-device.png").display());
        // Log out; a viewer sees the device without command buttons.
        c.find(Locator::Css("header form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        log_in("view", "viewer-password-1").await;
        c.goto(&format!("http://{addr}/devices/f1")).await.unwrap();
        c.wait().for_element(Locator::Css("h3")).await.unwrap();
        assert!(
            c.find(Locator::Id("cmd-ping")).await.is_err(),
            "a viewer has no command buttons"
        );
        c.close().await.unwrap();
    });
}

/// Logs in on the console's login page in a browser.
pub(crate) async fn browser_login(c: &fantoccini::Client, addr: &str, name: &str, pw: &str) {
    use fantoccini::Locator;
    c.goto(&format!("http://{addr}/login")).await.unwrap();
    for (field, text) in [("name", name), ("password", pw)] {
        let css = format!("input[name={field}]");
        let input = c.find(Locator::Css(&css)).await.unwrap();
        input.send_keys(text).await.unwrap();
    }
    click(c, "form button").await;
}

/// Clicks the element a CSS selector finds.
pub(crate) async fn click(c: &fantoccini::Client, css: &str) {
    c.find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}
