//! Events: what Vigil reports. An [`Event`] is built from a rule hit with a unique id and
//! both timestamps; it is plain data (serde), knows nothing of MQTT or of how it was detected.

use serde::Serialize;
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ZoneEnter,
    ZoneLeave,
    ZoneDwell,
    LineCross,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The device's sequence number: 1, 2, 3, … without gaps, assigned when the event is
    /// written to the spool (0 before). A consumer that sees a gap asks for a replay.
    pub seq: u64,
    /// Unique, time-ordered (UUID v7).
    pub id: String,
    pub device: String,
    pub camera: String,
    /// Name of the zone or line.
    pub rule: String,
    pub kind: EventKind,
    /// `in` or `out`, for line crossings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    pub track_id: u64,
    pub class: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]`, normalised to the frame (0..1, origin top-left).
    pub bbox: [f32; 4],
    /// Stream time of the frame in seconds: 0 at the camera's first analysed frame, carried on
    /// across pipeline rebuilds (an outage is bridged with wall-clock time).
    pub pts_s: f64,
    /// Wall-clock time the event was produced, RFC 3339 UTC.
    pub time: String,
    /// Seconds inside the zone, for dwell and leave events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dwell_s: Option<f32>,
    /// Seconds the track had been followed (from its first confirmed frame) when the event
    /// fired, and its mean detection score so far: for consumers that filter out short-lived
    /// or unsure tracks.
    pub track_age_s: f32,
    pub track_mean_score: f32,
    /// The annotated picture of the frame the event fired on, when one was made (the events
    /// of one frame share it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRef>,
    /// The picture's JPEG bytes, carried to whoever stores it; not part of the JSON.
    #[serde(skip)]
    pub jpeg: Option<Arc<[u8]>>,
}

/// What an event says of its picture: served at `GET /api/events/{id}/snapshot.jpg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRef {
    /// The picture's own id (UUID v7), shared by the events of one frame.
    pub id: String,
    pub width: u32,
    pub height: u32,
    /// Size of the JPEG in bytes.
    pub bytes: u32,
}

pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
