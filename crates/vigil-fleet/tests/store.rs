//! The store suite, run against both implementations: SQLite in a temp file and a real
//! PostgreSQL server (Debian's `postgresql` package) started by the test on a free port.
//! Where PostgreSQL is not installed the PostgreSQL half says it was skipped, except under CI
//! (`CI` set), where it must run.

mod pg;

use pg::start_postgres;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vigil_core::wire::{EventMsg, StatusMsg};
use vigil_fleet::store::postgres::PgStore;
use vigil_fleet::store::sqlite::SqliteStore;
use vigil_fleet::store::{EventFilter, Gap, MAX_REQUESTS, Store};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-fleet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn event(device: &str, camera: &str, seq: u64, bytes: Option<u32>) -> EventMsg {
    let snapshot = bytes.map(|b| {
        format!(r#","snapshot":{{"id":"pic-{device}-{seq}","width":64,"height":48,"bytes":{b}}}"#)
    });
    serde_json::from_str(&format!(
        r#"{{"seq":{seq},"id":"ev-{seq}","device":"{device}","camera":"{camera}","rule":"door",
            "kind":"zone_enter","track_id":1,"class":"person","score":0.7,"bbox":[0,0,1,1],
            "time":"2026-12-06T06:00:00Z"{}}}"#,
        snapshot.unwrap_or_default()
    ))
    .unwrap()
}

fn gaps_of(gaps: &[Gap], device: &str) -> Vec<(i64, i64)> {
    gaps.iter()
        .filter(|g| g.device == device)
        .map(|g| (g.from_seq, g.to_seq))
        .collect()
}

