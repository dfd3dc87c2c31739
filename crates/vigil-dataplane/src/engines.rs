//! The TensorRT engine cache: one directory per [`EngineKey`] under the state directory
//! (`<state>/engines/<id>/`), so an engine is never used by a box it was not built for.
//!
//! The key is everything an engine depends on: the model file's sha256, the TensorRT and ONNX
//! Runtime versions, the GPU's name and compute capability, the precision and the shape
//! profile (batch sizes and input sizes). Change any of them and the id changes, so a stale
//! engine is never found ("engine plan file is not compatible with this version of TensorRT"
//! cannot happen after an upgrade: the new version looks in another directory).
//!
//! Entries are written atomically: built into `.tmp-<id>-<pid>/`, every file fsynced, the key
//! written beside them (`key.json`), then the directory renamed into place and its parent
//! fsynced; a power cut leaves either no entry or a whole one (a stale `.tmp-…` is removed by
//! the next prune). An entry that fails to load is moved aside to `.bad/<id>-<time>/` with the
//! reason (`why.txt`) and rebuilt; that is never fatal. The cache is bounded in bytes: the
//! entries used least recently go first (each use touches `used`).
//!
//! Building is the engine builder's business ([`EngineBuilder`]): ONNX Runtime's TensorRT
//! provider in production (it writes its engine and profile files into the directory it is
//! given), a fake builder in the tests (named as such).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The key file of an entry.
pub const KEY_FILE: &str = "key.json";
/// Touched at each use (least recently used entries are pruned first).
const USED_FILE: &str = "used";
/// Where entries that failed to load are kept, with why.
const BAD_DIR: &str = ".bad";
/// Entries kept in `.bad/` (the oldest go first).
const MAX_BAD: usize = 4;

/// An engine build in progress (for the log, telemetry and systemd while it runs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildProgress {
    /// The cache entry's id.
    pub entry: String,
    /// The model it is for (`[models.<name>]`), where known.
    pub model: Option<String>,
    pub precision: &'static str,
    /// Seconds since the build started.
    pub seconds: f64,
}

/// Called about once a second with every build in progress, from the thread that watches the
/// builds (not the building one). The control plane uses it to tell systemd that the service
/// is busy, not hung (`EXTEND_TIMEOUT_USEC`, `WATCHDOG`, `STATUS`) and to publish telemetry: a
/// build blocks the start-up or the reload that asked for it for minutes on a Jetson.
pub type BuildObserver = Arc<dyn Fn(&[BuildProgress]) + Send + Sync>;

/// How often the observer hears of a build; the log says it every [`LOG_EVERY`].
pub const OBSERVE_EVERY: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(30);

struct Building {
    entry: String,
    model: Option<String>,
    precision: &'static str,
    started: Instant,
}

static BUILDS: Mutex<Vec<Building>> = Mutex::new(Vec::new());
static OBSERVER: Mutex<Option<BuildObserver>> = Mutex::new(None);

