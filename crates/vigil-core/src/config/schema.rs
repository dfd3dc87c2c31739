//! The TOML schema of a Vigil config file, as serde types.
//!
//! Every table denies unknown fields. Semantic checks (ranges, references, geometry) live in
//! `validate.rs`; this file only says what shape the file has and what the defaults are.
//! Documented for users in `configs/README.md`: keep the two in step.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A duration written as a human string: `"500ms"`, `"10s"`, `"2m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: {e} (expected a duration such as \"500ms\", \"10s\", \"2m\")"
            ))
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device: DeviceConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub snapshots: SnapshotConfig,
    #[serde(default)]
    pub live: LiveConfig,
    #[serde(default)]
    pub restream: RestreamConfig,
    #[serde(default)]
    pub homeassistant: HomeAssistantConfig,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    #[serde(default)]
    pub ota: OtaConfig,
}

/// Home Assistant MQTT discovery (`docs/mqtt.md`): off by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish this box as a Home Assistant device (retained; removed when turned off).
    pub enabled: bool,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// Signed over-the-air updates of models and config (`ota/README.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// Base64 ed25519 public keys (`vigil ota keygen`); a bundle signed by any of them is
    /// trusted. Empty: OTA refused. Several: key rotation (add the new key, later drop the old).
    pub trusted_keys: Vec<String>,
    /// Installed sets and downloads; a relative path is relative to the config file's
    /// directory. Unset: `<storage dir>/ota`.
    pub dir: Option<PathBuf>,
    /// After an activation, how long health must hold and the new models must produce
    /// well-formed outputs before the update is committed; else it is rolled back.
    pub probation: Dur,
    /// Well-formed inferences each new model must complete within the probation window.
    pub probation_min_inferences: u32,
    /// Matched against a bundle's `target.device_class`.
    pub device_class: String,
    /// Largest bundle (and largest file in it) accepted.
    pub max_bundle_bytes: u64,
    /// The longest a bundle's download may take, all attempts together; past it the update
    /// fails (the partial file is kept: the same command sent again resumes it).
    pub download_timeout: Dur,
    /// The slowest a download may be, averaged over each 10 s; 0: no minimum (only
    /// `download_timeout` then bounds a trickling server).
    pub min_rate_bytes_per_s: u64,
}

impl Default for OtaConfig {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            dir: None,
            probation: Dur::secs(60),
            probation_min_inferences: 3,
            device_class: "generic".into(),
            max_bundle_bytes: 1 << 30,
            download_timeout: Dur::secs(3600),
            min_rate_bytes_per_s: 1024,
        }
    }
}

impl OtaConfig {
    /// The OTA directory this config resolves to.
    pub fn dir(&self, storage: &StorageConfig) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| storage.state_dir().join("ota"))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Names this box in MQTT topics: `[A-Za-z0-9_-]`, 1..=64 characters.
    pub id: String,
    /// Where the box is (a name like the id), for the fleet console's filters; sent in
    /// telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Free labels (names like the id, at most [`MAX_TAGS`]), for the fleet console's filters;
    /// sent in telemetry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Most `[device] tags`.
pub const MAX_TAGS: usize = 16;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Defaults to `vigil-<device id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Topic root: topics are `<prefix>/<device id>/...`.
    pub topic_prefix: String,
    pub keep_alive: Dur,
    pub telemetry_interval: Dur,
    /// TLS: the broker's certificate must chain to a CA in this PEM file. Unset: plain TCP
    /// (`check-config` warns). A relative path is relative to the config file's directory.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: the client certificate (PEM, leaf first) and its private key (PEM,
    /// unencrypted); both or neither, and only with `ca_file`. The link reloads all three
    /// files when their contents change, without a restart.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must be valid for. Unset: `host`.
    pub server_name: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            topic_prefix: "vigil".into(),
            keep_alive: Dur::secs(30),
            telemetry_interval: Dur::secs(10),
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
        }
    }
}

/// The HTTP API (`/healthz`, `/metrics`, `/api/...`; `docs/http.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `address:port` to listen on; port 0 picks a free one (logged); "" turns the API off.
    /// With no `tokens`, the API is served on the loopback address only (a non-loopback
    /// address is replaced by 127.0.0.1 or ::1, with a warning).
    pub listen: String,
    /// Bearer tokens, stored as SHA-256 digests (`vigil token new`). Set: every route but
    /// `/healthz` needs one.
    pub tokens: Vec<HttpToken>,
    /// HTTPS instead of HTTP.
    pub tls: Option<HttpTls>,
    /// Connections served at once; at the cap, the longest-idle connection is closed for a new
    /// one (or the new one, when none is idle). Also capped at a quarter of the process's file
    /// descriptor limit, so that cameras and models always find descriptors.
    pub max_connections: u32,
    /// A connection with no request in progress (a new one, or a kept-alive one after its last
    /// response) is closed after this.
    pub idle_timeout: Dur,
    /// Once a request has started to arrive, its headers (and a TLS handshake) must be complete
    /// within this.
    pub header_timeout: Dur,
    /// Largest request body; larger ones get 413 before the body is read.
    pub max_body_bytes: u64,
    /// Longest query string (after `?`); longer ones get 414.
    pub max_query_bytes: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            tls: None,
            max_connections: 256,
            idle_timeout: Dur::secs(15),
            header_timeout: Dur::secs(5),
            max_body_bytes: 64 << 10,
            max_query_bytes: 1024,
        }
    }
}