async fn suite<S: Store>(s: &S) {
    s.migrate().await.unwrap();
    s.migrate().await.unwrap(); // idempotent

    // Status: `since` moves only when the state changes.
    let st = |state: &str| StatusMsg {
        state: state.into(),
        version: Some("0.1.0".into()),
        time: None,
        reason: None,
    };
    s.set_status("a", &st("online"), 1000).await.unwrap();
    s.set_status("a", &st("online"), 2000).await.unwrap();
    let d = s.devices().await.unwrap();
    assert_eq!(
        (d[0].state.as_str(), d[0].since_ms, d[0].last_seen_ms),
        ("online", 1000, 2000)
    );
    s.set_status("a", &st("offline"), 3000).await.unwrap();
    let d = s.devices().await.unwrap();
    assert_eq!((d[0].state.as_str(), d[0].since_ms), ("offline", 3000));
    s.set_telemetry("a", r#"{"x":1}"#, 4000).await.unwrap();
    let d = s.devices().await.unwrap();
    assert_eq!(
        (d[0].telemetry.as_deref(), d[0].telemetry_ms),
        (Some(r#"{"x":1}"#), Some(4000))
    );

    // Events: duplicates absorbed, gaps exact whatever the order.
    for seq in [1, 2, 5] {
        assert!(
            s.insert_event(&event("a", "c1", seq, None), "{}", 10)
                .await
                .unwrap()
        );
    }
    assert!(
        !s.insert_event(&event("a", "c1", 2, None), "{}", 11)
            .await
            .unwrap()
    );
    assert_eq!(gaps_of(&s.gaps().await.unwrap(), "a"), vec![(3, 4)]);
    s.insert_event(&event("a", "c1", 12, None), "{}", 12)
        .await
        .unwrap();
    assert_eq!(
        gaps_of(&s.gaps().await.unwrap(), "a"),
        vec![(3, 4), (6, 11)]
    );
    s.insert_event(&event("a", "c1", 8, None), "{}", 13)
        .await
        .unwrap();
    assert_eq!(
        gaps_of(&s.gaps().await.unwrap(), "a"),
        vec![(3, 4), (6, 7), (9, 11)]
    );
    for seq in [3, 4, 6, 7, 9, 10, 11] {
        s.insert_event(&event("a", "c1", seq, None), "{}", 14)
            .await
            .unwrap();
    }
    assert!(gaps_of(&s.gaps().await.unwrap(), "a").is_empty());
    // Another box's events do not touch a's.
    s.insert_event(&event("b", "c1", 100, None), "{}", 15)
        .await
        .unwrap();
    s.insert_event(&event("b", "c1", 103, None), "{}", 16)
        .await
        .unwrap();
    assert_eq!(gaps_of(&s.gaps().await.unwrap(), "b"), vec![(101, 102)]);
    assert!(gaps_of(&s.gaps().await.unwrap(), "a").is_empty());
    let d = s.devices().await.unwrap();
    assert_eq!(d.iter().find(|d| d.device == "a").unwrap().events, 12);

    // Replay requests: counted, unfillable at the limit or when the box says they are gone.
    for k in 0..MAX_REQUESTS {
        let g = &s.gaps().await.unwrap()[0];
        assert!(!g.unfillable, "request {k}");
        s.note_request("b", 101, 100 + i64::from(k), false)
            .await
            .unwrap();
    }
    let g = &s.gaps().await.unwrap()[0];
    assert!(g.unfillable && g.requests == MAX_REQUESTS, "{g:?}");
    s.insert_event(&event("b", "c1", 107, None), "{}", 17)
        .await
        .unwrap();
    s.note_request("b", 104, 200, true).await.unwrap();
    let gone = s.gaps().await.unwrap();
    assert!(gone.iter().all(|g| g.unfillable), "{gone:?}");
    // A late event still splits an unfillable gap, which stays unfillable.
    s.insert_event(&event("b", "c1", 105, None), "{}", 18)
        .await
        .unwrap();
    let g = s.gaps().await.unwrap();
    assert_eq!(gaps_of(&g, "b"), vec![(101, 102), (104, 104), (106, 106)]);
    assert!(g.iter().all(|g| g.unfillable));

    // Filters.
    s.insert_event(&event("a", "c2", 13, None), "{}", 20)
        .await
        .unwrap();
    let f = |camera: Option<&str>| EventFilter {
        device: Some("a".into()),
        camera: camera.map(Into::into),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(s.events(&f(None)).await.unwrap().len(), 13);
    let c2 = s.events(&f(Some("c2"))).await.unwrap();
    assert_eq!((c2.len(), c2[0].seq), (1, 13));
    let none = EventFilter {
        class: Some("car".into()),
        limit: 100,
        ..Default::default()
    };
    assert!(s.events(&none).await.unwrap().is_empty());
    let newest = s
        .events(&EventFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest[0].seq, 13, "newest first");
    let recent = s
        .events(&EventFilter {
            since_ms: 20,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(recent.iter().any(|e| e.seq == 13));
    assert!(recent.iter().all(|e| e.received_ms >= 20));
    assert!(recent.len() < s.events(&f(None)).await.unwrap().len());

    // Pictures: matched to the newest event of that camera with that many bytes, bounded.
    s.insert_event(&event("a", "c3", 20, Some(4)), "{}", 30)
        .await
        .unwrap();
    s.insert_event(&event("a", "c3", 21, Some(5)), "{}", 31)
        .await
        .unwrap();
    let id = s
        .add_picture("a", "c3", &[0xff, 0xd8, 1, 2], 32, 1 << 20)
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("pic-a-20"));
    assert_eq!(
        s.snapshot("pic-a-20").await.unwrap().unwrap(),
        vec![0xff, 0xd8, 1, 2]
    );
    assert_eq!(
        s.camera_picture("a", "c3").await.unwrap().unwrap(),
        vec![0xff, 0xd8, 1, 2]
    );
    let e = s
        .events(&EventFilter {
            camera: Some("c3".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(e.iter().any(|e| e.seq == 20 && e.has_picture));
    assert!(e.iter().any(|e| e.seq == 21 && !e.has_picture));
    // No event waits for a 3-byte picture: the camera's latest only.
    assert_eq!(
        s.add_picture("a", "c3", &[0xff, 0xd8, 9], 33, 1 << 20)
            .await
            .unwrap(),
        None
    );
    // Over the bound the oldest picture goes.
    let id = s
        .add_picture("a", "c3", &[0xff, 0xd8, 1, 2, 3], 34, 6)
        .await
        .unwrap();
    assert_eq!(id.as_deref(), Some("pic-a-21"));
    assert!(
        s.snapshot("pic-a-20").await.unwrap().is_none(),
        "the oldest went"
    );
    assert!(s.snapshot("pic-a-21").await.unwrap().is_some());

    // Incidents: one open at a time per rule, box and camera; resolved, then open again.
    let inc = |t: i64| vigil_fleet::store::IncidentRow {
        rule: "box offline".into(),
        device: "a".into(),
        camera: String::new(),
        started_ms: t,
        resolved_ms: None,
        detail: "offline".into(),
    };
    assert!(s.open_incident(&inc(100)).await.unwrap());
    assert!(!s.open_incident(&inc(101)).await.unwrap(), "already open");
    assert!(
        s.resolve_incident("box offline", "a", "", 150)
            .await
            .unwrap()
    );
    assert!(
        !s.resolve_incident("box offline", "a", "", 151)
            .await
            .unwrap()
    );
    assert!(s.open_incident(&inc(200)).await.unwrap(), "a new incident");
    let all = s.incidents(10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].started_ms, all[0].resolved_ms),
        (200, None),
        "open first"
    );
    assert_eq!(all[1].resolved_ms, Some(150));

    s.mark_reviewed("a", 13, true).await.unwrap();
    let r = s.events(&f(Some("c2"))).await.unwrap();
    assert!(r[0].reviewed);

    // Documents: replaced whole, listed by kind, the last saved first.
    assert_eq!(s.doc("rollout", "r1").await.unwrap(), None);
    s.put_doc("rollout", "r1", r#"{"v":1}"#, 10).await.unwrap();
    s.put_doc("rollout", "r2", r#"{"v":2}"#, 20).await.unwrap();
    s.put_doc("release", "r1", r#"{"x":0}"#, 30).await.unwrap();
    s.put_doc("rollout", "r1", r#"{"v":3}"#, 40).await.unwrap();
    assert_eq!(
        s.doc("rollout", "r1").await.unwrap().as_deref(),
        Some(r#"{"v":3}"#)
    );
    assert_eq!(
        s.docs("rollout").await.unwrap(),
        vec![
            ("r1".to_string(), r#"{"v":3}"#.to_string()),
            ("r2".to_string(), r#"{"v":2}"#.to_string())
        ]
    );
}

#[tokio::test]
async fn the_store_suite_on_sqlite() {
    let dir = temp_dir("sqlite");
    let s = SqliteStore::open(&dir.join("fleet.db")).unwrap();
    suite(&s).await;
    // Reopened: everything is still there.
    drop(s);
    let s = SqliteStore::open(&dir.join("fleet.db")).unwrap();
    s.migrate().await.unwrap();
    assert_eq!(s.devices().await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_store_suite_on_postgresql() {
    let Some(pg) = start_postgres() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL must be installed under CI (cargo xtask setup installs it)"
        );
        eprintln!("SKIPPED the_store_suite_on_postgresql: no PostgreSQL server binaries here");
        return;
    };
    let url = format!("postgres://vigil@127.0.0.1:{}/postgres", pg.port);
    // The server accepts TCP a moment before it accepts logins.
    let t0 = Instant::now();
    let s = loop {
        match PgStore::connect(&url).await {
            Ok(s) => break s,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    suite(&s).await;
}
