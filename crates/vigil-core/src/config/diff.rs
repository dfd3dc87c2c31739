//! The difference between two plans, as plain data: what a reload must do, model by model and
//! camera by camera, before anything is done. `vigil-control`'s `Plan::apply` computes it,
//! loads the models it names, then acts on it; start-up is the diff against the empty plan.
//!
//! A plan ([`PlanView`]) is what runs: one group per model that has enabled cameras, with the
//! model's table and its cameras in config order. [`diff_plans`] compares two of them under the
//! reload rules:
//! - a model running only in the new plan is started ([`ModelAction::Start`]), one running only
//!   in the old plan stopped ([`ModelAction::Stop`]);
//! - a model whose camera list changed (a camera added, removed, moved or reordered) has its
//!   group rebuilt ([`ModelAction::Rebuild`]);
//! - a model with the same cameras but a changed table is swapped inside its running worker
//!   ([`ModelAction::Swap`]), else kept ([`ModelAction::Keep`]); either way each of its cameras
//!   is [`CameraChange::Unchanged`], takes new rules in the worker ([`CameraChange::Rules`]:
//!   only zones, lines or `min_score` changed, see [`same_source`]), or has its pipeline rebuilt
//!   alone ([`CameraChange::Respawn`]).
//!
//! [`diff`] does the same for two configs and also lists the sections that only take effect
//! after a restart ([`Section`]: `[device]`, `[mqtt]`, `[storage]`, `[http]`, `[snapshots]`, `[live]`, `[restream]`, `[homeassistant]`).

use super::{CameraConfig, Config, ModelConfig};
use serde::Serialize;
use std::collections::BTreeMap;

/// What runs: per model that has enabled cameras, its table and those cameras in config order.
/// The default is the empty plan (nothing runs yet).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanView {
    pub groups: BTreeMap<String, GroupView>,
}

/// One model's group: its table and its cameras, slot by slot.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    pub model: ModelConfig,
    pub cameras: Vec<CameraConfig>,
}

impl PlanView {
    /// The plan a config describes: every model with at least one enabled camera.
    pub fn of(cfg: &Config) -> Self {
        let groups = cfg
            .models
            .iter()
            .filter_map(|(name, model)| {
                let cameras: Vec<CameraConfig> = cfg
                    .cameras
                    .iter()
                    .filter(|c| c.enabled && &c.model == name)
                    .cloned()
                    .collect();
                (!cameras.is_empty()).then(|| {
                    (
                        name.clone(),
                        GroupView {
                            model: model.clone(),
                            cameras,
                        },
                    )
                })
            })
            .collect();
        PlanView { groups }
    }

    /// Whether `camera` runs in some group of this plan.
    fn runs(&self, camera: &str) -> bool {
        self.groups
            .values()
            .any(|g| g.cameras.iter().any(|c| c.name == camera))
    }
}

/// What a reload must do, model by model, plus the sections that need a restart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanDiff {
    /// Every model that runs in the old plan or the new one, by name.
    pub models: BTreeMap<String, ModelAction>,
    /// Restart-only sections that changed, in the order of [`Section::ALL`] (only [`diff`]
    /// fills it; [`diff_plans`] compares plans, which have no such sections).
    pub needs_restart: Vec<Section>,
}

/// What must happen to one model's group.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelAction {
    /// Not running: load the model, start a group with these cameras.
    Start {
        model: ModelConfig,
        cameras: Vec<CameraConfig>,
    },
    /// Running, no longer wanted: stop its group. `leaving`: its cameras that run in no group
    /// afterwards (a camera moved to another model is started there, not stopped).
    Stop { leaving: Vec<String> },
    /// Its camera list changed: load the model, stop the running group, start one with these
    /// cameras. `leaving` as for [`ModelAction::Stop`].
    Rebuild {
        model: ModelConfig,
        cameras: Vec<CameraConfig>,
        leaving: Vec<String>,
    },
    /// Same cameras, new table: load the model and swap it into the running worker (camera
    /// pipelines kept), then update the cameras slot by slot.
    Swap {
        model: ModelConfig,
        cameras: Vec<CameraStep>,
    },
    /// Same cameras, same table: update the cameras slot by slot.
    Keep { cameras: Vec<CameraStep> },
}

