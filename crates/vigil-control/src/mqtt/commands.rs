//! Commands on `<prefix>/<device>/cmd/<name>`: a JSON object with a `request_id`; the reply goes
//! to `…/cmd/<name>/reply` as `{"request_id", "status": "ok" | "error", "message", ...}`.
//! Unknown commands and malformed payloads get an error reply naming what was expected; nothing
//! a command says can crash the link. Only this device's topic is subscribed.
//!
//! Commands that change the running config, the plan or the OTA set are not carried out here:
//! they become [`ControlKind`] requests to the supervisor through the [`crate::control`] API,
//! and their reply is published when the supervisor answers.

use crate::control::{ControlKind, ControlReply, ControlRequest, ControlSender, REPLY_TIMEOUT};
use crate::spool::{Spool, SpooledEvent};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Most events one `events/replay` republishes; ask again from the next seq for more.
pub const MAX_REPLAY: usize = 1000;

/// What a command handler may use.
pub struct Context<'a> {
    pub spool: &'a Spool,
}

/// A command's effect: its reply, and events to publish again (replays). A command the
/// supervisor must carry out is `deferred`: its reply comes later, and nothing waits for it.
pub struct Outcome {
    pub reply: Vec<u8>,
    pub republish: Vec<SpooledEvent>,
    pub deferred: Option<Deferred>,
}

/// A reply still to come (from the supervisor, or a camera's next picture).
pub struct Deferred(std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>);

impl Deferred {
    /// Waits (asynchronously, bounded in time) for the answer and returns the reply payload.
    pub async fn reply(self) -> Vec<u8> {
        self.0.await
    }

    /// The supervisor's answer to `rx` (at most [`REPLY_TIMEOUT`]).
    fn control(id: String, rx: tokio::sync::oneshot::Receiver<ControlReply>) -> Self {
        Self(Box::pin(async move {
            let id = Some(id.as_str());
            match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
                Ok(Ok(Ok(data))) => {
                    let msg = data
                        .get("summary")
                        .and_then(Value::as_str)
                        .unwrap_or("done")
                        .to_string();
                    reply(id, true, msg, data)
                }
                Ok(Ok(Err((msg, data)))) => reply(id, false, msg, data),
                _ => reply(
                    id,
                    false,
                    "no answer from the supervisor".into(),
                    Value::Null,
                ),
            }
        }))
    }
}

/// How long `snapshot` waits for the camera's next analysed frame.
pub const SNAPSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A snapshot of the service for `cmd/status` (the supervisor's telemetry).
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

pub struct Handler {
    status: StatusFn,
    control: Option<ControlSender>,
    cameras: Option<crate::plan::SharedViews>,
}

#[derive(Serialize)]
struct Reply<'a> {
    request_id: Option<&'a str>,
    status: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    data: Value,
}

fn reply(request_id: Option<&str>, ok: bool, message: String, data: Value) -> Vec<u8> {
    serde_json::to_vec(&Reply {
        request_id,
        status: if ok { "ok" } else { "error" },
        message,
        data,
    })
    .unwrap_or_default()
}

/// A required string field of a request, or the error message naming what was expected.
fn string_field(request: &Value, key: &str, example: &str) -> Result<String, String> {
    request.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
        format!("{key} missing or not a string (expected {{\"request_id\": \"…\", \"{key}\": \"{example}\"}})")
    })
}

const KNOWN: &str = "ping, status, events/replay, reload, config/get, config/set, camera/restart, snapshot, ota/apply, ota/rollback, ota/cancel, system/update";

/// The `url` (http or https) and `sha256` (64 hex digits, lower-cased) of a request that names
/// a file to download; `example` is a URL to show.
fn url_and_sha256(request: &Value, example: &str) -> Result<(String, String), String> {
    let url = string_field(request, "url", example)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "url {} is not http:// or https:// (expected e.g. \"{example}\")",
            vigil_ota::text::quote(&url)
        ));
    }
    let sha256 =
        string_field(request, "sha256", "<64 hex digits of the file>")?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "sha256 {} is not 64 hex digits (expected the file's sha256)",
            vigil_ota::text::quote(&sha256)
        ));
    }
    Ok((url, sha256))
}