/// One bearer token of the HTTP API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToken {
    /// Who holds it (logged with each refused or admin request); unique.
    pub name: String,
    pub scope: TokenScope,
    /// Lower-case hex SHA-256 of the token's text (64 characters), or a secret reference
    /// (`${credential:NAME}`, `${file:PATH}`) to a file holding it.
    pub sha256: String,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Read: `/metrics` and every `GET /api/...` that shows state.
    Read,
    /// Admin: read, plus the routes that change state or show the config.
    Admin,
}

impl TokenScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Admin => "admin",
        }
    }
}

/// The certificate chain and private key of the HTTPS listener, PEM files; a relative path is
/// relative to the config file's directory. The key file must not be readable by group or
/// others (mode 0600 or stricter).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Pictures of what the cameras saw: an annotated JPEG of the frame every event fired on,
/// stored with the event in the spool (its retention by count and age applies, plus
/// `max_bytes` of pictures) and served at `GET /api/events/{id}/snapshot.jpg`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Make and keep event snapshots.
    pub enabled: bool,
    /// Width of a picture in pixels (64..=3840); never wider than the camera, aspect kept.
    pub width: u32,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    /// Most bytes of pictures kept in the spool (at least 1 MiB); past it the oldest pictures
    /// go (their events stay, and say so with a 404 for the picture).
    pub max_bytes: u64,
    /// At most one event picture per camera per this interval is published, retained, on
    /// `<prefix>/<device>/snapshot/<camera>` (binary JPEG); `0s`: none.
    pub mqtt_interval: Dur,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            width: 1280,
            quality: 80,
            max_bytes: 256 << 20,
            mqtt_interval: Dur::secs(10),
        }
    }
}

/// The live view (`/live` in a browser, `GET /api/cameras/{name}/mjpeg`): annotated JPEGs of
/// every camera someone watches, made only while someone does.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    pub enabled: bool,
    /// Most pictures a second per camera (0.2..=30); never more than the camera's `fps`.
    pub fps: f32,
    /// Width of a live picture in pixels (64..=3840), never wider than the camera.
    pub width: u32,
    /// JPEG quality, 1..=100.
    pub quality: u8,
    /// Most live viewers at once (WebSocket and MJPEG clients, 1..=1000); more get 503.
    pub max_clients: u32,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fps: 5.0,
            width: 640,
            quality: 70,
            max_clients: 16,
        }
    }
}

/// The annotated RTSP re-stream's server (cameras opt in with `[cameras.restream]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestreamConfig {
    /// `address:port` the RTSP server listens on. Default loopback only: the stream has no
    /// authentication; `0.0.0.0:8554` serves the network.
    pub listen: String,
}

impl Default for RestreamConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8554".into(),
        }
    }
}

/// One camera's live view limits; unset fields take `[live]`'s.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraLive {
    /// Most live pictures a second (0.2..=30).
    pub fps: Option<f32>,
    /// Live picture width (64..=3840).
    pub width: Option<u32>,
}

/// One camera's annotated RTSP re-stream at `rtsp://<listen>/<camera name>`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraRestream {
    /// Picture width (64..=3840), aspect kept, never wider than the camera.
    pub width: u32,
    /// Pictures a second (0.2..=30); never more than the camera's `fps`.
    pub fps: f32,
    /// H.264 bit rate in kbit/s (100..=50000).
    pub bitrate_kbps: u32,
}

impl Default for CameraRestream {
    fn default() -> Self {
        Self {
            width: 1280,
            fps: 10.0,
            bitrate_kbps: 2000,
        }
    }
}

