//! The HTTP API (axum): `/healthz` (200 or 503 with per-stage detail), `/metrics` (Prometheus
//! text), `/api/cameras`, `/api/events` (paged history from the spool).
//!
//! Reads shared state only (camera views, the spool, the health registry, link counters); it
//! never drives the pipelines.

use crate::mqtt::LinkStats;
use crate::plan::{CameraView, SharedViews};
use crate::spool::Spool;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vigil_core::health::HealthRegistry;

pub type CameraLabel = [(&'static str, String); 1];

fn read(v: &SharedViews) -> Vec<CameraView> {
    v.read().map(|g| g.clone()).unwrap_or_default()
}

fn infer_histogram() -> Histogram {
    // 5 ms … 2.56 s
    Histogram::new(exponential_buckets(0.005, 2.0, 10))
}

/// Per-camera inference latency; the analysis worker observes into it.
pub type InferLatency = Family<CameraLabel, Histogram, fn() -> Histogram>;

pub fn new_infer_latency() -> InferLatency {
    Family::new_with_constructor(infer_histogram as fn() -> Histogram)
}

#[derive(Clone)]
pub struct AppState {
    pub health: HealthRegistry,
    pub spool: Arc<Spool>,
    pub link: Arc<LinkStats>,
    pub cameras: SharedViews,
    pub registry: Arc<Registry>,
}

/// Everything that is a counter or gauge already lives in atomics; this reads them at scrape.
#[derive(Debug)]
struct Snapshot {
    cameras: SharedViews,
    spool: Arc<Spool>,
    link: Arc<LinkStats>,
    health: HealthRegistry,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(CameraLabel, u64)],
) -> std::fmt::Result {
    let m = ConstCounter::new(0u64);
    let mut e = enc.encode_descriptor(name, help, None, m.metric_type())?;
    for (labels, v) in values {
        ConstCounter::new(*v).encode(e.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Vec<(&'static str, String)>, i64)],
) -> std::fmt::Result {
    let m = ConstGauge::new(0i64);
    let mut e = enc.encode_descriptor(name, help, None, m.metric_type())?;
    for (labels, v) in values {
        ConstGauge::new(*v).encode(e.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let views = read(&self.cameras);
        let per_cam = |f: &dyn Fn(&CameraView) -> u64| -> Vec<(CameraLabel, u64)> {
            views
                .iter()
                .map(|c| ([("camera", c.name.clone())], f(c)))
                .collect()
        };
        counter(
            &mut enc,
            "vigil_camera_frames_decoded",
            "Frames decoded by the camera's pipeline",
            &per_cam(&|c| c.stats.frames_in.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            "vigil_camera_frames_analysed",
            "Frames run through the model",
            &per_cam(&|c| c.analysis.analysed.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            "vigil_camera_frames_dropped",
            "Frames replaced in the latest-frame queue before inference took them",
            &per_cam(&|c| c.queue.dropped(c.slot)),
        )?;
        counter(
            &mut enc,
            "vigil_camera_reconnects",
            "Pipeline rebuilds after a failure, stall or end",
            &per_cam(&|c| c.stats.reconnects.load(Ordering::Relaxed)),
        )?;
        counter(
            &mut enc,
            "vigil_camera_events",
            "Events produced",
            &per_cam(&|c| c.analysis.events.load(Ordering::Relaxed)),
        )?;
        let states: Vec<(Vec<(&'static str, String)>, i64)> = views
            .iter()
            .flat_map(|c| {
                let now = c.stats.state();
                vigil_dataplane::media::camera::ALL_STATES
                    .iter()
                    .map(move |s| {
                        (
                            vec![
                                ("camera", c.name.clone()),
                                ("state", s.as_str().to_string()),
                            ],
                            i64::from(*s == now),
                        )
                    })
            })
            .collect();
        gauge(
            &mut enc,
            "vigil_camera_state",
            "1 for the camera's current state.",
            &states,
        )?;
        let depth: Vec<(Vec<(&'static str, String)>, i64)> = views
            .iter()
            .map(|c| (vec![("camera", c.name.clone())], c.queue.pending() as i64))
            .collect();
        gauge(
            &mut enc,
            "vigil_queue_depth",
            "Frames waiting for the analysis worker (per model queue, labelled by camera)",
            &depth,
        )?;
        let st = self.spool.stats().unwrap_or_default();
        gauge(
            &mut enc,
            "vigil_spool_unsent",
            "Events in the spool not yet acknowledged by the broker",
            &[(vec![], st.unsent as i64)],
        )?;
        gauge(
            &mut enc,
            "vigil_spool_events",
            "Events held in the spool",
            &[(vec![], st.held as i64)],
        )?;
        gauge(
            &mut enc,
            "vigil_spool_bytes",
            "Bytes of event payloads held in the spool",
            &[(vec![], st.bytes as i64)],
        )?;
        gauge(
            &mut enc,
            "vigil_spool_last_seq",
            "Sequence number of the last event",
            &[(vec![], st.last_seq as i64)],
        )?;
        counter(
            &mut enc,
            "vigil_spool_dropped_unsent",
            "Unsent events removed by retention",
            &[([("spool", "events".into())], st.dropped_unsent)],
        )?;
        gauge(
            &mut enc,
            "vigil_mqtt_connected",
            "1 while connected to the broker.",
            &[(
                vec![],
                i64::from(self.link.connected.load(Ordering::Relaxed)),
            )],
        )?;
        let link = |v: &std::sync::atomic::AtomicU64| {
            [([("link", "mqtt".to_string())], v.load(Ordering::Relaxed))]
        };
        counter(
            &mut enc,
            "vigil_mqtt_connects",
            "Connections made to the broker",
            &link(&self.link.connects),
        )?;
        counter(
            &mut enc,
            "vigil_mqtt_events_published",
            "Event publishes handed to the client, re-sends included",
            &link(&self.link.published),
        )?;
        counter(
            &mut enc,
            "vigil_mqtt_events_acked",
            "Events acknowledged by the broker",
            &link(&self.link.acked),
        )?;
        // The GPU path: every device→host byte is counted in one place (zero on the CPU path).
        let gpu = &vigil_dataplane::gpu::detector::COUNTERS;
        let path = |v: &std::sync::atomic::AtomicU64| {
            [([("path", "gpu".to_string())], v.load(Ordering::Relaxed))]
        };
        counter(
            &mut enc,
            "vigil_gpu_device_to_host_bytes",
            "Bytes copied from the GPU to the host (detections only: pixels never leave the GPU)",
            &path(&gpu.d2h_bytes),
        )?;
        counter(
            &mut enc,
            "vigil_gpu_host_to_device_bytes",
            "Bytes of frames that arrived in host memory, uploaded to the GPU",
            &path(&gpu.h2d_bytes),
        )?;
        counter(
            &mut enc,
            "vigil_gpu_frames",
            "Frames analysed on the GPU, by where the decoder left them",
            &[
                (
                    [("memory", "cuda".to_string())],
                    gpu.device_frames.load(Ordering::Relaxed),
                ),
                (
                    [("memory", "nvmm".to_string())],
                    gpu.nvmm_frames.load(Ordering::Relaxed),
                ),
                (
                    [("memory", "host".to_string())],
                    gpu.host_frames.load(Ordering::Relaxed),
                ),
            ],
        )?;
        let health: Vec<(Vec<(&'static str, String)>, i64)> = self
            .health
            .check()
            .into_iter()
            .map(|s| (vec![("stage", s.name)], i64::from(s.ok)))
            .collect();
        gauge(
            &mut enc,
            "vigil_stage_healthy",
            "1 while the stage heartbeats within its deadline.",
            &health,
        )?;
        Ok(())
    }
}

/// Builds the metrics registry: live counters read at scrape, plus the latency histograms.
pub fn registry(
    state_parts: (&SharedViews, &Arc<Spool>, &Arc<LinkStats>, &HealthRegistry),
    latency: &InferLatency,
) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Snapshot {
        cameras: state_parts.0.clone(),
        spool: state_parts.1.clone(),
        link: state_parts.2.clone(),
        health: state_parts.3.clone(),
    }));
    r.register(
        "vigil_inference_seconds",
        "Model run time per analysed frame",
        latency.clone(),
    );
    r
}

async fn healthz(State(s): State<AppState>) -> Response {
    let stages = s.health.check();
    let healthy = stages.iter().all(|st| st.ok || !st.required);
    let cameras: serde_json::Map<String, serde_json::Value> = read(&s.cameras)
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                serde_json::to_value(c.stats.status()).unwrap_or_default(),
            )
        })
        .collect();
    let body = serde_json::json!({ "healthy": healthy, "stages": stages, "cameras": cameras });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total` and the
/// text ends with `# EOF`; the Prometheus text format (0.0.4, what `promtool check metrics` and
/// most scrapers expect) names the family `x_total` too and has no `# EOF`.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            openmetrics_to_prometheus(&text),
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response(),
    }
}

async fn cameras(State(s): State<AppState>) -> Response {
    let list: Vec<serde_json::Value> = read(&s.cameras)
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "url": vigil_core::redact::redact(&c.url),
                "status": c.stats.status(),
                "pipeline_id": c.stats.pipeline_id.load(Ordering::Relaxed),
                "frames_decoded": c.stats.frames_in.load(Ordering::Relaxed),
                "frames_analysed": c.analysis.analysed.load(Ordering::Relaxed),
                "frames_dropped": c.queue.dropped(c.slot),
                "events": c.analysis.events.load(Ordering::Relaxed),
            })
        })
        .collect();
    axum::Json(list).into_response()
}

#[derive(serde::Deserialize)]
struct Page {
    /// First seq to return (default 1).
    from_seq: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

async fn events(State(s): State<AppState>, Query(p): Query<Page>) -> Response {
    let from = p.from_seq.unwrap_or(1).max(1);
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let spool = s.spool.clone();
    let rows = tokio::task::spawn_blocking(move || spool.from_seq(from, limit)).await;
    match rows {
        Ok(Ok(rows)) => {
            let next = rows.last().map(|r| r.seq + 1);
            let events: Vec<serde_json::Value> = rows
                .iter()
                .filter_map(|r| serde_json::from_slice(&r.payload).ok())
                .collect();
            axum::Json(serde_json::json!({ "events": events, "next_from_seq": next }))
                .into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/cameras", get(cameras))
        .route("/api/events", get(events))
        .with_state(state)
}

/// Serves until the task is dropped; returns the bound address.
pub async fn serve(
    listen: &str,
    state: AppState,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), crate::error::ControlError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| crate::error::ControlError::HttpListen {
            listen: listen.to_string(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| crate::error::ControlError::HttpListen {
            listen: listen.to_string(),
            source,
        })?;
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_renamed_and_eof_dropped() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total{camera=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            super::openmetrics_to_prometheus(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total{camera=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
