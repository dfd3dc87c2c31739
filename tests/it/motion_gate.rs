//! The motion gate on the CPU path, end to end: a camera that sees a still scene for 10 s (the
//! plaza's first frame, frozen: people standing, nothing moving) and then 25 s of the plaza
//! walking (two people cross the line, one enters the zone). `vigil bench` runs the production path on it with the gate (the default) and
//! without: the still part must mostly skip inference, the walking part must not, and the
//! events must be the same.

use crate::common::*;
use std::process::Command;

/// An H.264 clip at 10 fps of the plaza (vtest.avi): its first frame frozen for `still`
/// frames, then its first `walking` frames. Made from pictures: a concat of two branches in
/// one pipeline hung now and then.
fn still_then_walking(dir: &std::path::Path, still: u32, walking: u32) -> std::path::PathBuf {
    let vtest = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let ok = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc", &format!("location={vtest}")])
        .args(["!", "avidemux", "!", "decodebin", "!", "videoconvert"])
        // (eos-after=1 let no frame through here.)
        .args(["!", "identity", &format!("eos-after={}", walking.max(2))])
        .args(["!", "jpegenc", "quality=95", "!", "multifilesink"])
        .arg(format!("index={still}"))
        .arg(format!("location={}/f%04d.jpg", frames.display()))
        .status()
        .unwrap()
        .success();
    assert!(ok, "frames of {vtest}");
    let first = frames.join(format!("f{still:04}.jpg"));
    for k in 0..still {
        std::fs::copy(&first, frames.join(format!("f{k:04}.jpg"))).unwrap();
    }
    let clip = dir.join("clip.mp4");
    h264_mp4(
        &words(&format!(
            "multifilesrc location={}/f%04d.jpg index=0 stop-index={} caps=image/jpeg,framerate=10/1 \
             ! jpegdec ! videoconvert ! video/x-raw,format=I420",
            frames.display(),
            still + walking.max(1) - 1
        )),
        20,
        &clip,
    );
    clip
}

#[test]
fn a_still_scene_skips_inference_and_the_events_stay_the_same() {
    let _cpu = shared();
    let dir = temp_dir("motion-gate");
    let clip = still_then_walking(&dir, 100, 250);
    let json = dir.join("bench.json");
    let out = Command::new(vigil_bin())
        .current_dir(repo())
        .args(["bench", "--clip"])
        .arg(&clip)
        .arg("--json")
        .arg(&json)
        .env("VIGIL_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let (gate, off) = (&v["vigil"], &v["no_gate"]);
    let n = |m: &serde_json::Value, k: &str| m[k].as_u64().unwrap();
    // 35 s at 5 fps: 175 frames sampled. Without the gate, all analysed.
    let taken = n(gate, "frames") + n(gate, "skipped");
    assert!((170..=176).contains(&taken), "{stdout}");
    assert_eq!(n(off, "skipped"), 0);
    assert_eq!(n(off, "frames"), taken, "{stdout}");
    // The still 10 s (50 frames): one analysed a second at most (max_skip 1 s), the first
    // included. (The walking part skips some too: the first 25 s of the plaza have stretches
    // with nobody near the left-hand rules; measured 97 analysed of 175 in all.)
    assert!(
        n(gate, "skipped") >= 35,
        "only {} of the still part's 50 frames skipped\n{stdout}",
        n(gate, "skipped")
    );
    // The same events (per rule, kind and direction).
    assert_eq!(gate["events"], off["events"], "{stdout}");
    assert!(
        gate["events"].as_object().is_some_and(|e| !e.is_empty()),
        "{stdout}"
    );
}

#[test]
fn a_watched_camera_is_analysed_at_its_rate_and_gated_again_when_nobody_looks() {
    use std::time::Duration;
    let _cpu = exclusive();
    let dir = temp_dir("motion-watched");
    // The plaza's first frame, frozen for 60 s (people standing, nothing moving), served as a
    // live RTSP camera. (videotestsrc's patterns are no good here: part of "smpte" changes
    // from frame to frame.)
    let clip = still_then_walking(&dir, 600, 0);
    let rtsp = free_port();
    let _server = rtsp_server(&clip, rtsp, "/still");
    let cfg = dir.join("vigil.toml");
    let url = format!("rtsp://127.0.0.1:{rtsp}/still");
    std::fs::write(
        &cfg,
        config_toml("watched", free_port(), &url, "fps = 5", "") + "\n[live]\nfps = 5\n",
    )
    .unwrap();
    let (_vigil, logs) = vigil_run(&cfg);
    let addr = http_addr(&logs);
    let counts = || {
        (
            metric(
                &addr,
                "vigil_camera_frames_analysed_total{camera=\"plaza\"}",
            ),
            metric(
                &addr,
                "vigil_camera_frames_motion_skipped_total{camera=\"plaza\"}",
            ),
        )
    };
    let since = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0, b.1 - a.1);
    // Nobody looks: about one frame in five analysed (max_skip 1 s at 5 fps).
    std::thread::sleep(Duration::from_secs(6));
    let c0 = counts();
    std::thread::sleep(Duration::from_secs(4));
    let (analysed, skipped) = since(c0, counts());
    assert!(
        skipped >= 10.0 && analysed <= 7.0,
        "unwatched still scene: {analysed} analysed, {skipped} skipped in 4 s"
    );
    // Someone watches: every sampled frame is analysed (the live picture has its boxes).
    let (viewer, code) = live_upgrade(&addr);
    assert_eq!(code, 101, "the live view's WebSocket");
    std::thread::sleep(Duration::from_secs(1));
    let c1 = counts();
    std::thread::sleep(Duration::from_secs(4));
    let (analysed, skipped) = since(c1, counts());
    assert!(
        skipped == 0.0 && analysed >= 15.0,
        "watched: {analysed} analysed, {skipped} skipped in 4 s"
    );
    // The viewer leaves: gated again.
    drop(viewer);
    std::thread::sleep(Duration::from_secs(2));
    let c2 = counts();
    std::thread::sleep(Duration::from_secs(4));
    let (_, skipped) = since(c2, counts());
    assert!(
        skipped >= 10.0,
        "after the viewer left: {skipped} skipped in 4 s"
    );
}
