//! Semantic checks on a typed config (names, ranges, references, geometry, the box's facts),
//! each problem reported at once as a field path.

use super::diagnostics::*;
use super::http::check_http;
use super::spans::*;
use super::{Config, Dur, LineConfig, ModelConfig, ZoneConfig, ZoneEventKind};
use crate::analytics::{COCO_CLASSES, coco_class_id, geometry};
use crate::facts::{BoxFacts, GpuProbe};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Semantic checks

/// Collects issues; each check method reports at a field path.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) issues: Vec<Issue>,
}

impl Checker {
    pub(super) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Most cameras one config may have.
pub(super) const MAX_CAMERAS: usize = 256;
/// Most zones, and most lines, of one camera.
pub(super) const MAX_RULES: usize = 32;
/// Most vertices of one zone's polygon. Every check on a polygon is then cheap (the
/// self-intersection test compares each pair of edges: at most 32 640 pairs), and so is the
/// point-in-polygon test the rules run per detection.
pub(super) const MAX_VERTICES: usize = 256;
/// Most entries of one zone's or line's `classes` (there are 80 COCO classes).
pub(super) const MAX_CLASSES: usize = 80;

/// The first `max` items of a list that an outsider sizes, and an issue at the first item past
/// `max` if there are more: the checks then run on a bounded part, so their time and the
/// number of errors they report stay bounded whatever the text holds.
pub(super) fn bounded<'a, T>(
    c: &mut Checker,
    path: &str,
    items: &'a [T],
    max: usize,
    what: &str,
) -> &'a [T] {
    if items.len() > max {
        c.err(
            format!("{path}[{max}]"),
            format!("{} {what} (expected at most {max})", items.len()),
        );
        return &items[..max];
    }
    items
}

pub(super) fn check_config(config: &Config, facts: &dyn BoxFacts) -> Vec<Issue> {
    let mut c = Checker::default();
    check_name(&mut c, "device.id", &config.device.id, "device id");
    if let Some(site) = &config.device.site {
        check_name(&mut c, "device.site", site, "site");
    }
    let tags = bounded(
        &mut c,
        "device.tags",
        &config.device.tags,
        super::schema::MAX_TAGS,
        "tags",
    );
    let mut seen = BTreeSet::new();
    for (i, t) in tags.iter().enumerate() {
        check_name(&mut c, &format!("device.tags[{i}]"), t, "tag");
        if !seen.insert(t) {
            c.err(
                format!("device.tags[{i}]"),
                format!("tag {t:?} is listed twice"),
            );
        }
    }
    check_mqtt(&mut c, config);
    check_storage(&mut c, config);
    check_http(&mut c, config);
    check_ota(&mut c, config);
    for (name, model) in &config.models {
        check_model(&mut c, &join_key("models", name), model, facts);
    }
    let cameras = bounded(&mut c, "cameras", &config.cameras, MAX_CAMERAS, "cameras").len();
    check_camera_names(&mut c, &config.cameras[..cameras]);
    for i in 0..cameras {
        check_camera(&mut c, config, i);
    }
    c.issues
}

pub(super) const NAME_RULE: &str = "1 to 64 characters from A-Z, a-z, 0-9, _ and -";

