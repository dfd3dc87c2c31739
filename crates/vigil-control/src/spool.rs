//! The durable event spool: every event is written to SQLite (WAL, `synchronous = FULL`)
//! before it is published, gets the device's next sequence number (gapless: one writer, one
//! transaction per event), and is marked sent only when the broker acknowledges it (PUBACK).
//! Retention is bounded by count, age and bytes; the oldest rows go first and every unsent row
//! dropped that way is counted. The same store answers replays (`cmd/events/replay`).
//!
//! Knows nothing of MQTT or of how events are made: rows in, rows out.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("event spool {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Retention limits; whichever is reached first applies. Pictures go with the last event
/// that refers to them, or earlier, oldest first, past `max_picture_bytes`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub max_events: u64,
    pub max_age: Duration,
    pub max_bytes: u64,
    pub max_picture_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 64 << 20,
            max_picture_bytes: 256 << 20,
        }
    }
}

/// An event's picture, stored with it ([`Spool::append_with_picture`]); the events of one
/// frame share one (by `id`).
#[derive(Debug, Clone, Copy)]
pub struct Picture<'a> {
    pub id: &'a str,
    pub jpeg: &'a [u8],
}

/// What [`Spool::picture_of`] found for an event id.
#[derive(Debug, Clone, PartialEq)]
pub enum PictureLookup {
    /// No such event (never, or dropped by retention).
    NoEvent,
    /// The event is held but has no picture: none was made, or it was dropped for bytes.
    NoPicture,
    Jpeg(Vec<u8>),
}

/// One spooled event, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SpooledEvent {
    pub seq: u64,
    pub camera: String,
    pub payload: Vec<u8>,
}

/// What the spool holds, for telemetry and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct SpoolStats {
    /// Events not yet acknowledged by the broker.
    pub unsent: u64,
    /// Events held (sent or not).
    pub held: u64,
    pub bytes: u64,
    /// Sequence number of the last event written (0: none yet).
    pub last_seq: u64,
    /// Unsent events removed by retention since the spool was created.
    pub dropped_unsent: u64,
    /// Pictures held and their bytes.
    pub pictures: u64,
    pub picture_bytes: u64,
}

