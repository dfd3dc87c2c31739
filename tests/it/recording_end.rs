//! A recording's last frames reach the worker: with the per-camera queue of recordings
//! (`RECORDING_DEPTH` frames) full when the file ends, the camera waits for the worker to take
//! them before it flushes the slot. A real GStreamer pipeline on the demo clip (CPU decode), a
//! deliberately slow consumer, and the camera's own counters.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vigil_core::config::CameraConfig;
use vigil_dataplane::media::camera::SourceSettings;
use vigil_dataplane::media::{CameraHandle, CameraState, DropPolicy, FrameQueue};

#[test]
fn every_sampled_frame_of_a_recording_is_taken_even_at_its_end() {
    let _cpu = common::shared();
    vigil_dataplane::media::init().unwrap();
    let clip = common::asset(".cache/media/vtest-30s.mp4");
    let cfg: CameraConfig = toml::from_str(&format!(
        "name = \"rec\"\nurl = \"file://{}\"\nmodel = \"m\"\nfps = 5\non_end = \"stop\"\nstall_timeout = \"20s\"",
        clip.display()
    ))
    .unwrap();
    let settings = SourceSettings::from(&cfg);
    assert_eq!(settings.drop_policy(), DropPolicy::Block);
    let queue = Arc::new(FrameQueue::new(&[settings.drop_policy()]));
    let cam = CameraHandle::spawn(settings, 0, queue.clone()).unwrap();
    // A consumer slower than the decoder, so the slot is full when the file ends.
    let taken = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (queue, taken) = (queue.clone(), taken.clone());
        std::thread::spawn(move || {
            while let Some(_frame) = queue.pop(Duration::from_secs(30)) {
                taken.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let t0 = Instant::now();
    while cam.stats.status().state != CameraState::Ended {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the recording did not end: {:?}",
            cam.stats.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sampled = cam.stats.frames_sampled.load(Ordering::Relaxed);
    // 30 s at 5 fps.
    assert!((140..=160).contains(&sampled), "{sampled} frames sampled");
    assert_eq!(queue.dropped(0), 0, "no frame of a recording is dropped");
    assert_eq!(
        taken.load(Ordering::Relaxed),
        sampled,
        "every sampled frame reached the consumer"
    );
    drop(cam);
    queue.close();
    consumer.join().unwrap();
}
