//! The on-disk store of installed sets, under `[ota] dir`:
//!
//! ```text
//! slots/<seq>-<digest12>/     one installed set: manifest.json, manifest.sig, models/…, config.toml
//! slots/.staging-<…>/         a set being written (removed at start-up: never active)
//! current -> slots/<name>     the active set; absent = the device's own config only (factory)
//! state.json                  active, previous, probation, last result
//! download/<sha256>.part      a download in progress (kept for resume, also across restarts)
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
}

pub struct Store {
    pub dir: PathBuf,
}

fn io(what: &Path, e: std::io::Error) -> OtaError {
    OtaError::Io(format!("{}: {e}", what.display()))
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
        let mut state = store.read_state()?;
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
        store.collect_garbage(&state)?;
        Ok((store, state))
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
            std::fs::remove_dir_all(&dest).map_err(|e| io(&dest, e))?;
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
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| OtaError::Io(format!("{}: {e}", p.display()))),
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
