//! The SQLite store (the default): one file in WAL mode, every call one transaction on a
//! blocking thread.

use super::sql::{self, lite};
use super::{
    AuditRow, DeviceRow, EventFilter, EventRow, Gap, GapChange, IncidentRow, MAX_REQUESTS,
    ReplyRow, Result, SessionRow, Store, StoreError,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use vigil_core::wire::{EventMsg, StatusMsg};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, state TEXT NOT NULL, since_ms INTEGER NOT NULL, version TEXT,
    reason TEXT, last_seen_ms INTEGER NOT NULL, telemetry TEXT, telemetry_ms INTEGER,
        events INTEGER NOT NULL DEFAULT 0, last_event_ms INTEGER);
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, camera TEXT NOT NULL,
    rule TEXT NOT NULL, kind TEXT NOT NULL, class TEXT NOT NULL, time TEXT NOT NULL,
    received_ms INTEGER NOT NULL, snapshot_id TEXT, snapshot_bytes INTEGER,
    payload TEXT NOT NULL, reviewed INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device, seq));
CREATE INDEX IF NOT EXISTS events_received ON events (received_ms);
CREATE TABLE IF NOT EXISTS gaps (
    device TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    last_request_ms INTEGER, unfillable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, from_seq));
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY, device TEXT NOT NULL, camera TEXT NOT NULL, jpeg BLOB NOT NULL,
    bytes INTEGER NOT NULL, received_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS snapshots_received ON snapshots (received_ms);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL, role TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, csrf TEXT NOT NULL,
    expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    time_ms INTEGER NOT NULL, name TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
    detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);
CREATE TABLE IF NOT EXISTS replies (
    request_id TEXT PRIMARY KEY, device TEXT NOT NULL, command TEXT NOT NULL,
    status TEXT NOT NULL, message TEXT NOT NULL, time_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    rule TEXT NOT NULL, device TEXT NOT NULL, camera TEXT NOT NULL, started_ms INTEGER NOT NULL,
    resolved_ms INTEGER, detail TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open ON incidents (rule, device, camera)
    WHERE resolved_ms IS NULL;
CREATE TABLE IF NOT EXISTS camera_pictures (
    device TEXT NOT NULL, camera TEXT NOT NULL, jpeg BLOB NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (device, camera));
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, id));
";

