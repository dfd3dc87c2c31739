//! `/metrics`: the Prometheus text of a `prometheus-client` registry whose collector reads the
//! live counters at scrape (cameras, queues, spool, MQTT link, GPU copies, stage health, HTTP
//! connections), plus the per-camera inference latency histograms the analysis workers observe.

use super::{AppState, read};
use crate::mqtt::LinkStats;
use crate::plan::{CameraView, SharedViews};
use crate::spool::Spool;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
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

fn infer_histogram() -> Histogram {
    // 5 ms … 2.56 s
    Histogram::new(exponential_buckets(0.005, 2.0, 10))
}

/// Per-camera inference latency; the analysis worker observes into it.
pub type InferLatency = Family<CameraLabel, Histogram, fn() -> Histogram>;

pub fn new_infer_latency() -> InferLatency {
    Family::new_with_constructor(infer_histogram as fn() -> Histogram)
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

/// A counter without labels.
fn counter_plain(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = ConstCounter::new(v);
    let e = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(e)
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

/// `vigil_frame_latency_seconds`'s buckets: around a frame interval (33 ms at 30 fps).
const FRAME_LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.15, 0.2];

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let views = read(&self.cameras);
        {
            // Frame → detections, every camera together, from the workers' histograms.
            let mut all: Vec<u64> = Vec::new();
            for c in views.iter() {
                c.analysis.frame_latency.add_to(&mut all);
            }
            let (buckets, sum, count) =
                vigil_dataplane::worker::LatencyHist::coarse(&all, &FRAME_LATENCY_BUCKETS);
            let mut e = enc.encode_descriptor(
                "vigil_frame_latency_seconds",
                "From a frame leaving the decoder to its detections on the host, queueing included, every camera together",
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
        }
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
            "vigil_camera_frames_motion_skipped",
            "Frames not run through the model because nothing moved near the rules (motion gate)",
            &per_cam(&|c| c.analysis.motion_skipped.load(Ordering::Relaxed)),
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
        let backends: Vec<(Vec<(&'static str, String)>, i64)> = views
            .iter()
            .flat_map(|c| {
                ["tensorrt", "cuda", "cpu"].into_iter().map(move |b| {
                    (
                        vec![("camera", c.name.clone()), ("backend", b.to_string())],
                        i64::from(c.backend == b),
                    )
                })
            })
            .collect();
        gauge(
            &mut enc,
            "vigil_camera_backend",
            "1 for the inference backend the camera's model runs on (tensorrt, cuda, cpu).",
            &backends,
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
            "vigil_spool_pictures",
            "Event pictures held in the spool",
            &[(vec![], st.pictures as i64)],
        )?;
        gauge(
            &mut enc,
            "vigil_spool_picture_bytes",
            "Bytes of event pictures held in the spool",
            &[(vec![], st.picture_bytes as i64)],
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
        let conns = &super::server::CONNECTIONS;
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        gauge(
            &mut enc,
            "vigil_http_connections",
            "Open HTTP connections",
            &[(vec![], load(&conns.open) as i64)],
        )?;
        counter(
            &mut enc,
            "vigil_http_connections_accepted",
            "HTTP connections accepted",
            &[([("listener", "http".to_string())], load(&conns.accepted))],
        )?;
        let closed: Vec<(CameraLabel, u64)> = [
            ("idle", &conns.idle_timeouts),
            ("header_timeout", &conns.header_timeouts),
            ("write_stalled", &conns.write_stalls),
            ("evicted", &conns.evicted),
            ("refused", &conns.refused),
            ("tls_failed", &conns.tls_failures),
        ]
        .into_iter()
        .map(|(reason, v)| ([("reason", reason.to_string())], load(v)))
        .collect();
        let live = &super::live::LIVE;
        gauge(
            &mut enc,
            "vigil_live_clients",
            "Live view clients now (WebSocket and MJPEG)",
            &[(vec![], load(&live.clients) as i64)],
        )?;
        for (name, help, v) in [
            (
                "vigil_live_pictures_sent",
                "Live pictures sent to clients",
                &live.sent,
            ),
            (
                "vigil_live_bytes_sent",
                "Bytes of live pictures sent to clients",
                &live.sent_bytes,
            ),
            (
                "vigil_live_pictures_skipped",
                "Live pictures a slow client skipped (a newer one replaced them)",
                &live.skipped,
            ),
            (
                "vigil_live_clients_refused",
                "Live clients refused at live.max_clients (503)",
                &live.refused,
            ),
            (
                "vigil_live_clients_timed_out",
                "Live clients closed because a send took longer than 10 s",
                &live.timed_out,
            ),
        ] {
            counter_plain(&mut enc, name, help, load(v))?;
        }
        let pics = &vigil_dataplane::picture::STATS;
        let by = |c: &std::sync::atomic::AtomicU64, g: &std::sync::atomic::AtomicU64| {
            [
                ([("backend", "cpu".to_string())], load(c)),
                ([("backend", "nvjpeg".to_string())], load(g)),
            ]
        };
        counter_plain(
            &mut enc,
            "vigil_pictures_drawn",
            "Pictures with the overlay drawn (event snapshots and live pictures)",
            load(&pics.drawn),
        )?;
        counter_plain(
            &mut enc,
            "vigil_pictures_unsupported",
            "Pictures not made because the frame was in device memory and no GPU renderer could be made",
            load(&pics.unsupported),
        )?;
        counter_plain(
            &mut enc,
            "vigil_pictures_gpu_pixel_d2h_bytes",
            "Bytes of pictures drawn on the GPU copied to the host as pixels (no nvJPEG, or the re-stream's software encoder); 0 while nvJPEG encodes",
            load(&pics.gpu_pixel_d2h_bytes),
        )?;
        counter(
            &mut enc,
            "vigil_jpeg_encoded",
            "JPEG pictures encoded, by backend",
            &by(&pics.cpu_jpegs, &pics.gpu_jpegs),
        )?;
        counter(
            &mut enc,
            "vigil_jpeg_bytes",
            "Bytes of JPEG encoded, by backend (nvjpeg: the only bytes such a picture copies from the GPU)",
            &by(&pics.cpu_jpeg_bytes, &pics.gpu_jpeg_bytes),
        )?;
        {
            let m = ConstCounter::new(0.0f64);
            let mut e = enc.encode_descriptor(
                "vigil_jpeg_encode_seconds",
                "Time spent making JPEG pictures (scale, draw, encode), by backend",
                None,
                m.metric_type(),
            )?;
            for (backend, us) in [("cpu", &pics.cpu_jpeg_us), ("nvjpeg", &pics.gpu_jpeg_us)] {
                let secs = load(us) as f64 / 1e6;
                ConstCounter::new(secs).encode(e.encode_family(&[("backend", backend)])?)?;
            }
        }
        counter(
            &mut enc,
            "vigil_http_connections_closed",
            "HTTP connections Vigil closed: idle, headers too slow, client took nothing for 10 s, evicted or refused at the cap, TLS handshake failed",
            &closed,
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

pub(super) async fn metrics(State(s): State<AppState>) -> Response {
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
