//! `vigil-fleet simulate`: many boxes speaking Vigil's protocol to a real broker, from one
//! process (one MQTT client per box, each on its own task): a retained `online` status with an
//! `offline` last will, telemetry every `telemetry_s`, and events at a fleet-wide rate spread
//! over the boxes, each box's `seq` gapless. It answers nothing (a replay request is ignored),
//! so it loads a console's ingest as a fleet would. Payloads are the documented shapes
//! (`docs/mqtt.md`), generated, not captured.

use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Sim {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub devices: usize,
    /// Events a second over the whole fleet.
    pub events_per_s: f64,
    pub telemetry_s: f64,
    pub seconds: f64,
    /// The boxes' ids are this followed by their number.
    pub ids: String,
}

/// What was sent.
#[derive(Debug, Default)]
pub struct Sent {
    pub events: AtomicU64,
    pub telemetry: AtomicU64,
    pub connected: AtomicU64,
}

fn telemetry(now: &str) -> String {
    format!(
        r#"{{"time":"{now}","uptime_s":10,"mqtt_connected":true,"events_published":0,"events_acked":0,"spool":{{"unsent":0,"held":0,"bytes":0,"last_seq":0,"dropped_unsent":0}},"cameras":{{"cam1":{{"state":"live","fps_in":5,"fps_analysed":5,"frames_in":1,"frames_analysed":1,"frames_dropped":0,"reconnects":0,"infer_ms_avg":8,"events":0,"decoder":"avdec_h264","last_error":null,"retry_in_s":null}}}}}}"#
    )
}

fn event(device: &str, seq: u64, now: &str) -> String {
    format!(
        r#"{{"seq":{seq},"id":"sim-{device}-{seq}","device":"{device}","camera":"cam1","rule":"door","kind":"zone_enter","track_id":{seq},"class":"person","score":0.8,"bbox":[0.1,0.2,0.3,0.4],"pts_s":1.0,"time":"{now}"}}"#
    )
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Runs the fleet for `seconds`, then disconnects every box cleanly (they stay "online" in a
/// console: the last will is for crashes).
pub async fn run(s: Sim) -> Arc<Sent> {
    let sent = Arc::new(Sent::default());
    let per_box = s.events_per_s / s.devices.max(1) as f64;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..s.devices {
        let (s, sent) = (s.clone(), sent.clone());
        tasks.spawn(async move {
            let id = format!("{}{i:05}", s.ids);
            let status = format!("{}/{id}/status", s.prefix);
            let mut o = MqttOptions::new(format!("vigil-sim-{id}"), &s.host, s.port);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_last_will(LastWill::new(
                &status,
                r#"{"state":"offline","version":"sim","reason":"connection lost"}"#,
                QoS::AtLeastOnce,
                true,
            ));
            let (client, mut el) = AsyncClient::new(o, 64);
            let pump = tokio::spawn(async move {
                loop {
                    if el.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
            let _ = client
                .publish(
                    &status,
                    QoS::AtLeastOnce,
                    true,
                    format!(r#"{{"state":"online","version":"sim","time":"{}"}}"#, now()),
                )
                .await;
            sent.connected.fetch_add(1, Ordering::Relaxed);
            // Spread the boxes' schedules over the first second.
            tokio::time::sleep(Duration::from_millis((i % 1000) as u64)).await;
            let t0 = Instant::now();
            let (mut seq, mut next_tel) = (0u64, 0.0f64);
            let mut next_event = if per_box > 0.0 { 0.0 } else { f64::INFINITY };
            while t0.elapsed().as_secs_f64() < s.seconds {
                let t = t0.elapsed().as_secs_f64();
                if t >= next_tel {
                    let _ = client
                        .publish(
                            format!("{}/{id}/telemetry", s.prefix),
                            QoS::AtMostOnce,
                            false,
                            telemetry(&now()),
                        )
                        .await;
                    sent.telemetry.fetch_add(1, Ordering::Relaxed);
                    next_tel += s.telemetry_s;
                }
                if t >= next_event {
                    seq += 1;
                    let _ = client
                        .publish(
                            format!("{}/{id}/events/cam1", s.prefix),
                            QoS::AtLeastOnce,
                            false,
                            event(&id, seq, &now()),
                        )
                        .await;
                    sent.events.fetch_add(1, Ordering::Relaxed);
                    next_event += 1.0 / per_box;
                }
                let wait = next_tel.min(next_event) - t0.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.001, 1.0))).await;
            }
            let _ = client.disconnect().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            pump.abort();
        });
    }
    while tasks.join_next().await.is_some() {}
    sent
}

#[cfg(test)]
mod tests {
    use vigil_core::wire::{EventMsg, TelemetryMsg};

    #[test]
    fn the_simulated_payloads_are_what_a_box_sends() {
        let e: EventMsg = serde_json::from_str(&super::event("sim00001", 3, "t")).unwrap();
        assert_eq!(
            (e.device.as_str(), e.seq, e.camera.as_str()),
            ("sim00001", 3, "cam1")
        );
        let t: TelemetryMsg = serde_json::from_str(&super::telemetry("t")).unwrap();
        assert_eq!(t.cameras["cam1"].state, "live");
    }
}
