//! The console's storage: one [`Store`] trait, two implementations run by the same test suite
//! (`tests/store.rs`): SQLite ([`sqlite`], one file, the default) and PostgreSQL ([`postgres`],
//! when a fleet outgrows one machine). Both keep the same tables (`SCHEMA` in each), written by
//! the ingest and read by the pages:
//! - `devices`: one row per box: state (`online`/`offline`/…) and since when, version, the last
//!   telemetry (JSON as the box sent it) and when anything was last heard from it;
//! - `events`: keyed on (device, seq), so QoS 1 duplicates and replays are absorbed; the
//!   event's picture id and size as the event named them;
//! - `gaps`: the sequence numbers missing between received events, kept exact as events arrive
//!   in any order (a replayed event splits or shrinks the gap it falls in), with how often a
//!   replay was asked for and whether the box could no longer fill it;
//! - `snapshots`: event pictures (JPEG) matched to their event, bounded in bytes;
//! - `camera_pictures`: the latest picture of each camera;
//! - `docs`: state its owner keeps whole as JSON, by kind and id (rollouts and releases:
//!   [`crate::rollout`]; each box's retained OTA status).

pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::future::Future;
use vigil_core::wire::{EventMsg, StatusMsg};

/// A store error, with the database's own words.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("the store's worker thread stopped")]
    Gone,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One box as the fleet page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub device: String,
    pub state: String,
    /// Milliseconds since the Unix epoch (console clock) when `state` last changed.
    pub since_ms: i64,
    pub version: Option<String>,
    pub reason: Option<String>,
    pub last_seen_ms: i64,
    /// The last telemetry as the box sent it (JSON), and when it came.
    pub telemetry: Option<String>,
    pub telemetry_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
    pub events: i64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub device: String,
    pub seq: i64,
    pub id: String,
    pub camera: String,
    pub rule: String,
    pub kind: String,
    pub class: String,
    pub time: String,
    pub received_ms: i64,
    pub snapshot_id: Option<String>,
    /// Whether the picture itself is stored (it came over MQTT and matched).
    pub has_picture: bool,
    pub reviewed: bool,
}

/// Sequence numbers `from_seq..=to_seq` of `device` that never arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub device: String,
    pub from_seq: i64,
    pub to_seq: i64,
    pub first_seen_ms: i64,
    pub requests: i32,
    pub last_request_ms: Option<i64>,
    /// The box was asked [`MAX_REQUESTS`] times, or said the events are gone.
    pub unfillable: bool,
}

/// A login session: the token's SHA-256 (the cookie's value is never stored), its user, the
/// user's role (read from `users` at each request, so a role change applies at once) and the
/// session's CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token: String,
    pub name: String,
    pub role: String,
    pub csrf: String,
    pub expires_ms: i64,
}

/// Who did what, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub time_ms: i64,
    pub name: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A command sent from the console and, once it came, the box's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRow {
    pub request_id: String,
    pub device: String,
    pub command: String,
    /// `sent` until the reply comes, then its `status` (`ok`, `error`).
    pub status: String,
    pub message: String,
    pub time_ms: i64,
}

/// An alert: a rule's condition held for a box (and camera, or `""`) from `started_ms`; open
/// until `resolved_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentRow {
    pub rule: String,
    pub device: String,
    pub camera: String,
    pub started_ms: i64,
    pub resolved_ms: Option<i64>,
    pub detail: String,
}

/// Replay requests for one gap before it is shown as unfillable.
pub const MAX_REQUESTS: i32 = 5;

/// What the review page asks for (every field optional), newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub device: Option<String>,
    pub camera: Option<String>,
    pub rule: Option<String>,
    pub class: Option<String>,
    /// Only events received at or after this (ms since the epoch; 0: any).
    pub since_ms: i64,
    pub limit: u32,
}

