//! The PostgreSQL store, for a fleet that outgrows one machine (several consoles may share
//! it: an event's gap bookkeeping runs under a per-device advisory lock).

use super::sql;
use super::{
    AuditRow, DeviceRow, EventFilter, EventRow, Gap, GapChange, IncidentRow, MAX_REQUESTS,
    ReplyRow, Result, SessionRow, Store,
};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use vigil_core::wire::{EventMsg, StatusMsg};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS devices (
        device TEXT PRIMARY KEY, state TEXT NOT NULL, since_ms BIGINT NOT NULL, version TEXT,
        reason TEXT, last_seen_ms BIGINT NOT NULL, telemetry TEXT, telemetry_ms BIGINT,
        events BIGINT NOT NULL DEFAULT 0, last_event_ms BIGINT)",
    "CREATE TABLE IF NOT EXISTS events (
        device TEXT NOT NULL, seq BIGINT NOT NULL, id TEXT NOT NULL, camera TEXT NOT NULL,
        rule TEXT NOT NULL, kind TEXT NOT NULL, class TEXT NOT NULL, time TEXT NOT NULL,
        received_ms BIGINT NOT NULL, snapshot_id TEXT, snapshot_bytes BIGINT,
        payload TEXT NOT NULL, reviewed BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (device, seq))",
    "CREATE INDEX IF NOT EXISTS events_received ON events (received_ms)",
    "CREATE TABLE IF NOT EXISTS gaps (
        device TEXT NOT NULL, from_seq BIGINT NOT NULL, to_seq BIGINT NOT NULL,
        first_seen_ms BIGINT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
        last_request_ms BIGINT, unfillable BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (device, from_seq))",
    "CREATE TABLE IF NOT EXISTS snapshots (
        id TEXT PRIMARY KEY, device TEXT NOT NULL, camera TEXT NOT NULL, jpeg BYTEA NOT NULL,
        bytes BIGINT NOT NULL, received_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS snapshots_received ON snapshots (received_ms)",
    "CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY, hash TEXT NOT NULL, role TEXT NOT NULL, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (
        token TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, csrf TEXT NOT NULL,
        expires_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (
        time_ms BIGINT NOT NULL, name TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
        detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms)",
    "CREATE TABLE IF NOT EXISTS replies (
        request_id TEXT PRIMARY KEY, device TEXT NOT NULL, command TEXT NOT NULL,
        status TEXT NOT NULL, message TEXT NOT NULL, time_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS incidents (
        rule TEXT NOT NULL, device TEXT NOT NULL, camera TEXT NOT NULL, started_ms BIGINT NOT NULL,
        resolved_ms BIGINT, detail TEXT NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS incidents_open ON incidents (rule, device, camera)
        WHERE resolved_ms IS NULL",
    "CREATE TABLE IF NOT EXISTS camera_pictures (
        device TEXT NOT NULL, camera TEXT NOT NULL, jpeg BYTEA NOT NULL,
        received_ms BIGINT NOT NULL, PRIMARY KEY (device, camera))",
    "CREATE TABLE IF NOT EXISTS docs (
        kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, updated_ms BIGINT NOT NULL,
        PRIMARY KEY (kind, id))",
];

/// A `gaps` row as read.
type GapTuple = (String, i64, i64, i64, i32, Option<i64>, bool);