/// The fields of `cmd/system/update`.
fn system_update(id: &str, request: &Value) -> Result<crate::system_update::Request, String> {
    let (url, sha256) = url_and_sha256(request, "https://updates.example/vigil-amd64.raucb")?;
    Ok(crate::system_update::Request {
        request_id: id.to_string(),
        url,
        sha256,
    })
}

/// The fields of `cmd/ota/apply`.
fn ota_apply(id: &str, request: &Value) -> Result<vigil_ota::ApplyRequest, String> {
    let (url, sha256) = url_and_sha256(request, "https://updates.example/b.vigil")?;
    let allow_rollback = match request.get("allow_rollback") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("allow_rollback is not a boolean (expected true or false)".into()),
    };
    Ok(vigil_ota::ApplyRequest {
        request_id: id.to_string(),
        url,
        sha256,
        allow_rollback,
    })
}

impl Handler {
    pub fn new(status: StatusFn) -> Self {
        Self {
            status,
            control: None,
            cameras: None,
        }
    }

    /// Enables `snapshot` (a camera's next picture), reading the running cameras.
    pub fn with_cameras(mut self, cameras: crate::plan::SharedViews) -> Self {
        self.cameras = Some(cameras);
        self
    }

    /// `snapshot`: the camera's next analysed frame as an annotated JPEG (and a clean one
    /// with `"clean": true`), base64 in the reply; an error naming the camera's state when it
    /// is not live.
    fn snapshot(&self, id: &str, request: &Value) -> Outcome {
        let now = |ok, msg: String| Outcome {
            reply: reply(Some(id), ok, msg, Value::Null),
            republish: Vec::new(),
            deferred: None,
        };
        let camera = match string_field(request, "camera", "<camera name>") {
            Ok(c) => c,
            Err(msg) => return now(false, msg),
        };
        let clean = match request.get("clean") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return now(
                    false,
                    "clean is not a boolean (expected true or false)".into(),
                );
            }
        };
        let views = self
            .cameras
            .as_ref()
            .map(crate::http::read)
            .unwrap_or_default();
        let quoted = vigil_ota::text::quote(&camera);
        let Some(view) = views.iter().find(|c| c.name == camera) else {
            return now(false, format!("no running camera named {quoted}"));
        };
        let status = view.stats.status();
        let state = serde_json::to_value(status.state).unwrap_or_default();
        if state != "live" {
            let why = status
                .last_error
                .map(|e| format!(": {}", vigil_ota::text::bounded(&e, 512)));
            return now(
                false,
                format!(
                    "camera {quoted} is {} (expected live){}",
                    state.as_str().unwrap_or("?"),
                    why.unwrap_or_default()
                ),
            );
        }
        let Some(feed) = view.live.clone() else {
            return now(false, format!("camera {quoted} has no pictures here"));
        };
        let mut req = feed.request(clean);
        let id = id.to_string();
        let fut = async move {
            let got = tokio::time::timeout(SNAPSHOT_TIMEOUT, req.next()).await;
            drop(req);
            let Ok(Some(pic)) = got else {
                let msg = format!(
                    "no picture of camera {quoted} within {} s (pictures are made from frames in host memory; snapshots and live view may both be off)",
                    SNAPSHOT_TIMEOUT.as_secs()
                );
                return reply(Some(&id), false, msg, Value::Null);
            };
            let encode = |j: &vigil_dataplane::picture::Jpeg| {
                use base64::Engine as _;
                json!({
                    "width": j.width,
                    "height": j.height,
                    "bytes": j.bytes.len(),
                    "jpeg_base64": base64::engine::general_purpose::STANDARD.encode(&j.bytes),
                })
            };
            let mut data = json!({ "camera": camera, "annotated": encode(&pic.annotated) });
            if let Some(c) = &pic.clean {
                data["clean"] = encode(c);
            }
            let body = reply(Some(&id), true, "snapshot".into(), data);
            if body.len() > super::bound::MAX_PACKET - 1024 {
                let msg = format!(
                    "the picture ({} bytes as base64) does not fit one MQTT packet (1 MiB): lower [snapshots] width or quality",
                    body.len()
                );
                return reply(Some(&id), false, msg, Value::Null);
            }
            body
        };
        Outcome {
            reply: Vec::new(),
            republish: Vec::new(),
            deferred: Some(Deferred(Box::pin(fut))),
        }
    }

    /// Enables the commands that need the supervisor (`reload`, `config/get`, `config/set`).
    pub fn with_control(mut self, control: ControlSender) -> Self {
        self.control = Some(control);
        self
    }

    fn ask(&self, id: &str, kind: ControlKind) -> Outcome {
        let now = |bytes| Outcome {
            reply: bytes,
            republish: Vec::new(),
            deferred: None,
        };
        let Some(control) = &self.control else {
            return now(reply(
                Some(id),
                false,
                "not available here".into(),
                Value::Null,
            ));
        };
        let (request, rx) = ControlRequest::new(kind);
        if control.try_send(request).is_err() {
            return now(reply(
                Some(id),
                false,
                "the supervisor is busy; try again".into(),
                Value::Null,
            ));
        }
        Outcome {
            reply: Vec::new(),
            republish: Vec::new(),
            deferred: Some(Deferred::control(id.to_string(), rx)),
        }
    }

    pub fn handle(&self, name: &str, payload: &[u8], ctx: &Context<'_>) -> Outcome {
        let done = |reply| Outcome {
            reply,
            republish: Vec::new(),
            deferred: None,
        };
        let request: Value = match serde_json::from_slice(payload) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return done(reply(
                    None,
                    false,
                    "payload is not a JSON object (expected {\"request_id\": \"…\", …})".into(),
                    Value::Null,
                ));
            }
            Err(e) => {
                return done(reply(
                    None,
                    false,
                    format!("payload is not JSON: {e} (expected {{\"request_id\": \"…\", …}})"),
                    Value::Null,
                ));
            }
        };
        let Some(id) = request.get("request_id").and_then(Value::as_str) else {
            return done(reply(
                None,
                false,
                "missing request_id (expected a string)".into(),
                Value::Null,
            ));
        };
        match name {
            "ping" => done(reply(Some(id), true, "pong".into(), Value::Null)),
            "status" => done(reply(Some(id), true, "status".into(), (self.status)())),
            "events/replay" => {
                let Some(from) = request
                    .get("from_seq")
                    .and_then(Value::as_u64)
                    .filter(|s| *s >= 1)
                else {
                    return done(reply(Some(id), false, "from_seq missing or not a positive integer (expected e.g. {\"request_id\": \"r1\", \"from_seq\": 1})".into(), Value::Null));
                };
                let limit = request
                    .get("limit")
                    .and_then(Value::as_u64)
                    .map_or(MAX_REPLAY, |l| (l as usize).clamp(1, MAX_REPLAY));
                match ctx.spool.from_seq(from, limit) {
                    Ok(rows) => {
                        let (first, last) =
                            (rows.first().map(|r| r.seq), rows.last().map(|r| r.seq));
                        let data =
                            json!({ "count": rows.len(), "first_seq": first, "last_seq": last });
                        let msg = match (first, last) {
                            (Some(a), Some(b)) => {
                                format!("replaying {} events, seq {a} to {b}", rows.len())
                            }
                            _ => format!("no event with seq >= {from} is held"),
                        };
                        Outcome {
                            reply: reply(Some(id), true, msg, data),
                            republish: rows,
                            deferred: None,
                        }
                    }
                    Err(e) => done(reply(Some(id), false, e.to_string(), Value::Null)),
                }
            }
            "reload" => self.ask(id, ControlKind::Reload),
            "snapshot" => self.snapshot(id, &request),
            "camera/restart" => match string_field(&request, "camera", "<camera name>") {
                Ok(cam) => self.ask(id, ControlKind::RestartCamera(cam)),
                Err(msg) => done(reply(Some(id), false, msg, Value::Null)),
            },
            "config/get" => self.ask(id, ControlKind::GetConfig),
            "ota/apply" => match ota_apply(id, &request) {
                Ok(req) => self.ask(id, ControlKind::OtaApply(req)),
                Err(msg) => done(reply(Some(id), false, msg, Value::Null)),
            },
            "ota/rollback" => self.ask(id, ControlKind::OtaRollback(id.to_string())),
            "system/update" => match system_update(id, &request) {
                Ok(req) => self.ask(id, ControlKind::SystemUpdate(req)),
                Err(msg) => done(reply(Some(id), false, msg, Value::Null)),
            },
            "ota/cancel" => self.ask(id, ControlKind::OtaCancel),
            "config/set" => match string_field(&request, "config", "<the whole TOML file>") {
                Ok(text) => self.ask(id, ControlKind::SetConfig(text)),
                Err(msg) => done(reply(Some(id), false, msg, Value::Null)),
            },
            other => done(reply(
                Some(id),
                false,
                format!("unknown command {other:?} (expected one of {KNOWN})"),
                Value::Null,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Retention;

    fn setup() -> (Handler, Spool) {
        let dir = std::env::temp_dir().join(format!(
            "vigil-cmd-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir.join("e.db"), Retention::default()).unwrap();
        for i in 0..5 {
            spool
                .append(&format!("e{i}"), "cam", |seq| {
                    format!("{{\"seq\":{seq}}}").into_bytes()
                })
                .unwrap();
        }
        (Handler::new(Arc::new(|| json!({"cameras": {}}))), spool)
    }

    fn run(name: &str, payload: &str) -> (Value, usize) {
        let (h, spool) = setup();
        let out = h.handle(name, payload.as_bytes(), &Context { spool: &spool });
        (
            serde_json::from_slice(&out.reply).unwrap(),
            out.republish.len(),
        )
    }

    #[test]
    fn ping_and_status_reply_ok_with_the_request_id() {
        let (r, _) = run("ping", r#"{"request_id": "a1"}"#);
        assert_eq!(
            (
                r["request_id"].as_str(),
                r["status"].as_str(),
                r["message"].as_str()
            ),
            (Some("a1"), Some("ok"), Some("pong"))
        );
        let (r, _) = run("status", r#"{"request_id": "a2"}"#);
        assert_eq!(r["data"], json!({"cameras": {}}));
    }

    #[test]
    fn replay_republishes_from_the_given_seq() {
        let (r, n) = run("events/replay", r#"{"request_id": "r", "from_seq": 3}"#);
        assert_eq!((r["status"].as_str(), n), (Some("ok"), 3));
        assert_eq!(r["data"]["first_seq"], 3);
        let (r, n) = run(
            "events/replay",
            r#"{"request_id": "r", "from_seq": 2, "limit": 2}"#,
        );
        assert_eq!((r["data"]["last_seq"].as_u64(), n), (Some(3), 2));
    }

    #[test]
    fn bad_requests_get_error_replies_naming_what_was_expected() {
        for (name, payload, needle) in [
            ("ping", "not json", "payload is not JSON"),
            ("ping", "[1]", "not a JSON object"),
            ("ping", "{}", "missing request_id"),
            (
                "events/replay",
                r#"{"request_id": "r"}"#,
                "from_seq missing",
            ),
            (
                "events/replay",
                r#"{"request_id": "r", "from_seq": 0}"#,
                "positive integer",
            ),
            (
                "reboot",
                r#"{"request_id": "r"}"#,
                "unknown command \"reboot\" (expected one of ping",
            ),
        ] {
            let (r, n) = run(name, payload);
            assert_eq!(r["status"], "error", "{name} {payload}");
            assert!(
                r["message"].as_str().unwrap().contains(needle),
                "{name} {payload}: {r}"
            );
            assert_eq!(n, 0);
        }
    }

    #[test]
    fn command_names_come_only_from_this_device_and_never_from_replies() {
        let t = super::super::Topics::new("vigil", "box1");
        assert_eq!(
            t.command_name("vigil/box1/cmd/events/replay"),
            Some("events/replay")
        );
        assert_eq!(t.command_name("vigil/box1/cmd/ping/reply"), None);
        assert_eq!(t.command_name("vigil/box2/cmd/ping"), None);
        assert_eq!(t.command_name("vigil/box1/cmd/"), Some(""));
    }
}
