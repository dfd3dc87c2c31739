//! The on-disk store of installed sets, under `[ota] dir`:
//!
//! ```text
//! slots/<seq>-<digest12>/     one installed set: manifest.json, manifest.sig, models/…, config.toml
//! slots/.staging-<…>/         a set being written (removed at start-up: never active)
//! current -> slots/<name>     the active set; absent = the device's own config only (factory)
//! state.json                  active, previous, probation, last result, key floor
//! download/<sha256>.part      the one download in progress or resumable (see download.rs)
//! ```
//!
//! The active set changes only by one `rename(2)` of a new symlink over `current`, followed by
//! an fsync of the directory, so after a crash or power loss it is exactly the old or exactly
//! the new set. `state.json` is written after the switch (temporary file, fsync, rename, fsync
//! of the directory); when it disagrees with `current` at start-up, `current` wins (see
//! [`Store::open`]).

use super::OtaError;
use super::manifest::Manifest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One installed set, as the state and the status report name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Directory name under `slots/`.
    pub slot: String,
    pub sequence: u64,
    pub version: String,
}

/// A probation in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbationState {
    /// The slot on probation (the active one).
    pub slot: String,
    /// Unix seconds when it started.
    pub started: u64,
    /// Times the service started while this probation was open (the activation counts as 1).
    pub boots: u32,
}

/// The outcome of the last update or rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastResult {
    /// `committed`, `rejected`, `failed`, `rolled_back`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub time: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub active: Option<SlotInfo>,
    pub previous: Option<SlotInfo>,
    pub probation: Option<ProbationState>,
    pub last: Option<LastResult>,
    /// The highest sequence this box ever committed (0: none). Only rises; a set below it may
    /// not add to the trusted keys (`crate::check_key_floor`). Absent from a state written by
    /// an older build: rebuilt at start-up from the committed sets the state names.
    #[serde(default)]
    pub key_floor: u64,
}

pub struct Store {
    pub dir: PathBuf,
}

fn io(what: &Path, e: std::io::Error) -> OtaError {
    OtaError::io(what.display(), e)
}

/// Removes a file or a directory tree.
fn remove(path: &Path, dir: bool) -> Result<(), OtaError> {
    tracing::info!(path = %path.display(), "ota: removing a leftover download");
    let r = if dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path, e)),
        _ => Ok(()),
    }
}

/// fsync of a directory: makes renames and new entries in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), OtaError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, e))
}