/// PostgreSQL at a `postgres://` URL.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connections: one per storing task of the ingest, and as many again for the pages, the
    /// alerts and the rollout driver (with 8 in all, a page render waited for a connection
    /// behind the ingest's writes: seconds at 1 000 boxes, see benches/RESULTS.md).
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(2 * crate::ingest::SHARDS as u32)
            .connect(url)
            .await?;
        Ok(Self { pool })
    }
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // One console at a time creates the tables.
        sqlx::query("SELECT pg_advisory_xact_lock(7263)")
            .execute(&mut *tx)
            .await?;
        for s in SCHEMA {
            sqlx::query(*s).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_status(&self, device: &str, s: &StatusMsg, now_ms: i64) -> Result<()> {
        sqlx::query(sql::STATUS_UPSERT)
            .bind(device)
            .bind(&s.state)
            .bind(now_ms)
            .bind(&s.version)
            .bind(&s.reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_telemetry(&self, device: &str, json: &str, now_ms: i64) -> Result<()> {
        sqlx::query(sql::TELEMETRY_UPSERT)
            .bind(device)
            .bind(json)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_event(&self, e: &EventMsg, payload: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Gap bookkeeping of one device, one console at a time.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&e.device)
            .execute(&mut *tx)
            .await?;
        let seq = e.seq as i64;
        let n = sqlx::query(sql::EVENT_INSERT)
            .bind(&e.device)
            .bind(seq)
            .bind(&e.id)
            .bind(&e.camera)
            .bind(&e.rule)
            .bind(&e.kind)
            .bind(&e.class)
            .bind(&e.time)
            .bind(now_ms)
            .bind(e.snapshot.as_ref().map(|s| s.id.clone()))
            .bind(e.snapshot.as_ref().map(|s| i64::from(s.bytes)))
            .bind(payload)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query(sql::DEVICE_SEEN)
            .bind(&e.device)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let mut near = Vec::with_capacity(2);
        for q in [sql::SEQ_BELOW, sql::SEQ_ABOVE] {
            let v: Option<i64> = sqlx::query_scalar(q)
                .bind(&e.device)
                .bind(seq)
                .fetch_one(&mut *tx)
                .await?;
            near.push(v);
        }
        let containing: Option<(i64, i64)> = sqlx::query_as(sql::GAP_CONTAINING)
            .bind(&e.device)
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await?;
        match super::gap_change(seq, near[0], near[1], containing) {
            GapChange::None => {}
            GapChange::New(from, to) => {
                sqlx::query(sql::GAP_NEW)
                    .bind(&e.device)
                    .bind(from)
                    .bind(to)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            GapChange::Split { from, keep } => {
                let old: (i64, i32, Option<i64>, bool) = sqlx::query_as(sql::GAP_TAKE)
                    .bind(&e.device)
                    .bind(from)
                    .fetch_one(&mut *tx)
                    .await?;
                for (a, b) in keep {
                    sqlx::query(sql::GAP_PUT)
                        .bind(&e.device)
                        .bind(a)
                        .bind(b)
                        .bind(old.0)
                        .bind(old.1)
                        .bind(old.2)
                        .bind(old.3)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn add_picture(
        &self,
        device: &str,
        camera: &str,
        jpeg: &[u8],
        now_ms: i64,
        max_bytes: i64,
    ) -> Result<Option<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::PICTURE_UPSERT)
            .bind(device)
            .bind(camera)
            .bind(jpeg)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let id: Option<String> = sqlx::query_scalar(sql::PICTURE_EVENT)
            .bind(device)
            .bind(camera)
            .bind(jpeg.len() as i64)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
        if let Some(id) = &id {
            sqlx::query(sql::SNAPSHOT_INSERT)
                .bind(id)
                .bind(device)
                .bind(camera)
                .bind(jpeg)
                .bind(jpeg.len() as i64)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            let total: i64 = sqlx::query_scalar(sql::SNAPSHOT_TOTAL)
                .fetch_one(&mut *tx)
                .await?;
            if total > max_bytes {
                sqlx::query(sql::SNAPSHOT_PRUNE)
                    .bind(max_bytes)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(id)
    }

    async fn snapshot(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(sql::SNAPSHOT_GET)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn camera_picture(&self, device: &str, camera: &str) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(sql::CAMERA_PICTURE_GET)
            .bind(device)
            .bind(camera)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn devices(&self) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query(sql::DEVICES).fetch_all(&self.pool).await?;
        let row = |r: &sqlx::postgres::PgRow| -> std::result::Result<DeviceRow, sqlx::Error> {
            Ok(DeviceRow {
                device: r.try_get(0)?,
                state: r.try_get(1)?,
                since_ms: r.try_get(2)?,
                version: r.try_get(3)?,
                reason: r.try_get(4)?,
                last_seen_ms: r.try_get(5)?,
                telemetry: r.try_get(6)?,
                telemetry_ms: r.try_get(7)?,
                last_event_ms: r.try_get(8)?,
                events: r.try_get(9)?,
            })
        };
        Ok(rows
            .iter()
            .map(row)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn events(&self, f: &EventFilter) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(sql::EVENTS)
            .bind(&f.device)
            .bind(&f.camera)
            .bind(&f.rule)
            .bind(&f.class)
            .bind(i64::from(f.limit.max(1)))
            .bind(f.since_ms)
            .fetch_all(&self.pool)
            .await?;
        let row = |r: &sqlx::postgres::PgRow| -> std::result::Result<EventRow, sqlx::Error> {
            Ok(EventRow {
                device: r.try_get(0)?,
                seq: r.try_get(1)?,
                id: r.try_get(2)?,
                camera: r.try_get(3)?,
                rule: r.try_get(4)?,
                kind: r.try_get(5)?,
                class: r.try_get(6)?,
                time: r.try_get(7)?,
                received_ms: r.try_get(8)?,
                snapshot_id: r.try_get(9)?,
                has_picture: r.try_get(10)?,
                reviewed: r.try_get(11)?,
            })
        };
        Ok(rows
            .iter()
            .map(row)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn gaps(&self) -> Result<Vec<Gap>> {
        let rows: Vec<GapTuple> = sqlx::query_as(sql::GAPS).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|r| Gap {
                device: r.0,
                from_seq: r.1,
                to_seq: r.2,
                first_seen_ms: r.3,
                requests: r.4,
                last_request_ms: r.5,
                unfillable: r.6,
            })
            .collect())
    }

    async fn note_request(
        &self,
        device: &str,
        from_seq: i64,
        now_ms: i64,
        gone: bool,
    ) -> Result<()> {
        sqlx::query(sql::NOTE_REQUEST)
            .bind(device)
            .bind(from_seq)
            .bind(now_ms)
            .bind(gone)
            .bind(MAX_REQUESTS)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_reviewed(&self, device: &str, seq: i64, reviewed: bool) -> Result<()> {
        sqlx::query(sql::MARK_REVIEWED)
            .bind(device)
            .bind(seq)
            .bind(reviewed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn put_user(&self, name: &str, hash: &str, role: &str, now_ms: i64) -> Result<()> {
        sqlx::query(sql::USER_PUT)
            .bind(name)
            .bind(hash)
            .bind(role)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn user(&self, name: &str) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as(sql::USER_GET)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn put_session(&self, s: &SessionRow) -> Result<()> {
        sqlx::query(sql::SESSION_PUT)
            .bind(&s.token)
            .bind(&s.name)
            .bind(&s.role)
            .bind(&s.csrf)
            .bind(s.expires_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session(&self, token: &str, now_ms: i64) -> Result<Option<SessionRow>> {
        let r: Option<(String, String, String)> = sqlx::query_as(sql::SESSION_GET)
            .bind(token)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|(name, role, csrf)| SessionRow {
            token: token.to_string(),
            name,
            role,
            csrf,
            expires_ms: 0,
        }))
    }

    async fn drop_session(&self, token: &str, now_ms: i64) -> Result<()> {
        sqlx::query(sql::SESSION_DROP)
            .bind(token)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit(&self, a: &AuditRow) -> Result<()> {
        sqlx::query(sql::AUDIT_PUT)
            .bind(a.time_ms)
            .bind(&a.name)
            .bind(&a.action)
            .bind(&a.target)
            .bind(&a.detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRow>> {
        let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(sql::AUDIT_GET)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                time_ms: r.0,
                name: r.1,
                action: r.2,
                target: r.3,
                detail: r.4,
            })
            .collect())
    }

    async fn put_reply(&self, r: &ReplyRow) -> Result<()> {
        sqlx::query(if r.status == "sent" {
            sql::REPLY_SENT
        } else {
            sql::REPLY_GOT
        })
        .bind(&r.request_id)
        .bind(&r.device)
        .bind(&r.command)
        .bind(&r.status)
        .bind(&r.message)
        .bind(r.time_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn replies(&self, device: &str, limit: u32) -> Result<Vec<ReplyRow>> {
        let rows: Vec<(String, String, String, String, String, i64)> =
            sqlx::query_as(sql::REPLIES_GET)
                .bind(device)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| ReplyRow {
                request_id: r.0,
                device: r.1,
                command: r.2,
                status: r.3,
                message: r.4,
                time_ms: r.5,
            })
            .collect())
    }

    async fn open_incident(&self, i: &IncidentRow) -> Result<bool> {
        let n = sqlx::query(sql::INCIDENT_OPEN)
            .bind(&i.rule)
            .bind(&i.device)
            .bind(&i.camera)
            .bind(i.started_ms)
            .bind(&i.detail)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn resolve_incident(
        &self,
        rule: &str,
        device: &str,
        camera: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let n = sqlx::query(sql::INCIDENT_RESOLVE)
            .bind(rule)
            .bind(device)
            .bind(camera)
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn incidents(&self, limit: u32) -> Result<Vec<IncidentRow>> {
        let rows: Vec<(String, String, String, i64, Option<i64>, String)> =
            sqlx::query_as(sql::INCIDENTS)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| IncidentRow {
                rule: r.0,
                device: r.1,
                camera: r.2,
                started_ms: r.3,
                resolved_ms: r.4,
                detail: r.5,
            })
            .collect())
    }

    async fn put_doc(&self, kind: &str, id: &str, doc: &str, now_ms: i64) -> Result<()> {
        sqlx::query(sql::DOC_PUT)
            .bind(kind)
            .bind(id)
            .bind(doc)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn doc(&self, kind: &str, id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(sql::DOC_GET)
            .bind(kind)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0))
    }

    async fn docs(&self, kind: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(sql::DOCS)
            .bind(kind)
            .fetch_all(&self.pool)
            .await?)
    }
}