/// Where Vigil keeps its state: the event spool (`events.db`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// State directory; a relative path is relative to the config file's directory. Unset:
    /// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `/var/lib/vigil`.
    pub dir: Option<PathBuf>,
    /// Spool retention: whichever limit is reached first drops the oldest events (unsent ones
    /// dropped this way are counted in telemetry).
    pub max_events: u64,
    pub max_age: Dur,
    pub max_bytes: u64,
    /// Bound of the TensorRT engine cache (`<dir>/engines`), in bytes; the least recently
    /// used engines go first.
    pub engine_cache_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_events: 100_000,
            max_age: Dur::secs(7 * 24 * 3600),
            max_bytes: 64 << 20,
            engine_cache_bytes: 2 << 30,
        }
    }
}

impl StorageConfig {
    /// The state directory this config resolves to.
    pub fn state_dir(&self) -> PathBuf {
        self.dir
            .clone()
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/vigil"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// NanoDet (COCO, 80 classes) as converted from the TF.js graph: see `models/README.md`.
    Nanodet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The best backend this box has.
    #[default]
    Auto,
    /// ONNX Runtime on the CPU.
    Cpu,
    /// ONNX Runtime with the CUDA execution provider (an NVIDIA GPU is required).
    Cuda,
    /// ONNX Runtime's TensorRT execution provider (TensorRT and an NVIDIA GPU are required),
    /// engines cached per box in the state directory; the CUDA provider runs what TensorRT
    /// does not take.
    Tensorrt,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Tensorrt => "tensorrt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX file; a relative path is relative to the config file's directory.
    pub path: PathBuf,
    /// The ONNX file run instead of `path` where the model runs on the CPU (`backend = "cpu"`,
    /// or `auto` on a box without a usable GPU): the same network in a form made for the CPU,
    /// e.g. quantized to int8 (models/nanodet-int8.onnx: about half the CPU per inference).
    /// The GPU backends always run `path`. Relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_path: Option<PathBuf>,
    pub kind: ModelKind,
    #[serde(default)]
    pub backend: BackendKind,
    /// Inference threads; 0 = one per core.
    #[serde(default)]
    pub threads: u32,
    /// The network input's side (long side for a dynamic model) in pixels, or `"native"`: each
    /// frame's (or tile's) own long side rounded up to a multiple of 32, at most
    /// [`InputSize::NATIVE_MAX`].
    #[serde(default)]
    pub input_size: InputSize,
    /// Detection on overlapping tiles of each frame (wide scenes, small people): off by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<TilesConfig>,
    /// A TensorRT INT8 calibration table for this model (relative to the config file): with
    /// it, TensorRT engines are INT8; without, FP16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_table: Option<PathBuf>,
}

/// `input_size`: a side in pixels, or `"native"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSize {
    Pixels(u32),
    Native,
}

impl InputSize {
    /// The largest side `"native"` takes: a bigger frame is scaled down to it.
    pub const NATIVE_MAX: u32 = 2048;

    /// The side in pixels; `None` for `"native"`.
    pub fn pixels(self) -> Option<u32> {
        match self {
            InputSize::Pixels(p) => Some(p),
            InputSize::Native => None,
        }
    }

    /// The input side for a `w`×`h` picture: the configured side, or for `"native"` the long
    /// side rounded up to a multiple of 32 (32..=[`Self::NATIVE_MAX`]).
    pub fn for_picture(self, w: usize, h: usize) -> usize {
        match self {
            InputSize::Pixels(p) => p as usize,
            InputSize::Native => w
                .max(h)
                .div_ceil(32)
                .saturating_mul(32)
                .clamp(32, Self::NATIVE_MAX as usize),
        }
    }
}

impl Default for InputSize {
    fn default() -> Self {
        InputSize::Pixels(416)
    }
}

impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputSize::Pixels(p) => write!(f, "{p}"),
            InputSize::Native => f.write_str("\"native\""),
        }
    }
}