/// fsyncs every directory under `dir` (deepest first), then `dir`.
fn sync_tree(dir: &Path) -> Result<(), OtaError> {
    for ent in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let ent = ent.map_err(|e| io(dir, e))?;
        if ent.file_type().map_err(|e| io(&ent.path(), e))?.is_dir() {
            sync_tree(&ent.path())?;
        }
    }
    sync_dir(dir)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens the store: creates its directories, makes `state.json` agree with `current`, and
    /// removes what is neither active nor previous (staging directories, other slots, leftover
    /// temporary files). When `state.json` names another active set than `current` (the process
    /// died between the switch and the state write), `current` is the truth: the set it points
    /// to is active, the one the state named becomes previous, and a probation starts for it.
    pub fn open(dir: &Path) -> Result<(Self, State), OtaError> {
        let store = Store {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(store.slots()).map_err(|e| io(&store.slots(), e))?;
        std::fs::create_dir_all(store.downloads()).map_err(|e| io(&store.downloads(), e))?;
        // state.json is only ever replaced whole (rename), but a box must start even if it is
        // unreadable: `current` is the truth, and the state is rebuilt from it below.
        let mut state = store.read_state().unwrap_or_else(|e| {
            tracing::error!("ota: {e}; rebuilding the state from the current link");
            State::default()
        });
        let active = store.active_slot()?;
        let named = state.active.as_ref().map(|s| s.slot.clone());
        if named != active {
            tracing::warn!(
                state = ?named, current = ?active,
                "ota: state.json and the current link disagree (interrupted activation); the link wins"
            );
            if active.is_some() && state.previous.as_ref().map(|p| &p.slot) == active.as_ref() {
                // An interrupted rollback: the previous set is back, nothing is on probation.
                state.active = state.previous.take();
                state.probation = None;
                store.write_state(&state)?;
                store.collect_garbage(&state)?;
                return Ok((store, state));
            }
            let info = match &active {
                Some(a) => Some(store.slot_info(a)?),
                None => None,
            };
            state.previous = state
                .active
                .take()
                .filter(|p| Some(&p.slot) != active.as_ref());
            state.probation = info.as_ref().map(|i| ProbationState {
                slot: i.slot.clone(),
                started: unix_now(),
                boots: 0,
            });
            state.active = info;
            store.write_state(&state)?;
        }
        if state
            .previous
            .as_ref()
            .is_some_and(|p| !store.slot_dir(&p.slot).is_dir())
        {
            state.previous = None;
            store.write_state(&state)?;
        }
        // The previous set was committed (an update starts only from a committed set), and so
        // is the active one when no probation is open.
        let committed = [
            state.previous.as_ref(),
            state.active.as_ref().filter(|_| state.probation.is_none()),
        ];
        let floor = committed.into_iter().flatten().map(|s| s.sequence).max();
        if let Some(f) = floor.filter(|f| *f > state.key_floor) {
            state.key_floor = f;
            store.write_state(&state)?;
        }
        store.collect_garbage(&state)?;
        Ok((store, state))
    }

    /// Bounds `download/` (at start-up and before each download): keeps at most one partial
    /// download, `keep` when given (the job about to run: it may resume it), else the most
    /// recently written `.part`, and only if it is at most `max_bytes`; removes everything else
    /// (other partial downloads, complete bundles a killed job left, anything unknown).
    pub fn prune_downloads(&self, keep: Option<&str>, max_bytes: u64) -> Result<(), OtaError> {
        let dir = self.downloads();
        let mut parts = Vec::new();
        for ent in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let ent = ent.map_err(|e| io(&dir, e))?;
            let name = ent.file_name().to_string_lossy().to_string();
            let meta = ent.metadata().map_err(|e| io(&ent.path(), e))?;
            if name.ends_with(".part") && meta.is_file() && meta.len() <= max_bytes {
                parts.push((keep.is_some_and(|k| k == name), meta.modified().ok(), name));
            } else {
                remove(&ent.path(), meta.is_dir())?;
            }
        }
        // Sorted, the last one is `keep` if it is there, else the newest.
        parts.sort();
        let mut kept = None;
        if let Some(last) = parts.pop() {
            if keep.is_none() || last.0 {
                kept = Some(last.2);
            } else {
                parts.push(last);
            }
        }
        for (_, _, name) in parts {
            remove(&dir.join(name), false)?;
        }
        if let Some(name) = kept {
            tracing::info!(file = %name, "ota: keeping a partial download to resume");
        }
        Ok(())
    }

    pub fn slots(&self) -> PathBuf {
        self.dir.join("slots")
    }
    pub fn downloads(&self) -> PathBuf {
        self.dir.join("download")
    }
    pub fn slot_dir(&self, slot: &str) -> PathBuf {
        self.slots().join(slot)
    }
    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// The slot `current` points to, if any.
    pub fn active_slot(&self) -> Result<Option<String>, OtaError> {
        match std::fs::read_link(self.current()) {
            Ok(t) => Ok(t.file_name().and_then(|n| n.to_str()).map(str::to_string)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&self.current(), e)),
        }
    }

    /// The real directory of the active set (not through the link), if any.
    pub fn active_dir(&self) -> Result<Option<PathBuf>, OtaError> {
        Ok(self.active_slot()?.map(|s| self.slot_dir(&s)))
    }

    pub fn slot_info(&self, slot: &str) -> Result<SlotInfo, OtaError> {
        let p = self.slot_dir(slot).join("manifest.json");
        let bytes = std::fs::read(&p).map_err(|e| io(&p, e))?;
        let m = Manifest::parse(&bytes)?;
        Ok(SlotInfo {
            slot: slot.to_string(),
            sequence: m.sequence,
            version: m.version,
        })
    }

    pub fn slot_name(m: &Manifest, bundle_sha256: &str) -> String {
        format!(
            "{}-{}",
            m.sequence,
            &bundle_sha256[..12.min(bundle_sha256.len())]
        )
    }

    /// Where a bundle is staged before it becomes a slot (removed at start-up if left).
    pub fn staging_dir(&self, bundle_sha256: &str) -> PathBuf {
        self.slots().join(format!(
            ".staging-{}",
            &bundle_sha256[..12.min(bundle_sha256.len())]
        ))
    }

    /// Makes a fully written staging directory the slot `slot`: fsyncs its tree, renames it,
    /// fsyncs `slots/`.
    pub fn commit_staging(&self, staging: &Path, slot: &str) -> Result<PathBuf, OtaError> {
        sync_tree(staging)?;
        let dest = self.slot_dir(slot);
        if dest.exists() {
            // The same bundle installed again (the previous set, by an allowed rollback): move
            // the old copy aside in one rename, so that a kill never leaves a half-removed set
            // under a name the state refers to (the aside copy is garbage at the next start).
            let aside = self.slots().join(format!(".old-{slot}"));
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(&dest, &aside).map_err(|e| io(&dest, e))?;
            let _ = std::fs::remove_dir_all(&aside);
        }
        std::fs::rename(staging, &dest).map_err(|e| io(&dest, e))?;
        sync_dir(&self.slots())?;
        Ok(dest)
    }

    /// Points `current` at `slot` (None: no set, the device's own config) with one atomic
    /// rename, then fsyncs the directory.
    pub fn switch(&self, slot: Option<&str>) -> Result<(), OtaError> {
        let cur = self.current();
        match slot {
            Some(s) => {
                let tmp = self.dir.join("current.new");
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(Path::new("slots").join(s), &tmp)
                    .map_err(|e| io(&tmp, e))?;
                super::test_hook_pause("switch");
                std::fs::rename(&tmp, &cur).map_err(|e| io(&cur, e))?;
            }
            None => match std::fs::remove_file(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&cur, e)),
            },
        }
        sync_dir(&self.dir)
    }

    pub fn read_state(&self) -> Result<State, OtaError> {
        let p = self.dir.join("state.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| OtaError::State {
                path: p.clone(),
                source: e,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io(&p, e)),
        }
    }

    /// Writes `state.json` durably: temporary file, fsync, rename, fsync of the directory.
    pub fn write_state(&self, state: &State) -> Result<(), OtaError> {
        let p = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        super::bundle::write_synced(&tmp, &bytes)?;
        std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))?;
        sync_dir(&self.dir)
    }

    /// Removes staging directories, slots other than the active and previous ones, and
    /// leftover temporary files.
    pub fn collect_garbage(&self, state: &State) -> Result<(), OtaError> {
        let keep: Vec<&str> = [&state.active, &state.previous]
            .into_iter()
            .flatten()
            .map(|s| s.slot.as_str())
            .collect();
        for ent in std::fs::read_dir(self.slots()).map_err(|e| io(&self.slots(), e))? {
            let ent = ent.map_err(|e| io(&self.slots(), e))?;
            let name = ent.file_name().to_string_lossy().to_string();
            if !keep.contains(&name.as_str()) {
                tracing::info!(slot = %name, "ota: removing a set that is neither active nor previous");
                std::fs::remove_dir_all(ent.path()).map_err(|e| io(&ent.path(), e))?;
            }
        }
        for leftover in ["current.new", "state.json.tmp"] {
            let _ = std::fs::remove_file(self.dir.join(leftover));
        }
        sync_dir(&self.slots())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with slots `1-a` and `2-b` (each with its manifest) and `current` → `active`.
    fn store(name: &str, active: Option<&str>, state: &State) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store { dir: dir.clone() };
        for (slot, seq) in [("1-a", 1), ("2-b", 2)] {
            std::fs::create_dir_all(s.slot_dir(slot)).unwrap();
            let m = format!(
                r#"{{"format": 1, "version": "v{seq}", "sequence": {seq}, "created": "2026-01-01T00:00:00Z",
                "expires": "2099-01-01T00:00:00Z", "files": [{{"path": "f", "size": 0,
                "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}]}}"#
            );
            std::fs::write(s.slot_dir(slot).join("manifest.json"), m).unwrap();
        }
        std::fs::create_dir_all(s.slots().join(".staging-0123")).unwrap();
        s.switch(active).unwrap();
        s.write_state(state).unwrap();
        dir
    }

    fn info(slot: &str, sequence: u64) -> SlotInfo {
        SlotInfo {
            slot: slot.into(),
            sequence,
            version: format!("v{sequence}"),
        }
    }

    fn slots(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("slots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_activation_cut_after_the_switch_makes_the_new_set_active_on_probation() {
        let before = State {
            active: Some(info("1-a", 1)),
            ..State::default()
        };
        let dir = store("cut-activation", Some("2-b"), &before);
        let (_, state) = Store::open(&dir).unwrap();
        assert_eq!(state.active, Some(info("2-b", 2)));
        assert_eq!(state.previous, Some(info("1-a", 1)));
        assert_eq!(state.probation.map(|p| p.slot), Some("2-b".into()));
        assert_eq!(
            slots(&dir),
            ["1-a", "2-b"],
            "staging removed, both sets kept"
        );
    }

    #[test]
    fn a_rollback_cut_after_the_switch_is_completed() {
        let before = State {
            active: Some(info("2-b", 2)),
            previous: Some(info("1-a", 1)),
            probation: Some(ProbationState {
                slot: "2-b".into(),
                started: 0,
                boots: 1,
            }),
            last: None,
            key_floor: 0,
        };
        let dir = store("cut-rollback", Some("1-a"), &before);
        let (s, state) = Store::open(&dir).unwrap();
        assert_eq!(
            (state.active, state.previous, state.probation),
            (Some(info("1-a", 1)), None, None)
        );
        assert_eq!(slots(&dir), ["1-a"], "the rolled-back set is removed");
        assert_eq!(
            s.read_state().unwrap().active.map(|a| a.slot),
            Some("1-a".into())
        );
    }

    #[test]
    fn an_unreadable_state_is_rebuilt_from_the_link() {
        let dir = store("bad-state", Some("2-b"), &State::default());
        std::fs::write(dir.join("state.json"), b"{not json").unwrap();
        let (_, state) = Store::open(&dir).unwrap();
        assert_eq!(state.active, Some(info("2-b", 2)));
        assert_eq!(slots(&dir), ["2-b"]);
    }
}
