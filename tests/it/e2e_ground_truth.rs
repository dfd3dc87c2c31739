//! End to end over real parts: the first 30 s of vtest.avi served by a real RTSP server, the
//! real model, a real mosquitto, and the events a subscriber receives compared with what a
//! person counted by looking at the frames (`tests/data/vtest-ground-truth.md`, with the
//! annotated frames beside it): on the line `left-path`, 3 crossings `in` (three different
//! people, at 18.9 s, 21.3 s and 26.5 s) and 1 crossing `out` (the third person turning back,
//! 29.0 s); into the zone `left-exit`, 2 people (at 20.0 s and 22.2 s), of whom one stays
//! ≥ 3 s (5.7 s) and so fires one dwell.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const RULES: &str = r#"
[[cameras.lines]]
name = "left-path"
from = [0.21, 0.26]
to = [0.21, 0.52]
direction = "both"
classes = ["person"]
cooldown = "1s"

[[cameras.zones]]
name = "left-exit"
polygon = [[0.03, 0.30], [0.13, 0.30], [0.13, 0.50], [0.03, 0.50]]
classes = ["person"]
events = ["enter", "leave", "dwell"]
dwell = "3s"
"#;

const CAMERA: &str = r#"
fps = 10
min_score = 0.35
on_end = "stop"
stall_timeout = "10s"
"#;

fn near(t: f64, want: f64) -> bool {
    (t - want).abs() <= 1.0
}

#[test]
fn line_and_zone_events_over_rtsp_match_what_a_person_counted() {
    let _cpu = exclusive();
    let dir = temp_dir("truth");
    let (mqtt, rtsp) = (free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let sub = Subscriber::start(mqtt, &["vigil/truth/#"]);
    let _server = rtsp_server(&asset(".cache/media/vtest-30s.mp4"), rtsp, "/plaza");
    let cfg = dir.join("vigil.toml");
    let url = format!("rtsp://127.0.0.1:{rtsp}/plaza");
    std::fs::write(&cfg, config_toml("truth", mqtt, &url, CAMERA, RULES)).unwrap();
    let (_vigil, _logs) = vigil_run(&cfg);

    // The clip plays in real time (30 s); the camera then reports `ended`.
    let ended = sub.wait(Duration::from_secs(90), |m| {
        m.topic.ends_with("/telemetry") && m.json["cameras"]["plaza"]["state"] == "ended"
    });
    let ended = ended.expect("the camera reaches the end of the clip");
    // Frames the worker took: analysed, or kept from inference by the motion gate.
    let cam = &ended.json["cameras"]["plaza"];
    let analysed =
        cam["frames_analysed"].as_u64().unwrap() + cam["frames_motion_skipped"].as_u64().unwrap();
    assert!(analysed >= 250, "took {analysed} of 300 frames");
    assert_eq!(ended.json["cameras"]["plaza"]["backend"], "cpu");
    assert!(
        ended.json["cameras"]["plaza"].get("backend_note").is_none(),
        "backend = \"cpu\" was asked: no fallback to explain"
    );

    let events: Vec<serde_json::Value> = sub
        .on("/events/plaza")
        .into_iter()
        .map(|m| m.json)
        .collect();
    for e in &events {
        eprintln!("{e}");
        assert_eq!(e["camera"], "plaza");
        assert_eq!(e["device"], "truth");
        assert_eq!(e["class"], "person");
        // Every event says how long its track had been followed and how sure it was.
        let age = e["track_age_s"].as_f64().unwrap();
        let mean = e["track_mean_score"].as_f64().unwrap();
        assert!((0.0..60.0).contains(&age), "{e}");
        assert!((0.1..=1.0).contains(&mean), "{e}");
    }
    assert!(
        events
            .iter()
            .any(|e| e["track_age_s"].as_f64().unwrap() > 0.5),
        "some event of a track followed for a while"
    );
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");

    let crossings: Vec<(&str, u64, f64)> = events
        .iter()
        .filter(|e| e["kind"] == "line_cross" && e["rule"] == "left-path")
        .map(|e| {
            (
                e["direction"].as_str().unwrap(),
                e["track_id"].as_u64().unwrap(),
                e["pts_s"].as_f64().unwrap(),
            )
        })
        .collect();
    let ins: Vec<_> = crossings.iter().filter(|c| c.0 == "in").collect();
    let outs: Vec<_> = crossings.iter().filter(|c| c.0 == "out").collect();
    assert_eq!((ins.len(), outs.len()), (3, 1), "crossings: {crossings:?}");
    let in_tracks: BTreeSet<u64> = ins.iter().map(|c| c.1).collect();
    assert_eq!(
        in_tracks.len(),
        3,
        "three different people cross in: {crossings:?}"
    );
    for (c, want) in ins.iter().zip([18.9, 21.3, 26.5]) {
        assert!(
            near(c.2, want),
            "crossing in at {:.1}s, counted at {want}s",
            c.2
        );
    }
    assert!(
        near(outs[0].2, 29.0),
        "crossing out at {:.1}s, counted at 29.0s",
        outs[0].2
    );
    // No track crosses twice in the same direction.
    let mut per_track: BTreeMap<(u64, &str), usize> = BTreeMap::new();
    for c in &crossings {
        *per_track.entry((c.1, c.0)).or_default() += 1;
    }
    assert!(
        per_track.values().all(|n| *n == 1),
        "duplicate crossings: {crossings:?}"
    );

    let zone = |kind: &str| -> Vec<(u64, f64)> {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["rule"] == "left-exit")
            .map(|e| {
                (
                    e["track_id"].as_u64().unwrap(),
                    e["pts_s"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let enters = zone("zone_enter");
    let dwells = zone("zone_dwell");
    assert_eq!(enters.len(), 2, "zone entries: {enters:?}");
    assert!(
        near(enters[0].1, 20.0) && near(enters[1].1, 22.2),
        "zone entries: {enters:?}"
    );
    assert_eq!(dwells.len(), 1, "one person stays ≥ 3 s: {dwells:?}");
    assert_eq!(dwells[0].0, enters[1].0, "the dwell is the second person's");
    assert!(
        near(dwells[0].1, 25.2),
        "dwell due 3 s after 22.2 s: {dwells:?}"
    );
    // Both leave the zone (through its left edge at 21.4 s and 27.9 s), having stayed
    // 1.4 s and 5.7 s.
    let leaves: Vec<(u64, f64)> = zone("zone_leave");
    assert_eq!(
        leaves.iter().map(|l| l.0).collect::<Vec<_>>(),
        enters.iter().map(|e| e.0).collect::<Vec<_>>()
    );
    let stays: Vec<f64> = events
        .iter()
        .filter(|e| e["kind"] == "zone_leave")
        .map(|e| e["dwell_s"].as_f64().unwrap())
        .collect();
    assert!(
        near(leaves[0].1, 21.4) && near(leaves[1].1, 27.9),
        "zone leaves: {leaves:?}"
    );
    assert!(
        near(stays[0], 1.4) && near(stays[1], 5.7),
        "stays: {stays:?}"
    );
}
