//! The statements both stores run, written once in the SQL that SQLite and PostgreSQL share:
//! `$N` parameters (SQLite takes them as `?N`: [`lite`]), `CAST` instead of `::`, `CASE`
//! instead of `MAX`/`GREATEST` of two values, `RETURNING`. Only the schemas differ (types).

/// `$N` → `?N` for SQLite.
pub fn lite(sql: &str) -> String {
    sql.replace('$', "?")
}

pub const STATUS_UPSERT: &str = "INSERT INTO devices (device, state, since_ms, version, reason, last_seen_ms)
 VALUES ($1, $2, $3, $4, $5, $3)
 ON CONFLICT (device) DO UPDATE SET
   since_ms = CASE WHEN devices.state = excluded.state THEN devices.since_ms ELSE excluded.since_ms END,
   state = excluded.state,
   version = COALESCE(excluded.version, devices.version),
   reason = excluded.reason,
   last_seen_ms = excluded.last_seen_ms";

pub const TELEMETRY_UPSERT: &str =
    "INSERT INTO devices (device, state, since_ms, last_seen_ms, telemetry, telemetry_ms)
 VALUES ($1, 'online', $3, $3, $2, $3)
 ON CONFLICT (device) DO UPDATE SET telemetry = excluded.telemetry,
   telemetry_ms = excluded.telemetry_ms, last_seen_ms = excluded.last_seen_ms";

pub const EVENT_INSERT: &str =
    "INSERT INTO events (device, seq, id, camera, rule, kind, class, time,
   received_ms, snapshot_id, snapshot_bytes, payload)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
 ON CONFLICT (device, seq) DO NOTHING";

/// A box heard from only through its events is listed too.
pub const DEVICE_SEEN: &str =
    "INSERT INTO devices (device, state, since_ms, last_seen_ms, events, last_event_ms)
 VALUES ($1, 'unknown', $2, $2, 1, $2)
 ON CONFLICT (device) DO UPDATE SET last_seen_ms = CASE
   WHEN devices.last_seen_ms > excluded.last_seen_ms THEN devices.last_seen_ms
   ELSE excluded.last_seen_ms END,
   events = devices.events + 1, last_event_ms = excluded.last_event_ms";

pub const SEQ_BELOW: &str = "SELECT MAX(seq) FROM events WHERE device = $1 AND seq < $2";
pub const SEQ_ABOVE: &str = "SELECT MIN(seq) FROM events WHERE device = $1 AND seq > $2";
pub const GAP_CONTAINING: &str =
    "SELECT from_seq, to_seq FROM gaps WHERE device = $1 AND from_seq <= $2 AND to_seq >= $2";
pub const GAP_NEW: &str = "INSERT INTO gaps (device, from_seq, to_seq, first_seen_ms)
 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub const GAP_TAKE: &str = "DELETE FROM gaps WHERE device = $1 AND from_seq = $2
 RETURNING first_seen_ms, requests, last_request_ms, unfillable";
pub const GAP_PUT: &str = "INSERT INTO gaps (device, from_seq, to_seq, first_seen_ms, requests,
   last_request_ms, unfillable) VALUES ($1, $2, $3, $4, $5, $6, $7)";

pub const PICTURE_UPSERT: &str = "INSERT INTO camera_pictures (device, camera, jpeg, received_ms)
 VALUES ($1, $2, $3, $4) ON CONFLICT (device, camera) DO UPDATE SET
   jpeg = excluded.jpeg, received_ms = excluded.received_ms";
pub const PICTURE_EVENT: &str = "SELECT snapshot_id FROM events
 WHERE device = $1 AND camera = $2 AND snapshot_bytes = $3
   AND snapshot_id NOT IN (SELECT id FROM snapshots)
 ORDER BY seq DESC LIMIT 1";
pub const SNAPSHOT_INSERT: &str =
    "INSERT INTO snapshots (id, device, camera, jpeg, bytes, received_ms)
 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
pub const SNAPSHOT_TOTAL: &str = "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM snapshots";
/// The oldest pictures beyond `$1` bytes.
pub const SNAPSHOT_PRUNE: &str = "DELETE FROM snapshots WHERE id IN (
   SELECT id FROM (SELECT id, SUM(bytes) OVER (ORDER BY received_ms DESC, id) AS upto
     FROM snapshots) t WHERE upto > $1)";
pub const SNAPSHOT_GET: &str = "SELECT jpeg FROM snapshots WHERE id = $1";
pub const CAMERA_PICTURE_GET: &str =
    "SELECT jpeg FROM camera_pictures WHERE device = $1 AND camera = $2";