thread_local! {
    static MODEL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Sets the observer of engine builds (replacing any before).
pub fn set_build_observer(f: BuildObserver) {
    *OBSERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
}

/// The builds in progress now.
pub fn builds_in_progress() -> Vec<BuildProgress> {
    BUILDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|b| BuildProgress {
            entry: b.entry.clone(),
            model: b.model.clone(),
            precision: b.precision,
            seconds: (b.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
        .collect()
}

/// Runs `f` with builds on this thread attributed to `model`.
pub fn for_model<R>(model: &str, f: impl FnOnce() -> R) -> R {
    let before = MODEL.with(|m| m.replace(Some(model.to_string())));
    let r = f();
    MODEL.with(|m| *m.borrow_mut() = before);
    r
}

/// Registers a build for [`builds_in_progress`] and, while it lasts, a thread that tells the
/// observer once a second and the log every 30 s; dropped when the build ends, however.
struct BuildGuard {
    entry: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl BuildGuard {
    fn start(key: &EngineKey) -> Self {
        let entry = key.id();
        BUILDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Building {
                entry: entry.clone(),
                model: MODEL.with(|m| m.borrow().clone()),
                precision: key.precision.as_str(),
                started: Instant::now(),
            });
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let id = entry.clone();
        let watcher = std::thread::Builder::new()
            .name("engine-build".into())
            .spawn(move || {
                let started = Instant::now();
                let mut logged = Instant::now();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(OBSERVE_EVERY)
                {
                    let now = builds_in_progress();
                    let observer = OBSERVER.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(f) = observer {
                        f(&now);
                    }
                    if logged.elapsed() >= LOG_EVERY {
                        logged = Instant::now();
                        tracing::info!(entry = %id, seconds = started.elapsed().as_secs(), "engine cache: still building the TensorRT engine");
                    }
                }
            })
            .ok();
        Self {
            entry,
            stop: Some(stop),
            watcher,
        }
    }
}

impl Drop for BuildGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let mut b = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = b.iter().position(|b| b.entry == self.entry) {
            b.remove(i);
        }
        drop(b);
        // A last word: the build is over (the observer clears what it showed).
        let now = builds_in_progress();
        let observer = OBSERVER.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(f) = observer {
            f(&now);
        }
    }
}

/// Engine precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    /// With the model's calibration table.
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

/// What an engine depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineKey {
    /// sha256 of the ONNX file.
    pub model_sha256: String,
    /// `MAJOR.MINOR.PATCH` of libnvinfer.
    pub tensorrt: String,
    /// `MAJOR.MINOR.PATCH` of ONNX Runtime.
    pub onnxruntime: String,
    /// The GPU's name as CUDA gives it.
    pub gpu: String,
    /// `MAJOR.MINOR`.
    pub compute_capability: String,
    pub precision: Precision,
    /// Batch sizes and input sizes the engine is built for, e.g. `b1,2,4;416x256`.
    pub profile: String,
}

impl EngineKey {
    /// The entry's directory name: readable parts, then a digest of every field (so two keys
    /// that differ anywhere never share a directory).
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in [
            ("model_sha256", self.model_sha256.as_str()),
            ("tensorrt", &self.tensorrt),
            ("onnxruntime", &self.onnxruntime),
            ("gpu", &self.gpu),
            ("compute_capability", &self.compute_capability),
            ("precision", self.precision.as_str()),
            ("profile", &self.profile),
        ] {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        let digest = hex(&h.finalize());
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(16)
                .collect()
        };
        format!(
            "{}-trt{}-sm{}-{}-{}",
            self.model_sha256.get(..8).unwrap_or("model"),
            safe(&self.tensorrt),
            safe(&self.compute_capability).replace('.', ""),
            self.precision.as_str(),
            &digest[..16]
        )
    }
}

impl EngineKey {
    /// Whether an engine of key `other` (any shape profile) was built for what `self`
    /// describes; else the first field that differs, in words.
    pub fn fits(&self, other: &EngineKey) -> Result<(), String> {
        let fields = [
            ("model sha256", &self.model_sha256, &other.model_sha256),
            ("TensorRT", &self.tensorrt, &other.tensorrt),
            ("ONNX Runtime", &self.onnxruntime, &other.onnxruntime),
            ("GPU", &self.gpu, &other.gpu),
            (
                "compute capability",
                &self.compute_capability,
                &other.compute_capability,
            ),
        ];
        for (what, here, there) in fields {
            if here != there {
                return Err(format!("{what} {there:?}, this box has {here:?}"));
            }
        }
        if self.precision != other.precision {
            return Err(format!(
                "precision {}, this model runs {}",
                other.precision.as_str(),
                self.precision.as_str()
            ));
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

/// Builds an engine into a directory, and loads one from a directory.
pub trait EngineBuilder {
    type Loaded;
    /// Builds the engine's files into `dir` (empty, made for it). Minutes on a Jetson.
    fn build(&self, dir: &Path) -> Result<(), String>;
    /// Loads the engine in `dir`; an error moves the entry aside and rebuilds it.
    fn load(&self, dir: &Path) -> Result<Self::Loaded, String>;
}

/// "Builds" an entry by copying a shipped one's files (not its key: the cache writes it).
struct CopyBuilder<'a> {
    from: &'a Path,
}

impl EngineBuilder for CopyBuilder<'_> {
    type Loaded = ();
    fn build(&self, dir: &Path) -> Result<(), String> {
        for f in std::fs::read_dir(self.from)
            .map_err(|e| io(self.from, e))?
            .flatten()
        {
            let p = f.path();
            if p.is_file() && f.file_name() != KEY_FILE {
                std::fs::copy(&p, dir.join(f.file_name())).map_err(|e| io(&p, e))?;
            }
        }
        Ok(())
    }
    fn load(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
}

/// How an engine came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Found in the cache and loaded.
    Hit,
    /// Not in the cache: built.
    Built,
    /// In the cache but it did not load (why): moved aside, built again.
    Rebuilt(String),
}

/// One cache entry, as `vigil engines list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub key: Option<EngineKey>,
    pub bytes: u64,
    pub used: Option<SystemTime>,
}

