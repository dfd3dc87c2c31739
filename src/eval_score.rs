//! Scoring for `vigil eval`: a clip's ground truth (`truth.toml`, format in
//! `tests/data/eval/README.md`) against the events Vigil emitted. Pure: no clip, no model.
//!
//! Matching, per rule, emitted events in time order (greedy):
//! * an event matches a truth event of the same rule and kind whose window holds its time:
//!   `[t_s − tol, t_s + tol + late_ok_s + delay]`, where `delay` is what Vigil adds by design at
//!   the analysis rate used (see [`Delays`]);
//! * among those, one of the same direction not yet matched → a **hit** (the nearest in time);
//! * else, an `optional` one of the same direction, or a `dont_care` span of the rule around the
//!   event → not scored (a span says the rule's events there are about someone who cannot be
//!   scored; it never takes a hit away);
//! * else one already hit → a **duplicate** of it; else one of the other direction not yet
//!   matched → a **direction error** (that truth event then counts neither as a hit nor as a
//!   miss); else a **false positive**.
//!
//! Truth events neither hit nor direction errors are **misses** (unless `optional`).
//! **Id switches**: per person, over all rules, the track ids of their hits in time order; each
//! change counts, except across a cut (`clip.shots`) or across a span the person's `out_of_view`
//! lists (a tracker cannot keep an id through either).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truth {
    pub format: u32,
    pub clip: Clip,
    pub scoring: Scoring,
    /// The rules in Vigil's config syntax (`lines`, `zones`), copied into the eval camera.
    pub camera: toml::Table,
    #[serde(default)]
    pub persons: Vec<Person>,
    pub events: Vec<TruthEvent>,
    #[serde(default)]
    pub dont_care: Vec<DontCare>,
}

