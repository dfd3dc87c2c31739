//! The live view as a person sees it: headless Chromium, driven over WebDriver (chromedriver),
//! opens `/live` on a Vigil running two cameras of the demo clip over RTSP. Pictures arrive
//! from every camera (counted by the page), the overlay is on them (a pixel on the edge of a
//! track's box, as the picture's own track list gives it, has the box colour; pixels well away
//! from every box and zone do not), and a second tab and a closed tab change the client count
//! in `/metrics`. The MJPEG fallback, an unknown camera and the client cap are checked too.
//! The page's screenshot is left in the test's directory (`live.png`).

use crate::common::*;
use std::time::{Duration, Instant};

fn wait_metric(addr: &str, name: &str, want: f64) {
    let t0 = Instant::now();
    while metric(addr, name) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{name} stays {} (expected {want})",
            metric(addr, name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the page reports: pictures per camera, and for `camera` the pixel colours (RGB) at
/// each probe point given in picture pixels, with the picture's size and tracks.
const PROBE: &str = r##"
const [camera, points] = arguments;
const L = window.vigilLive;
const i = L.cameras.indexOf(camera);
const c = document.querySelectorAll("#grid canvas")[i];
const px = c ? points.map(([x, y]) => Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3))) : [];
return { frames: L.frames, cameras: L.cameras, meta: L.meta[camera] || null, px };
"##;