pub struct Spool {
    path: PathBuf,
    conn: Mutex<Connection>,
    retention: Retention,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spool({})", self.path.display())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Spool {
    pub fn open(path: &Path, retention: Retention) -> Result<Self, SpoolError> {
        let err = |source| SpoolError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // FULL: a committed event survives power loss, not only a process kill.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY,
                 id TEXT NOT NULL UNIQUE,
                 camera TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 payload BLOB NOT NULL,
                 sent INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS events_unsent ON events(sent, seq);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta VALUES ('last_seq', 0), ('dropped_unsent', 0),
                 ('picture_bytes', 0);
             CREATE TABLE IF NOT EXISTS pictures (
                 id TEXT PRIMARY KEY,
                 last_seq INTEGER NOT NULL,
                 bytes INTEGER NOT NULL,
                 jpeg BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS pictures_by_seq ON pictures(last_seq);",
        )
        .map_err(err)?;
        // A spool made before pictures: its events get the column (NULL: no picture).
        let has_column: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'picture'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)?
            > 0;
        if !has_column {
            conn.execute_batch("ALTER TABLE events ADD COLUMN picture TEXT")
                .map_err(err)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            retention,
        })
    }

    fn err(&self, source: rusqlite::Error) -> SpoolError {
        SpoolError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one event and returns its sequence number. `payload` is called with the number
    /// to build the stored bytes (the payload carries its own `seq`).
    pub fn append(
        &self,
        id: &str,
        camera: &str,
        payload: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, SpoolError> {
        self.append_with_picture(id, camera, None, payload)
    }

    /// [`Spool::append`], with the event's picture in the same transaction (stored once per
    /// picture id, kept while an event refers to it, within `max_picture_bytes`).
    pub fn append_with_picture(
        &self,
        id: &str,
        camera: &str,
        picture: Option<Picture<'_>>,
        payload: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, SpoolError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let last: i64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        let seq = last as u64 + 1;
        let bytes = payload(seq);
        tx.execute(
            "INSERT INTO events (seq, id, camera, created_ms, payload, picture) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                seq as i64,
                id,
                camera,
                now_ms(),
                bytes,
                picture.map(|p| p.id)
            ],
        )
        .map_err(|e| self.err(e))?;
        if let Some(p) = picture {
            Self::put_picture(&tx, p, seq).map_err(|e| self.err(e))?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'last_seq'",
            params![seq as i64],
        )
        .map_err(|e| self.err(e))?;
        Self::enforce_retention(&tx, self.retention).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(seq)
    }

    /// Stores a picture once, or notes one more event referring to it.
    fn put_picture(
        tx: &rusqlite::Transaction<'_>,
        p: Picture<'_>,
        seq: u64,
    ) -> rusqlite::Result<()> {
        let updated = tx.execute(
            "UPDATE pictures SET last_seq = ?2 WHERE id = ?1",
            params![p.id, seq as i64],
        )?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO pictures (id, last_seq, bytes, jpeg) VALUES (?1, ?2, ?3, ?4)",
                params![p.id, seq as i64, p.jpeg.len() as i64, p.jpeg],
            )?;
            tx.execute(
                "UPDATE meta SET value = value + ?1 WHERE key = 'picture_bytes'",
                params![p.jpeg.len() as i64],
            )?;
        }
        Ok(())
    }

    /// Drops pictures no held event refers to, then the oldest ones past the byte budget.
    fn enforce_picture_retention(
        tx: &rusqlite::Transaction<'_>,
        r: Retention,
    ) -> rusqlite::Result<()> {
        let first: Option<i64> =
            tx.query_row("SELECT MIN(seq) FROM events", [], |row| row.get(0))?;
        let first = first.unwrap_or(i64::MAX);
        let mut freed: i64 = tx.query_row(
            "SELECT COALESCE(SUM(bytes), 0) FROM pictures WHERE last_seq < ?1",
            params![first],
            |row| row.get(0),
        )?;
        tx.execute("DELETE FROM pictures WHERE last_seq < ?1", params![first])?;
        let held: i64 = tx.query_row(
            "SELECT value FROM meta WHERE key = 'picture_bytes'",
            [],
            |row| row.get(0),
        )?;
        let mut over = (held - freed) - r.max_picture_bytes as i64;
        if over > 0 {
            let mut victims = Vec::new();
            {
                let mut stmt =
                    tx.prepare_cached("SELECT id, bytes FROM pictures ORDER BY last_seq")?;
                let mut rows = stmt.query([])?;
                while over > 0
                    && let Some(row) = rows.next()?
                {
                    let (id, bytes): (String, i64) = (row.get(0)?, row.get(1)?);
                    over -= bytes;
                    freed += bytes;
                    victims.push(id);
                }
            }
            let mut del = tx.prepare_cached("DELETE FROM pictures WHERE id = ?1")?;
            for id in victims {
                del.execute(params![id])?;
            }
        }
        if freed > 0 {
            tx.execute(
                "UPDATE meta SET value = value - ?1 WHERE key = 'picture_bytes'",
                params![freed],
            )?;
        }
        Ok(())
    }

    /// The picture of the event `event_id`, if both are still held.
    pub fn picture_of(&self, event_id: &str) -> Result<PictureLookup, SpoolError> {
        let conn = self.lock();
        let row: Option<Option<Vec<u8>>> = conn
            .query_row(
                "SELECT p.jpeg FROM events e LEFT JOIN pictures p ON p.id = e.picture \
                 WHERE e.id = ?1",
                params![event_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(match row {
            None => PictureLookup::NoEvent,
            Some(None) => PictureLookup::NoPicture,
            Some(Some(jpeg)) => PictureLookup::Jpeg(jpeg),
        })
    }

    fn enforce_retention(tx: &rusqlite::Transaction<'_>, r: Retention) -> rusqlite::Result<()> {
        let cutoff = now_ms() - r.max_age.as_millis() as i64;
        let (count, bytes): (i64, i64) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM events",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let over_count = (count as u64).saturating_sub(r.max_events);
        // Oldest first: by count, then by age, then by bytes.
        let mut victims: Vec<(i64, bool, i64)> = Vec::new();
        if over_count > 0 || bytes as u64 > r.max_bytes {
            let mut stmt =
                tx.prepare("SELECT seq, sent, LENGTH(payload) FROM events ORDER BY seq")?;
            let mut rows = stmt.query([])?;
            let (mut n, mut b) = (count as u64, bytes as u64);
            while let Some(row) = rows.next()? {
                if n <= r.max_events && b <= r.max_bytes {
                    break;
                }
                let (seq, sent, len): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
                victims.push((seq, sent != 0, len));
                n -= 1;
                b = b.saturating_sub(len as u64);
            }
        }
        let mut dropped_unsent: i64 = victims.iter().filter(|v| !v.1).count() as i64;
        if let Some(last) = victims.last() {
            tx.execute("DELETE FROM events WHERE seq <= ?1", params![last.0])?;
        }
        dropped_unsent += tx.query_row(
            "SELECT COUNT(*) FROM events WHERE created_ms < ?1 AND sent = 0",
            params![cutoff],
            |row| row.get::<_, i64>(0),
        )?;
        tx.execute("DELETE FROM events WHERE created_ms < ?1", params![cutoff])?;
        if dropped_unsent > 0 {
            tx.execute(
                "UPDATE meta SET value = value + ?1 WHERE key = 'dropped_unsent'",
                params![dropped_unsent],
            )?;
        }
        Self::enforce_picture_retention(tx, r)
    }

    /// Up to `limit` unsent events with `seq > after`, oldest first.
    pub fn unsent_after(&self, after: u64, limit: usize) -> Result<Vec<SpooledEvent>, SpoolError> {
        self.select("SELECT seq, camera, payload FROM events WHERE sent = 0 AND seq > ?1 ORDER BY seq LIMIT ?2", after, limit)
    }

    /// Up to `limit` events (sent or not) with `seq >= from`, oldest first: for replays.
    pub fn from_seq(&self, from: u64, limit: usize) -> Result<Vec<SpooledEvent>, SpoolError> {
        self.select(
            "SELECT seq, camera, payload FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            from,
            limit,
        )
    }

    /// `a` is a bound on `seq` (`seq >= a` or `seq > a`). SQLite's integers are signed 64-bit
    /// and a stored `seq` is at most `i64::MAX`: a bound above that matches no row (cast with
    /// `as`, 2^63 wrapped to a negative bound and matched every row from seq 1).
    fn select(&self, sql: &str, a: u64, limit: usize) -> Result<Vec<SpooledEvent>, SpoolError> {
        let Ok(a) = i64::try_from(a) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![a, limit], |r| {
                Ok(SpooledEvent {
                    seq: r.get::<_, i64>(0)? as u64,
                    camera: r.get(1)?,
                    payload: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Marks events acknowledged by the broker.
    pub fn mark_sent(&self, seqs: &[u64]) -> Result<(), SpoolError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE events SET sent = 1 WHERE seq = ?1")
                .map_err(|e| self.err(e))?;
            for s in seqs {
                stmt.execute(params![*s as i64]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let conn = self.lock();
        let q = |sql: &str| {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .optional()
                .map(|v| v.unwrap_or(0) as u64)
        };
        let e = |e| self.err(e);
        Ok(SpoolStats {
            unsent: q("SELECT COUNT(*) FROM events WHERE sent = 0").map_err(e)?,
            held: q("SELECT COUNT(*) FROM events").map_err(e)?,
            bytes: q("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM events").map_err(e)?,
            last_seq: q("SELECT value FROM meta WHERE key = 'last_seq'").map_err(e)?,
            dropped_unsent: q("SELECT value FROM meta WHERE key = 'dropped_unsent'").map_err(e)?,
            pictures: q("SELECT COUNT(*) FROM pictures").map_err(e)?,
            picture_bytes: q("SELECT value FROM meta WHERE key = 'picture_bytes'").map_err(e)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(name: &str, r: Retention) -> Spool {
        let dir = std::env::temp_dir().join(format!("vigil-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Spool::open(&dir.join("events.db"), r).unwrap()
    }

    fn add(s: &Spool, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                s.append(
                    &format!("id-{i}-{:?}", std::time::Instant::now()),
                    "cam",
                    |seq| format!("{{\"seq\":{seq}}}").into_bytes(),
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn sequence_numbers_are_gapless_and_payloads_carry_them() {
        let s = spool("seq", Retention::default());
        assert_eq!(add(&s, 5), vec![1, 2, 3, 4, 5]);
        let rows = s.unsent_after(0, 10).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(rows[2].payload, b"{\"seq\":3}");
    }

    #[test]
    fn only_acknowledged_events_leave_the_unsent_set_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("vigil-spool-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.db");
        {
            let s = Spool::open(&path, Retention::default()).unwrap();
            add(&s, 4);
            s.mark_sent(&[1, 3]).unwrap();
        }
        let s = Spool::open(&path, Retention::default()).unwrap();
        let unsent: Vec<u64> = s
            .unsent_after(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(unsent, vec![2, 4]);
        assert_eq!(
            s.append("next", "cam", |_| vec![1]).unwrap(),
            5,
            "numbering continues after a restart"
        );
        assert_eq!(
            s.from_seq(3, 10).unwrap().len(),
            3,
            "replays include sent events"
        );
    }

    #[test]
    fn bounds_beyond_the_largest_seq_match_nothing() {
        let s = spool("huge", Retention::default());
        add(&s, 3);
        for from in [1u64 << 63, (1 << 63) + 1, u64::MAX] {
            assert_eq!(s.from_seq(from, 10).unwrap(), vec![], "from_seq({from})");
            assert_eq!(
                s.unsent_after(from, 10).unwrap(),
                vec![],
                "unsent_after({from})"
            );
        }
        let top = i64::MAX as u64;
        assert_eq!(s.from_seq(top, 10).unwrap(), vec![]);
        assert_eq!(s.unsent_after(top - 1, 10).unwrap(), vec![]);
        assert_eq!(
            s.from_seq(3, usize::MAX).unwrap().len(),
            1,
            "a huge limit is no limit"
        );
    }

    #[test]
    fn retention_drops_the_oldest_first_and_counts_unsent_drops() {
        let s = spool(
            "ret",
            Retention {
                max_events: 3,
                ..Retention::default()
            },
        );
        add(&s, 2);
        s.mark_sent(&[1]).unwrap();
        add(&s, 3);
        let st = s.stats().unwrap();
        assert_eq!((st.held, st.last_seq), (3, 5));
        // Dropped: 1 (sent) and 2 (unsent).
        assert_eq!(st.dropped_unsent, 1);
        assert_eq!(
            s.from_seq(0, 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let by_bytes = spool(
            "bytes",
            Retention {
                max_bytes: 25,
                ..Retention::default()
            },
        );
        add(&by_bytes, 4);
        assert!(by_bytes.stats().unwrap().bytes <= 25);
        assert_eq!(by_bytes.stats().unwrap().last_seq, 4);
    }

    fn add_with(s: &Spool, event: &str, picture: Option<(&str, usize)>) -> u64 {
        let jpeg = picture.map(|(id, n)| (id, vec![id.as_bytes()[0]; n]));
        let p = jpeg.as_ref().map(|(id, j)| Picture { id, jpeg: j });
        s.append_with_picture(event, "cam", p, |seq| {
            format!("{{\"seq\":{seq}}}").into_bytes()
        })
        .unwrap()
    }

    #[test]
    fn pictures_are_found_by_their_events_and_shared_by_one_frame() {
        let s = spool("pictures", Retention::default());
        add_with(&s, "e1", Some(("p1", 1000)));
        add_with(&s, "e2", Some(("p1", 1000)));
        add_with(&s, "e3", None);
        assert_eq!(
            s.picture_of("e1").unwrap(),
            PictureLookup::Jpeg(vec![b'p'; 1000])
        );
        assert_eq!(s.picture_of("e2").unwrap(), s.picture_of("e1").unwrap());
        assert_eq!(s.picture_of("e3").unwrap(), PictureLookup::NoPicture);
        assert_eq!(s.picture_of("nope").unwrap(), PictureLookup::NoEvent);
        let st = s.stats().unwrap();
        assert_eq!((st.pictures, st.picture_bytes), (1, 1000), "stored once");
    }

    #[test]
    fn pictures_go_with_their_last_event_and_past_their_byte_budget() {
        let s = spool(
            "picture-retention",
            Retention {
                max_events: 3,
                max_picture_bytes: 2500,
                ..Retention::default()
            },
        );
        add_with(&s, "a1", Some(("A", 1000)));
        add_with(&s, "a2", Some(("A", 1000)));
        add_with(&s, "b1", Some(("B", 1000)));
        // A fourth event drops a1; a2 still refers to A.
        add_with(&s, "c1", Some(("C", 1000)));
        assert_eq!(s.picture_of("a1").unwrap(), PictureLookup::NoEvent);
        // Three pictures are 3000 bytes, over 2500: the oldest (A) went, its event stays.
        assert_eq!(s.picture_of("a2").unwrap(), PictureLookup::NoPicture);
        assert!(matches!(s.picture_of("b1").unwrap(), PictureLookup::Jpeg(j) if j[0] == b'B'));
        let st = s.stats().unwrap();
        assert_eq!((st.held, st.pictures, st.picture_bytes), (3, 2, 2000));
        // Two more events drop a2 and b1; B goes with b1, never shown for another event.
        add_with(&s, "d1", None);
        add_with(&s, "d2", None);
        assert_eq!(s.picture_of("b1").unwrap(), PictureLookup::NoEvent);
        let st = s.stats().unwrap();
        assert_eq!((st.pictures, st.picture_bytes), (1, 1000));
        assert!(matches!(s.picture_of("c1").unwrap(), PictureLookup::Jpeg(j) if j[0] == b'C'));
    }

    #[test]
    fn a_spool_from_before_pictures_opens_and_keeps_its_events() {
        let dir = std::env::temp_dir().join(format!("vigil-spool-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
                 camera TEXT NOT NULL, created_ms INTEGER NOT NULL, payload BLOB NOT NULL,
                 sent INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('last_seq', 1), ('dropped_unsent', 0);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO events (seq, id, camera, created_ms, payload) VALUES (1, 'old', 'cam', ?1, x'7b7d')",
            params![now_ms()],
        )
        .unwrap();
        drop(c);
        let s = Spool::open(&path, Retention::default()).unwrap();
        assert_eq!(s.picture_of("old").unwrap(), PictureLookup::NoPicture);
        assert_eq!(add_with(&s, "new", Some(("P", 10))), 2);
        assert_eq!(
            s.picture_of("new").unwrap(),
            PictureLookup::Jpeg(vec![b'P'; 10])
        );
        drop(s);
        // Opening again finds the column there.
        let s = Spool::open(&path, Retention::default()).unwrap();
        assert_eq!(s.stats().unwrap().held, 2);
    }
}