/// The cache at `root`, bounded to `max_bytes`.
#[derive(Debug, Clone)]
pub struct EngineCache {
    root: PathBuf,
    max_bytes: u64,
}

fn io(what: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", what.display())
}

/// Fsyncs a directory (its entries' names are durable after this).
fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, e))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsynced, renamed over it,
/// the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    sync_dir(dir)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl EngineCache {
    pub fn open(root: &Path, max_bytes: u64) -> Result<Self, String> {
        std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            max_bytes,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entry of `key`, when it is there and whole (its key file reads back as `key`).
    pub fn lookup(&self, key: &EngineKey) -> Option<PathBuf> {
        let dir = self.root.join(key.id());
        let text = std::fs::read_to_string(dir.join(KEY_FILE)).ok()?;
        let stored: EngineKey = serde_json::from_str(&text).ok()?;
        (stored == *key).then_some(dir)
    }

    /// The engine of `key`: loaded from the cache, or built (and the cache pruned to its
    /// bound, this entry kept). An entry that does not load is moved aside and rebuilt.
    pub fn get_or_build<B: EngineBuilder>(
        &self,
        key: &EngineKey,
        builder: &B,
    ) -> Result<(B::Loaded, Outcome, PathBuf), String> {
        let id = key.id();
        let mut outcome = Outcome::Built;
        if let Some(dir) = self.lookup(key) {
            match builder.load(&dir) {
                Ok(l) => {
                    self.touch(&dir);
                    return Ok((l, Outcome::Hit, dir));
                }
                Err(why) => {
                    tracing::warn!(entry = %id, "engine cache: the cached engine did not load ({why}); moved aside, building it again");
                    self.quarantine(&id, &why)?;
                    outcome = Outcome::Rebuilt(why);
                }
            }
        } else if self.root.join(&id).exists() {
            // A directory without a matching key (a foreign or damaged entry).
            let why = "its key file is missing or does not match".to_string();
            self.quarantine(&id, &why)?;
            outcome = Outcome::Rebuilt(why);
        }
        let dir = self.build(key, builder)?;
        let loaded = builder
            .load(&dir)
            .map_err(|e| format!("the engine just built does not load: {e}"))?;
        self.touch(&dir);
        self.prune(Some(&id));
        Ok((loaded, outcome, dir))
    }

    /// Builds the entry of `key` atomically (see the module's notes); its directory.
    pub fn build<B: EngineBuilder>(&self, key: &EngineKey, builder: &B) -> Result<PathBuf, String> {
        let id = key.id();
        let tmp = self.root.join(format!(".tmp-{id}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        let started = std::time::Instant::now();
        tracing::info!(entry = %id, "engine cache: building the TensorRT engine (minutes on a Jetson)");
        let guard = BuildGuard::start(key);
        let built = builder.build(&tmp);
        drop(guard);
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!("building the engine: {e}"));
        }
        for f in std::fs::read_dir(&tmp).map_err(|e| io(&tmp, e))?.flatten() {
            let p = f.path();
            if p.is_file() {
                std::fs::File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io(&p, e))?;
            }
        }
        let key_text = serde_json::to_vec_pretty(key).map_err(|e| e.to_string())?;
        write_atomic(&tmp.join(KEY_FILE), &key_text)?;
        let dir = self.root.join(&id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
        sync_dir(&self.root)?;
        tracing::info!(entry = %id, seconds = started.elapsed().as_secs_f64(), "engine cache: engine built and stored");
        Ok(dir)
    }

    fn touch(&self, dir: &Path) {
        let _ = std::fs::write(dir.join(USED_FILE), b"");
    }

    /// Moves an entry aside to `.bad/<id>-<unix time in ms>/` with `why.txt`; keeps the newest
    /// [`MAX_BAD`] there.
    pub fn quarantine(&self, id: &str, why: &str) -> Result<(), String> {
        let bad = self.root.join(BAD_DIR);
        std::fs::create_dir_all(&bad).map_err(|e| io(&bad, e))?;
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut to = bad.join(format!("{id}-{ms}"));
        let mut n = 1;
        while to.exists() {
            n += 1;
            to = bad.join(format!("{id}-{ms}-{n}"));
        }
        let from = self.root.join(id);
        std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
        let _ = std::fs::write(to.join("why.txt"), why);
        let mut old: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(&bad)
            .map_err(|e| io(&bad, e))?
            .flatten()
            .map(|e| {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (t, e.path())
            })
            .collect();
        old.sort();
        while old.len() > MAX_BAD {
            let (_, p) = old.remove(0);
            let _ = std::fs::remove_dir_all(p);
        }
        sync_dir(&self.root)
    }

    /// The entries (not `.tmp-…` or `.bad`), most recently used first.
    pub fn list(&self) -> Vec<Entry> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = rd
            .flatten()
            .filter(|e| {
                e.file_type().is_ok_and(|t| t.is_dir())
                    && !e.file_name().to_string_lossy().starts_with('.')
            })
            .map(|e| {
                let dir = e.path();
                Entry {
                    id: e.file_name().to_string_lossy().to_string(),
                    key: std::fs::read_to_string(dir.join(KEY_FILE))
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok()),
                    bytes: dir_bytes(&dir),
                    used: std::fs::metadata(dir.join(USED_FILE))
                        .and_then(|m| m.modified())
                        .ok(),
                }
            })
            .collect();
        out.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Removes leftovers of interrupted builds, then the least recently used entries until
    /// the cache fits its bound (`keep` is never removed); how many entries went.
    pub fn prune(&self, keep: Option<&str>) -> usize {
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let ours = name.ends_with(&format!("-{}", std::process::id()));
                if name.starts_with(".tmp-") && !ours {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let mut entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut removed = 0;
        // Least recently used last in `list`'s order.
        while total > self.max_bytes {
            let Some(pos) = entries.iter().rposition(|e| Some(e.id.as_str()) != keep) else {
                break;
            };
            let e = entries.remove(pos);
            if std::fs::remove_dir_all(self.root.join(&e.id)).is_ok() {
                tracing::info!(entry = %e.id, bytes = e.bytes, "engine cache: pruned (over its bound)");
                total = total.saturating_sub(e.bytes);
                removed += 1;
            }
        }
        removed
    }

    /// Installs the engines shipped in an OTA set (`<slot>/engines/<id>/` with their
    /// `key.json`) that fit `want` (any shape profile) and are not cached yet, each copied in
    /// atomically as a build is; those for another box are left, with why. Returns
    /// (installed, skipped with why).
    pub fn install_shipped(
        &self,
        shipped: &Path,
        want: &EngineKey,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let (mut installed, mut skipped) = (Vec::new(), Vec::new());
        let Ok(rd) = std::fs::read_dir(shipped) else {
            return (installed, skipped);
        };
        for e in rd.flatten() {
            let src = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let key: EngineKey = match std::fs::read_to_string(src.join(KEY_FILE))
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            {
                Ok(k) => k,
                Err(why) => {
                    skipped.push((name, format!("no readable {KEY_FILE}: {why}")));
                    continue;
                }
            };
            if let Err(why) = want.fits(&key) {
                skipped.push((name, format!("built for {why}")));
                continue;
            }
            if self.lookup(&key).is_some() {
                continue;
            }
            let copy = CopyBuilder { from: &src };
            match self.build(&key, &copy) {
                Ok(_) => installed.push(key.id()),
                Err(why) => skipped.push((name, why)),
            }
        }
        (installed, skipped)
    }

    /// Removes every entry but `keep`-ing ones (`vigil engines prune --all`).
    pub fn clear(&self) -> usize {
        let mut n = 0;
        for e in self.list() {
            if std::fs::remove_dir_all(self.root.join(&e.id)).is_ok() {
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn key() -> EngineKey {
        EngineKey {
            model_sha256: "ab".repeat(32),
            tensorrt: "10.3.0".into(),
            onnxruntime: "1.31.1".into(),
            gpu: "Orin (nvgpu)".into(),
            compute_capability: "8.7".into(),
            precision: Precision::Fp16,
            profile: "b1,2,4;416x256".into(),
        }
    }

    /// A fake engine builder (TensorRT cannot run here): "builds" by writing `engine.plan`
    /// with the given bytes, "loads" by reading it back and refusing anything else.
    struct FakeBuilder {
        bytes: Vec<u8>,
        builds: Cell<u32>,
        fail_build: bool,
    }

    impl FakeBuilder {
        fn new(bytes: &[u8]) -> Self {
            Self {
                bytes: bytes.to_vec(),
                builds: Cell::new(0),
                fail_build: false,
            }
        }
    }

    impl EngineBuilder for FakeBuilder {
        type Loaded = Vec<u8>;
        fn build(&self, dir: &Path) -> Result<(), String> {
            self.builds.set(self.builds.get() + 1);
            if self.fail_build {
                return Err("fake builder: out of workspace".into());
            }
            std::fs::write(dir.join("engine.plan"), &self.bytes).map_err(|e| e.to_string())
        }
        fn load(&self, dir: &Path) -> Result<Vec<u8>, String> {
            let b = std::fs::read(dir.join("engine.plan")).map_err(|e| e.to_string())?;
            if b != self.bytes {
                return Err("fake builder: plan deserialisation failed".into());
            }
            Ok(b)
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-engines-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A fake builder that takes its time (a Jetson's minutes, in seconds).
    struct FakeSlowBuilder(Duration);

    impl EngineBuilder for FakeSlowBuilder {
        type Loaded = ();
        fn build(&self, dir: &Path) -> Result<(), String> {
            std::thread::sleep(self.0);
            std::fs::write(dir.join("engine.plan"), b"fake").map_err(|e| e.to_string())
        }
        fn load(&self, _: &Path) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_build_in_progress_is_reported_with_its_model_until_it_ends() {
        let root = temp("progress");
        let cache = EngineCache::open(&root, 1 << 20).unwrap();
        let mut k = key();
        k.model_sha256 = "cd".repeat(32);
        let seen: Arc<Mutex<Vec<Vec<BuildProgress>>>> = Arc::default();
        let log = seen.clone();
        set_build_observer(Arc::new(move |b: &[BuildProgress]| {
            log.lock().unwrap().push(b.to_vec());
        }));
        let mine = |b: &Vec<BuildProgress>| -> Vec<BuildProgress> {
            b.iter()
                .filter(|p| p.model.as_deref() == Some("progress-test"))
                .cloned()
                .collect()
        };
        let builder = FakeSlowBuilder(Duration::from_millis(3600));
        let during = std::thread::scope(|s| {
            let h = s.spawn(|| for_model("progress-test", || cache.build(&k, &builder)));
            std::thread::sleep(Duration::from_millis(1300));
            let during = builds_in_progress();
            h.join().unwrap().unwrap();
            during
        });
        let during: Vec<_> = during
            .into_iter()
            .filter(|p| p.model.as_deref() == Some("progress-test"))
            .collect();
        assert_eq!(during.len(), 1, "{during:?}");
        assert_eq!(during[0].entry, k.id());
        assert_eq!(during[0].precision, "fp16");
        assert!(during[0].seconds >= 1.0, "{during:?}");
        let calls: Vec<Vec<BuildProgress>> = seen.lock().unwrap().iter().map(mine).collect();
        let shown: Vec<f64> = calls
            .iter()
            .filter_map(|c| c.first().map(|p| p.seconds))
            .collect();
        assert!(
            shown.len() >= 2,
            "the observer heard of the build once a second: {calls:?}"
        );
        // (Other tests' builds call the observer too, so a second may be heard more than once.)
        assert!(shown.windows(2).all(|w| w[0] <= w[1]), "{shown:?}");
        assert!(shown.iter().any(|&s| s >= 2.0), "{shown:?}");
        assert!(
            calls.last().is_some_and(|c| c.is_empty()),
            "the last word says the build is over: {calls:?}"
        );
        assert!(
            builds_in_progress()
                .iter()
                .all(|p| p.model.as_deref() != Some("progress-test"))
        );
        assert!(cache.lookup(&k).is_some());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn every_component_changes_the_key() {
        let base = key();
        let id = base.id();
        assert!(id.starts_with("abababab-trt10.3.0-sm87-fp16-"), "{id}");
        let variants = [
            EngineKey {
                model_sha256: "cd".repeat(32),
                ..key()
            },
            EngineKey {
                tensorrt: "10.3.1".into(),
                ..key()
            },
            EngineKey {
                onnxruntime: "1.32.0".into(),
                ..key()
            },
            EngineKey {
                gpu: "NVIDIA H200".into(),
                ..key()
            },
            EngineKey {
                compute_capability: "9.0".into(),
                ..key()
            },
            EngineKey {
                precision: Precision::Int8,
                ..key()
            },
            EngineKey {
                profile: "b1;416x256".into(),
                ..key()
            },
        ];
        let mut seen = std::collections::HashSet::from([id]);
        for k in variants {
            assert!(seen.insert(k.id()), "{k:?} shares an id");
        }
        assert_eq!(key().id(), base.id(), "stable");
    }

    #[test]
    fn built_once_then_found_and_a_corrupt_entry_is_rebuilt() {
        let root = temp("cache");
        let cache = EngineCache::open(&root, 1 << 20).unwrap();
        let b = FakeBuilder::new(b"plan-v1");
        let (l, o, dir) = cache.get_or_build(&key(), &b).unwrap();
        assert_eq!((l.as_slice(), o), (&b"plan-v1"[..], Outcome::Built));
        assert_eq!(dir, root.join(key().id()));
        let stored: EngineKey =
            serde_json::from_str(&std::fs::read_to_string(dir.join(KEY_FILE)).unwrap()).unwrap();
        assert_eq!(stored, key());
        let (_, o, _) = cache.get_or_build(&key(), &b).unwrap();
        assert_eq!(o, Outcome::Hit);
        assert_eq!(b.builds.get(), 1, "found, not rebuilt");
        // Corrupt the plan: moved aside with why, rebuilt, never fatal.
        std::fs::write(dir.join("engine.plan"), b"garbage").unwrap();
        let (l, o, _) = cache.get_or_build(&key(), &b).unwrap();
        assert_eq!(l, b"plan-v1");
        assert!(
            matches!(o, Outcome::Rebuilt(ref w) if w.contains("deserialisation")),
            "{o:?}"
        );
        assert_eq!(b.builds.get(), 2);
        let bad: Vec<_> = std::fs::read_dir(root.join(BAD_DIR))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(bad.len(), 1);
        let why = std::fs::read_to_string(bad[0].path().join("why.txt")).unwrap();
        assert!(why.contains("deserialisation"), "{why}");
        // A key file that does not match (a foreign entry under this id): rebuilt too.
        std::fs::write(dir.join(KEY_FILE), b"{}").unwrap();
        let (_, o, _) = cache.get_or_build(&key(), &b).unwrap();
        assert!(matches!(o, Outcome::Rebuilt(_)), "{o:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_failed_build_leaves_nothing_and_leftovers_are_pruned() {
        let root = temp("atomic");
        let cache = EngineCache::open(&root, 1 << 20).unwrap();
        let mut b = FakeBuilder::new(b"x");
        b.fail_build = true;
        let e = cache.get_or_build(&key(), &b).unwrap_err();
        assert!(e.contains("out of workspace"), "{e}");
        assert!(cache.lookup(&key()).is_none());
        assert!(cache.list().is_empty());
        // A build interrupted by a power cut (another process's temporary directory).
        let stale = root.join(".tmp-someid-999999999");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("engine.plan"), b"half").unwrap();
        cache.prune(None);
        assert!(!stale.exists(), "stale temporary directory removed");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_cache_keeps_to_its_bound_least_recently_used_first() {
        let root = temp("bound");
        let cache = EngineCache::open(&root, 2500).unwrap();
        let b = FakeBuilder::new(&[7u8; 1000]);
        let mut keys = Vec::new();
        for p in ["b1;416x256", "b2;416x256", "b4;416x256"] {
            let k = EngineKey {
                profile: p.into(),
                ..key()
            };
            cache.get_or_build(&k, &b).unwrap();
            keys.push(k);
            // Distinct use times (coarse file systems).
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Three entries of ~1 KiB (plus key files) against 2500 bytes: the oldest went.
        assert!(
            cache.lookup(&keys[0]).is_none(),
            "least recently used pruned"
        );
        assert!(cache.lookup(&keys[1]).is_some() && cache.lookup(&keys[2]).is_some());
        let listed = cache.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            listed[0].key.as_ref(),
            Some(&keys[2]),
            "most recently used first"
        );
        assert!(listed.iter().all(|e| e.bytes >= 1000));
        assert_eq!(cache.clear(), 2);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Engines shipped in an OTA set: the one built for this box (any profile) is installed
    /// and then found without a build; one for another GPU is left, saying why.
    #[test]
    fn shipped_engines_are_installed_only_where_their_key_fits() {
        let root = temp("shipped");
        let slot = root.join("slot/engines");
        let ours = EngineKey {
            profile: "b4;416x256".into(),
            ..key()
        };
        let other = EngineKey {
            gpu: "NVIDIA H200".into(),
            compute_capability: "9.0".into(),
            ..key()
        };
        for k in [&ours, &other] {
            let d = slot.join(k.id());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("engine.plan"), b"shipped-plan").unwrap();
            std::fs::write(d.join(KEY_FILE), serde_json::to_vec(k).unwrap()).unwrap();
        }
        std::fs::create_dir_all(slot.join("junk")).unwrap();
        let cache = EngineCache::open(&root.join("cache"), 1 << 20).unwrap();
        let want = EngineKey {
            profile: String::new(),
            ..key()
        };
        let (installed, skipped) = cache.install_shipped(&slot, &want);
        assert_eq!(installed, vec![ours.id()]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped
                .iter()
                .any(|(n, why)| *n == other.id() && why.contains("GPU \"NVIDIA H200\"")),
            "{skipped:?}"
        );
        let b = FakeBuilder::new(b"shipped-plan");
        let (_, o, _) = cache.get_or_build(&ours, &b).unwrap();
        assert_eq!((o, b.builds.get()), (Outcome::Hit, 0), "used as shipped");
        // Installed once: a second pass changes nothing.
        assert!(cache.install_shipped(&slot, &want).0.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let root = temp("write");
        std::fs::create_dir_all(&root).unwrap();
        let p = root.join("timing.cache");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec!["timing.cache".to_string()], "no temporary left");
        let _ = std::fs::remove_dir_all(&root);
    }
}