/// Names used in MQTT topics: `[A-Za-z0-9_-]`, 1..=64 characters.
pub(super) fn check_name(c: &mut Checker, path: &str, name: &str, what: &str) {
    let len = name.chars().count();
    if name.is_empty() {
        c.err(path, format!("empty {what} (expected {NAME_RULE})"));
    } else if len > 64 {
        c.err(
            path,
            format!("{what} is {len} characters long (expected {NAME_RULE})"),
        );
    } else if let Some(bad) = name
        .chars()
        .find(|&ch| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
    {
        c.err(
            path,
            format!("{what} {name:?} contains {bad:?} (expected {NAME_RULE})"),
        );
    }
}

pub(super) fn fmt_dur(d: Dur) -> String {
    humantime::format_duration(d.0).to_string()
}

pub(super) fn check_min_duration(c: &mut Checker, path: &str, value: Dur, min: Duration) {
    if value.0 < min {
        let min = humantime::format_duration(min);
        c.err(
            path,
            format!("{} is too short (expected at least {min})", fmt_dur(value)),
        );
    }
}

pub(super) fn check_ota(c: &mut Checker, config: &Config) {
    let o = &config.ota;
    for (i, k) in o.trusted_keys.iter().enumerate() {
        if let Err(e) = crate::keys::parse_public_key(k) {
            c.err(
                format!("ota.trusted_keys[{i}]"),
                format!("{e} (expected a base64 ed25519 public key from `vigil ota keygen`)"),
            );
        }
    }
    check_min_duration(c, "ota.probation", o.probation, Duration::from_secs(1));
    if o.probation_min_inferences == 0 {
        c.err(
            "ota.probation_min_inferences",
            "0 would accept a model that never ran (expected at least 1)",
        );
    }
    check_name(c, "ota.device_class", &o.device_class, "device class");
    check_min_duration(
        c,
        "ota.download_timeout",
        o.download_timeout,
        Duration::from_secs(10),
    );
    if o.max_bundle_bytes < 1024 {
        c.err(
            "ota.max_bundle_bytes",
            format!(
                "{} bytes is too small (expected at least 1024)",
                o.max_bundle_bytes
            ),
        );
    }
}

pub(super) fn check_storage(c: &mut Checker, config: &Config) {
    let s = &config.storage;
    if s.max_events == 0 {
        c.err("storage.max_events", "0 events (expected at least 1)");
    }
    if s.max_bytes < 4096 {
        c.err(
            "storage.max_bytes",
            format!(
                "{} bytes is too small (expected at least 4096)",
                s.max_bytes
            ),
        );
    }
    check_min_duration(c, "storage.max_age", s.max_age, Duration::from_secs(60));
    let p = &config.snapshots;
    if !(64..=3840).contains(&p.width) {
        c.err(
            "snapshots.width",
            format!("{} pixels (expected 64..=3840)", p.width),
        );
    }
    if !(1..=100).contains(&p.quality) {
        c.err(
            "snapshots.quality",
            format!("{} (expected 1..=100)", p.quality),
        );
    }
    if config
        .restream
        .listen
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        c.err(
            "restream.listen",
            format!(
                "{:?} is not an address (expected IP:PORT, e.g. \"0.0.0.0:8554\")",
                config.restream.listen
            ),
        );
    }
    let dp = &config.homeassistant.discovery_prefix;
    if dp.is_empty()
        || dp.len() > 64
        || dp.starts_with('/')
        || dp.ends_with('/')
        || dp.contains(['+', '#', '\0'])
        || dp.split('/').any(str::is_empty)
    {
        c.err(
            "homeassistant.discovery_prefix",
            format!(
                "{dp:?} (expected a topic prefix of up to 64 characters without wildcards or empty levels, e.g. \"homeassistant\")"
            ),
        );
    }
    let l = &config.live;
    if !(0.2..=30.0).contains(&l.fps) {
        c.err("live.fps", format!("{} (expected 0.2..=30)", l.fps));
    }
    if !(64..=3840).contains(&l.width) {
        c.err(
            "live.width",
            format!("{} pixels (expected 64..=3840)", l.width),
        );
    }
    if !(1..=100).contains(&l.quality) {
        c.err("live.quality", format!("{} (expected 1..=100)", l.quality));
    }
    if !(1..=1000).contains(&l.max_clients) {
        c.err(
            "live.max_clients",
            format!("{} (expected 1..=1000)", l.max_clients),
        );
    }
    if p.max_bytes < 1 << 20 {
        c.err(
            "snapshots.max_bytes",
            format!(
                "{} bytes is too small (expected at least 1048576)",
                p.max_bytes
            ),
        );
    }
}

pub(super) fn check_mqtt(c: &mut Checker, config: &Config) {
    let mqtt = &config.mqtt;
    if mqtt.host.trim().is_empty() {
        c.err(
            "mqtt.host",
            "empty host (expected a broker host name or IP address)",
        );
    }
    if mqtt.port == 0 {
        c.err(
            "mqtt.port",
            "port 0 is not a valid port (expected 1 to 65535)",
        );
    }
    if mqtt.topic_prefix.is_empty()
        || mqtt.topic_prefix.starts_with('/')
        || mqtt.topic_prefix.ends_with('/')
    {
        c.err(
            "mqtt.topic_prefix",
            format!(
                "topic prefix {:?} is empty or starts or ends with '/' (expected e.g. \"vigil\")",
                mqtt.topic_prefix
            ),
        );
    }
    if mqtt.topic_prefix.contains(['+', '#']) {
        c.err(
            "mqtt.topic_prefix",
            format!(
                "topic prefix {:?} contains an MQTT wildcard (expected no '+' or '#')",
                mqtt.topic_prefix
            ),
        );
    }
    check_min_duration(
        c,
        "mqtt.keep_alive",
        mqtt.keep_alive,
        Duration::from_secs(5),
    );
    check_min_duration(
        c,
        "mqtt.telemetry_interval",
        mqtt.telemetry_interval,
        Duration::from_secs(1),
    );
    check_mqtt_tls(c, mqtt);
}

