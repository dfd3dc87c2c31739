//! Alerts: rules on the boxes' health and on their events, checked every second; each fires
//! once per incident (an open incident is a row in the store: a restart of the console, or a
//! second console on the same PostgreSQL, does not fire it again) and resolves when its
//! condition ends. Firing and resolving are shown on `/alerts` and POSTed as JSON to the
//! webhook, if one is set.
//!
//! Rules (`--alerts FILE`, TOML; without one: a box offline for 30 s, a camera down for 60 s):
//!
//! ```toml
//! webhook = "http://127.0.0.1:9000/hook"   # optional
//! [[rule]]
//! name = "box offline"
//! kind = "offline"          # offline | camera_down | fps_below | spool_backlog | event
//! for_s = 30                # the condition holds this long before it fires
//! [[rule]]
//! name = "slow"
//! kind = "fps_below"
//! value = 2.0               # fps_below: analysed fps; spool_backlog: events unsent
//! [[rule]]
//! name = "person at the door"
//! kind = "event"
//! device = "lobby"          # optional filters: device, camera, rule, class
//! rule = "door"
//! class = "person"
//! cooldown_s = 60           # an event incident resolves this long after it opened
//! ```

use crate::ingest::{Counters, now_ms};
use crate::store::{EventFilter, IncidentRow, Store};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vigil_core::wire::{TelemetryMsg, is_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Offline,
    CameraDown,
    FpsBelow,
    SpoolBacklog,
    Event,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub kind: Kind,
    #[serde(default)]
    pub for_s: f64,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub camera: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default = "default_cooldown")]
    pub cooldown_s: f64,
}

fn default_cooldown() -> f64 {
    60.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub rule: Vec<Rule>,
}

impl Rules {
    /// A box offline for 30 s, a camera down for 60 s.
    pub fn defaults() -> Self {
        let r = |name: &str, kind, for_s| Rule {
            name: name.into(),
            kind,
            for_s,
            value: None,
            device: None,
            camera: None,
            rule: None,
            class: None,
            cooldown_s: default_cooldown(),
        };
        Self {
            webhook: None,
            rule: vec![
                r("box offline", Kind::Offline, 30.0),
                r("camera down", Kind::CameraDown, 60.0),
            ],
        }
    }

