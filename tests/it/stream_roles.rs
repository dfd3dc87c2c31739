//! Stream roles: detection on a camera's substream (`url`), what people see on its main stream
//! (`view_url`). The main stream is opened by the first picture wanted (the `snapshot` command
//! here; the detection frame stands in until its first frame), its pictures have its size, and
//! it is closed again 30 s after the last picture. A bad `view_url` is a located config error.

use crate::common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// A `snapshot` command's annotated picture: (width, height).
fn snapshot(sub: &Subscriber, mqtt: u16, id: &str) -> (usize, usize) {
    mqtt_publish(
        mqtt,
        "vigil/roles/cmd/snapshot",
        &format!(r#"{{"request_id": "{id}", "camera": "plaza"}}"#),
    );
    let r = sub
        .wait(Duration::from_secs(15), |m| {
            m.topic.ends_with("/cmd/snapshot/reply") && m.json["request_id"] == id
        })
        .expect("a reply to snapshot");
    assert_eq!(r.json["status"], "ok", "{}", r.json);
    let a = &r.json["data"]["annotated"];
    (
        a["width"].as_u64().unwrap() as usize,
        a["height"].as_u64().unwrap() as usize,
    )
}

#[test]
fn pictures_come_from_the_main_stream_while_detection_runs_on_the_substream() {
    let _cpu = exclusive();
    let dir = temp_dir("roles");
    // The substream: the demo clip at half size (384x288, same 4:3 aspect), made here.
    let sub_clip = dir.join("sub.mp4");
    let out = Command::new("gst-launch-1.0")
        .arg("-q")
        .args([
            "filesrc",
            &format!("location={}", asset(".cache/media/vtest.mp4").display()),
        ])
        .args([
            "!",
            "decodebin",
            "!",
            "identity",
            "eos-after=150",
            "!",
            "videoscale",
        ])
        .args([
            "!",
            "video/x-raw,width=384,height=288",
            "!",
            "x264enc",
            "speed-preset=ultrafast",
        ])
        .args(["key-int-max=25", "!", "mp4mux", "!", "filesink"])
        .arg(format!("location={}", sub_clip.display()))
        .output()
        .expect("gst-launch-1.0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (mqtt, rtsp_sub, rtsp_main) = (free_port(), free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _sub_server = rtsp_server(&sub_clip, rtsp_sub, "/sub");
    let _main_server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp_main, "/main");
    let url = format!("rtsp://127.0.0.1:{rtsp_sub}/sub");
    let extra = format!("fps = 5\nview_url = \"rtsp://127.0.0.1:{rtsp_main}/main\"\n");
    let cfg = dir.join("vigil.toml");
    std::fs::write(&cfg, config_toml("roles", mqtt, &url, &extra, "")).unwrap();
    let (_vigil, logs) = vigil_run(&cfg);
    let sub = Subscriber::start(mqtt, &["vigil/roles/cmd/#"]);
    logs.wait_for(Duration::from_secs(20), |l| l.contains("camera: live"))
        .expect("the substream is live");
    assert!(
        !logs.contains("main stream opened"),
        "nothing wanted a picture yet: the main stream stays closed"
    );

    // The first picture opens the main stream; the substream's frame stands in.
    assert_eq!(snapshot(&sub, mqtt, "r0"), (384, 288));
    logs.wait_for(Duration::from_secs(10), |l| {
        l.contains("plaza/view") && l.contains("main stream opened for viewing")
    })
    .expect("the main stream opened");
    // Then pictures have the main stream's size (768x576, under [snapshots] width).
    let t0 = Instant::now();
    let mut k = 1;
    loop {
        let size = snapshot(&sub, mqtt, &format!("r{k}"));
        if size == (768, 576) {
            break;
        }
        assert_eq!(size, (384, 288), "either stream's size, nothing else");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pictures from the main stream within 20 s"
        );
        k += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    // Detection went on on the substream all along.
    let addr = http_addr(&logs);
    let (_, body) = http_get(&addr, "/api/cameras");
    let cams: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        cams[0]["frames_analysed"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );

    // Nobody wants pictures any more: closed 30 s later.
    logs.wait_for(Duration::from_secs(50), |l| {
        l.contains("plaza/view") && l.contains("main stream closed")
    })
    .expect("the main stream closed when nobody looked");
}

#[test]
fn a_bad_view_url_is_a_located_config_error() {
    let dir = temp_dir("roles-bad");
    let cfg = dir.join("vigil.toml");
    let extra = "view_url = \"http://10.0.0.5/main\"\n";
    std::fs::write(
        &cfg,
        config_toml("rolesbad", 1883, "rtsp://10.0.0.5/sub", extra, ""),
    )
    .unwrap();
    let out = Command::new(vigil_bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cameras[0].view_url"), "{text}");
}
