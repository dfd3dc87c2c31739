//! `rtsp_transport`: a camera asks for the RTP transport its config names. The camera is a real
//! RTSP server (`vigil rtsp-serve --transport tcp`) that offers RTP interleaved in the RTSP
//! connection only, as a camera behind NAT or a firewall is reached: a `tcp` camera and an
//! `auto` camera (UDP refused, then TCP) are live, a `udp` camera is not and says why.

use crate::common::netns::{self, Partition};
use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_camera_uses_the_rtp_transport_its_config_names() {
    let _cpu = shared();
    let dir = temp_dir("rtsp-transport");
    let clip = ball_clip(&dir, "ball.mp4", 90);
    let port = free_port();
    let mut server = Proc {
        name: "rtsp".into(),
        child: Command::new(vigil_bin())
            .args(["rtsp-serve", "--loop", "--transport", "tcp", "--port"])
            .arg(port.to_string())
            .args(["--mount", "/cam", "--file"])
            .arg(&clip)
            .stdout(Stdio::null())
            .spawn()
            .expect("rtsp server"),
    };
    wait_port(port, Duration::from_secs(10));
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let broker = free_port();
    let _mqtt = mosquitto(&dir, broker);
    let mut cfg = config_toml(
        "transport",
        broker,
        &url,
        "fps = 2\nrtsp_transport = \"tcp\"\nstall_timeout = \"5s\"",
        "",
    );
    for (name, transport) in [("auto", "auto"), ("udponly", "udp")] {
        cfg += &format!(
            "\n[[cameras]]\nname = \"{name}\"\nurl = \"{url}\"\nmodel = \"nanodet\"\nfps = 2\n\
             rtsp_transport = \"{transport}\"\nstall_timeout = \"5s\"\n"
        );
    }
    let path = dir.join("vigil.toml");
    std::fs::write(&path, cfg).unwrap();
    let (_vigil, logs) = vigil_run(&path);
    let addr = http_addr(&logs);
    // Camera name → its `/api/cameras` entry.
    let cameras = || -> serde_json::Value {
        let (code, body) = http_get(&addr, "/api/cameras");
        assert_eq!(code, 200);
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let mut by_name = serde_json::Map::new();
        for c in list {
            by_name.insert(c["name"].as_str().unwrap().to_string(), c);
        }
        serde_json::Value::Object(by_name)
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut seen;
    loop {
        seen = cameras();
        let frames = |c: &str| seen[c]["frames_decoded"].as_u64().unwrap_or(0);
        let failed = seen["udponly"]["status"]["last_error"].is_string();
        if frames("plaza") > 30 && frames("auto") > 30 && failed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 40 s: {}",
            serde_json::to_string_pretty(&seen).unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for live in ["plaza", "auto"] {
        assert_eq!(seen[live]["status"]["state"], "live", "{live}: {seen}");
    }
    let udp = &seen["udponly"];
    assert_eq!(udp["frames_decoded"].as_u64().unwrap_or(0), 0, "{udp}");
    assert_ne!(udp["status"]["state"], "live", "{udp}");
    let why = udp["status"]["last_error"].as_str().unwrap().to_lowercase();
    eprintln!("udp-only camera against a TCP-only server: {why}");
    assert!(
        why.contains("transport"),
        "the error should say the transport was refused: {why}"
    );
    server.kill9();
}

/// `vigil rtsp-serve --launch DESCRIPTION` on a free port: the port.
fn serve_launch(description: &str, mount: &str) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(vigil_bin())
        .args(["rtsp-serve", "--port", &port.to_string(), "--mount", mount])
        .args(["--launch", description])
        .stdout(Stdio::null())
        .spawn()
        .expect("rtsp server");
    wait_port(port, Duration::from_secs(10));
    (
        Proc {
            name: format!("rtsp {mount}"),
            child,
        },
        port,
    )
}

/// Cameras as they come: H.265 with its audio stream listed first, MJPEG (RTP/JPEG, decoded
/// through `decodebin`), and H.264 behind an audio stream. Each is live with frames decoded by
/// the decoder its codec needs.
#[test]
fn h265_mjpeg_and_cameras_with_audio_are_decoded() {
    let _cpu = shared();
    let dir = temp_dir("rtsp-codecs");
    let video = "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1,format=I420";
    let audio = "audiotestsrc is-live=true ! audioconvert ! opusenc ! rtpopuspay name=pay0 pt=97";
    let servers = [
        (
            "h265",
            format!(
                "{} {video} ! x265enc speed-preset=ultrafast tune=zerolatency key-int-max=15 ! h265parse ! rtph265pay name=pay1 pt=96 config-interval=1",
                audio
            ),
            "avdec_h265",
        ),
        (
            "mjpeg",
            format!("{video} ! jpegenc ! rtpjpegpay name=pay0"),
            "jpegdec",
        ),
        (
            "h264",
            format!(
                "{} {video} ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=15 ! h264parse ! rtph264pay name=pay1 pt=96",
                audio
            ),
            "avdec_h264",
        ),
    ];
    let mut procs = Vec::new();
    let broker = free_port();
    let _mqtt = mosquitto(&dir, broker);
    let mut cfg = String::new();
    for (i, (name, description, _)) in servers.iter().enumerate() {
        let (p, port) = serve_launch(description, &format!("/{name}"));
        procs.push(p);
        let url = format!("rtsp://127.0.0.1:{port}/{name}");
        if i == 0 {
            cfg = config_toml("codecs", broker, &url, "fps = 2", "")
                .replace("name = \"plaza\"", &format!("name = \"{name}\""));
        } else {
            cfg += &format!(
                "\n[[cameras]]\nname = \"{name}\"\nurl = \"{url}\"\nmodel = \"nanodet\"\nfps = 2\n"
            );
        }
    }
    let path = dir.join("vigil.toml");
    std::fs::write(&path, cfg).unwrap();
    let (_vigil, logs) = vigil_run(&path);
    let addr = http_addr(&logs);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (code, body) = http_get(&addr, "/api/cameras");
        assert_eq!(code, 200);
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let ok = |name: &str, decoder: &str| {
            list.iter().any(|c| {
                c["name"] == name
                    && c["status"]["state"] == "live"
                    && c["status"]["decoder"] == decoder
                    && c["frames_decoded"].as_u64().unwrap_or(0) > 15
            })
        };
        if servers.iter().all(|(name, _, decoder)| ok(name, decoder)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 40 s: {}",
            serde_json::to_string_pretty(&list).unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A camera behind a firewall that drops UDP: an `auto` camera gets nothing over UDP, falls back
/// to TCP after 5 s (rtspsrc sets its stream up anew) and is live on its first pipeline, no
/// restart; a `udp` camera beside it says why it gets nothing. Real network namespaces.
#[test]
fn an_auto_camera_behind_a_firewall_that_drops_udp_falls_back_to_tcp_in_place() {
    let _cpu = shared();
    if netns::skip() {
        return;
    }
    let dir = temp_dir("rtsp-firewall");
    let clip = ball_clip(&dir, "ball.mp4", 90);
    // Slot 2: the partitions test (same process) uses 0 and 1.
    let net = Partition::new("u", 2);
    net.drop_udp_from_service();
    let mut serve = net.command(vigil_bin());
    serve
        .args([
            "rtsp-serve",
            "--loop",
            "--address",
            "0.0.0.0",
            "--port",
            "8554",
        ])
        .args(["--mount", "/cam", "--file"])
        .arg(&clip)
        .stdout(Stdio::null());
    let _server = Proc {
        name: "rtsp".into(),
        child: serve.spawn().expect("rtsp server in its namespace"),
    };
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("rtsp://{}:8554/cam", net.service_ip);
    let broker = free_port();
    let _mqtt = mosquitto(&dir, broker);
    let cfg = config_toml(
        "firewall",
        broker,
        &url,
        "fps = 2\nstall_timeout = \"20s\"",
        "",
    ) + &format!(
        "\n[[cameras]]\nname = \"udponly\"\nurl = \"{url}\"\nmodel = \"nanodet\"\nfps = 2\n\
             rtsp_transport = \"udp\"\nstall_timeout = \"20s\"\n"
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, cfg).unwrap();
    let (_vigil, logs) = vigil_run(&path);
    let addr = http_addr(&logs);
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut first_pipeline = None;
    loop {
        let (code, body) = http_get(&addr, "/api/cameras");
        assert_eq!(code, 200);
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let cam = |n: &str| list.iter().find(|c| c["name"] == n).cloned().unwrap();
        let (auto, udp) = (cam("plaza"), cam("udponly"));
        let first = *first_pipeline.get_or_insert(auto["pipeline_id"].as_u64());
        let udp_why = udp["status"]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase();
        if auto["frames_decoded"].as_u64().unwrap_or(0) > 30 && udp_why.contains("udp") {
            assert_eq!(auto["status"]["state"], "live", "{auto}");
            assert_eq!(
                auto["pipeline_id"].as_u64(),
                first,
                "the fallback happened inside the camera's first pipeline: {auto}"
            );
            let restarted = logs
                .snapshot()
                .iter()
                .any(|(_, l)| l.contains("camera down") && l.contains("camera=plaza"));
            assert!(!restarted, "the auto camera was restarted");
            assert_eq!(udp["frames_decoded"].as_u64().unwrap_or(0), 0, "{udp}");
            eprintln!("udp-only camera behind the firewall: {udp_why}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 45 s: {}",
            serde_json::to_string_pretty(&list).unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
