//! The device's MQTT payloads as a reader takes them (the fleet console): owned, lenient
//! (unknown fields ignored, so a newer box's additions do not break an older console), bounded
//! by the packet size the reader accepts. The device writes them with its own types
//! ([`crate::events::Event`] here, the status and telemetry in `vigil-control`); tests on both
//! sides read what the device writes with these.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `<prefix>/<device>/events/<camera>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventMsg {
    pub seq: u64,
    pub id: String,
    pub device: String,
    pub camera: String,
    pub rule: String,
    pub kind: String,
    #[serde(default)]
    pub direction: Option<String>,
    pub track_id: u64,
    pub class: String,
    pub score: f32,
    pub bbox: [f32; 4],
    pub time: String,
    #[serde(default)]
    pub dwell_s: Option<f32>,
    /// Absent from events of older boxes.
    #[serde(default)]
    pub track_age_s: Option<f32>,
    #[serde(default)]
    pub track_mean_score: Option<f32>,
    #[serde(default)]
    pub snapshot: Option<SnapshotMsg>,
}

/// An event's picture ([`crate::events::SnapshotRef`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnapshotMsg {
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u32,
}

/// `<prefix>/<device>/status` (retained; the last will says `offline`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusMsg {
    pub state: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `<prefix>/<device>/telemetry`: the parts a console shows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TelemetryMsg {
    pub time: String,
    pub uptime_s: f64,
    pub mqtt_connected: bool,
    pub spool: SpoolMsg,
    pub cameras: BTreeMap<String, CameraMsg>,
    /// `[device] site` and `tags` (absent when unset, and from older boxes).
    #[serde(default)]
    pub device: Option<DeviceLabelsMsg>,
    /// The box's CPU, memory, load and temperatures (absent from older boxes).
    #[serde(default)]
    pub system: Option<SystemMsg>,
    /// TensorRT engines being built now (absent when none, and from older boxes).
    #[serde(default)]
    pub engine_builds: Vec<EngineBuildMsg>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EngineBuildMsg {
    pub entry: String,
    #[serde(default)]
    pub model: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DeviceLabelsMsg {
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SystemMsg {
    #[serde(default)]
    pub cpu_pct: Option<f64>,
    #[serde(default)]
    pub mem_used_pct: Option<f64>,
    #[serde(default)]
    pub load1: Option<f64>,
    #[serde(default)]
    pub temps_c: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SpoolMsg {
    pub unsent: u64,
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CameraMsg {
    pub state: String,
    pub fps_analysed: f64,
    pub events: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Each rule's count now (absent from boxes older than this field).
    #[serde(default)]
    pub rules: BTreeMap<String, RuleMsg>,
}

/// A rule's count in telemetry: a zone's occupancy or a line's crossings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RuleMsg {
    Zone {
        inside: u64,
    },
    Line {
        #[serde(rename = "in")]
        ins: u64,
        #[serde(rename = "out")]
        outs: u64,
    },
}

/// `<prefix>/<device>/cmd/<name>/reply`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReplyMsg {
    pub request_id: Option<String>,
    pub status: String,
    pub message: String,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// `<prefix>/<device>/ota/progress`: one phase of an update started by `cmd/ota/apply`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OtaProgressMsg {
    pub request_id: String,
    /// `downloading`, `verifying`, `staging`, `activating`, `probation`, and the outcomes
    /// `done`, `failed`, `rolled_back`, `cancelled`.
    pub phase: String,
    #[serde(default)]
    pub sequence: Option<u64>,
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One installed OTA set in [`OtaStatusMsg`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OtaSetMsg {
    pub slot: String,
    pub sequence: u64,
    #[serde(default)]
    pub version: Option<String>,
}

/// `<prefix>/<device>/ota/status` (retained): the installed sets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OtaStatusMsg {
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub active: Option<OtaSetMsg>,
    #[serde(default)]
    pub previous: Option<OtaSetMsg>,
    #[serde(default)]
    pub probation: Option<serde_json::Value>,
    #[serde(default)]
    pub last: Option<serde_json::Value>,
}

/// Whether `s` is a name Vigil gives a device, camera, zone or line (`[A-Za-z0-9_-]{1,64}`):
/// the only ones a reader should store.
pub fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventKind, SnapshotRef};

    #[test]
    fn what_the_device_writes_the_reader_takes() {
        let e = Event {
            seq: 7,
            id: "0190f0e0-0000-7000-8000-000000000000".into(),
            device: "box-1".into(),
            camera: "plaza".into(),
            rule: "crosswalk".into(),
            kind: EventKind::LineCross,
            direction: Some("in"),
            track_id: 3,
            class: "person".into(),
            score: 0.8,
            bbox: [0.1, 0.2, 0.3, 0.4],
            pts_s: 1.5,
            time: "2026-12-06T06:00:00.000Z".into(),
            dwell_s: None,
            track_age_s: 2.5,
            track_mean_score: 0.75,
            snapshot: Some(SnapshotRef {
                id: "s".into(),
                width: 640,
                height: 480,
                bytes: 1234,
            }),
            jpeg: None,
        };
        let m: EventMsg = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(
            (m.seq, m.kind.as_str(), m.direction.as_deref()),
            (7, "line_cross", Some("in"))
        );
        assert_eq!((m.track_age_s, m.track_mean_score), (Some(2.5), Some(0.75)));
        assert_eq!(m.snapshot.unwrap().bytes, 1234);
    }

    #[test]
    fn names_are_the_configs() {
        assert!(is_name("box-1_A"));
        assert!(!is_name(""));
        assert!(!is_name("a/b"));
        assert!(!is_name(&"x".repeat(65)));
    }
}
