//! Target `config`: TOML text as `config/set` or an OTA bundle's overlay would bring it.
//!
//! Without a [`OVERLAY_MARK`] line the input is one config file: parsed and validated
//! (`config::parse`), every error printed, and a valid one diffed against the demo config (what
//! a reload computes; a config diffed against itself must change nothing). With the mark, the text before it is the device's file and the text after
//! it an OTA overlay: both are written to scratch files and merged (`config::load_overlaid`).

use std::path::Path;
use std::sync::OnceLock;
use vigil_core::config::{self, Config};
use vigil_core::facts::KnownFacts;

/// A line that splits an input into a base config and an overlay.
pub const OVERLAY_MARK: &str = "\n#--- overlay ---\n";

fn running() -> &'static Config {
    static RUNNING: OnceLock<Config> = OnceLock::new();
    RUNNING.get_or_init(|| {
        let demo = include_str!("../../../configs/demo.toml");
        config::parse(demo, Path::new("demo.toml"), &KnownFacts::cpu_only())
            .expect("configs/demo.toml is valid")
    })
}

/// Everything a caller does with a parsed config, or with its errors.
fn consume(result: Result<Config, config::ConfigErrors>) {
    match result {
        Ok(new) => {
            for action in config::diff(Some(running()), &new).models.values() {
                let _ = (action.model_to_load(), action.cameras_after());
            }
            let _ = config::restart_sections(running(), &new);
            let _ = config::diff(None, &new);
            let same = config::diff(Some(&new), &new);
            assert!(
                same.needs_restart.is_empty() && same.models.values().all(|a| a.is_noop()),
                "a config differs from itself: {same:?}"
            );
        }
        Err(errors) => {
            assert!(
                !errors.errors().is_empty(),
                "a rejected config names no error"
            );
            for e in errors.errors() {
                let line = e.to_string();
                assert!(!line.is_empty());
            }
        }
    }
}

pub fn run(data: &[u8]) {
    // `config/set` carries a JSON string and files are read as UTF-8: other bytes never parse.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let facts = KnownFacts::cpu_only();
    match text.split_once(OVERLAY_MARK) {
        None => consume(config::parse(text, Path::new("fuzz.toml"), &facts)),
        Some((base, overlay)) => {
            let dir = crate::scratch("config");
            let slot = dir.join("slot");
            let _ = std::fs::create_dir_all(&slot);
            let (base_path, overlay_path) = (dir.join("vigil.toml"), slot.join("config.toml"));
            if std::fs::write(&base_path, base).is_err()
                || std::fs::write(&overlay_path, overlay).is_err()
            {
                return;
            }
            consume(config::load_overlaid(&base_path, &overlay_path, &facts));
        }
    }
}
