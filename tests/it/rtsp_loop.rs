//! `vigil rtsp-serve --loop`: a clip served as a live camera without end (for the live bench,
//! whose measuring windows must never cross the clip's end). A real GStreamer client
//! (`gst-launch-1.0`) receives a 2 s clip for 8 s: frames keep coming past its end, in real
//! time, with times that go on rising; without `--loop` the stream ends with the clip.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A 2 s, 30 fps H.264 MP4 made by GStreamer.
fn clip(dir: &std::path::Path) -> std::path::PathBuf {
    ball_clip(dir, "two-seconds.mp4", 60)
}

/// Receives `url` for at most `seconds`: the frames' times (seconds), and how long it ran.
fn receive(url: &str, seconds: u64) -> (Vec<f64>, Duration) {
    let t0 = Instant::now();
    let out = Command::new("timeout")
        .args([&seconds.to_string(), "gst-launch-1.0", "-v", "rtspsrc"])
        .arg(format!("location={url}"))
        .args([
            "latency=100",
            "!",
            "rtph264depay",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "fakesink",
            "silent=false",
            "sync=true",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("gst-launch-1.0");
    let text = String::from_utf8_lossy(&out.stdout);
    let pts = text
        .lines()
        .filter(|l| l.contains("chain"))
        .filter_map(|l| {
            let t = l.split("pts: ").nth(1)?.split(',').next()?;
            let mut parts = t.trim().split(':');
            let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        })
        .collect();
    (pts, t0.elapsed())
}

#[test]
fn a_looped_clip_plays_past_its_end_in_real_time() {
    let _cpu = shared();
    let dir = temp_dir("rtsp-loop");
    let file = clip(&dir);
    let port = free_port();
    let mut server = Command::new(vigil_bin())
        .args([
            "rtsp-serve",
            "--loop",
            "--port",
            &port.to_string(),
            "--mount",
            "/loop",
            "--file",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .spawn()
        .expect("rtsp server");
    wait_port(port, Duration::from_secs(10));
    let (pts, took) = receive(&format!("rtsp://127.0.0.1:{port}/loop"), 8);
    let _ = server.kill();
    let _ = server.wait();
    // 8 s of a 30 fps stream, less the set-up (seconds on a loaded machine): at least 3.5 s,
    // well past the 2 s clip's end.
    assert!(pts.len() >= 100, "{} frames in {took:?}", pts.len());
    let last = pts.iter().cloned().fold(0.0, f64::max);
    assert!(last >= 3.5, "frames past the clip's end: last at {last} s");
    assert!(
        // (rtspsrc times frames by their arrival and RTP time: equal neighbours happen.)
        pts.windows(2).all(|w| w[1] >= w[0]),
        "times never go back across the laps: {pts:?}"
    );
    // Real time: no more frames than 30 a second of the client's run.
    assert!(
        pts.len() as f64 <= took.as_secs_f64() * 30.0 + 10.0,
        "{} frames in {took:?}",
        pts.len()
    );

    // Without --loop the stream ends with the clip.
    let port = free_port();
    let _plain = rtsp_server(&file, port, "/once");
    let (pts, took) = receive(&format!("rtsp://127.0.0.1:{port}/once"), 6);
    assert!(pts.len() <= 62, "{} frames", pts.len());
    assert!(
        pts.iter().cloned().fold(0.0, f64::max) < 2.1,
        "{pts:?} in {took:?}"
    );
}