impl ModelAction {
    /// The table to load before anything stops, if this action needs a new engine.
    pub fn model_to_load(&self) -> Option<&ModelConfig> {
        match self {
            ModelAction::Start { model, .. }
            | ModelAction::Rebuild { model, .. }
            | ModelAction::Swap { model, .. } => Some(model),
            ModelAction::Stop { .. } | ModelAction::Keep { .. } => None,
        }
    }

    /// The cameras the group runs afterwards, slot by slot (none for a stop).
    pub fn cameras_after(&self) -> Vec<&CameraConfig> {
        match self {
            ModelAction::Start { cameras, .. } | ModelAction::Rebuild { cameras, .. } => {
                cameras.iter().collect()
            }
            ModelAction::Swap { cameras, .. } | ModelAction::Keep { cameras } => {
                cameras.iter().map(|s| &s.camera).collect()
            }
            ModelAction::Stop { .. } => Vec::new(),
        }
    }

    /// Whether the group's running state stays exactly as it is.
    pub fn is_noop(&self) -> bool {
        matches!(self, ModelAction::Keep { cameras }
            if cameras.iter().all(|s| s.change == CameraChange::Unchanged))
    }
}

/// One camera of a kept or swapped group, in its slot.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraStep {
    /// The camera as the new plan has it.
    pub camera: CameraConfig,
    pub change: CameraChange,
}

/// What must happen to one camera of a kept or swapped group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraChange {
    Unchanged,
    /// Only zones, lines or `min_score` changed: new rules for the worker, pipeline kept.
    Rules,
    /// Source settings changed: this camera's pipeline alone is rebuilt.
    Respawn,
}

/// A config section that is only read at start-up: a change takes effect after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Device,
    Mqtt,
    Storage,
    Http,
    Snapshots,
    Live,
    Restream,
    HomeAssistant,
}

impl Section {
    pub const ALL: [Section; 8] = [
        Section::Device,
        Section::Mqtt,
        Section::Storage,
        Section::Http,
        Section::Snapshots,
        Section::Live,
        Section::Restream,
        Section::HomeAssistant,
    ];

    /// The table's name in the config file (`"mqtt"` for `[mqtt]`).
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Device => "device",
            Section::Mqtt => "mqtt",
            Section::Storage => "storage",
            Section::Http => "http",
            Section::Snapshots => "snapshots",
            Section::Live => "live",
            Section::Restream => "restream",
            Section::HomeAssistant => "homeassistant",
        }
    }

    fn changed(self, old: &Config, new: &Config) -> bool {
        match self {
            Section::Device => old.device != new.device,
            Section::Mqtt => old.mqtt != new.mqtt,
            Section::Storage => old.storage != new.storage,
            Section::Http => old.http != new.http,
            Section::Snapshots => old.snapshots != new.snapshots,
            Section::Live => old.live != new.live,
            Section::Restream => old.restream != new.restream,
            Section::HomeAssistant => old.homeassistant != new.homeassistant,
        }
    }
}

impl PlanDiff {
    /// Whether applying this diff changes nothing at all (restart-only sections included).
    pub fn is_empty(&self) -> bool {
        self.needs_restart.is_empty() && self.models.values().all(ModelAction::is_noop)
    }
}

/// Whether two camera configs differ only in what the analysis worker can take without
/// touching the pipeline (rules and score threshold).
pub fn same_source(a: &CameraConfig, b: &CameraConfig) -> bool {
    let strip = |c: &CameraConfig| CameraConfig {
        zones: Vec::new(),
        lines: Vec::new(),
        min_score: 0.0,
        ..c.clone()
    };
    strip(a) == strip(b)
}

/// The restart-only sections that differ between two configs, in the order of [`Section::ALL`].
pub fn restart_sections(old: &Config, new: &Config) -> Vec<Section> {
    Section::ALL
        .into_iter()
        .filter(|s| s.changed(old, new))
        .collect()
}

