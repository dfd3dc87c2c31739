//! `vigil engines list|build|prune --config FILE`: the TensorRT engine cache of the box the
//! config describes (`<[storage] dir>/engines`, bounded by `[storage] engine_cache_bytes`).
//! `list` shows whether TensorRT is usable here (or why not) and every cached engine with its
//! key; `build` loads each model whose backend may use TensorRT as `vigil run` would, building
//! the engines it lacks (minutes on a Jetson); `prune` removes what is over the bound (`--all`:
//! everything).

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use vigil_core::config::BackendKind;
use vigil_dataplane::engines::EngineCache;
use vigil_dataplane::facts::ThisBox;

#[derive(clap::Subcommand)]
pub enum EnginesCmd {
    /// Whether TensorRT is usable here, and the cached engines, most recently used first.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Build (or check) the engines of every model whose backend is `tensorrt` or `auto`.
    Build {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove the least recently used engines over the bound; `--all`: every engine.
    Prune {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        all: bool,
    },
}

fn open(config: &std::path::Path) -> Result<(vigil_core::config::Config, EngineCache)> {
    let cfg = vigil_ota::load_effective(config, &ThisBox)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} has errors", config.display()))?;
    let dir = cfg.storage.state_dir().join("engines");
    let cache =
        EngineCache::open(&dir, cfg.storage.engine_cache_bytes).map_err(anyhow::Error::msg)?;
    vigil_dataplane::engine::set_engine_cache(&dir, cfg.storage.engine_cache_bytes);
    Ok((cfg, cache))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

pub fn run(cmd: EnginesCmd) -> Result<()> {
    match cmd {
        EnginesCmd::List { config } => {
            let (cfg, cache) = open(&config)?;
            match vigil_dataplane::facts::tensorrt() {
                Ok(t) => println!(
                    "TensorRT {} ({}), ONNX Runtime's provider {}",
                    t.version,
                    t.library,
                    t.provider.display()
                ),
                Err(why) => println!("TensorRT: not available here: {why}"),
            }
            let entries = cache.list();
            println!(
                "engine cache {}: {} engine(s), {} of {}",
                cache.root().display(),
                entries.len(),
                mib(entries.iter().map(|e| e.bytes).sum()),
                mib(cfg.storage.engine_cache_bytes)
            );
            for e in entries {
                let used = e
                    .used
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_else(|| "never".into());
                match e.key {
                    Some(k) => println!(
                        "  {}  {}  TensorRT {}  ORT {}  {} (sm {})  {}  model {}…  {}  used {used}",
                        e.id,
                        k.precision.as_str(),
                        k.tensorrt,
                        k.onnxruntime,
                        k.gpu,
                        k.compute_capability,
                        k.profile,
                        k.model_sha256.get(..12).unwrap_or(""),
                        mib(e.bytes)
                    ),
                    None => println!("  {}  (no readable key)  {}", e.id, mib(e.bytes)),
                }
            }
            Ok(())
        }
        EnginesCmd::Build { config } => {
            let (cfg, _cache) = open(&config)?;
            if let Err(why) = vigil_dataplane::facts::tensorrt() {
                bail!("TensorRT is not available here: {why}");
            }
            let mut failed = 0;
            for (name, m) in &cfg.models {
                if !matches!(m.backend, BackendKind::Tensorrt | BackendKind::Auto) {
                    println!(
                        "{name}: backend {} (no TensorRT engine)",
                        m.backend.as_str()
                    );
                    continue;
                }
                match vigil_dataplane::engine::build(name, m) {
                    Ok(b) if b.backend.name == "tensorrt" => {
                        println!("{name}: TensorRT engine ready")
                    }
                    Ok(b) => {
                        failed += 1;
                        println!(
                            "{name}: runs on {} instead: {}",
                            b.backend.name,
                            b.backend.fallback.unwrap_or_default()
                        );
                    }
                    Err(e) => {
                        failed += 1;
                        println!("{name}: {}", vigil_core::error::chain(&e));
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} model(s) without a TensorRT engine");
            }
            Ok(())
        }
        EnginesCmd::Prune { config, all } => {
            let (_, cache) = open(&config)?;
            let n = if all {
                cache.clear()
            } else {
                cache.prune(None)
            };
            println!("removed {n} engine(s) from {}", cache.root().display());
            Ok(())
        }
    }
}