#[derive(Debug, Deserialize)]
pub struct Clip {
    pub name: String,
    pub file: String,
    pub package: Package,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub frames: u32,
    pub duration_s: f64,
    /// Frame ranges (inclusive) of an edited clip's shots.
    #[serde(default)]
    pub shots: Vec<[u32; 2]>,
    /// How a synthetic clip is made from the package's file (`sha256` is then that file's):
    /// `cargo xtask setup` makes it into the media folder.
    #[serde(default)]
    pub derived: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Package {
    pub registry: String,
    pub name: String,
    pub version: String,
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scoring {
    pub tolerance_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub id: String,
    /// For people reading the file (parsed so that a misspelt key is refused).
    #[serde(default)]
    #[allow(dead_code)]
    pub kind: Option<String>,
    #[allow(dead_code)]
    pub description: String,
    /// Spans `[from_s, to_s]` the person is out of view: a new track id after one is no switch.
    #[serde(default)]
    pub out_of_view: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Cross,
    Enter,
    Leave,
    Dwell,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cross => "cross",
            Kind::Enter => "enter",
            Kind::Leave => "leave",
            Kind::Dwell => "dwell",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthEvent {
    pub rule: String,
    pub kind: Kind,
    pub frame: u32,
    pub t_s: f64,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub who: Option<String>,
    #[serde(default)]
    pub tolerance_s: Option<f64>,
    #[serde(default)]
    pub late_ok_s: Option<f64>,
    #[serde(default)]
    pub optional: bool,
    /// For people reading the file.
    #[serde(default)]
    #[allow(dead_code)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DontCare {
    pub rule: String,
    pub from_s: f64,
    pub to_s: f64,
    /// Who the span is about, for people: it applies to any emitted event of the rule (an
    /// event does not say who it is about).
    #[serde(default)]
    #[allow(dead_code)]
    pub who: String,
    #[allow(dead_code)]
    pub reason: String,
}

/// What Vigil emitted, as far as scoring goes.
#[derive(Debug, Clone, Serialize)]
pub struct Emitted {
    pub rule: String,
    pub kind: Kind,
    pub direction: Option<String>,
    pub t_s: f64,
    pub track_id: u64,
}

/// Lateness Vigil adds by design, added to each truth event's window.
#[derive(Debug, Clone, Copy)]
pub struct Delays {
    /// A change is seen on the first *analysed* frame after it: up to one analysis interval
    /// less one clip frame.
    pub sampling_s: f64,
    /// Zone enter/leave fire `inertia − 1` analysed frames after the first frame inside /
    /// outside (per zone).
    pub zone_inertia_s: f64,
    /// A crossing confirmed after N analysed frames on the far side fires N − 1 frames late.
    pub line_confirm_s: f64,
}

impl Delays {
    fn of(&self, kind: Kind) -> f64 {
        self.sampling_s
            + match kind {
                Kind::Enter | Kind::Leave => self.zone_inertia_s,
                Kind::Cross => self.line_confirm_s,
                Kind::Dwell => 0.0,
            }
    }
}

/// Problems in a truth file that serde cannot see: unknown rules, persons, directions, times.
pub fn check(t: &Truth) -> Result<(), String> {
    let mut rules: BTreeMap<String, &'static str> = BTreeMap::new();
    for (key, what) in [("lines", "line"), ("zones", "zone")] {
        if let Some(v) = t.camera.get(key) {
            let arr = v
                .as_array()
                .ok_or_else(|| format!("camera.{key}: expected an array of tables"))?;
            for (i, r) in arr.iter().enumerate() {
                let name = r
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| format!("camera.{key}[{i}].name: expected a string"))?;
                if rules.insert(name.to_string(), what).is_some() {
                    return Err(format!("camera.{key}[{i}].name: rule {name:?} named twice"));
                }
            }
        }
    }
    if t.format != 1 {
        return Err(format!("format: {} (expected 1)", t.format));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(t.clip.fps) || !(positive(t.scoring.tolerance_s) || t.scoring.tolerance_s == 0.0) {
        return Err("clip.fps must be > 0 and scoring.tolerance_s ≥ 0".into());
    }
    let persons: Vec<&str> = t.persons.iter().map(|p| p.id.as_str()).collect();
    for (i, e) in t.events.iter().enumerate() {
        let at = format!(
            "events[{i}] ({} {} at {} s)",
            e.rule,
            e.kind.as_str(),
            e.t_s
        );
        let Some(what) = rules.get(&e.rule) else {
            return Err(format!("{at}: rule {:?} is not in [camera]", e.rule));
        };
        match (*what, e.kind) {
            ("line", Kind::Cross) | ("zone", Kind::Enter | Kind::Leave | Kind::Dwell) => {}
            _ => return Err(format!("{at}: kind {} on a {what}", e.kind.as_str())),
        }
        match (e.kind, e.direction.as_deref()) {
            (Kind::Cross, Some("in" | "out")) | (Kind::Enter | Kind::Leave | Kind::Dwell, None) => {
            }
            _ => {
                return Err(format!(
                    "{at}: direction {:?} (expected \"in\"/\"out\" on crossings, none on zone events)",
                    e.direction
                ));
            }
        }
        if let Some(w) = &e.who
            && !persons.contains(&w.as_str())
        {
            return Err(format!("{at}: who {w:?} is not in [[persons]]"));
        }
        if !e.t_s.is_finite() || e.t_s < 0.0 || e.frame >= t.clip.frames {
            return Err(format!("{at}: outside the clip ({} frames)", t.clip.frames));
        }
        if (e.frame as f64 / t.clip.fps - e.t_s).abs() > 1.0 / t.clip.fps + 1e-9 {
            return Err(format!(
                "{at}: t_s is not frame / fps ({} / {} = {:.3})",
                e.frame,
                t.clip.fps,
                e.frame as f64 / t.clip.fps
            ));
        }
    }
    for (i, d) in t.dont_care.iter().enumerate() {
        if !rules.contains_key(&d.rule) {
            return Err(format!(
                "dont_care[{i}]: rule {:?} is not in [camera]",
                d.rule
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Tally {
    /// Scored truth events (not optional).
    pub truth: u32,
    pub hits: u32,
    pub misses: u32,
    pub direction_errors: u32,
    pub duplicates: u32,
    pub false_positives: u32,
    /// Emitted events not scored (dont_care spans, optional truth events).
    pub unscored: u32,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.truth += o.truth;
        self.hits += o.hits;
        self.misses += o.misses;
        self.direction_errors += o.direction_errors;
        self.duplicates += o.duplicates;
        self.false_positives += o.false_positives;
        self.unscored += o.unscored;
    }

    /// Hits over scored truth events (1 when there are none).
    pub fn recall(&self) -> f64 {
        if self.truth == 0 {
            1.0
        } else {
            self.hits as f64 / self.truth as f64
        }
    }

    /// Hits over scored emitted events (hits, duplicates, direction errors, false positives).
    pub fn precision(&self) -> f64 {
        let emitted = self.hits + self.duplicates + self.direction_errors + self.false_positives;
        if emitted == 0 {
            1.0
        } else {
            self.hits as f64 / emitted as f64
        }
    }
}

/// One emitted or truth event's fate, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub rule: String,
    pub kind: Kind,
    pub direction: Option<String>,
    /// The truth event's time, or the emitted one's for false positives.
    pub t_s: f64,
    /// The emitted event's time, where there is one.
    pub emitted_s: Option<f64>,
    pub who: Option<String>,
    pub track_id: Option<u64>,
    /// hit | miss | direction_error | duplicate | false_positive | unscored | optional_missed
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub total: Tally,
    pub per_rule: BTreeMap<String, Tally>,
    pub id_switches: u32,
    /// Persons with more than one hit (those an id switch can be counted on).
    pub persons_followed: u32,
    pub lines: Vec<Line>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Open,
    Hit,
    DirectionError,
}

pub fn score(t: &Truth, emitted: &[Emitted], delays: &Delays) -> Score {
    let mut state = vec![State::Open; t.events.len()];
    let mut hit_track: Vec<Option<(u64, f64)>> = vec![None; t.events.len()];
    let mut per_rule: BTreeMap<String, Tally> = BTreeMap::new();
    let mut lines = Vec::new();
    let mut sorted: Vec<&Emitted> = emitted.iter().collect();
    sorted.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    for e in sorted {
        let tally = per_rule.entry(e.rule.clone()).or_default();
        let in_window = |i: usize| {
            let te = &t.events[i];
            let tol = te.tolerance_s.unwrap_or(t.scoring.tolerance_s);
            let late = te.late_ok_s.unwrap_or(0.0) + delays.of(te.kind);
            te.rule == e.rule
                && te.kind == e.kind
                && e.t_s >= te.t_s - tol
                && e.t_s <= te.t_s + tol + late
        };
        let candidates: Vec<usize> = (0..t.events.len()).filter(|&i| in_window(i)).collect();
        let same_dir = |i: &&usize| t.events[**i].direction == e.direction;
        let nearest = |v: Vec<usize>| {
            v.into_iter().min_by(|&a, &b| {
                (t.events[a].t_s - e.t_s)
                    .abs()
                    .total_cmp(&(t.events[b].t_s - e.t_s).abs())
            })
        };
        let open_same: Vec<usize> = candidates
            .iter()
            .filter(same_dir)
            .filter(|&&i| state[i] == State::Open && !t.events[i].optional)
            .copied()
            .collect();
        let hit_same: Vec<usize> = candidates
            .iter()
            .filter(same_dir)
            .filter(|&&i| state[i] == State::Hit)
            .copied()
            .collect();
        let optional_same = candidates
            .iter()
            .filter(same_dir)
            .any(|&i| t.events[i].optional);
        let open_other: Vec<usize> = candidates
            .iter()
            .filter(|i| !same_dir(i))
            .filter(|&&i| state[i] == State::Open && !t.events[i].optional)
            .copied()
            .collect();
        let line = |outcome, i: Option<usize>| Line {
            rule: e.rule.clone(),
            kind: e.kind,
            direction: e.direction.clone(),
            t_s: i.map_or(e.t_s, |i| t.events[i].t_s),
            emitted_s: Some(e.t_s),
            who: i.and_then(|i| t.events[i].who.clone()),
            track_id: Some(e.track_id),
            outcome,
        };
        let dont_care = t
            .dont_care
            .iter()
            .any(|d| d.rule == e.rule && e.t_s >= d.from_s && e.t_s <= d.to_s);
        if let Some(i) = nearest(open_same) {
            state[i] = State::Hit;
            hit_track[i] = Some((e.track_id, e.t_s));
            tally.hits += 1;
            lines.push(line("hit", Some(i)));
        } else if optional_same || dont_care {
            tally.unscored += 1;
            lines.push(line("unscored", None));
        } else if let Some(i) = nearest(hit_same) {
            tally.duplicates += 1;
            lines.push(line("duplicate", Some(i)));
        } else if let Some(i) = nearest(open_other) {
            state[i] = State::DirectionError;
            tally.direction_errors += 1;
            lines.push(line("direction_error", Some(i)));
        } else {
            tally.false_positives += 1;
            lines.push(line("false_positive", None));
        }
    }
    for (i, te) in t.events.iter().enumerate() {
        let tally = per_rule.entry(te.rule.clone()).or_default();
        if !te.optional {
            tally.truth += 1;
        }
        if state[i] != State::Open {
            continue;
        }
        let outcome = if te.optional {
            "optional_missed"
        } else {
            tally.misses += 1;
            "miss"
        };
        lines.push(Line {
            rule: te.rule.clone(),
            kind: te.kind,
            direction: te.direction.clone(),
            t_s: te.t_s,
            emitted_s: None,
            who: te.who.clone(),
            track_id: None,
            outcome,
        });
    }
    lines.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    let (id_switches, persons_followed) = id_switches(t, &hit_track);
    let mut total = Tally::default();
    for v in per_rule.values() {
        total.add(v);
    }
    Score {
        total,
        per_rule,
        id_switches,
        persons_followed,
        lines,
    }
}

fn id_switches(t: &Truth, hit_track: &[Option<(u64, f64)>]) -> (u32, u32) {
    let shot_of = |t_s: f64| {
        let frame = (t_s * t.clip.fps).round() as u32;
        t.clip
            .shots
            .iter()
            .position(|s| frame >= s[0] && frame <= s[1])
    };
    let mut by_person: BTreeMap<&str, Vec<(f64, u64)>> = BTreeMap::new();
    for (i, te) in t.events.iter().enumerate() {
        if let (Some(who), Some((track, at))) = (&te.who, hit_track[i]) {
            by_person.entry(who).or_default().push((at, track));
        }
    }
    let mut switches = 0;
    let mut followed = 0;
    for (who, mut hits) in by_person {
        hits.sort_by(|a, b| a.0.total_cmp(&b.0));
        if hits.len() > 1 {
            followed += 1;
        }
        let gaps = t
            .persons
            .iter()
            .find(|p| p.id == who)
            .map(|p| p.out_of_view.as_slice())
            .unwrap_or(&[]);
        for w in hits.windows(2) {
            let ((a, ta), (b, tb)) = (w[0], w[1]);
            if ta == tb {
                continue;
            }
            let across_cut = shot_of(a) != shot_of(b);
            let across_gap = gaps.iter().any(|g| a <= g[0] && b >= g[1]);
            if !across_cut && !across_gap {
                switches += 1;
            }
        }
    }
    (switches, followed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRUTH: &str = r#"
format = 1
[clip]
name = "t"
file = "t.mp4"
package = { registry = "pypi", name = "x", version = "1", path = "t.mp4" }
sha256 = "00"
width = 640
height = 480
fps = 10.0
frames = 300
duration_s = 30.0
shots = [[0, 149], [150, 299]]
[scoring]
tolerance_s = 0.5
[camera]
[[camera.lines]]
name = "L"
from = [0.5, 0.0]
to = [0.5, 1.0]
[[camera.zones]]
name = "Z"
polygon = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]]
[[persons]]
id = "A"
description = "a"
[[persons]]
id = "B"
description = "b"
out_of_view = [[20.0, 22.0]]
[[events]]
rule = "L"
kind = "cross"
frame = 50
t_s = 5.0
direction = "in"
who = "A"
[[events]]
rule = "Z"
kind = "enter"
frame = 60
t_s = 6.0
who = "A"
[[events]]
rule = "Z"
kind = "leave"
frame = 100
t_s = 10.0
who = "A"
late_ok_s = 3.0
[[events]]
rule = "L"
kind = "cross"
frame = 190
t_s = 19.0
direction = "out"
who = "B"
[[events]]
rule = "L"
kind = "cross"
frame = 230
t_s = 23.0
direction = "in"
who = "B"
[[events]]
rule = "Z"
kind = "dwell"
frame = 250
t_s = 25.0
optional = true
[[dont_care]]
rule = "L"
from_s = 27.0
to_s = 28.0
who = ""
reason = "r"
"#;

    fn truth() -> Truth {
        let t: Truth = toml::from_str(TRUTH).unwrap();
        check(&t).unwrap();
        t
    }

    fn ev(rule: &str, kind: Kind, dir: Option<&str>, t_s: f64, track: u64) -> Emitted {
        Emitted {
            rule: rule.into(),
            kind,
            direction: dir.map(String::from),
            t_s,
            track_id: track,
        }
    }

    const NO_DELAY: Delays = Delays {
        sampling_s: 0.0,
        zone_inertia_s: 0.0,
        line_confirm_s: 0.0,
    };

    #[test]
    fn a_perfect_run_scores_all_hits_and_no_switch() {
        let t = truth();
        let e = [
            ev("L", Kind::Cross, Some("in"), 5.1, 1),
            ev("Z", Kind::Enter, None, 6.2, 1),
            ev("Z", Kind::Leave, None, 12.5, 1), // late, within late_ok_s
            ev("L", Kind::Cross, Some("out"), 19.0, 2),
            ev("L", Kind::Cross, Some("in"), 23.1, 3), // new id after out_of_view
        ];
        let s = score(&t, &e, &NO_DELAY);
        assert_eq!(s.total.truth, 5);
        assert_eq!(s.total.hits, 5);
        assert_eq!(s.total.recall(), 1.0);
        assert_eq!(s.total.precision(), 1.0);
        assert_eq!(s.id_switches, 0);
        assert_eq!(s.persons_followed, 2);
        // The optional dwell, not emitted, is listed but not scored.
        assert!(s.lines.iter().any(|l| l.outcome == "optional_missed"));
    }

    #[test]
    fn misses_duplicates_direction_errors_and_false_positives_are_told_apart() {
        let t = truth();
        let e = [
            ev("L", Kind::Cross, Some("in"), 5.0, 1),
            ev("L", Kind::Cross, Some("in"), 5.3, 7), // duplicate of the 5.0 one
            ev("L", Kind::Cross, Some("in"), 19.1, 2), // wrong direction
            ev("Z", Kind::Enter, None, 14.0, 1),      // nothing expected then
            ev("L", Kind::Cross, Some("out"), 27.5, 9), // dont_care span
            ev("Z", Kind::Dwell, None, 25.2, 4),      // optional
            ev("Z", Kind::Leave, None, 9.2, 5),       // too early: outside [9.5, 13.5]
        ];
        let s = score(&t, &e, &NO_DELAY);
        let l = &s.per_rule["L"];
        assert_eq!(
            (l.truth, l.hits, l.duplicates, l.direction_errors),
            (3, 1, 1, 1)
        );
        assert_eq!(l.misses, 1, "the crossing at 23.0");
        assert_eq!(l.unscored, 1);
        let z = &s.per_rule["Z"];
        assert_eq!((z.truth, z.hits, z.misses, z.false_positives), (2, 0, 2, 2));
        assert_eq!(z.unscored, 1);
        assert_eq!(s.total.recall(), 1.0 / 5.0);
        assert_eq!(s.total.precision(), 1.0 / 5.0);
    }

    #[test]
    fn design_delays_widen_the_window_late_side_only() {
        let t = truth();
        let late = [ev("Z", Kind::Enter, None, 6.7, 1)];
        let early = [ev("Z", Kind::Enter, None, 5.4, 1)];
        let d = Delays {
            sampling_s: 0.1,
            zone_inertia_s: 0.2,
            line_confirm_s: 0.0,
        };
        assert_eq!(score(&t, &late, &NO_DELAY).total.hits, 0);
        assert_eq!(score(&t, &late, &d).total.hits, 1);
        assert_eq!(score(&t, &early, &d).total.hits, 0);
    }

    #[test]
    fn an_id_change_counts_as_a_switch_unless_across_a_cut_or_out_of_view() {
        let t = truth();
        // A: id 1 at the crossing, id 2 at the enter → a switch.
        let e = [
            ev("L", Kind::Cross, Some("in"), 5.0, 1),
            ev("Z", Kind::Enter, None, 6.0, 2),
            ev("Z", Kind::Leave, None, 10.0, 2),
        ];
        assert_eq!(score(&t, &e, &NO_DELAY).id_switches, 1);
        // B: 19.0 (shot 2) → 23.0 is across the out_of_view span [20, 22]: no switch.
        let e = [
            ev("L", Kind::Cross, Some("out"), 19.0, 4),
            ev("L", Kind::Cross, Some("in"), 23.0, 5),
        ];
        assert_eq!(score(&t, &e, &NO_DELAY).id_switches, 0);
        // A cut between A's events (frame 149 | 150) would excuse it too.
        let mut t2 = truth();
        t2.clip.shots = vec![[0, 55], [56, 299]];
        let e = [
            ev("L", Kind::Cross, Some("in"), 5.0, 1),
            ev("Z", Kind::Enter, None, 6.0, 2),
        ];
        assert_eq!(score(&t2, &e, &NO_DELAY).id_switches, 0);
    }

    #[test]
    fn bad_truth_files_are_refused_with_the_event_named() {
        let mut t = truth();
        t.events[0].rule = "nope".into();
        assert!(check(&t).unwrap_err().contains("events[0]"));
        let mut t = truth();
        t.events[1].direction = Some("in".into());
        assert!(check(&t).unwrap_err().contains("direction"));
        let mut t = truth();
        t.events[0].who = Some("Z9".into());
        assert!(check(&t).unwrap_err().contains("Z9"));
        assert!(
            toml::from_str::<Truth>(&TRUTH.replace("tolerance_s = 0.5", "tolerance = 0.5"))
                .is_err()
        );
    }

    #[test]
    fn the_shipped_truth_files_are_valid() {
        for clip in ["vtest", "bikes"] {
            let p = format!(
                "{}/tests/data/eval/{clip}/truth.toml",
                env!("CARGO_MANIFEST_DIR")
            );
            let t: Truth = toml::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{p}: {e}"));
            check(&t).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }
}