/// What makes the plan `old` describes into the one `new` describes; `None`: nothing runs yet
/// (start-up), so every group is started and no section needs a restart.
pub fn diff(old: Option<&Config>, new: &Config) -> PlanDiff {
    let mut d = diff_plans(
        &old.map(PlanView::of).unwrap_or_default(),
        &PlanView::of(new),
    );
    if let Some(old) = old {
        d.needs_restart = restart_sections(old, new);
    }
    d
}

/// What makes the running plan `old` into `new` (see the module docs for the rules).
pub fn diff_plans(old: &PlanView, new: &PlanView) -> PlanDiff {
    let leaving = |g: &GroupView| -> Vec<String> {
        g.cameras
            .iter()
            .filter(|c| !new.runs(&c.name))
            .map(|c| c.name.clone())
            .collect()
    };
    let mut models = BTreeMap::new();
    for (name, g) in &old.groups {
        if !new.groups.contains_key(name) {
            models.insert(
                name.clone(),
                ModelAction::Stop {
                    leaving: leaving(g),
                },
            );
        }
    }
    for (name, want) in &new.groups {
        let action = match old.groups.get(name) {
            None => ModelAction::Start {
                model: want.model.clone(),
                cameras: want.cameras.clone(),
            },
            Some(run) if !same_names(&run.cameras, &want.cameras) => ModelAction::Rebuild {
                model: want.model.clone(),
                cameras: want.cameras.clone(),
                leaving: leaving(run),
            },
            Some(run) => {
                let cameras = run
                    .cameras
                    .iter()
                    .zip(&want.cameras)
                    .map(|(was, now)| CameraStep {
                        camera: now.clone(),
                        change: if was == now {
                            CameraChange::Unchanged
                        } else if same_source(was, now) {
                            CameraChange::Rules
                        } else {
                            CameraChange::Respawn
                        },
                    })
                    .collect();
                if run.model == want.model {
                    ModelAction::Keep { cameras }
                } else {
                    ModelAction::Swap {
                        model: want.model.clone(),
                        cameras,
                    }
                }
            }
        };
        models.insert(name.clone(), action);
    }
    PlanDiff {
        models,
        needs_restart: Vec::new(),
    }
}

