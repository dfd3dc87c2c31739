//! Vigil killed with SIGKILL mid-stream and restarted: every event committed to the spool
//! before the kill reaches the subscriber (sent before the kill, or drained from the spool
//! after the restart), and the sequence numbers carry on without a gap. To make the kill hit
//! events that were committed but not yet acknowledged, the broker is down (killed too) when
//! Vigil is killed.

use crate::common::*;
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn events_committed_before_a_kill_9_reach_the_subscriber_after_restart() {
    let _cpu = exclusive();
    let dir = temp_dir("kill-vigil");
    let (mqtt, rtsp) = (free_port(), free_port());
    let mut broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    let sub = Subscriber::start(mqtt, &["vigil/killme/#"]);
    let cfg = dir.join("vigil.toml");
    let url = format!("rtsp://127.0.0.1:{rtsp}/plaza");
    std::fs::write(
        &cfg,
        config_toml("killme", mqtt, &url, "fps = 5\nmin_score = 0.4", PLAZA_ZONE),
    )
    .unwrap();
    let state =
        std::env::temp_dir().join(format!("vigil-test-state-killme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);

    let (mut vigil, _logs) = vigil_run(&cfg);
    let is_event = |m: &Msg| m.topic.contains("/events/");
    let t0 = std::time::Instant::now();
    while sub.on("/events/plaza").len() < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "events before the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The broker goes away; events pile up in the spool, unacknowledged.
    broker.kill9();
    let spool_path = state.join("events.db");
    let unsent = || {
        vigil_control::spool::Spool::open(&spool_path, Default::default())
            .unwrap()
            .stats()
            .unwrap()
    };
    let t1 = std::time::Instant::now();
    while unsent().unsent < 3 {
        assert!(
            t1.elapsed() < Duration::from_secs(40),
            "events spooled while the broker is down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vigil.kill9();
    let committed = unsent();
    eprintln!(
        "killed with {} events committed, {} of them not yet acknowledged",
        committed.last_seq, committed.unsent
    );
    assert!(committed.unsent >= 3);

    let _broker2 = mosquitto(&dir, mqtt);
    let sub2 = Subscriber::start(mqtt, &["vigil/killme/#"]);
    let (mut vigil2, _logs2) = vigil_run(&cfg);
    // After the restart the spool drains; new events continue the numbering.
    let t2 = std::time::Instant::now();
    loop {
        let seqs: BTreeSet<u64> = sub
            .messages()
            .iter()
            .chain(sub2.messages().iter())
            .filter(|m| is_event(m))
            .filter_map(|m| m.json["seq"].as_u64())
            .collect();
        if (1..=committed.last_seq).all(|s| seqs.contains(&s))
            && seqs.iter().any(|s| *s > committed.last_seq)
        {
            eprintln!(
                "after restart: all {} committed events received ({} distinct seqs so far, max {:?})",
                committed.last_seq,
                seqs.len(),
                seqs.iter().next_back()
            );
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(40),
            "missing after restart: {:?}",
            (1..=committed.last_seq)
                .filter(|s| !seqs.contains(s))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(vigil2.running());
}