/// The TLS fields' combinations (the files themselves are read by `load`).
fn check_mqtt_tls(c: &mut Checker, mqtt: &super::MqttConfig) {
    let tls = mqtt.ca_file.is_some();
    match (&mqtt.cert_file, &mqtt.key_file) {
        (Some(_), None) => c.err(
            "mqtt.cert_file",
            "cert_file is set without key_file (expected both, for mutual TLS, or neither)",
        ),
        (None, Some(_)) => c.err(
            "mqtt.key_file",
            "key_file is set without cert_file (expected both, for mutual TLS, or neither)",
        ),
        (Some(_), Some(_)) if !tls => c.err(
            "mqtt.cert_file",
            "a client certificate without ca_file (expected ca_file too: TLS is on only when the broker can be verified)",
        ),
        _ => {}
    }
    if let Some(name) = &mqtt.server_name {
        if !tls {
            c.err(
                "mqtt.server_name",
                "server_name without ca_file (expected ca_file too: the name is checked only over TLS)",
            );
        } else if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            c.err(
                "mqtt.server_name",
                format!("{name:?} is not a DNS name or IP address (expected the name in the broker's certificate, e.g. \"broker.example.net\")"),
            );
        }
    }
    for (field, path) in [
        ("mqtt.ca_file", &mqtt.ca_file),
        ("mqtt.cert_file", &mqtt.cert_file),
        ("mqtt.key_file", &mqtt.key_file),
    ] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            c.err(
                field,
                "empty path (expected a PEM file, or no key for none)",
            );
        }
    }
}

/// What a config allows but is probably not meant, as issues located like errors.
pub(super) fn warn_config(config: &Config) -> Vec<Issue> {
    let mut c = Checker::default();
    for (path, message) in config.http.warnings() {
        c.err(path, message);
    }
    let mqtt = &config.mqtt;
    if mqtt.ca_file.is_none() {
        let password = if mqtt.password.is_some() {
            ", the password included,"
        } else {
            ""
        };
        c.err(
            "mqtt",
            format!("MQTT over plain TCP: the broker is not verified and everything{password} crosses the network in clear text (expected ca_file, and cert_file and key_file for mutual TLS; see docs/mqtt.md)"),
        );
    }
    c.issues
}

pub(super) fn check_model(c: &mut Checker, path: &str, model: &ModelConfig, facts: &dyn BoxFacts) {
    if model.path.as_os_str().is_empty() {
        c.err(
            format!("{path}.path"),
            "empty model path (expected the path of an ONNX file)",
        );
    }
    if model.backend == crate::config::BackendKind::Cuda
        && let GpuProbe::Unavailable(why) = facts.gpu()
    {
        c.err(
            format!("{path}.backend"),
            format!(
                "backend \"cuda\" needs an NVIDIA GPU, and this box has none usable: {why} (expected \"cpu\" or \"auto\")"
            ),
        );
    }
    if model.backend == crate::config::BackendKind::Tensorrt {
        if let GpuProbe::Unavailable(why) = facts.gpu() {
            c.err(
                format!("{path}.backend"),
                format!(
                    "backend \"tensorrt\" needs an NVIDIA GPU, and this box has none usable: {why} (expected \"cpu\" or \"auto\")"
                ),
            );
        } else if let Err(why) = facts.tensorrt() {
            c.err(
                format!("{path}.backend"),
                format!(
                    "backend \"tensorrt\" needs TensorRT, and this box has none usable: {why} (expected \"cuda\" or \"auto\")"
                ),
            );
        }
    }
    if model.threads > 256 {
        c.err(
            format!("{path}.threads"),
            format!(
                "{} threads is too many (expected 0 for one per core, or 1 to 256)",
                model.threads
            ),
        );
    }
    if let Some(size) = model.input_size.pixels() {
        if !(32..=2048).contains(&size) {
            c.err(
                format!("{path}.input_size"),
                format!(
                    "input size {size} out of range (expected a multiple of 32 from 32 to 2048, or \"native\")"
                ),
            );
        } else if !size.is_multiple_of(32) {
            c.err(
                format!("{path}.input_size"),
                format!("input size {size} is not a multiple of 32 (expected e.g. 320, 416)"),
            );
        }
    }
    if let Some(t) = &model.tiles {
        let [cols, rows] = t.grid;
        if !(1..=4).contains(&cols) || !(1..=4).contains(&rows) || cols * rows < 2 {
            c.err(
                format!("{path}.tiles.grid"),
                format!(
                    "grid [{cols}, {rows}] (expected [columns, rows], 1 to 4 each and at least two tiles, e.g. [2, 1])"
                ),
            );
        }
        if !(0.0..=0.5).contains(&t.overlap) {
            c.err(
                format!("{path}.tiles.overlap"),
                format!(
                    "overlap {} (expected the share of a tile its neighbour also covers, 0 to 0.5)",
                    t.overlap
                ),
            );
        }
    }
}