    /// Parses and checks a rules file; every problem names the rule and field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let r: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        if let Some(w) = &r.webhook
            && !(w.starts_with("http://") || w.starts_with("https://"))
        {
            errors.push(format!(
                "webhook {w:?}: expected an http:// or https:// URL"
            ));
        }
        if r.rule.len() > 256 {
            errors.push(format!("{} rules: at most 256", r.rule.len()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, x) in r.rule.iter().enumerate() {
            let at = format!("rule[{i}] ({:?})", x.name);
            if x.name.is_empty() || x.name.len() > 64 || x.name.chars().any(char::is_control) {
                errors.push(format!("{at}.name: expected 1 to 64 printable characters"));
            }
            if !names.insert(&x.name) {
                errors.push(format!("{at}.name: used twice"));
            }
            if !(0.0..=86400.0).contains(&x.for_s) || !(0.0..=86400.0).contains(&x.cooldown_s) {
                errors.push(format!(
                    "{at}: for_s and cooldown_s between 0 and 86400 expected"
                ));
            }
            let needs_value = matches!(x.kind, Kind::FpsBelow | Kind::SpoolBacklog);
            match (needs_value, x.value) {
                (true, None) => errors.push(format!("{at}.value: required for this kind")),
                (true, Some(v)) if !(v.is_finite() && v >= 0.0) => {
                    errors.push(format!("{at}.value: expected a number ≥ 0"));
                }
                (false, Some(_)) => errors.push(format!("{at}.value: not used by this kind")),
                _ => {}
            }
            for (field, v) in [
                ("device", &x.device),
                ("camera", &x.camera),
                ("rule", &x.rule),
            ] {
                if v.as_deref().is_some_and(|v| !is_name(v)) {
                    errors.push(format!(
                        "{at}.{field}: expected a Vigil name ([A-Za-z0-9_-], 1 to 64)"
                    ));
                }
            }
            if x.class
                .as_ref()
                .is_some_and(|c| c.is_empty() || c.len() > 64)
            {
                errors.push(format!("{at}.class: expected 1 to 64 characters"));
            }
            if x.kind != Kind::Event && (x.rule.is_some() || x.class.is_some()) {
                errors.push(format!("{at}: rule and class filter events only"));
            }
        }
        if errors.is_empty() {
            Ok(r)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// What the webhook receives.
#[derive(Debug, serde::Serialize)]
struct Hook<'a> {
    state: &'a str,
    rule: &'a str,
    device: &'a str,
    camera: &'a str,
    started_ms: i64,
    resolved_ms: Option<i64>,
    detail: &'a str,
}

fn post(url: &str, body: String, counters: &Counters) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let r = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body);
    if let Err(e) = r {
        counters.webhook_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("alert webhook {url}: {e}");
    } else {
        counters.webhooks_sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Checks the rules every second until the task is dropped.
pub async fn run<S: Store>(
    store: S,
    rules: Rules,
    counters: Arc<Counters>,
    changed: tokio::sync::broadcast::Sender<()>,
) {
    // Since when each (rule, box, camera) condition has held (not yet fired).
    let mut pending: HashMap<(usize, String, String), Instant> = HashMap::new();
    let mut events_since = now_ms();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = now_ms();
        let Ok(devices) = store.devices().await else {
            continue;
        };
        let mut holds: Vec<(usize, String, String, String)> = Vec::new();
        for (k, r) in rules.rule.iter().enumerate() {
            if r.kind == Kind::Event {
                continue;
            }
            for d in devices
                .iter()
                .filter(|d| r.device.as_ref().is_none_or(|x| *x == d.device))
            {
                let online = d.state == "online";
                if r.kind == Kind::Offline {
                    if d.state == "offline" {
                        let why = d.reason.clone().unwrap_or_else(|| "offline".into());
                        holds.push((k, d.device.clone(), String::new(), why));
                    }
                    continue;
                }
                let Some(t) = d
                    .telemetry
                    .as_deref()
                    .and_then(|t| serde_json::from_str::<TelemetryMsg>(t).ok())
                else {
                    continue;
                };
                if !online {
                    continue;
                }
                if r.kind == Kind::SpoolBacklog {
                    let v = r.value.unwrap_or(0.0);
                    if t.spool.unsent as f64 > v {
                        holds.push((
                            k,
                            d.device.clone(),
                            String::new(),
                            format!("{} events unsent", t.spool.unsent),
                        ));
                    }
                    continue;
                }
                for (cam, c) in &t.cameras {
                    if r.camera.as_ref().is_some_and(|x| x != cam) {
                        continue;
                    }
                    let (bad, why) = match r.kind {
                        Kind::CameraDown => (
                            c.state != "live",
                            format!("{}: {}", c.state, c.last_error.as_deref().unwrap_or("")),
                        ),
                        Kind::FpsBelow => (
                            c.state == "live" && c.fps_analysed < r.value.unwrap_or(0.0),
                            format!("{:.1} fps analysed", c.fps_analysed),
                        ),
                        _ => (false, String::new()),
                    };
                    if bad {
                        holds.push((k, d.device.clone(), cam.clone(), why));
                    }
                }
            }
        }
        let mut moved = false;
        // Fire what has held long enough; forget what no longer holds, resolving it.
        for (k, device, camera, why) in &holds {
            let since = *pending
                .entry((*k, device.clone(), camera.clone()))
                .or_insert_with(Instant::now);
            if since.elapsed().as_secs_f64() >= rules.rule[*k].for_s {
                moved |= fire(
                    &store,
                    &rules,
                    &rules.rule[*k],
                    device,
                    camera,
                    why,
                    now,
                    &counters,
                )
                .await;
            }
        }
        let held: std::collections::HashSet<(usize, &str, &str)> = holds
            .iter()
            .map(|(k, d, c, _)| (*k, d.as_str(), c.as_str()))
            .collect();
        pending.retain(|(k, d, c), _| held.contains(&(*k, d.as_str(), c.as_str())));
        if let Ok(open) = store.incidents(1000).await {
            for i in open.iter().filter(|i| i.resolved_ms.is_none()) {
                let Some((k, r)) = rules
                    .rule
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.name == i.rule)
                else {
                    continue;
                };
                let over = if r.kind == Kind::Event {
                    now - i.started_ms >= (r.cooldown_s * 1000.0) as i64
                } else {
                    !held.contains(&(k, i.device.as_str(), i.camera.as_str()))
                };
                if over
                    && store
                        .resolve_incident(&i.rule, &i.device, &i.camera, now)
                        .await
                        .unwrap_or(false)
                {
                    moved = true;
                    tracing::info!(rule = %i.rule, device = %i.device, camera = %i.camera, "alert resolved");
                    if let Some(url) = rules.webhook.clone() {
                        let body = serde_json::to_string(&Hook {
                            state: "resolved",
                            rule: &i.rule,
                            device: &i.device,
                            camera: &i.camera,
                            started_ms: i.started_ms,
                            resolved_ms: Some(now),
                            detail: &i.detail,
                        })
                        .unwrap_or_default();
                        let c = counters.clone();
                        tokio::task::spawn_blocking(move || post(&url, body, &c));
                    }
                }
            }
        }
        // Event rules: the events stored since the last check.
        if rules.rule.iter().any(|r| r.kind == Kind::Event) {
            let recent = store
                .events(&EventFilter {
                    limit: 500,
                    ..Default::default()
                })
                .await
                .unwrap_or_default();
            for e in recent.iter().filter(|e| e.received_ms > events_since) {
                for r in rules.rule.iter().filter(|r| r.kind == Kind::Event) {
                    let m = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
                    if m(&r.device, &e.device)
                        && m(&r.camera, &e.camera)
                        && m(&r.rule, &e.rule)
                        && m(&r.class, &e.class)
                    {
                        let why = format!("{} {} {} (seq {})", e.kind, e.rule, e.class, e.seq);
                        moved |= fire(
                            &store, &rules, r, &e.device, &e.camera, &why, now, &counters,
                        )
                        .await;
                    }
                }
            }
            if let Some(newest) = recent.iter().map(|e| e.received_ms).max() {
                events_since = events_since.max(newest);
            }
        }
        if moved {
            let _ = changed.send(());
        }
    }
}

/// Opens the incident; `true` if it was not open (then it is announced).
#[allow(clippy::too_many_arguments)]
async fn fire<S: Store>(
    store: &S,
    rules: &Rules,
    r: &Rule,
    device: &str,
    camera: &str,
    why: &str,
    now: i64,
    counters: &Arc<Counters>,
) -> bool {
    let i = IncidentRow {
        rule: r.name.clone(),
        device: device.to_string(),
        camera: camera.to_string(),
        started_ms: now,
        resolved_ms: None,
        detail: why.chars().take(300).collect(),
    };
    if !store.open_incident(&i).await.unwrap_or(false) {
        return false;
    }
    tracing::warn!(rule = %r.name, device, camera, "alert: {why}");
    if let Some(url) = rules.webhook.clone() {
        let body = serde_json::to_string(&Hook {
            state: "firing",
            rule: &i.rule,
            device,
            camera,
            started_ms: now,
            resolved_ms: None,
            detail: &i.detail,
        })
        .unwrap_or_default();
        let c = counters.clone();
        tokio::task::spawn_blocking(move || post(&url, body, &c));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_files_are_checked_with_located_errors() {
        let ok = Rules::parse(
            "webhook = \"http://127.0.0.1:1/h\"\n[[rule]]\nname = \"a\"\nkind = \"offline\"\nfor_s = 5\n[[rule]]\nname = \"b\"\nkind = \"fps_below\"\nvalue = 2\n[[rule]]\nname = \"c\"\nkind = \"event\"\nclass = \"person\"\n",
        )
        .unwrap();
        assert_eq!(ok.rule.len(), 3);
        let e = Rules::parse("[[rule]]\nname = \"b\"\nkind = \"fps_below\"\n").unwrap_err();
        assert!(e.contains("rule[0] (\"b\").value: required"), "{e}");
        let e = Rules::parse("[[rule]]\nname = \"x\"\nkind = \"offline\"\nclass = \"car\"\n")
            .unwrap_err();
        assert!(e.contains("events only"), "{e}");
        let e = Rules::parse("webhook = \"ftp://x\"\n").unwrap_err();
        assert!(e.contains("webhook"), "{e}");
        assert!(Rules::parse("[[rule]]\nname = \"x\"\nkind = \"nope\"\n").is_err());
        let e = Rules::parse("[[rule]]\nname = \"x\"\nkind = \"offline\"\ndevice = \"a/b\"\n")
            .unwrap_err();
        assert!(e.contains(".device"), "{e}");
    }
}