/// SQLite at one path.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|_| StoreError::Gone)?
        .map_err(StoreError::from)
    }
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        self.run(|c| c.execute_batch(SCHEMA)).await
    }

    async fn set_status(&self, device: &str, s: &StatusMsg, now_ms: i64) -> Result<()> {
        let (device, s) = (device.to_string(), s.clone());
        self.run(move |c| {
            c.execute(
                &lite(sql::STATUS_UPSERT),
                params![device, s.state, now_ms, s.version, s.reason],
            )
            .map(|_| ())
        })
        .await
    }

    async fn set_telemetry(&self, device: &str, json: &str, now_ms: i64) -> Result<()> {
        let (device, json) = (device.to_string(), json.to_string());
        self.run(move |c| {
            c.execute(&lite(sql::TELEMETRY_UPSERT), params![device, json, now_ms])
                .map(|_| ())
        })
        .await
    }

    async fn insert_event(&self, e: &EventMsg, payload: &str, now_ms: i64) -> Result<bool> {
        let (e, payload) = (e.clone(), payload.to_string());
        self.run(move |c| {
            let tx = c.transaction()?;
            let seq = e.seq as i64;
            let n = tx.execute(
                &lite(sql::EVENT_INSERT),
                params![
                    e.device,
                    seq,
                    e.id,
                    e.camera,
                    e.rule,
                    e.kind,
                    e.class,
                    e.time,
                    now_ms,
                    e.snapshot.as_ref().map(|s| s.id.clone()),
                    e.snapshot.as_ref().map(|s| i64::from(s.bytes)),
                    payload
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute(&lite(sql::DEVICE_SEEN), params![e.device, now_ms])?;
            let near = |q: &str| -> rusqlite::Result<Option<i64>> {
                tx.query_row(&lite(q), params![e.device, seq], |r| r.get(0))
            };
            let (below, above) = (near(sql::SEQ_BELOW)?, near(sql::SEQ_ABOVE)?);
            let containing: Option<(i64, i64)> = tx
                .query_row(&lite(sql::GAP_CONTAINING), params![e.device, seq], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            match super::gap_change(seq, below, above, containing) {
                GapChange::None => {}
                GapChange::New(from, to) => {
                    tx.execute(&lite(sql::GAP_NEW), params![e.device, from, to, now_ms])?;
                }
                GapChange::Split { from, keep } => {
                    let old: (i64, i32, Option<i64>, bool) =
                        tx.query_row(&lite(sql::GAP_TAKE), params![e.device, from], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })?;
                    for (a, b) in keep {
                        tx.execute(
                            &lite(sql::GAP_PUT),
                            params![e.device, a, b, old.0, old.1, old.2, old.3],
                        )?;
                    }
                }
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn add_picture(
        &self,
        device: &str,
        camera: &str,
        jpeg: &[u8],
        now_ms: i64,
        max_bytes: i64,
    ) -> Result<Option<String>> {
        let (device, camera, jpeg) = (device.to_string(), camera.to_string(), jpeg.to_vec());
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                &lite(sql::PICTURE_UPSERT),
                params![device, camera, jpeg, now_ms],
            )?;
            let id: Option<String> = tx
                .query_row(
                    &lite(sql::PICTURE_EVENT),
                    params![device, camera, jpeg.len() as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = &id {
                tx.execute(
                    &lite(sql::SNAPSHOT_INSERT),
                    params![id, device, camera, jpeg, jpeg.len() as i64, now_ms],
                )?;
                let total: i64 = tx.query_row(sql::SNAPSHOT_TOTAL, [], |r| r.get(0))?;
                if total > max_bytes {
                    tx.execute(&lite(sql::SNAPSHOT_PRUNE), params![max_bytes])?;
                }
            }
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    async fn snapshot(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let id = id.to_string();
        self.run(move |c| {
            c.query_row(&lite(sql::SNAPSHOT_GET), [id], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn camera_picture(&self, device: &str, camera: &str) -> Result<Option<Vec<u8>>> {
        let (device, camera) = (device.to_string(), camera.to_string());
        self.run(move |c| {
            c.query_row(&lite(sql::CAMERA_PICTURE_GET), [device, camera], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceRow>> {
        self.run(|c| {
            let mut st = c.prepare(sql::DEVICES)?;
            st.query_map([], |r| {
                Ok(DeviceRow {
                    device: r.get(0)?,
                    state: r.get(1)?,
                    since_ms: r.get(2)?,
                    version: r.get(3)?,
                    reason: r.get(4)?,
                    last_seen_ms: r.get(5)?,
                    telemetry: r.get(6)?,
                    telemetry_ms: r.get(7)?,
                    last_event_ms: r.get(8)?,
                    events: r.get(9)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn events(&self, f: &EventFilter) -> Result<Vec<EventRow>> {
        let f = f.clone();
        self.run(move |c| {
            let mut st = c.prepare(&lite(sql::EVENTS))?;
            st.query_map(
                params![
                    f.device,
                    f.camera,
                    f.rule,
                    f.class,
                    f.limit.max(1),
                    f.since_ms
                ],
                |r| {
                    Ok(EventRow {
                        device: r.get(0)?,
                        seq: r.get(1)?,
                        id: r.get(2)?,
                        camera: r.get(3)?,
                        rule: r.get(4)?,
                        kind: r.get(5)?,
                        class: r.get(6)?,
                        time: r.get(7)?,
                        received_ms: r.get(8)?,
                        snapshot_id: r.get(9)?,
                        has_picture: r.get(10)?,
                        reviewed: r.get(11)?,
                    })
                },
            )?
            .collect()
        })
        .await
    }

    async fn gaps(&self) -> Result<Vec<Gap>> {
        self.run(|c| {
            let mut st = c.prepare(sql::GAPS)?;
            st.query_map([], |r| {
                Ok(Gap {
                    device: r.get(0)?,
                    from_seq: r.get(1)?,
                    to_seq: r.get(2)?,
                    first_seen_ms: r.get(3)?,
                    requests: r.get(4)?,
                    last_request_ms: r.get(5)?,
                    unfillable: r.get(6)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn note_request(
        &self,
        device: &str,
        from_seq: i64,
        now_ms: i64,
        gone: bool,
    ) -> Result<()> {
        let device = device.to_string();
        self.run(move |c| {
            c.execute(
                &lite(sql::NOTE_REQUEST),
                params![device, from_seq, now_ms, gone, MAX_REQUESTS],
            )
            .map(|_| ())
        })
        .await
    }

    async fn mark_reviewed(&self, device: &str, seq: i64, reviewed: bool) -> Result<()> {
        let device = device.to_string();
        self.run(move |c| {
            c.execute(&lite(sql::MARK_REVIEWED), params![device, seq, reviewed])
                .map(|_| ())
        })
        .await
    }

    async fn put_user(&self, name: &str, hash: &str, role: &str, now_ms: i64) -> Result<()> {
        let (n, h, r) = (name.to_string(), hash.to_string(), role.to_string());
        self.run(move |c| {
            c.execute(&lite(sql::USER_PUT), params![n, h, r, now_ms])
                .map(|_| ())
        })
        .await
    }

    async fn user(&self, name: &str) -> Result<Option<(String, String)>> {
        let n = name.to_string();
        self.run(move |c| {
            c.query_row(&lite(sql::USER_GET), [n], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .await
    }

    async fn put_session(&self, s: &SessionRow) -> Result<()> {
        let s = s.clone();
        self.run(move |c| {
            c.execute(
                &lite(sql::SESSION_PUT),
                params![s.token, s.name, s.role, s.csrf, s.expires_ms],
            )
            .map(|_| ())
        })
        .await
    }

    async fn session(&self, token: &str, now_ms: i64) -> Result<Option<SessionRow>> {
        let t = token.to_string();
        self.run(move |c| {
            c.query_row(&lite(sql::SESSION_GET), params![t, now_ms], |r| {
                Ok(SessionRow {
                    token: t.clone(),
                    name: r.get(0)?,
                    role: r.get(1)?,
                    csrf: r.get(2)?,
                    expires_ms: 0,
                })
            })
            .optional()
        })
        .await
    }

    async fn drop_session(&self, token: &str, now_ms: i64) -> Result<()> {
        let t = token.to_string();
        self.run(move |c| {
            c.execute(&lite(sql::SESSION_DROP), params![t, now_ms])
                .map(|_| ())
        })
        .await
    }

    async fn audit(&self, a: &AuditRow) -> Result<()> {
        let a = a.clone();
        self.run(move |c| {
            c.execute(
                &lite(sql::AUDIT_PUT),
                params![a.time_ms, a.name, a.action, a.target, a.detail],
            )
            .map(|_| ())
        })
        .await
    }

    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRow>> {
        self.run(move |c| {
            let mut st = c.prepare(&lite(sql::AUDIT_GET))?;
            st.query_map([limit], |r| {
                Ok(AuditRow {
                    time_ms: r.get(0)?,
                    name: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn put_reply(&self, r: &ReplyRow) -> Result<()> {
        let r = r.clone();
        self.run(move |c| {
            c.execute(
                &lite(if r.status == "sent" {
                    sql::REPLY_SENT
                } else {
                    sql::REPLY_GOT
                }),
                params![
                    r.request_id,
                    r.device,
                    r.command,
                    r.status,
                    r.message,
                    r.time_ms
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn replies(&self, device: &str, limit: u32) -> Result<Vec<ReplyRow>> {
        let d = device.to_string();
        self.run(move |c| {
            let mut st = c.prepare(&lite(sql::REPLIES_GET))?;
            st.query_map(params![d, limit], |r| {
                Ok(ReplyRow {
                    request_id: r.get(0)?,
                    device: r.get(1)?,
                    command: r.get(2)?,
                    status: r.get(3)?,
                    message: r.get(4)?,
                    time_ms: r.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn open_incident(&self, i: &IncidentRow) -> Result<bool> {
        let i = i.clone();
        self.run(move |c| {
            c.execute(
                &lite(sql::INCIDENT_OPEN),
                params![i.rule, i.device, i.camera, i.started_ms, i.detail],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn resolve_incident(
        &self,
        rule: &str,
        device: &str,
        camera: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let (r, d, cam) = (rule.to_string(), device.to_string(), camera.to_string());
        self.run(move |c| {
            c.execute(&lite(sql::INCIDENT_RESOLVE), params![r, d, cam, now_ms])
                .map(|n| n > 0)
        })
        .await
    }

    async fn incidents(&self, limit: u32) -> Result<Vec<IncidentRow>> {
        self.run(move |c| {
            let mut st = c.prepare(&lite(sql::INCIDENTS))?;
            st.query_map([limit], |r| {
                Ok(IncidentRow {
                    rule: r.get(0)?,
                    device: r.get(1)?,
                    camera: r.get(2)?,
                    started_ms: r.get(3)?,
                    resolved_ms: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn put_doc(&self, kind: &str, id: &str, doc: &str, now_ms: i64) -> Result<()> {
        let (kind, id, doc) = (kind.to_string(), id.to_string(), doc.to_string());
        self.run(move |c| {
            c.execute(&lite(sql::DOC_PUT), params![kind, id, doc, now_ms])
                .map(|_| ())
        })
        .await
    }

    async fn doc(&self, kind: &str, id: &str) -> Result<Option<String>> {
        let (kind, id) = (kind.to_string(), id.to_string());
        self.run(move |c| {
            c.query_row(&lite(sql::DOC_GET), params![kind, id], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn docs(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let kind = kind.to_string();
        self.run(move |c| {
            let mut st = c.prepare(&lite(sql::DOCS))?;
            st.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }
}