pub(super) fn check_camera_names(c: &mut Checker, cameras: &[super::CameraConfig]) {
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    for (i, camera) in cameras.iter().enumerate() {
        let path = format!("cameras[{i}].name");
        check_name(c, &path, &camera.name, "camera name");
        if let Some(first) = first_use.get(camera.name.as_str()) {
            c.err(
                path,
                format!(
                    "duplicate camera name {:?} (expected unique camera names; first used by cameras[{first}])",
                    camera.name
                ),
            );
        } else {
            first_use.insert(&camera.name, i);
        }
    }
}

pub(super) fn check_camera(c: &mut Checker, config: &Config, i: usize) {
    let camera = &config.cameras[i];
    let cp = format!("cameras[{i}]");
    if let Some(problem) = url_problem(&camera.url) {
        c.err(format!("{cp}.url"), problem);
    }
    if let Some(problem) = camera.view_url.as_deref().and_then(url_problem) {
        c.err(format!("{cp}.view_url"), problem);
    }
    if !config.models.contains_key(&camera.model) {
        let known: Vec<&str> = config.models.keys().map(String::as_str).collect();
        let expected = if known.is_empty() {
            format!("a [models.{}] table; none is defined", camera.model)
        } else {
            format!("one of the [models] tables: {}", known.join(", "))
        };
        c.err(
            format!("{cp}.model"),
            format!("unknown model {:?} (expected {expected})", camera.model),
        );
    }
    if !(camera.fps > 0.0 && camera.fps <= 120.0) {
        c.err(
            format!("{cp}.fps"),
            format!(
                "fps {} out of range (expected more than 0, at most 120)",
                camera.fps
            ),
        );
    }
    let m = &camera.motion;
    if !(1..=255).contains(&m.threshold) {
        c.err(
            format!("{cp}.motion.threshold"),
            format!("{} luma levels (expected 1..=255)", m.threshold),
        );
    }
    if !(1..=4096).contains(&m.min_blocks) {
        c.err(
            format!("{cp}.motion.min_blocks"),
            format!("{} blocks (expected 1..=4096)", m.min_blocks),
        );
    }
    if !(0.1..=60.0).contains(&m.max_skip.as_secs_f64()) {
        c.err(
            format!("{cp}.motion.max_skip"),
            format!("{} s (expected 0.1 s to 60 s)", m.max_skip.as_secs_f64()),
        );
    }
    if let Some(f) = camera.live.fps
        && !(0.2..=30.0).contains(&f)
    {
        c.err(format!("{cp}.live.fps"), format!("{f} (expected 0.2..=30)"));
    }
    if let Some(w) = camera.live.width
        && !(64..=3840).contains(&w)
    {
        c.err(
            format!("{cp}.live.width"),
            format!("{w} pixels (expected 64..=3840)"),
        );
    }
    if let Some(r) = &camera.restream {
        if !(64..=3840).contains(&r.width) {
            c.err(
                format!("{cp}.restream.width"),
                format!("{} pixels (expected 64..=3840)", r.width),
            );
        }
        if !(0.2..=30.0).contains(&r.fps) {
            c.err(
                format!("{cp}.restream.fps"),
                format!("{} (expected 0.2..=30)", r.fps),
            );
        }
        if !(100..=50_000).contains(&r.bitrate_kbps) {
            c.err(
                format!("{cp}.restream.bitrate_kbps"),
                format!("{} (expected 100..=50000 kbit/s)", r.bitrate_kbps),
            );
        }
    }
    check_score(c, &format!("{cp}.min_score"), camera.min_score);
    check_min_duration(
        c,
        &format!("{cp}.stall_timeout"),
        camera.stall_timeout,
        Duration::from_secs(1),
    );
    check_reconnect(c, &cp, config, i);
    let zones = bounded(c, &format!("{cp}.zones"), &camera.zones, MAX_RULES, "zones");
    let lines = bounded(c, &format!("{cp}.lines"), &camera.lines, MAX_RULES, "lines");
    check_rule_names(c, &cp, zones, lines);
    for (j, zone) in zones.iter().enumerate() {
        check_zone(c, &format!("{cp}.zones[{j}]"), zone);
    }
    for (j, line) in lines.iter().enumerate() {
        check_line(c, &format!("{cp}.lines[{j}]"), line);
    }
}