pub const DEVICES: &str =
    "SELECT d.device, d.state, d.since_ms, d.version, d.reason, d.last_seen_ms,
   d.telemetry, d.telemetry_ms,
   (SELECT MAX(received_ms) FROM events e WHERE e.device = d.device),
   (SELECT COUNT(*) FROM events e WHERE e.device = d.device)
 FROM devices d ORDER BY d.device";

pub const EVENTS: &str = "SELECT e.device, e.seq, e.id, e.camera, e.rule, e.kind, e.class, e.time,
   e.received_ms, e.snapshot_id,
   EXISTS (SELECT 1 FROM snapshots s WHERE s.id = e.snapshot_id), e.reviewed
 FROM events e
 WHERE (CAST($1 AS TEXT) IS NULL OR e.device = $1) AND (CAST($2 AS TEXT) IS NULL OR e.camera = $2)
   AND (CAST($3 AS TEXT) IS NULL OR e.rule = $3) AND (CAST($4 AS TEXT) IS NULL OR e.class = $4)
   AND e.received_ms >= $6
 ORDER BY e.received_ms DESC, e.device, e.seq DESC LIMIT $5";

pub const GAPS: &str = "SELECT device, from_seq, to_seq, first_seen_ms, requests, last_request_ms,
   unfillable FROM gaps ORDER BY device, from_seq";

pub const NOTE_REQUEST: &str = "UPDATE gaps SET requests = requests + 1, last_request_ms = $3,
   unfillable = ($4 OR requests + 1 >= $5)
 WHERE device = $1 AND from_seq = $2";

pub const MARK_REVIEWED: &str = "UPDATE events SET reviewed = $3 WHERE device = $1 AND seq = $2";

pub const USER_PUT: &str =
    "INSERT INTO users (name, hash, role, created_ms) VALUES ($1, $2, $3, $4)
 ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, role = excluded.role";
pub const USER_GET: &str = "SELECT hash, role FROM users WHERE name = $1";
pub const SESSION_PUT: &str = "INSERT INTO sessions (token, name, role, csrf, expires_ms)
 VALUES ($1, $2, $3, $4, $5)";
pub const SESSION_GET: &str =
    "SELECT s.name, u.role, s.csrf FROM sessions s JOIN users u ON u.name = s.name
 WHERE s.token = $1 AND s.expires_ms > $2";
pub const SESSION_DROP: &str = "DELETE FROM sessions WHERE token = $1 OR expires_ms <= $2";
pub const AUDIT_PUT: &str = "INSERT INTO audit (time_ms, name, action, target, detail)
 VALUES ($1, $2, $3, $4, $5)";
pub const AUDIT_GET: &str =
    "SELECT time_ms, name, action, target, detail FROM audit ORDER BY time_ms DESC LIMIT $1";
/// A command sent (status `sent`).
pub const REPLY_SENT: &str =
    "INSERT INTO replies (request_id, device, command, status, message, time_ms)
 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING";
/// Its reply: only for a request this console sent, to that box, for that command.
pub const REPLY_GOT: &str = "UPDATE replies SET status = $4, message = $5, time_ms = $6
 WHERE request_id = $1 AND device = $2 AND command = $3";
pub const REPLIES_GET: &str =
    "SELECT request_id, device, command, status, message, time_ms FROM replies
 WHERE device = $1 ORDER BY time_ms DESC LIMIT $2";

/// Opens an incident unless one of the same rule, box and camera is open (a partial unique
/// index keeps one open at a time, whichever console asks).
pub const INCIDENT_OPEN: &str = "INSERT INTO incidents (rule, device, camera, started_ms, detail)
 VALUES ($1, $2, $3, $4, $5)
 ON CONFLICT (rule, device, camera) WHERE resolved_ms IS NULL DO NOTHING";
pub const INCIDENT_RESOLVE: &str = "UPDATE incidents SET resolved_ms = $4
 WHERE rule = $1 AND device = $2 AND camera = $3 AND resolved_ms IS NULL";
pub const INCIDENTS: &str =
    "SELECT rule, device, camera, started_ms, resolved_ms, detail FROM incidents
 ORDER BY (CASE WHEN resolved_ms IS NULL THEN 0 ELSE 1 END), started_ms DESC LIMIT $1";

/// Documents: state kept whole as JSON by its owner (rollouts, releases, each box's OTA status).
pub const DOC_PUT: &str = "INSERT INTO docs (kind, id, doc, updated_ms) VALUES ($1, $2, $3, $4)
 ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc, updated_ms = excluded.updated_ms";
pub const DOC_GET: &str = "SELECT doc FROM docs WHERE kind = $1 AND id = $2";
pub const DOCS: &str = "SELECT id, doc FROM docs WHERE kind = $1 ORDER BY updated_ms DESC, id";