/// Same camera names in the same order.
fn same_names(a: &[CameraConfig], b: &[CameraConfig]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.name == y.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::facts::KnownFacts;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        parse(text, Path::new("t.toml"), &KnownFacts::cpu_only())
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Two models, three cameras: `front` and `back` on `people`, `yard` on `cars`.
    const BASE: &str = r#"
[device]
id = "box"

[models.people]
path = "people.onnx"
kind = "nanodet"

[models.cars]
path = "cars.onnx"
kind = "nanodet"

[[cameras]]
name = "front"
url = "rtsp://cam1/stream"
model = "people"

[[cameras.zones]]
name = "door"
polygon = [[0, 0], [0.5, 0], [0.5, 0.5]]

[[cameras]]
name = "back"
url = "rtsp://cam2/stream"
model = "people"

[[cameras]]
name = "yard"
url = "rtsp://cam3/stream"
model = "cars"
"#;

    fn base() -> Config {
        cfg(BASE)
    }

    /// `BASE` with the first occurrence of `from` replaced (must be there).
    fn edit(from: &str, to: &str) -> Config {
        assert!(BASE.contains(from), "{from:?} not in BASE");
        cfg(&BASE.replacen(from, to, 1))
    }

    fn steps(a: &ModelAction) -> Vec<(&str, CameraChange)> {
        match a {
            ModelAction::Keep { cameras } | ModelAction::Swap { cameras, .. } => cameras
                .iter()
                .map(|s| (s.camera.name.as_str(), s.change))
                .collect(),
            other => panic!("not kept or swapped: {other:?}"),
        }
    }

    /// What `Plan::apply` does to the running plan, in pure form: each action changes only what
    /// it is allowed to (a kept model keeps its table, an unchanged camera its config, a rules
    /// update only zones, lines and `min_score`).
    fn apply(view: &PlanView, d: &PlanDiff) -> PlanView {
        let mut out = view.clone();
        for (name, action) in &d.models {
            match action {
                ModelAction::Start { model, cameras }
                | ModelAction::Rebuild { model, cameras, .. } => {
                    out.groups.insert(
                        name.clone(),
                        GroupView {
                            model: model.clone(),
                            cameras: cameras.clone(),
                        },
                    );
                }
                ModelAction::Stop { .. } => {
                    out.groups.remove(name).expect("stopped group was running");
                }
                ModelAction::Swap { cameras, .. } | ModelAction::Keep { cameras } => {
                    let g = out.groups.get_mut(name).expect("kept group is running");
                    if let ModelAction::Swap { model, .. } = action {
                        g.model = model.clone();
                    }
                    assert_eq!(g.cameras.len(), cameras.len());
                    for (cam, step) in g.cameras.iter_mut().zip(cameras) {
                        assert_eq!(cam.name, step.camera.name);
                        match step.change {
                            CameraChange::Unchanged => {}
                            CameraChange::Rules => {
                                cam.zones = step.camera.zones.clone();
                                cam.lines = step.camera.lines.clone();
                                cam.min_score = step.camera.min_score;
                            }
                            CameraChange::Respawn => *cam = step.camera.clone(),
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn initial_start_starts_everything() {
        let c = base();
        let d = diff(None, &c);
        assert!(d.needs_restart.is_empty());
        assert_eq!(d, diff_plans(&PlanView::default(), &PlanView::of(&c)));
        assert_eq!(d.models.len(), 2);
        for (name, want) in [("people", vec!["front", "back"]), ("cars", vec!["yard"])] {
            match &d.models[name] {
                ModelAction::Start { model, cameras } => {
                    assert_eq!(model, &c.models[name]);
                    assert_eq!(cameras.iter().map(|c| &c.name).collect::<Vec<_>>(), want);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(apply(&PlanView::default(), &d), PlanView::of(&c));
    }

    #[test]
    fn identical_configs_change_nothing() {
        let d = diff(Some(&base()), &base());
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            steps(&d.models["people"]),
            [
                ("front", CameraChange::Unchanged),
                ("back", CameraChange::Unchanged)
            ]
        );
        assert!(diff(None, &base()).models.values().all(|a| !a.is_noop()));
    }

    #[test]
    fn rules_only_change_updates_rules() {
        let new = edit("[[0, 0], [0.5, 0], [0.5, 0.5]]", "[[0, 0], [1, 0], [1, 1]]");
        let d = diff(Some(&base()), &new);
        assert_eq!(
            steps(&d.models["people"]),
            [
                ("front", CameraChange::Rules),
                ("back", CameraChange::Unchanged)
            ]
        );
        assert!(d.models["cars"].is_noop());
        assert!(d.needs_restart.is_empty());
        // A line added to a camera without rules is a rules change too.
        let new = cfg(&format!(
            "{BASE}\n[[cameras.lines]]\nname = \"gate\"\nfrom = [0, 0.5]\nto = [1, 0.5]\n"
        ));
        assert_eq!(
            steps(&diff(Some(&base()), &new).models["cars"]),
            [("yard", CameraChange::Rules)]
        );
    }

    #[test]
    fn min_score_change_updates_rules() {
        let new = edit("name = \"back\"\n", "name = \"back\"\nmin_score = 0.6\n");
        let d = diff(Some(&base()), &new);
        assert_eq!(
            steps(&d.models["people"]),
            [
                ("front", CameraChange::Unchanged),
                ("back", CameraChange::Rules)
            ]
        );
        assert!(matches!(d.models["people"], ModelAction::Keep { .. }));
    }

    #[test]
    fn url_change_respawns_that_camera_only() {
        let new = edit("rtsp://cam2/stream", "rtsp://cam2/other");
        let d = diff(Some(&base()), &new);
        assert_eq!(
            steps(&d.models["people"]),
            [
                ("front", CameraChange::Unchanged),
                ("back", CameraChange::Respawn)
            ]
        );
        assert!(matches!(d.models["people"], ModelAction::Keep { .. }));
        assert!(d.models["cars"].is_noop());
        // Source settings and rules both changed: the respawn takes the rules along.
        let new = edit(
            "rtsp://cam1/stream\"",
            "rtsp://cam1/other\"\nmin_score = 0.5",
        );
        let d = diff(Some(&base()), &new);
        assert_eq!(
            steps(&d.models["people"])[0],
            ("front", CameraChange::Respawn)
        );
    }

    #[test]
    fn camera_added_rebuilds_its_model_group() {
        let new = cfg(&format!(
            "{BASE}\n[[cameras]]\nname = \"side\"\nurl = \"rtsp://cam4/s\"\nmodel = \"people\"\n"
        ));
        let d = diff(Some(&base()), &new);
        match &d.models["people"] {
            ModelAction::Rebuild {
                cameras, leaving, ..
            } => {
                let names: Vec<_> = cameras.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, ["front", "back", "side"]);
                assert!(leaving.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(d.models["cars"].is_noop());
    }

    #[test]
    fn camera_disabled_or_moved_rebuilds_and_reports_only_leavers() {
        // `back` disabled: `people` rebuilt with `front` alone, `back` leaves.
        let new = edit("name = \"back\"\n", "name = \"back\"\nenabled = false\n");
        match &diff(Some(&base()), &new).models["people"] {
            ModelAction::Rebuild {
                cameras, leaving, ..
            } => {
                assert_eq!(cameras.len(), 1);
                assert_eq!(leaving, &["back"]);
            }
            other => panic!("{other:?}"),
        }
        // `yard` moved to `people`: `cars` stops (no camera left) but `yard` is not leaving.
        let new = edit("model = \"cars\"", "model = \"people\"");
        let d = diff(Some(&base()), &new);
        assert_eq!(d.models["cars"], ModelAction::Stop { leaving: vec![] });
        match &d.models["people"] {
            ModelAction::Rebuild { leaving, .. } => assert!(leaving.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reordered_cameras_rebuild() {
        let text = BASE.replacen("name = \"front\"", "name = \"tmp\"", 1);
        let text = text.replacen("name = \"back\"", "name = \"front\"", 1);
        let text = text.replacen("name = \"tmp\"", "name = \"back\"", 1);
        let d = diff(Some(&base()), &cfg(&text));
        assert!(matches!(d.models["people"], ModelAction::Rebuild { .. }));
    }

    #[test]
    fn model_table_changed_same_cameras_is_a_swap() {
        let new = edit("path = \"people.onnx\"", "path = \"people-v2.onnx\"");
        let d = diff(Some(&base()), &new);
        match &d.models["people"] {
            ModelAction::Swap { model, cameras } => {
                assert_eq!(model, &new.models["people"]);
                assert!(cameras.iter().all(|s| s.change == CameraChange::Unchanged));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.models["people"].model_to_load(),
            Some(&new.models["people"])
        );
        assert_eq!(d.models["cars"].model_to_load(), None);
        // A table change to a model without cameras changes nothing.
        let idle = format!("{BASE}\n[models.spare]\npath = \"spare.onnx\"\nkind = \"nanodet\"\n");
        let idle2 = idle.replace("spare.onnx", "spare2.onnx");
        assert!(diff(Some(&cfg(&idle)), &cfg(&idle2)).is_empty());
    }

    #[test]
    fn model_removed_stops_its_group() {
        let text = BASE
            .replacen(
                "[models.cars]\npath = \"cars.onnx\"\nkind = \"nanodet\"\n",
                "",
                1,
            )
            .replacen(
                "[[cameras]]\nname = \"yard\"\nurl = \"rtsp://cam3/stream\"\nmodel = \"cars\"\n",
                "",
                1,
            );
        let new = cfg(&text);
        assert!(!new.models.contains_key("cars"));
        let d = diff(Some(&base()), &new);
        assert_eq!(
            d.models["cars"],
            ModelAction::Stop {
                leaving: vec!["yard".into()]
            }
        );
        assert!(d.models["people"].is_noop());
        assert_eq!(apply(&PlanView::of(&base()), &d), PlanView::of(&new));
    }

    #[test]
    fn restart_only_sections_are_reported() {
        let new = cfg(&format!("{BASE}\n[mqtt]\nhost = \"broker.local\"\n"));
        let d = diff(Some(&base()), &new);
        assert_eq!(d.needs_restart, [Section::Mqtt]);
        assert!(d.models.values().all(ModelAction::is_noop));
        assert!(!d.is_empty());
        let new = cfg(&format!(
            "{}\n[http]\nlisten = \"\"\n[storage]\nmax_events = 5\n",
            BASE.replace("id = \"box\"", "id = \"box2\"")
        ));
        let d = diff(Some(&base()), &new);
        assert_eq!(
            d.needs_restart,
            [Section::Device, Section::Storage, Section::Http]
        );
        let names: Vec<_> = d.needs_restart.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["device", "storage", "http"]);
        assert_eq!(
            serde_json::to_string(&d.needs_restart).unwrap(),
            r#"["device","storage","http"]"#
        );
        // `[ota]` is applied by the OTA agent, not a restart.
        let new = cfg(&format!("{BASE}\n[ota]\ndevice_class = \"x\"\n"));
        assert!(diff(Some(&base()), &new).is_empty());
    }

    #[test]
    fn same_source_ignores_only_rules_and_threshold() {
        let c = &base().cameras[0];
        let mut rules = c.clone();
        rules.zones.clear();
        rules.min_score = 0.9;
        assert!(same_source(c, &rules));
        for change in [
            |c: &mut CameraConfig| c.url.push('x'),
            |c: &mut CameraConfig| c.fps = 1.0,
            |c: &mut CameraConfig| c.stall_timeout = crate::config::Dur::secs(1),
            |c: &mut CameraConfig| c.on_end = crate::config::OnEnd::Stop,
            |c: &mut CameraConfig| c.reconnect.circuit_after = 1,
        ] {
            let mut other = c.clone();
            change(&mut other);
            assert!(!same_source(c, &other), "{other:?}");
        }
    }

    /// A set of configs that differ from `BASE` in every way a reload distinguishes.
    fn variants() -> Vec<Config> {
        let mut v = vec![
            base(),
            edit("[[0, 0], [0.5, 0], [0.5, 0.5]]", "[[0, 0], [1, 0], [1, 1]]"),
            edit("name = \"back\"\n", "name = \"back\"\nmin_score = 0.6\n"),
            edit("rtsp://cam2/stream", "rtsp://cam2/other"),
            edit("path = \"people.onnx\"", "path = \"people-v2.onnx\""),
            edit(
                "path = \"cars.onnx\"",
                "path = \"cars.onnx\"\ninput_size = 320",
            ),
            edit("name = \"back\"\n", "name = \"back\"\nenabled = false\n"),
            edit("model = \"cars\"", "model = \"people\""),
        ];
        v.push(cfg(&format!(
            "{BASE}\n[[cameras]]\nname = \"side\"\nurl = \"rtsp://cam4/s\"\n\
             model = \"cars\"\nfps = 2\n"
        )));
        v.push(cfg(&format!("{BASE}\n[mqtt]\nport = 8883\n")));
        // Several changes at once: a swap with a rules update and a respawn in the same group.
        v.push(cfg(&BASE
            .replacen("path = \"people.onnx\"", "path = \"p3.onnx\"", 1)
            .replacen(
                "[[0, 0], [0.5, 0], [0.5, 0.5]]",
                "[[0.1, 0], [1, 0], [1, 1]]",
                1,
            )
            .replacen("rtsp://cam2/stream", "rtsp://cam2/x", 1)));
        // Nothing runs (every camera disabled).
        v.push(cfg(
            &BASE.replace("model = \"", "enabled = false\nmodel = \"")
        ));
        v
    }

    #[test]
    fn variants_parse_and_differ() {
        let v = variants();
        assert!(v.len() >= 10);
        assert!(PlanView::of(v.last().unwrap()).groups.is_empty());
        for (i, a) in v.iter().enumerate() {
            for b in &v[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    /// Rollback: for every pair, diff(a→b) takes a's plan to b's, diff(b→a) takes it back, and
    /// the actions of diff(b→a) undo those of diff(a→b) one by one.
    #[test]
    fn rollback_undoes_every_diff() {
        let v = variants();
        let mut seen = std::collections::BTreeSet::new();
        for a in &v {
            for b in &v {
                let (pa, pb) = (PlanView::of(a), PlanView::of(b));
                let fwd = diff(Some(a), b);
                let back = diff(Some(b), a);
                assert_eq!(fwd, diff_plans(&pa, &pb).with_restart(a, b));
                let mid = apply(&pa, &fwd);
                assert_eq!(mid, pb, "a→b\n{a:#?}\n{b:#?}");
                assert_eq!(apply(&mid, &back), pa, "b→a\n{a:#?}\n{b:#?}");
                assert_eq!(fwd.needs_restart, back.needs_restart);
                assert_eq!(fwd.is_empty(), back.is_empty());
                assert_eq!(fwd.is_empty(), pa == pb && fwd.needs_restart.is_empty());
                assert_eq!(
                    fwd.models.keys().collect::<Vec<_>>(),
                    back.models.keys().collect::<Vec<_>>()
                );
                for (m, f) in &fwd.models {
                    check_inverse(m, f, &back.models[m], &pa, &pb);
                    seen.insert(
                        format!("{f:?}")
                            .split([' ', '{'])
                            .next()
                            .unwrap()
                            .to_owned(),
                    );
                    let after: Vec<&CameraConfig> = pb
                        .groups
                        .get(m)
                        .map(|g| g.cameras.iter().collect())
                        .unwrap_or_default();
                    assert_eq!(f.cameras_after(), after, "{m}");
                    if let ModelAction::Keep { cameras } | ModelAction::Swap { cameras, .. } = f {
                        seen.extend(cameras.iter().map(|s| format!("{:?}", s.change)));
                    }
                }
            }
        }
        // The pairs cover every kind of action and camera change.
        let kinds = [
            "Start",
            "Stop",
            "Rebuild",
            "Swap",
            "Keep",
            "Unchanged",
            "Rules",
            "Respawn",
        ];
        assert_eq!(seen, kinds.iter().map(|k| k.to_string()).collect());
    }

    /// `back` undoes `fwd` for model `m`, going from plan `pa` to `pb` and back.
    fn check_inverse(m: &str, fwd: &ModelAction, back: &ModelAction, pa: &PlanView, pb: &PlanView) {
        use ModelAction as A;
        match (fwd, back) {
            // A started group is stopped, with every camera that did not run before leaving.
            (A::Start { cameras, .. }, A::Stop { leaving }) => {
                let fresh: Vec<_> = cameras
                    .iter()
                    .filter(|c| !pa.runs(&c.name))
                    .map(|c| c.name.clone())
                    .collect();
                assert_eq!(leaving, &fresh, "{m}");
            }
            (A::Stop { .. }, A::Start { model, cameras }) => {
                assert_eq!(model, &pa.groups[m].model, "{m}");
                assert_eq!(cameras, &pa.groups[m].cameras, "{m}");
            }
            (A::Rebuild { .. }, A::Rebuild { model, cameras, .. }) => {
                assert_eq!(model, &pa.groups[m].model, "{m}");
                assert_eq!(cameras, &pa.groups[m].cameras, "{m}");
            }
            // A swap swaps back to the old table; each camera's change is undone by the same kind.
            (A::Swap { cameras: f, .. }, A::Swap { model, cameras: b }) => {
                assert_eq!(model, &pa.groups[m].model, "{m}");
                check_steps_inverse(m, f, b, pa);
            }
            (A::Keep { cameras: f }, A::Keep { cameras: b }) => check_steps_inverse(m, f, b, pa),
            (f, b) => panic!("{m}: {f:?} is not undone by {b:?} ({pb:?})"),
        }
    }

    fn check_steps_inverse(m: &str, fwd: &[CameraStep], back: &[CameraStep], pa: &PlanView) {
        assert_eq!(fwd.len(), back.len(), "{m}");
        for ((f, b), was) in fwd.iter().zip(back).zip(&pa.groups[m].cameras) {
            assert_eq!(f.change, b.change, "{m}/{}", was.name);
            // Rules go back: the camera returns to its old config.
            assert_eq!(&b.camera, was, "{m}/{}", was.name);
        }
    }

    impl PlanDiff {
        fn with_restart(mut self, old: &Config, new: &Config) -> Self {
            self.needs_restart = restart_sections(old, new);
            self
        }
    }
}
