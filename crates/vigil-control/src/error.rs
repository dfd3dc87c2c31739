//! The control plane's errors: what can stop the service from starting, or a reload or a
//! command from being carried out. Each keeps its cause as its source; show one with
//! [`vigil_core::error::chain`].

/// Why the supervisor could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Media(#[from] vigil_dataplane::media::InitError),
    #[error(transparent)]
    Engine(#[from] vigil_dataplane::engine::EngineError),
    /// A camera's thread could not be started.
    #[error("camera {camera}")]
    Camera {
        camera: String,
        #[source]
        source: std::io::Error,
    },
    /// A model's analysis worker thread could not be started.
    #[error("analysis worker of model {model}")]
    Worker {
        model: String,
        #[source]
        source: std::io::Error,
    },
    /// A reload failed half-way (its cause is the source) and the previous plan was started
    /// again.
    #[error("the previous plan was restored after")]
    Restored(#[source] Box<ControlError>),
    /// A reload failed half-way (its cause is the source) and restoring the previous plan failed
    /// too: some cameras may not run until the next successful reload.
    #[error("restoring the previous plan failed too ({}) after", vigil_core::error::chain(restore.as_ref()))]
    NotRestored {
        restore: Box<ControlError>,
        #[source]
        source: Box<ControlError>,
    },
    #[error("no running camera named {0:?}")]
    NoSuchCamera(String),
    #[error("event spool")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("OTA store")]
    OtaStore(#[source] vigil_ota::OtaError),
    #[error("after an OTA rollback at start-up")]
    Rollback(#[source] vigil_core::config::ConfigErrors),
    /// The HTTP API could not listen where `[http] listen` says.
    #[error("http.listen {listen}")]
    HttpListen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP API could not start (its TLS files).
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("signal handler")]
    Signal(#[source] std::io::Error),
}

/// The control plane's results.
pub type Result<T, E = ControlError> = std::result::Result<T, E>;