/// Why a camera URL is unusable, if it is. Never quotes the URL (it may carry a password).
pub(super) fn url_problem(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let expected = "expected rtsp://host/path, rtsps://host/path or file:///absolute/path";
    if let Some(rest) = lower
        .strip_prefix("rtsp://")
        .or_else(|| lower.strip_prefix("rtsps://"))
    {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return host
            .is_empty()
            .then(|| format!("RTSP URL without a host ({expected})"));
    }
    if lower.starts_with("file://") {
        let rest = url.get("file://".len()..).unwrap_or("");
        return (!rest.starts_with('/') || rest.len() < 2).then(|| {
            "file:// URL without an absolute path (expected file:///absolute/path)".to_owned()
        });
    }
    let scheme = match url.split_once("://") {
        // GStreamer's own spellings of RTSP over a given transport.
        Some((scheme, _))
            if ["rtspt", "rtspu", "rtsph"].contains(&scheme.to_ascii_lowercase().as_str()) =>
        {
            return Some(format!(
                "unsupported URL scheme {scheme:?} (write rtsp://host/path and set rtsp_transport = \"tcp\" or \"udp\")"
            ));
        }
        Some((scheme, _)) => format!("unsupported URL scheme {scheme:?}"),
        None => "URL without a scheme".to_owned(),
    };
    Some(format!("{scheme} ({expected})"))
}

pub(super) fn check_score(c: &mut Checker, path: &str, score: f32) {
    if !(0.0..=1.0).contains(&score) {
        c.err(
            path,
            format!("score {score} out of range (expected 0 to 1)"),
        );
    }
}

pub(super) fn check_reconnect(c: &mut Checker, cp: &str, config: &Config, i: usize) {
    let r = &config.cameras[i].reconnect;
    let rp = format!("{cp}.reconnect");
    if r.initial_backoff.0.is_zero() {
        c.err(
            format!("{rp}.initial_backoff"),
            "initial back-off of 0 (expected more than 0, e.g. \"1s\")",
        );
    }
    if r.max_backoff < r.initial_backoff {
        c.err(
            format!("{rp}.max_backoff"),
            format!(
                "max_backoff {} is shorter than initial_backoff {} (expected at least initial_backoff)",
                fmt_dur(r.max_backoff),
                fmt_dur(r.initial_backoff)
            ),
        );
    }
    check_min_duration(
        c,
        &format!("{rp}.circuit_open"),
        r.circuit_open,
        Duration::from_secs(1),
    );
    if r.circuit_after == 0 {
        c.err(
            format!("{rp}.circuit_after"),
            "circuit_after 0 (expected at least 1 failed attempt)",
        );
    }
}

/// Zone and line names: non-empty, unique among the camera's zones and lines together.
pub(super) fn check_rule_names(
    c: &mut Checker,
    cp: &str,
    zones: &[ZoneConfig],
    lines: &[LineConfig],
) {
    let zones = zones
        .iter()
        .enumerate()
        .map(|(j, z)| (format!("zones[{j}]"), &z.name));
    let lines = lines
        .iter()
        .enumerate()
        .map(|(j, l)| (format!("lines[{j}]"), &l.name));
    let mut first_use: HashMap<&str, String> = HashMap::new();
    for (rule, name) in zones.chain(lines) {
        let path = format!("{cp}.{rule}.name");
        if name.trim().is_empty() {
            c.err(
                path,
                "empty rule name (expected a name for this zone or line)",
            );
        } else if let Some(first) = first_use.get(name.as_str()) {
            c.err(
                path,
                format!(
                    "duplicate rule name {name:?} (expected names unique among this camera's zones and lines; first used by {first})"
                ),
            );
        } else {
            first_use.insert(name, rule);
        }
    }
}

pub(super) fn in_unit(v: f32) -> bool {
    (0.0..=1.0).contains(&v)
}

pub(super) fn point_in_frame(p: [f32; 2]) -> bool {
    in_unit(p[0]) && in_unit(p[1])
}

pub(super) fn fmt_point(p: [f32; 2]) -> String {
    format!("[{}, {}]", p[0], p[1])
}

pub(super) fn check_zone(c: &mut Checker, zp: &str, zone: &ZoneConfig) {
    check_polygon(c, &format!("{zp}.polygon"), &zone.polygon);
    check_classes(c, &format!("{zp}.classes"), &zone.classes);
    if let Some(score) = zone.min_score {
        check_score(c, &format!("{zp}.min_score"), score);
    }
    check_zone_events(c, zp, zone);
}

pub(super) fn check_polygon(c: &mut Checker, pp: &str, polygon: &[[f32; 2]]) {
    if polygon.len() > MAX_VERTICES {
        c.err(
            format!("{pp}[{MAX_VERTICES}]"),
            format!(
                "polygon has {} vertices (expected at most {MAX_VERTICES})",
                polygon.len()
            ),
        );
        return;
    }
    if polygon.len() < 3 {
        c.err(
            pp,
            format!(
                "polygon has {} vertices (expected at least 3)",
                polygon.len()
            ),
        );
        return;
    }
    let mut in_frame = true;
    for (k, &p) in polygon.iter().enumerate() {
        if !point_in_frame(p) {
            in_frame = false;
            c.err(
                format!("{pp}[{k}]"),
                format!(
                    "vertex {} is outside the frame (expected coordinates from 0 to 1)",
                    fmt_point(p)
                ),
            );
        }
    }
    if !in_frame {
        return;
    }
    if let Some((first, k)) = repeated_vertex(polygon) {
        c.err(
            format!("{pp}[{k}]"),
            format!("vertex repeats polygon[{first}] (expected distinct vertices)"),
        );
        return;
    }
    match geometry::polygon_self_intersection(polygon) {
        Some((0, 0)) => c.err(
            pp,
            "polygon has no area (expected a simple polygon, vertices in order)",
        ),
        Some((a, b)) => c.err(
            pp,
            format!(
                "polygon edges {a} and {b} cross (expected a simple polygon, vertices in order)"
            ),
        ),
        None => {}
    }
}

