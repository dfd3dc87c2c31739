//! The appliance image's slot gate: on an A/B image (whose unit passes the boot's id as
//! `VIGIL_SLOT_BOOT_ID=%b`: the unit's sandbox hides /proc/sys and /proc/cmdline from Vigil),
//! Vigil tells the image that this boot is good by writing the boot's id to
//! `<state>/system/healthy` once it has been healthy for [`HOLD`] without a break: every
//! required stage beating, the MQTT link connected, and every enabled camera live. The image's
//! `vigil-slot-commit.service` (root) waits for that file and marks the slot good with RAUC, or,
//! past its deadline, marks it bad and reboots, so that GRUB returns to the other slot
//! (xtask/src/image.rs). Vigil itself needs no privilege for this: it only writes a file in its
//! own state directory.
//!
//! Knows nothing of RAUC, GRUB or MQTT: the supervisor says whether the box is well, this module
//! only times it and writes the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the box must stay well before the boot counts as good.
pub const HOLD: Duration = Duration::from_secs(20);

pub struct SlotGate {
    file: PathBuf,
    boot_id: String,
    since: Option<Instant>,
    written: bool,
}

impl SlotGate {
    /// A gate when the image asked for one (`VIGIL_SLOT_BOOT_ID` set), else `None`.
    pub fn on_image(state_dir: &Path) -> Option<Self> {
        let boot_id = std::env::var("VIGIL_SLOT_BOOT_ID").ok()?;
        Self::new(state_dir, boot_id.trim())
    }

    fn new(state_dir: &Path, boot_id: &str) -> Option<Self> {
        if boot_id.is_empty() {
            return None;
        }
        tracing::info!(
            boot_id,
            "A/B image: this boot's slot is confirmed once Vigil has been healthy for {}s",
            HOLD.as_secs()
        );
        Some(SlotGate {
            file: state_dir.join("system/healthy"),
            boot_id: boot_id.to_string(),
            since: None,
            written: false,
        })
    }

    /// One look at the box: `well` = healthy, connected, cameras live. Writes the file once,
    /// when the box has been well for [`HOLD`]; a break starts the count again.
    pub fn tick(&mut self, well: bool, now: Instant) {
        if self.written {
            return;
        }
        if !well {
            self.since = None;
            return;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < HOLD {
            return;
        }
        match write_atomic(&self.file, &format!("{}\n", self.boot_id)) {
            Ok(()) => {
                self.written = true;
                tracing::info!(file = %self.file.display(), "healthy for {}s: this boot's slot may be confirmed", HOLD.as_secs());
            }
            Err(e) => {
                // Tried again at the next tick; without the file the image returns to the
                // other slot, which is the safe side.
                tracing::warn!(file = %self.file.display(), "cannot write the slot health file: {e}");
            }
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-slot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn only_a_boot_id_gets_a_gate() {
        let d = dir("none");
        assert!(SlotGate::new(&d, "").is_none());
        assert!(SlotGate::new(&d, "30555bef-3d73-47f9-940f-2d91abfa900d").is_some());
    }

    #[test]
    fn the_file_is_written_once_after_an_unbroken_hold() {
        let d = dir("hold");
        let mut g = SlotGate::new(&d, "boot-1").unwrap();
        let t0 = Instant::now();
        let file = d.join("system/healthy");
        g.tick(true, t0);
        g.tick(true, t0 + HOLD / 2);
        // A break restarts the count.
        g.tick(false, t0 + HOLD / 2 + Duration::from_secs(1));
        g.tick(true, t0 + HOLD + Duration::from_secs(1));
        assert!(!file.exists(), "not well for a whole hold yet");
        g.tick(true, t0 + 2 * HOLD + Duration::from_secs(1));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "boot-1\n");
        // Later trouble does not take it back (the slot is confirmed once per boot).
        std::fs::remove_file(&file).unwrap();
        g.tick(false, t0 + 3 * HOLD);
        g.tick(true, t0 + 5 * HOLD);
        assert!(!file.exists());
    }
}
