//! The control API: what a transport may ask of the supervisor, and how the answer comes back.
//!
//! The supervisor owns the running config, the plan and the OTA agent, so anything that changes
//! them goes through here: a transport (the MQTT commands today, the HTTP API later) turns its
//! own request format into a [`ControlKind`], sends a [`ControlRequest`] on the supervisor's
//! channel and awaits the [`ControlReply`] on the request's oneshot. The supervisor answers each
//! request once, in the order received, between its other inputs; nothing here knows of MQTT
//! topics or HTTP routes.

use serde_json::Value;

/// What a transport asks of the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlKind {
    /// Re-read the config file and apply it.
    Reload,
    /// The config file's text.
    GetConfig,
    /// Validate this TOML; if good, apply it and make it the config file.
    SetConfig(String),
    /// Rebuild this camera's pipeline.
    RestartCamera(String),
    /// Download, verify, stage and activate a signed bundle.
    OtaApply(vigil_ota::ApplyRequest),
    /// Back to the previous OTA set; the request id names the request in OTA progress.
    OtaRollback(String),
    /// Stop the OTA update whose download or staging runs (its outcome: `cancelled`).
    OtaCancel,
    /// Download a whole-system (RAUC) bundle and hand it to the image's installer.
    SystemUpdate(crate::system_update::Request),
}

/// The supervisor's answer: `Ok(data)` (a `"summary"` string in `data` says what was done), or
/// `Err((message, data))`.
pub type ControlReply = Result<Value, (String, Value)>;

/// A request with the channel its answer comes back on.
#[derive(Debug)]
pub struct ControlRequest {
    pub kind: ControlKind,
    pub reply: tokio::sync::oneshot::Sender<ControlReply>,
}

impl ControlRequest {
    /// A request and the receiver its answer arrives on.
    pub fn new(kind: ControlKind) -> (Self, tokio::sync::oneshot::Receiver<ControlReply>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        (Self { kind, reply }, rx)
    }
}

/// The sending side of the supervisor's control channel, which a transport holds.
pub type ControlSender = tokio::sync::mpsc::Sender<ControlRequest>;

/// How many requests may wait for the supervisor at once; a transport that finds the channel
/// full answers "busy" at once rather than queueing.
pub const QUEUE: usize = 4;

/// How long a transport waits for the supervisor's answer (a reload may load a model).
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