impl<'de> Deserialize<'de> for InputSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = InputSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a side in pixels (e.g. 416) or \"native\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<InputSize, E> {
                u32::try_from(v).map(InputSize::Pixels).map_err(|_| {
                    E::custom(format!(
                        "input size {v} out of range (expected a multiple of 32 from 32 to 2048, or \"native\")"
                    ))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<InputSize, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<InputSize, E> {
                match v {
                    "native" => Ok(InputSize::Native),
                    _ => Err(E::custom(format!(
                        "input size {v:?} (expected a side in pixels such as 416, or \"native\")"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for InputSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            InputSize::Pixels(p) => s.serialize_u32(*p),
            InputSize::Native => s.serialize_str("native"),
        }
    }
}

/// `[models.<name>.tiles]`: each frame is cut into `grid` = [columns, rows] overlapping tiles,
/// each detected at the model's input size, and (with `full_frame`) the whole frame too; the
/// boxes of one object found in several of them are merged into one.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TilesConfig {
    /// Columns and rows, 1..=4 each, at least two tiles.
    pub grid: [u32; 2],
    /// Share of a tile's width (height) that it has in common with its neighbour: 0..=0.5.
    #[serde(default = "default_tile_overlap")]
    pub overlap: f32,
    /// Also detect on the whole frame (objects bigger than a tile).
    #[serde(default = "yes")]
    pub full_frame: bool,
}

fn default_tile_overlap() -> f32 {
    0.2
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique, `[A-Za-z0-9_-]`, 1..=64 characters (used in MQTT topics).
    pub name: String,
    /// `rtsp://[user:pass@]host[:port]/path` or `file:///abs/path`.
    pub url: String,
    /// The camera's main stream, for what people see (live view, re-stream, the `snapshot`
    /// command) while detection runs on `url` (its substream): opened only while someone
    /// looks, closed 30 s after. Same aspect ratio as `url` (the overlay is drawn in relative
    /// coordinates). Event snapshots stay on the frame the event fired on.
    #[serde(default)]
    pub view_url: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Frames analysed per second, picked by timestamp; every frame is decoded, the others are
    /// dropped before preprocessing.
    #[serde(default = "default_fps")]
    pub fps: f32,
    /// Name of a `[models.<name>]` table.
    pub model: String,
    /// Rules fire only for detections scoring at least this. (The tracker also keeps existing
    /// tracks alive with detections down to half of it, ByteTrack's second stage.)
    #[serde(default = "default_min_score")]
    pub min_score: f32,
    /// No frame for this long = the source is stalled and is rebuilt.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: Dur,
    /// RTSP jitter-buffer latency.
    #[serde(default = "default_rtsp_latency")]
    pub rtsp_latency: Dur,
    /// How RTP reaches Vigil from an RTSP camera (`auto`: UDP, TCP where UDP gets nothing).
    #[serde(default)]
    pub rtsp_transport: RtspTransport,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// What to do when the source ends its stream (EOS).
    #[serde(default)]
    pub on_end: OnEnd,
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    #[serde(default)]
    pub lines: Vec<LineConfig>,
    /// Serve this camera annotated over RTSP (opt-in; `[restream]` sets the server).
    #[serde(default)]
    pub restream: Option<CameraRestream>,
    /// This camera's live view limits, over `[live]`'s.
    #[serde(default)]
    pub live: CameraLive,
    /// Motion-gated detection: frames in which nothing moved near the rules skip inference.
    #[serde(default)]
    pub motion: CameraMotion,
}

/// The lower transport an RTSP camera is asked for (`rtsp_transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// UDP first; TCP when the camera refuses UDP or no packet comes within 5 s (GStreamer's
    /// own fallback, rtspsrc's `timeout`).
    #[default]
    Auto,
    /// RTP interleaved in the RTSP connection: through NAT and firewalls, no packet loss, no
    /// UDP sockets (two fewer receiving threads per camera).
    Tcp,
    /// UDP only (unicast or multicast).
    Udp,
}

impl RtspTransport {
    /// The value of GStreamer's `rtspsrc` `protocols` property.
    pub fn gst_protocols(self) -> &'static str {
        match self {
            Self::Auto => "tcp+udp-mcast+udp",
            Self::Tcp => "tcp",
            Self::Udp => "udp+udp-mcast",
        }
    }
}

/// When the motion gate runs (`[cameras.motion] gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MotionGateMode {
    /// On where the camera's frames are analysed on the CPU (where inference is the cost);
    /// off on the GPU path.
    #[default]
    Auto,
    /// On wherever the frames are in host memory (the GPU path's frames never are).
    On,
    Off,
}

/// Motion-gated detection (`vigil_core::analytics::motion`): a frame in which no block of
/// the region around the camera's rules changed by `threshold` luma levels since the last
/// analysed frame skips inference (the tracker does not step: tracks hold their place), at most
/// `max_skip` long.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraMotion {
    pub gate: MotionGateMode,
    /// Change of a block's mean luma (1..=255 levels) that counts as motion.
    pub threshold: u32,
    /// Moved blocks needed (1..=4096; the frame is at most 64×64 blocks).
    pub min_blocks: u32,
    /// Longest time without an analysed frame (0.1 s..=60 s): a dwell or a person standing
    /// still is seen at least this often.
    pub max_skip: Dur,
}