/// The first pair `(i, j)`, `i < j`, of equal vertices.
pub(super) fn repeated_vertex(polygon: &[[f32; 2]]) -> Option<(usize, usize)> {
    (0..polygon.len()).find_map(|j| (0..j).find(|&i| polygon[i] == polygon[j]).map(|i| (i, j)))
}

pub(super) fn check_classes(c: &mut Checker, path: &str, classes: &[String]) {
    let classes = bounded(c, path, classes, MAX_CLASSES, "classes");
    for (k, class) in classes.iter().enumerate() {
        if coco_class_id(class).is_none() {
            let hint = closest_class(class)
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            c.err(
                format!("{path}[{k}]"),
                format!(
                    "unknown class {class:?} (expected a COCO class name such as \"person\", \"car\"{hint})"
                ),
            );
        }
    }
}

/// The COCO class name within edit distance 2 of `name`, if any.
pub(super) fn closest_class(name: &str) -> Option<&'static str> {
    let name = name.to_lowercase();
    COCO_CLASSES
        .iter()
        .map(|&class| (edit_distance(&name, class), class))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, class)| class)
}

/// Levenshtein distance, in characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

pub(super) fn event_name(kind: ZoneEventKind) -> &'static str {
    match kind {
        ZoneEventKind::Enter => "enter",
        ZoneEventKind::Leave => "leave",
        ZoneEventKind::Dwell => "dwell",
    }
}

pub(super) fn check_zone_events(c: &mut Checker, zp: &str, zone: &ZoneConfig) {
    let events_path = format!("{zp}.events");
    if zone.events.is_empty() {
        c.err(
            &events_path,
            "no events (expected at least one of \"enter\", \"leave\", \"dwell\")",
        );
    }
    let mut seen = BTreeSet::new();
    for (k, &kind) in zone.events.iter().enumerate() {
        if !seen.insert(event_name(kind)) {
            c.err(
                format!("{events_path}[{k}]"),
                format!(
                    "duplicate event \"{}\" (expected each event at most once)",
                    event_name(kind)
                ),
            );
        }
    }
    if !(1..=super::schema::MAX_INERTIA).contains(&zone.inertia) {
        c.err(
            format!("{zp}.inertia"),
            format!(
                "inertia of {} (expected 1 to {} analysed frames)",
                zone.inertia,
                super::schema::MAX_INERTIA
            ),
        );
    }
    if !(zone.leave_margin.is_finite()
        && (0.0..=super::schema::MAX_LEAVE_MARGIN).contains(&zone.leave_margin))
    {
        c.err(
            format!("{zp}.leave_margin"),
            format!(
                "leave_margin of {} (expected 0 to {} widths of the track's box)",
                zone.leave_margin,
                super::schema::MAX_LEAVE_MARGIN
            ),
        );
    }
    let dwell_event = zone.events.iter().position(|&e| e == ZoneEventKind::Dwell);
    match (dwell_event, zone.dwell) {
        (Some(k), None) => c.err(
            format!("{events_path}[{k}]"),
            "\"dwell\" event without a dwell duration (expected e.g. dwell = \"30s\" in this zone)",
        ),
        (_, Some(d)) if d.0.is_zero() => c.err(
            format!("{zp}.dwell"),
            "dwell of 0 (expected more than 0, e.g. \"30s\")",
        ),
        (None, Some(_)) => c.err(
            format!("{zp}.dwell"),
            "dwell is set but events has no \"dwell\" (expected \"dwell\" in events, or no dwell)",
        ),
        _ => {}
    }
}

pub(super) fn check_line(c: &mut Checker, lp: &str, line: &LineConfig) {
    let mut in_frame = true;
    for (end, p) in [("from", line.from), ("to", line.to)] {
        if !point_in_frame(p) {
            in_frame = false;
            c.err(
                format!("{lp}.{end}"),
                format!(
                    "point {} is outside the frame (expected coordinates from 0 to 1)",
                    fmt_point(p)
                ),
            );
        }
    }
    let length = (line.to[0] - line.from[0]).hypot(line.to[1] - line.from[1]);
    if in_frame && length <= 1e-3 {
        c.err(
            format!("{lp}.to"),
            format!(
                "line from {} to {} has no length (expected two points at least 0.001 apart)",
                fmt_point(line.from),
                fmt_point(line.to)
            ),
        );
    }
    if !(1..=super::schema::MAX_INERTIA).contains(&line.confirm) {
        c.err(
            format!("{lp}.confirm"),
            format!(
                "confirm of {} (expected 1 to {} analysed frames)",
                line.confirm,
                super::schema::MAX_INERTIA
            ),
        );
    }
    check_classes(c, &format!("{lp}.classes"), &line.classes);
    if let Some(score) = line.min_score {
        check_score(c, &format!("{lp}.min_score"), score);
    }
}