#[test]
fn live_view_in_headless_chromium_shows_every_camera_with_its_overlay() {
    let _cpu = exclusive();
    let p = plaza("live");
    let (dir, mqtt, url) = (p.dir.clone(), p.mqtt, p.url.clone());
    let wd = free_port();
    // The second camera has its own, smaller live width.
    let yard = format!(
        "[[cameras]]\nname = \"yard\"\nurl = \"{url}\"\nmodel = \"nanodet\"\nfps = 5\n[cameras.live]\nwidth = 320\n"
    );
    let cfg = dir.join("vigil.toml");
    let text = config_toml(
        "live",
        mqtt,
        &url,
        "fps = 5",
        &format!("{PLAZA_ZONE}\n{yard}"),
    ) + "\n[live]\nmax_clients = 3\n";
    std::fs::write(&cfg, text).unwrap();
    let (_vigil, logs) = vigil_run(&cfg);
    let addr = http_addr(&logs);
    assert!(
        logs.contains(&format!("live view: http://{addr}/live")),
        "the start-up log names the live view's URL"
    );
    assert_eq!(metric(&addr, "vigil_live_clients"), 0.0);
    let drawn0 = metric(&addr, "vigil_pictures_drawn_total");

    let _driver = chromedriver(wd);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = chromium(wd, &dir.join("chromium")).await;
        c.goto(&format!("http://{addr}/live")).await.unwrap();

        // Pictures from every camera: at least 10 each.
        let t0 = Instant::now();
        let mut r;
        loop {
            r = c
                .execute(PROBE, vec!["plaza".into(), serde_json::json!([])])
                .await
                .unwrap();
            let f = &r["frames"];
            if f["plaza"].as_u64().unwrap_or(0) >= 10 && f["yard"].as_u64().unwrap_or(0) >= 10 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "pictures arrive: {r}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(r["cameras"], serde_json::json!(["plaza", "yard"]));
        let yard = c
            .execute(PROBE, vec!["yard".into(), serde_json::json!([])])
            .await
            .unwrap();
        assert_eq!(
            (
                yard["meta"]["width"].as_u64(),
                yard["meta"]["height"].as_u64()
            ),
            (Some(320), Some(240)),
            "yard's own live width ([cameras.live] width = 320)"
        );
        assert_eq!(metric(&addr, "vigil_live_clients"), 1.0);

        // The overlay: wait for a picture with a track of a good size, then probe the middle
        // of its box's left and right edges (the box colour) and points well away from every
        // box, below the zone's top edge (y > 0.25) and off the header.
        let t0 = Instant::now();
        let (on, off) = loop {
            let r = c
                .execute(PROBE, vec!["plaza".into(), serde_json::json!([])])
                .await
                .unwrap();
            if let Some(m) = r["meta"].as_object() {
                let (w, h) = (m["width"].as_f64().unwrap(), m["height"].as_f64().unwrap());
                let boxes: Vec<[f64; 4]> = m["tracks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        let b = &t["bbox"];
                        [0, 1, 2, 3].map(|k| b[k].as_f64().unwrap())
                    })
                    .collect();
                let big = boxes
                    .iter()
                    .find(|b| (b[2] - b[0]) * w > 20.0 && (b[3] - b[1]) * h > 40.0);
                if let Some(b) = big {
                    let my = ((b[1] + b[3]) / 2.0 * h).floor();
                    let edges = vec![
                        [(b[0] * w).floor(), my],
                        [(b[0] * w).floor() + 1.0, my],
                        [(b[2] * w).floor(), my],
                        [(b[2] * w).floor() - 1.0, my],
                    ];
                    let far: Vec<[f64; 2]> = (0..40)
                        .flat_map(|k| {
                            let (x, y) = (
                                0.05 + 0.9 * (k % 8) as f64 / 7.0,
                                0.3 + 0.65 * (k / 8) as f64 / 4.0,
                            );
                            let clear = boxes.iter().all(|b| {
                                x < b[0] - 0.05
                                    || x > b[2] + 0.05
                                    || y < b[1] - 0.08
                                    || y > b[3] + 0.05
                            });
                            clear.then_some([(x * w).floor(), (y * h).floor()])
                        })
                        .collect();
                    let mut points = edges.clone();
                    points.extend(&far);
                    let r = c
                        .execute(PROBE, vec!["plaza".into(), serde_json::json!(points)])
                        .await
                        .unwrap();
                    // Only if the canvas still shows that picture.
                    if r["meta"]["seq"] == m["seq"] {
                        let px: Vec<[i64; 3]> = r["px"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| [0, 1, 2].map(|k| p[k].as_i64().unwrap()))
                            .collect();
                        break (px[..4].to_vec(), px[4..].to_vec());
                    }
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "a picture with a track"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Green (a track) or red (a track that fired an event): one channel well above both
        // others.
        let boxy = |p: &[i64; 3]| {
            (p[1] > p[0] + 60 && p[1] > p[2] + 60) || (p[0] > p[1] + 60 && p[0] > p[2] + 60)
        };
        let green_or_red = on.iter().filter(|p| boxy(p)).count();
        assert!(green_or_red >= 2, "box edges in the box colour: {on:?}");
        let strong_green = |p: &[i64; 3]| p[1] > 150 && p[0] < 80 && p[2] < 80;
        let stray = off.iter().filter(|p| strong_green(p)).count();
        assert!(off.len() >= 10, "enough probes away from the boxes");
        assert!(
            stray <= 1,
            "the box colour away from every box: {stray} of {}",
            off.len()
        );

        let shot = c.screenshot().await.unwrap();
        std::fs::write(dir.join("live.png"), shot).unwrap();
        println!("screenshot: {}", dir.join("live.png").display());

        // A second tab counts; closing it uncounts it.
        let first = c.window().await.unwrap();
        let tab = c.new_window(true).await.unwrap();
        c.switch_to_window(tab.handle).await.unwrap();
        c.goto(&format!("http://{addr}/live")).await.unwrap();
        wait_metric(&addr, "vigil_live_clients", 2.0);
        c.close_window().await.unwrap();
        c.switch_to_window(first).await.unwrap();
        wait_metric(&addr, "vigil_live_clients", 1.0);
        c.close().await.unwrap();
    });
    wait_metric(&addr, "vigil_live_clients", 0.0);
    assert!(metric(&addr, "vigil_pictures_drawn_total") > drawn0 + 20.0);
    assert!(metric(&addr, "vigil_live_pictures_sent_total") >= 20.0);

    mjpeg_unknown_cameras_and_the_cap(&addr);
}

/// MJPEG: JPEG parts of the camera's size; an unknown camera is a JSON 404; past
/// `max_clients` (3) a client gets 503 and is counted.
fn mjpeg_unknown_cameras_and_the_cap(addr: &str) {
    use std::io::{Read, Write};
    let open = |path: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        s
    };
    let mut streams: Vec<std::net::TcpStream> =
        (0..3).map(|_| open("/api/cameras/plaza/mjpeg")).collect();
    // Read until two whole JPEGs have come on the first stream.
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.windows(2).filter(|w| w == b"\xff\xd9").count() < 2 {
        let mut buf = [0u8; 65536];
        let n = streams[0].read(&mut buf).expect("MJPEG bytes");
        assert!(
            n > 0 && t0.elapsed() < Duration::from_secs(20),
            "MJPEG stream ended"
        );
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got[..200.min(got.len())]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("multipart/x-mixed-replace; boundary=vigilframe"),
        "{head}"
    );
    let soi = got.windows(2).position(|w| w == b"\xff\xd8").unwrap();
    let eoi = got.windows(2).position(|w| w == b"\xff\xd9").unwrap();
    let (w, h, _) = decode_jpeg(&got[soi..eoi + 2]);
    assert_eq!(
        (w, h),
        (640, 480),
        "a live picture of the 768x576 clip at width 640"
    );
    wait_metric(addr, "vigil_live_clients", 3.0);
    let refused = metric(addr, "vigil_live_clients_refused_total");
    let (code, body) = http_get(addr, "/api/cameras/plaza/mjpeg");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("live.max_clients"), "{body}");
    assert_eq!(
        metric(addr, "vigil_live_clients_refused_total"),
        refused + 1.0
    );
    streams.clear();
    wait_metric(addr, "vigil_live_clients", 0.0);
    let (code, body) = http_get(addr, "/api/cameras/nope/mjpeg");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no running camera named"), "{body}");
}