/// The console's storage. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// Creates or upgrades the tables.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
    /// A status message of `device` at `now_ms` (`since_ms` moves only when the state changes).
    fn set_status(
        &self,
        device: &str,
        status: &StatusMsg,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A telemetry message (JSON) of `device`.
    fn set_telemetry(
        &self,
        device: &str,
        json: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Stores an event unless (device, seq) is there already (`false`: a duplicate), keeping
    /// the gaps exact.
    /// `payload`: the message as the box sent it (kept for the event's page).
    fn insert_event(
        &self,
        e: &EventMsg,
        payload: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// A camera's picture from the MQTT snapshot topic: kept as the camera's latest, and as the
    /// picture of the newest event of that camera whose picture has this many bytes and is not
    /// stored yet (returned). Snapshots past `max_bytes` are dropped oldest first.
    fn add_picture(
        &self,
        device: &str,
        camera: &str,
        jpeg: &[u8],
        now_ms: i64,
        max_bytes: i64,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// A stored event picture by its id.
    fn snapshot(&self, id: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    /// The latest picture of a camera.
    fn camera_picture(
        &self,
        device: &str,
        camera: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    fn devices(&self) -> impl Future<Output = Result<Vec<DeviceRow>>> + Send;
    fn events(&self, f: &EventFilter) -> impl Future<Output = Result<Vec<EventRow>>> + Send;
    fn gaps(&self) -> impl Future<Output = Result<Vec<Gap>>> + Send;
    /// Records a replay request for the gap starting at `from_seq`; the gap becomes unfillable
    /// at [`MAX_REQUESTS`], or at once with `gone` (the box said it no longer has them).
    fn note_request(
        &self,
        device: &str,
        from_seq: i64,
        now_ms: i64,
        gone: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    fn mark_reviewed(
        &self,
        device: &str,
        seq: i64,
        reviewed: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Adds a user or replaces its password hash and role.
    fn put_user(
        &self,
        name: &str,
        hash: &str,
        role: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A user's password hash and role.
    fn user(&self, name: &str) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    fn put_session(&self, s: &SessionRow) -> impl Future<Output = Result<()>> + Send;
    /// The unexpired session of a token hash, with its user's current role.
    fn session(
        &self,
        token: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<SessionRow>>> + Send;
    /// Ends a session (and every expired one).
    fn drop_session(&self, token: &str, now_ms: i64) -> impl Future<Output = Result<()>> + Send;
    fn audit(&self, a: &AuditRow) -> impl Future<Output = Result<()>> + Send;
    /// The newest entries first.
    fn audit_log(&self, limit: u32) -> impl Future<Output = Result<Vec<AuditRow>>> + Send;
    /// A command sent (`status` `sent`), or its reply: which only updates the row of a request
    /// sent to that box for that command (a reply to anything else changes nothing).
    fn put_reply(&self, r: &ReplyRow) -> impl Future<Output = Result<()>> + Send;
    fn replies(
        &self,
        device: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ReplyRow>>> + Send;
    /// Opens an incident (`false`: one of that rule, box and camera is open already).
    fn open_incident(&self, i: &IncidentRow) -> impl Future<Output = Result<bool>> + Send;
    /// Resolves the open incident of that rule, box and camera (`false`: none was open).
    fn resolve_incident(
        &self,
        rule: &str,
        device: &str,
        camera: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Open incidents first, then the newest.
    fn incidents(&self, limit: u32) -> impl Future<Output = Result<Vec<IncidentRow>>> + Send;
    /// Saves (or replaces) a document.
    fn put_doc(
        &self,
        kind: &str,
        id: &str,
        doc: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    fn doc(&self, kind: &str, id: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Every document of a kind, (id, document), the last saved first.
    fn docs(&self, kind: &str) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
}

/// Where a new event falls among the stored ones of its device, and what it does to the gaps:
/// the arithmetic both stores share. `below`/`above`: the nearest stored seqs (other than this
/// one); `containing`: the gap it falls in, if any.
pub fn gap_change(
    seq: i64,
    below: Option<i64>,
    above: Option<i64>,
    containing: Option<(i64, i64)>,
) -> GapChange {
    if let Some((from, to)) = containing {
        let mut keep = Vec::new();
        if from < seq {
            keep.push((from, seq - 1));
        }
        if seq < to {
            keep.push((seq + 1, to));
        }
        return GapChange::Split { from, keep };
    }
    match (below, above) {
        (Some(b), None) if seq > b + 1 => GapChange::New(b + 1, seq - 1),
        _ => GapChange::None,
    }
}

/// What [`gap_change`] says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapChange {
    None,
    /// A new gap `from..=to` below the newest event.
    New(i64, i64),
    /// The gap starting at `from` is replaced by `keep` (0, 1 or 2 gaps).
    Split {
        from: i64,
        keep: Vec<(i64, i64)>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_open_below_the_newest_and_close_as_events_fill_them() {
        assert_eq!(gap_change(1, None, None, None), GapChange::None);
        assert_eq!(gap_change(2, Some(1), None, None), GapChange::None);
        assert_eq!(gap_change(5, Some(2), None, None), GapChange::New(3, 4));
        assert_eq!(
            gap_change(3, Some(2), Some(5), Some((3, 4))),
            GapChange::Split {
                from: 3,
                keep: vec![(4, 4)]
            }
        );
        assert_eq!(
            gap_change(5, Some(2), Some(9), Some((3, 8))),
            GapChange::Split {
                from: 3,
                keep: vec![(3, 4), (6, 8)]
            }
        );
        assert_eq!(
            gap_change(4, Some(3), Some(5), Some((4, 4))),
            GapChange::Split {
                from: 4,
                keep: vec![]
            }
        );
        // An older event below the first one seen opens no gap (the console started late).
        assert_eq!(gap_change(1, None, Some(10), None), GapChange::None);
    }
}