/// Points are `[f32; 2]`, and serde ignores extra array elements: check the text's arrays.
pub(super) fn check_point_arity(config: &Config, index: &SpanIndex) -> Vec<Issue> {
    let mut c = Checker::default();
    let mut check = |path: String| {
        if let Some(n) = index.array_len(&path).filter(|&n| n != 2) {
            c.err(
                path,
                format!("point with {n} coordinates (expected [x, y])"),
            );
        }
    };
    // Within the bounds the other checks hold lists to (past them, the count is the error).
    for (i, camera) in config.cameras.iter().enumerate().take(MAX_CAMERAS) {
        for (j, zone) in camera.zones.iter().enumerate().take(MAX_RULES) {
            for k in 0..zone.polygon.len().min(MAX_VERTICES) {
                check(format!("cameras[{i}].zones[{j}].polygon[{k}]"));
            }
        }
        for j in 0..camera.lines.len().min(MAX_RULES) {
            check(format!("cameras[{i}].lines[{j}].from"));
            check(format!("cameras[{i}].lines[{j}].to"));
        }
    }
    c.issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::KnownFacts;
    use std::path::Path;

    const HEAD: &str =
        "[device]\nid = \"box\"\n\n[models.m]\npath = \"m.onnx\"\nkind = \"nanodet\"\n";

    fn camera(i: usize, rules: &str) -> String {
        format!("\n[[cameras]]\nname = \"c{i}\"\nurl = \"rtsp://h/{i}\"\nmodel = \"m\"\n{rules}")
    }

    /// A convex polygon of `n` distinct vertices on a circle.
    fn circle(n: usize) -> String {
        let pts: Vec<String> = (0..n)
            .map(|k| {
                let a = k as f64 / n as f64 * std::f64::consts::TAU;
                format!("[{:.6}, {:.6}]", 0.5 + 0.4 * a.cos(), 0.5 + 0.4 * a.sin())
            })
            .collect();
        format!("[{}]", pts.join(", "))
    }

    fn zone(name: &str, polygon: &str, classes: &str) -> String {
        format!(
            "\n[[cameras.zones]]\nname = \"{name}\"\npolygon = {polygon}\nclasses = {classes}\nevents = [\"enter\"]\n"
        )
    }

    /// `backend = "tensorrt"`: refused with the probe's reason where TensorRT is missing
    /// (the GPU there), accepted where the facts say it is usable.
    #[test]
    fn tensorrt_needs_tensorrt_and_says_why_not() {
        let text = format!("{HEAD}backend = \"tensorrt\"\n");
        let gpu = crate::facts::GpuProbe::Available {
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            memory_mib: 143_000,
        };
        let without = KnownFacts {
            gpu: gpu.clone(),
            onnxruntime_version: None,
            tensorrt: Err("no libnvinfer: libnvinfer.so.10: cannot open shared object file".into()),
        };
        let e = super::super::parse(&text, Path::new("t.toml"), &without).unwrap_err();
        let e = &e.errors()[0];
        assert_eq!(e.path, "models.m.backend");
        assert!(
            e.message.contains("needs TensorRT") && e.message.contains("libnvinfer.so.10"),
            "{}",
            e.message
        );
        let with = KnownFacts {
            tensorrt: Ok("10.3.0".into()),
            ..without
        };
        assert!(super::super::parse(&text, Path::new("t.toml"), &with).is_ok());
    }

    #[test]
    fn native_input_size_and_tiles_are_checked() {
        let ok = format!(
            "{HEAD}input_size = \"native\"\n[models.m.tiles]\ngrid = [3, 2]\noverlap = 0.25\n"
        );
        let cfg = super::super::parse(&ok, Path::new("t.toml"), &KnownFacts::cpu_only()).unwrap();
        let m = &cfg.models["m"];
        assert_eq!(m.input_size, crate::config::InputSize::Native);
        let t = m.tiles.expect("tiles");
        assert_eq!((t.grid, t.overlap, t.full_frame), ([3, 2], 0.25, true));
        assert_eq!(m.input_size.for_picture(1920, 1080), 1920);
        assert_eq!(m.input_size.for_picture(1000, 700), 1024);
        assert_eq!(m.input_size.for_picture(3840, 2160), 2048);
        assert_eq!(
            crate::config::InputSize::Pixels(416).for_picture(3840, 2160),
            416
        );
        for (extra, path, says) in [
            (
                "input_size = \"big\"\n",
                "models.m.input_size",
                "or \"native\"",
            ),
            ("input_size = -5\n", "models.m.input_size", "out of range"),
            (
                "input_size = 400\n",
                "models.m.input_size",
                "not a multiple of 32",
            ),
            (
                "[models.m.tiles]\ngrid = [1, 1]\n",
                "models.m.tiles.grid",
                "at least two tiles",
            ),
            (
                "[models.m.tiles]\ngrid = [5, 1]\n",
                "models.m.tiles.grid",
                "1 to 4 each",
            ),
            (
                "[models.m.tiles]\ngrid = [2, 1]\noverlap = 0.7\n",
                "models.m.tiles.overlap",
                "0 to 0.5",
            ),
        ] {
            let errs = errors(&format!("{HEAD}{extra}"));
            assert!(
                errs.iter().any(|(p, m)| p == path && m.contains(says)),
                "{extra}: {errs:?}"
            );
        }
        // Both run on the GPU path too: backend "cuda" with either is accepted.
        let gpu = KnownFacts {
            gpu: crate::facts::GpuProbe::Available {
                name: "NVIDIA H200".into(),
                compute_capability: (9, 0),
                memory_mib: 143_000,
            },
            onnxruntime_version: None,
            tensorrt: Err("none".into()),
        };
        for extra in [
            "input_size = \"native\"\n",
            "[models.m.tiles]\ngrid = [2, 1]\n",
        ] {
            let text = format!("{HEAD}backend = \"cuda\"\n{extra}");
            assert!(super::super::parse(&text, Path::new("t.toml"), &gpu).is_ok());
        }
    }

    fn errors(text: &str) -> Vec<(String, String)> {
        match super::super::parse(text, Path::new("t.toml"), &KnownFacts::cpu_only()) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors()
                .iter()
                .map(|e| (e.path.clone(), e.message.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_zone_of_45000_vertices_is_one_located_error_found_at_once() {
        let text = format!(
            "{HEAD}{}",
            camera(0, &zone("z", &circle(45_000), "[\"person\"]"))
        );
        assert!(text.len() > 990_000, "{} bytes", text.len());
        let t0 = std::time::Instant::now();
        let e = errors(&text);
        let took = t0.elapsed();
        assert_eq!(
            e,
            vec![(
                "cameras[0].zones[0].polygon[256]".to_string(),
                "polygon has 45000 vertices (expected at most 256)".to_string()
            )]
        );
        // Quadratic checks took 15 s on this text; a linear pass takes well under one.
        assert!(took.as_secs_f64() < 3.0, "{took:?}");
    }

    #[test]
    fn the_largest_allowed_polygon_is_valid() {
        let text = format!(
            "{HEAD}{}",
            camera(0, &zone("z", &circle(MAX_VERTICES), "[\"person\"]"))
        );
        assert_eq!(errors(&text), vec![]);
    }

    #[test]
    fn cameras_zones_lines_and_classes_are_bounded() {
        let many_cameras: String = (0..=MAX_CAMERAS).map(|i| camera(i, "")).collect();
        let e = errors(&format!("{HEAD}{many_cameras}"));
        assert_eq!(
            e,
            vec![(
                "cameras[256]".to_string(),
                "257 cameras (expected at most 256)".to_string()
            )]
        );
        let square = "[[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]";
        let zones: String = (0..=MAX_RULES)
            .map(|j| zone(&format!("z{j}"), square, "[]"))
            .collect();
        let lines: String = (0..=MAX_RULES)
            .map(|j| {
                format!(
                    "\n[[cameras.lines]]\nname = \"l{j}\"\nfrom = [0.1, 0.5]\nto = [0.9, 0.5]\n"
                )
            })
            .collect();
        let e = errors(&format!("{HEAD}{}", camera(0, &format!("{zones}{lines}"))));
        assert_eq!(
            e,
            vec![
                (
                    "cameras[0].zones[32]".to_string(),
                    "33 zones (expected at most 32)".to_string()
                ),
                (
                    "cameras[0].lines[32]".to_string(),
                    "33 lines (expected at most 32)".to_string()
                ),
            ]
        );
        let classes = format!("[{}]", vec!["\"person\""; MAX_CLASSES + 1].join(", "));
        let e = errors(&format!(
            "{HEAD}{}",
            camera(0, &zone("z", square, &classes))
        ));
        assert_eq!(
            e,
            vec![(
                "cameras[0].zones[0].classes[80]".to_string(),
                "81 classes (expected at most 80)".to_string()
            )]
        );
    }
}
