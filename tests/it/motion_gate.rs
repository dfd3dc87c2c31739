//! The motion gate on the CPU path, end to end: a camera that sees a still scene for 10 s (the
//! plaza's first frame, frozen: people standing, nothing moving) and then 25 s of the plaza
//! walking (two people cross the line, one enters the zone). `vigil bench` runs the production path on it with the gate (the default) and
//! without: the still part must mostly skip inference, the walking part must not, and the
//! events must be the same.

use crate::common::*;
use std::process::Command;

#[test]
fn a_still_scene_skips_inference_and_the_events_stay_the_same() {
    let _cpu = shared();
    let dir = temp_dir("motion-gate");
    let vtest = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";
    // The plaza's first 250 frames as pictures, numbered from 100; pictures 0..100 are copies
    // of the first (a concat of two branches in one pipeline hung now and then).
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let ok = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc", &format!("location={vtest}")])
        .args(["!", "avidemux", "!", "decodebin", "!", "videoconvert"])
        .args([
            "!",
            "identity",
            "eos-after=250",
            "!",
            "jpegenc",
            "quality=95",
        ])
        .args(["!", "multifilesink", "index=100"])
        .arg(format!("location={}/f%04d.jpg", frames.display()))
        .status()
        .unwrap()
        .success();
    assert!(ok, "frames of {vtest}");
    for k in 0..100 {
        std::fs::copy(
            frames.join("f0100.jpg"),
            frames.join(format!("f{k:04}.jpg")),
        )
        .unwrap();
    }
    let clip = dir.join("still-then-walking.mp4");
    h264_mp4(
        &words(&format!(
            "multifilesrc location={}/f%04d.jpg index=0 stop-index=349 caps=image/jpeg,framerate=10/1 \
             ! jpegdec ! videoconvert ! video/x-raw,format=I420",
            frames.display()
        )),
        20,
        &clip,
    );
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