impl Default for CameraMotion {
    fn default() -> Self {
        Self {
            gate: MotionGateMode::Auto,
            threshold: 10,
            min_blocks: 1,
            max_skip: Dur::secs(1),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_fps() -> f32 {
    5.0
}
fn default_min_score() -> f32 {
    0.35
}
fn default_stall_timeout() -> Dur {
    Dur::secs(10)
}
fn default_rtsp_latency() -> Dur {
    Dur::millis(200)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First back-off after a failure; doubled per consecutive failure, ±20% jitter.
    pub initial_backoff: Dur,
    pub max_backoff: Dur,
    /// Consecutive failed attempts that open the circuit.
    pub circuit_after: u32,
    /// How long an open circuit waits before one trial attempt.
    pub circuit_open: Dur,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Dur::secs(1),
            max_backoff: Dur::secs(30),
            circuit_after: 8,
            circuit_open: Dur::secs(120),
        }
    }
}

/// What a camera does when its source ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnEnd {
    /// Treat the end as a fault: rebuild the pipeline after the back-off (a live camera never
    /// ends; a file source loops).
    #[default]
    Restart,
    /// Stop the camera (state `ended`): for analysing a recording once.
    Stop,
}

/// Which point of a tracked box rules test against zones and lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// Bottom centre: where a person stands.
    #[default]
    Bottom,
    Center,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ZoneEventKind {
    Enter,
    Leave,
    Dwell,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Unique among the camera's zones and lines.
    pub name: String,
    /// At least 3 vertices `[x, y]`, normalised to `0..=1`, not self-intersecting.
    pub polygon: Vec<[f32; 2]>,
    /// COCO class names; empty = every class.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Overrides the camera's `min_score` for this rule.
    pub min_score: Option<f32>,
    /// Which events this zone emits; `dwell` needs `dwell`.
    #[serde(default = "default_zone_events")]
    pub events: Vec<ZoneEventKind>,
    /// A track inside the zone for this long fires one `dwell` event.
    pub dwell: Option<Dur>,
    /// After an event for a track, the same rule stays quiet for that track this long.
    #[serde(default)]
    pub cooldown: Dur,
    #[serde(default)]
    pub anchor: Anchor,
    /// Analysed frames a track's anchor must be inside before `enter`, and outside before
    /// `leave` (1 = at once): jitter at the zone's edge fires nothing.
    #[serde(default = "default_inertia")]
    pub inertia: u32,
    /// How far outside the zone a track's anchor must be for the frame to count as outside
    /// (towards `leave`), in widths of the track's box: a person standing on the edge, their
    /// feet a little in and a little out, neither leaves nor enters again. 0 = any point outside.
    #[serde(default = "default_leave_margin")]
    pub leave_margin: f32,
}

/// Half a box width: the eval set scores the same with it as without, and the demo zone's two
/// leave-then-enter flickers at its edge are gone (benches/RESULTS.md, "Zone edges").
pub fn default_leave_margin() -> f32 {
    0.5
}

/// The most `leave_margin` a zone may have (box widths).
pub const MAX_LEAVE_MARGIN: f32 = 5.0;

/// Frigate's default: 3 analysed frames.
pub fn default_inertia() -> u32 {
    3
}

/// The most `inertia` a zone may have.
pub const MAX_INERTIA: u32 = 30;

fn default_zone_events() -> Vec<ZoneEventKind> {
    vec![ZoneEventKind::Enter, ZoneEventKind::Leave]
}

/// Which crossings of a line fire. Walking along the line from `from` to `to`,
/// `in` is a crossing from your left-hand side to your right-hand side, `out` the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LineDirection {
    In,
    Out,
    #[default]
    Both,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    pub name: String,
    /// Segment end points `[x, y]`, normalised to `0..=1`, distinct.
    pub from: [f32; 2],
    pub to: [f32; 2],
    #[serde(default)]
    pub direction: LineDirection,
    #[serde(default)]
    pub classes: Vec<String>,
    pub min_score: Option<f32>,
    #[serde(default)]
    pub cooldown: Dur,
    #[serde(default)]
    pub anchor: Anchor,
    /// Analysed frames the reference point must be seen on the far side (the crossing frame
    /// included) before the crossing fires; going back over the line first fires nothing.
    /// 1..=MAX_INERTIA.
    #[serde(default = "default_confirm")]
    pub confirm: u32,
}

pub fn default_confirm() -> u32 {
    1
}
