//! Rule engine of one camera: confirmed tracks of each frame → zone and line events.
//!
//! Rules are the camera's zones followed by its lines, in config order; [`RuleHit::rule`]
//! indexes [`RuleEngine::rule_names`].
//!
//! Per rule and track:
//!
//! * **Reference point**: the rule's [`Anchor`] of the track's box (bottom centre, or centre).
//! * **Filters**: a track whose class is not in the rule's `classes` (empty = every class) is
//!   invisible to the rule. A frame in which the track's detection scores below the rule's
//!   `min_score` (or the camera's) is skipped for that rule, as if the track had not been seen:
//!   the state stays as it was and nothing fires; the next qualifying frame continues from the
//!   last qualifying point (so a line crossed during low-score frames still fires, once).
//! * **Zones**: `enter` when the point has been inside for `inertia` consecutive qualifying
//!   frames after being outside (a track first seen already inside counts as entering); the
//!   stay starts at the first of those frames. `leave` when it has been outside for `inertia`
//!   frames after being inside (the stay ends at the first of them), or when the track is
//!   removed (left the frame or died) while inside (the stay ends when it was last seen); a
//!   track that is lost but not yet removed stays inside. With `inertia` = 1 a transition
//!   fires at once; jitter at the edge shorter than `inertia` frames fires nothing. A point
//!   counts as outside a zone it is in only beyond `leave_margin` widths of the track's box
//!   from the polygon (measured in the frame's pixel proportions,
//!   [`RuleEngine::set_frame_size`]), unless the box touches the picture's left, right or bottom
//!   border: someone standing on the edge, feet a little in and a little out for longer than the
//!   inertia, does not leave and enter again. `dwell`
//!   fires once per continuous stay, the first frame the stay has lasted `dwell` seconds; a new
//!   stay (after leaving) can fire it again. Points on the polygon's edge are inside. Enter
//!   fires `dwell_s: None`; dwell and leave report the stay's length.
//! * **Lines**: a crossing when the segment from the track's previous point to its current one
//!   meets the line segment *and* the side (sign of [`cross`]`(from, to, p)`, > 0 = right)
//!   strictly changes. A point exactly on the line has no side: the last non-zero side is kept,
//!   so touching the line and going back fires nothing, and crossing through a point exactly on
//!   the line fires once (at the frame that reaches the far side). Left → right (walking from
//!   `from` to `to`) is [`Crossing::In`], right → left [`Crossing::Out`]; the rule's direction
//!   filters them. Going round the end of the segment changes side without firing.
//! * **Cooldown**: after a hit of rule R for track T, further hits of R for T are suppressed
//!   (dropped, state still updated) for `cooldown` seconds. A `dwell` due during the cooldown
//!   is not lost but waits: it fires at the first frame after the cooldown, if the stay goes on.
//!
//! Per-track state lives in [`MAX_TRACKS`] slots, allocated once in [`RuleEngine::new`] (one
//! state per slot and rule); [`RuleEngine::update`] does not allocate. A slot is freed when its
//! track is reported removed; if a new track finds every slot taken, the slot seen least
//! recently is reused (its state is dropped without events).

use super::geometry::{Point, cross, distance_to_polygon, point_in_polygon, segments_intersect};
use super::tracker::TrackView;
use super::{BBox, MAX_HITS, MAX_TRACKS, coco_class_id};
use crate::config::{Anchor, LineConfig, LineDirection, ZoneConfig, ZoneEventKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    ZoneEnter,
    ZoneLeave,
    ZoneDwell,
    LineCross,
}

impl HitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HitKind::ZoneEnter => "enter",
            HitKind::ZoneLeave => "leave",
            HitKind::ZoneDwell => "dwell",
            HitKind::LineCross => "cross",
        }
    }
}

/// Direction of a line crossing; see [`LineDirection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crossing {
    /// From the left-hand side to the right-hand side, walking from `from` to `to`.
    In,
    Out,
}

impl Crossing {
    pub fn as_str(self) -> &'static str {
        match self {
            Crossing::In => "in",
            Crossing::Out => "out",
        }
    }
}

/// One event of one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleHit {
    /// Index into [`RuleEngine::rule_names`].
    pub rule: usize,
    pub kind: HitKind,
    /// `Some` for [`HitKind::LineCross`] only.
    pub crossing: Option<Crossing>,
    pub track_id: u64,
    pub class_id: u16,
    /// The track's detection in this frame; for a leave on removal, its last one seen.
    pub score: f32,
    pub bbox: BBox,
    /// Length of the stay in seconds, for [`HitKind::ZoneDwell`] and [`HitKind::ZoneLeave`].
    pub dwell_s: Option<f32>,
    /// Seconds since the rules first saw the track (its first confirmed frame): how long it
    /// has been followed, for consumers that filter out short-lived tracks.
    pub track_age_s: f32,
    /// The track's mean detection score so far.
    pub track_mean_score: f32,
    /// Stream time the event is about: the frame's, except for a removed track's leave (or
    /// still unconfirmed crossing), which is timed at its last sighting, not at its removal
    /// (`max_age` frames later).
    pub t_s: f64,
}

pub type RuleHits = heapless::Vec<RuleHit, MAX_HITS>;

#[derive(Debug, Clone)]
enum Shape {
    Zone {
        polygon: Vec<Point>,
        enter: bool,
        leave: bool,
        /// Seconds, when dwell events are wanted.
        dwell: Option<f64>,
        /// Frames inside (outside) before `enter` (`leave`).
        inertia: u32,
        /// Box widths outside the polygon that a point inside must go to count as outside.
        leave_margin: f32,
    },
    Line {
        from: Point,
        to: Point,
        direction: LineDirection,
        /// Frames on the far side before a crossing fires.
        confirm: u32,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    shape: Shape,
    /// `None` = every class.
    classes: Option<Vec<u16>>,
    min_score: f32,
    cooldown: f64,
    anchor: Anchor,
}

/// State of one track for one rule.
#[derive(Debug, Clone, Copy)]
struct RuleState {
    /// Seen by this rule at least once (a qualifying frame).
    seen: bool,
    // Zones.
    inside: bool,
    enter_t: f64,
    dwell_fired: bool,
    /// Consecutive qualifying frames whose inside/outside differs from `inside`, and the time
    /// of the first of them.
    streak: u32,
    streak_t: f64,
    // Lines.
    prev: Point,
    /// Last non-zero side: -1 left, 1 right, 0 not known yet.
    side: i8,
    /// A crossing waiting for its confirmation: the far side (0 = none) and the frames seen
    /// there so far.
    pending: i8,
    pending_n: u32,
    /// Time of the last hit emitted; -inf = none.
    last_hit: f64,
}

const FRESH: RuleState = RuleState {
    seen: false,
    inside: false,
    enter_t: 0.0,
    dwell_fired: false,
    streak: 0,
    streak_t: 0.0,
    prev: [0.0, 0.0],
    side: 0,
    pending: 0,
    pending_n: 0,
    last_hit: f64::NEG_INFINITY,
};

/// A track's slot: its id and what it looked like last.
#[derive(Debug, Clone, Copy)]
struct Slot {
    track_id: u64,
    last_seen: u64,
    /// Time of the frame it was last seen in (a leave on removal is timed there).
    last_t: f64,
    /// Time of the frame the rules first saw it in.
    first_t: f64,
    mean_score: f32,
    class_id: u16,
    score: f32,
    bbox: BBox,
}

/// The rules of one camera and the per-track state they need.
pub struct RuleEngine {
    names: Vec<String>,
    rules: Vec<Rule>,
    slots: [Option<Slot>; MAX_TRACKS],
    /// `MAX_TRACKS * rules.len()` states; slot `i` owns `states[i * n .. (i + 1) * n]`.
    states: Vec<RuleState>,
    frame: u64,
    dropped_hits: u64,
    /// Per rule, the line crossings emitted: `[in, out]` (zones: unused).
    crossings: Vec<[u64; 2]>,
    /// The frame's width / height: distances (a zone's `leave_margin`) are measured in pixels'
    /// proportions, not in the normalised units, which stretch one axis. 1 until told.
    aspect: f32,
}

/// What a rule looks like and what it has counted, for drawing it ([`RuleEngine::shapes`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RuleShape<'a> {
    /// A zone and the tracks inside it now.
    Zone { polygon: &'a [Point], inside: usize },
    /// A line and the crossings it has emitted since these rules were set.
    Line {
        from: Point,
        to: Point,
        ins: u64,
        outs: u64,
    },
}

fn class_filter(names: &[String]) -> Option<Vec<u16>> {
    // Unknown names are skipped; a non-empty list of only unknown names matches nothing.
    (!names.is_empty()).then(|| names.iter().filter_map(|n| coco_class_id(n)).collect())
}

impl RuleEngine {
    /// Builds the rules of one camera. Class names are mapped with [`coco_class_id`]; the
    /// config is expected to be validated already.
    pub fn new(zones: &[ZoneConfig], lines: &[LineConfig], camera_min_score: f32) -> Self {
        let mut names = Vec::with_capacity(zones.len() + lines.len());
        let mut rules = Vec::with_capacity(zones.len() + lines.len());
        for z in zones {
            names.push(z.name.clone());
            let has = |k| z.events.contains(&k);
            rules.push(Rule {
                shape: Shape::Zone {
                    polygon: z.polygon.clone(),
                    enter: has(ZoneEventKind::Enter),
                    leave: has(ZoneEventKind::Leave),
                    dwell: z
                        .dwell
                        .filter(|_| has(ZoneEventKind::Dwell))
                        .map(|d| d.as_secs_f64()),
                    inertia: z.inertia.max(1),
                    leave_margin: z.leave_margin.max(0.0),
                },
                classes: class_filter(&z.classes),
                min_score: z.min_score.unwrap_or(camera_min_score),
                cooldown: z.cooldown.as_secs_f64(),
                anchor: z.anchor,
            });
        }
        for l in lines {
            names.push(l.name.clone());
            rules.push(Rule {
                shape: Shape::Line {
                    from: l.from,
                    to: l.to,
                    direction: l.direction,
                    confirm: l.confirm.max(1),
                },
                classes: class_filter(&l.classes),
                min_score: l.min_score.unwrap_or(camera_min_score),
                cooldown: l.cooldown.as_secs_f64(),
                anchor: l.anchor,
            });
        }
        let states = vec![FRESH; MAX_TRACKS * rules.len()];
        Self {
            names,
            crossings: vec![[0; 2]; rules.len()],
            rules,
            slots: [None; MAX_TRACKS],
            states,
            frame: 0,
            dropped_hits: 0,
            aspect: 1.0,
        }
    }

    /// Each rule's name and shape with its counts, zones first, then lines, in config order.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, RuleShape<'_>)> {
        let n = self.rules.len();
        self.names
            .iter()
            .zip(&self.rules)
            .enumerate()
            .map(move |(ri, (name, rule))| {
                let shape = match &rule.shape {
                    Shape::Zone { polygon, .. } => RuleShape::Zone {
                        polygon,
                        inside: (0..MAX_TRACKS)
                            .filter(|&slot| {
                                let st = &self.states[slot * n + ri];
                                self.slots[slot].is_some() && st.seen && st.inside
                            })
                            .count(),
                    },
                    Shape::Line { from, to, .. } => RuleShape::Line {
                        from: *from,
                        to: *to,
                        ins: self.crossings[ri][0],
                        outs: self.crossings[ri][1],
                    },
                };
                (name.as_str(), shape)
            })
    }

    /// Rule names: zones first, then lines, in config order.
    pub fn rule_names(&self) -> &[String] {
        &self.names
    }

    /// The bounding box of each rule's zone or line, in rule order (for the motion gate).
    pub fn regions(&self) -> impl Iterator<Item = BBox> + '_ {
        self.rules.iter().map(|r| {
            let grow = |b: BBox, p: &Point| {
                BBox::new(
                    b.x1.min(p[0]),
                    b.y1.min(p[1]),
                    b.x2.max(p[0]),
                    b.y2.max(p[1]),
                )
            };
            let empty = BBox::new(f32::MAX, f32::MAX, f32::MIN, f32::MIN);
            match &r.shape {
                Shape::Zone { polygon, .. } => polygon.iter().fold(empty, grow),
                Shape::Line { from, to, .. } => grow(grow(empty, from), to),
            }
        })
    }

    /// Hits dropped so far because one frame produced more than [`MAX_HITS`].
    pub fn dropped_hits(&self) -> u64 {
        self.dropped_hits
    }

    /// The frames' size in pixels (for the zones' `leave_margin`); ignored if either is 0.
    pub fn set_frame_size(&mut self, width: u32, height: u32) {
        if width > 0 && height > 0 {
            self.aspect = width as f32 / height as f32;
        }
    }

    /// Forgets every track, firing nothing.
    pub fn reset(&mut self) {
        self.slots = [None; MAX_TRACKS];
    }

    /// One frame: `tracks` are the confirmed tracks matched in it, `removed` the ids of tracks
    /// that died in it (both as [`super::tracker::TrackerOutput`] gives them), `t_s` its time in
    /// seconds (monotonic). `hits` is cleared, then filled with this frame's events (tracks in
    /// the given order, rules in index order, then leaves of removed tracks); hits beyond
    /// [`MAX_HITS`] are dropped and counted in [`RuleEngine::dropped_hits`].
    pub fn update(&mut self, t_s: f64, tracks: &[TrackView], removed: &[u64], hits: &mut RuleHits) {
        hits.clear();
        self.frame += 1;
        let n = self.rules.len();
        if n == 0 {
            return;
        }
        let aspect = self.aspect;
        for tv in tracks {
            let slot = self.slot_for(tv.id);
            let first_t = self.slots[slot]
                .filter(|s| s.track_id == tv.id)
                .map_or(t_s, |s| s.first_t);
            self.slots[slot] = Some(Slot {
                track_id: tv.id,
                last_seen: self.frame,
                last_t: t_s,
                first_t,
                mean_score: tv.mean_score,
                class_id: tv.class_id,
                score: tv.score,
                bbox: tv.bbox,
            });
            let states = &mut self.states[slot * n..(slot + 1) * n];
            for (ri, (rule, st)) in self.rules.iter().zip(states.iter_mut()).enumerate() {
                if let Some(c) = &rule.classes
                    && !c.contains(&tv.class_id)
                {
                    continue;
                }
                if tv.score.is_nan() || tv.score < rule.min_score {
                    continue;
                }
                let p = anchor_point(&tv.bbox, rule.anchor);
                let mut emit = |kind: HitKind, crossing: Option<Crossing>, dwell_s: Option<f64>| {
                    let hit = RuleHit {
                        rule: ri,
                        kind,
                        crossing,
                        track_id: tv.id,
                        class_id: tv.class_id,
                        score: tv.score,
                        bbox: tv.bbox,
                        dwell_s: dwell_s.map(|d| d as f32),
                        track_age_s: (t_s - first_t) as f32,
                        track_mean_score: tv.mean_score,
                        t_s,
                    };
                    if hits.push(hit).is_err() {
                        self.dropped_hits += 1;
                    }
                };
                let cooling =
                    |st: &RuleState| rule.cooldown > 0.0 && t_s - st.last_hit < rule.cooldown;
                match &rule.shape {
                    Shape::Zone {
                        polygon,
                        enter,
                        leave,
                        dwell,
                        inertia,
                        leave_margin,
                    } => {
                        let mut now_inside = point_in_polygon(polygon, p);
                        if st.inside && !now_inside && *leave_margin > 0.0 && !at_border(&tv.bbox) {
                            // Inside until clearly out: a point within the margin of the edge
                            // still counts as inside (x in units of the frame's height). Not for
                            // a box at the picture's border: leaving the picture, the person
                            // could not get clear of a zone drawn near it.
                            let margin = leave_margin * (tv.bbox.x2 - tv.bbox.x1) * aspect;
                            now_inside = distance_to_polygon(polygon, p, aspect) <= margin;
                        }
                        st.seen = true;
                        if now_inside == st.inside {
                            st.streak = 0;
                        } else {
                            if st.streak == 0 {
                                st.streak_t = t_s;
                            }
                            st.streak += 1;
                        }
                        if st.streak >= *inertia && now_inside {
                            // Inside for `inertia` frames: entered at the first of them.
                            st.streak = 0;
                            st.inside = true;
                            st.enter_t = st.streak_t;
                            st.dwell_fired = false;
                            if *enter && !cooling(st) {
                                st.last_hit = t_s;
                                emit(HitKind::ZoneEnter, None, None);
                            }
                        } else if st.streak >= *inertia {
                            // Outside for `inertia` frames: the stay ended at the first of them.
                            st.streak = 0;
                            st.inside = false;
                            if *leave && !cooling(st) {
                                st.last_hit = t_s;
                                emit(HitKind::ZoneLeave, None, Some(st.streak_t - st.enter_t));
                            }
                        }
                        if let Some(d) = dwell
                            && st.inside
                            && !st.dwell_fired
                            && t_s - st.enter_t >= *d
                            && !cooling(st)
                        {
                            st.dwell_fired = true;
                            st.last_hit = t_s;
                            emit(HitKind::ZoneDwell, None, Some(t_s - st.enter_t));
                        }
                    }
                    Shape::Line {
                        from,
                        to,
                        direction,
                        confirm,
                    } => {
                        let c = cross(*from, *to, p);
                        let side: i8 = if c > 0.0 {
                            1
                        } else if c < 0.0 {
                            -1
                        } else {
                            0
                        };
                        // A crossing waiting for confirmation: one more frame on the far side,
                        // or back over the line (then neither way fires).
                        let mut went_back = false;
                        if st.pending != 0 && side != 0 {
                            if side == st.pending {
                                st.pending_n += 1;
                            } else {
                                st.pending = 0;
                                went_back = true;
                            }
                        }
                        if st.seen
                            && !went_back
                            && side != 0
                            && st.side != 0
                            && side != st.side
                            && segments_intersect(st.prev, p, *from, *to)
                        {
                            st.pending = side;
                            st.pending_n = 1;
                        }
                        if st.pending != 0 && st.pending_n >= *confirm {
                            let crossing = side_crossing(st.pending);
                            st.pending = 0;
                            if wanted(*direction, crossing) && !cooling(st) {
                                st.last_hit = t_s;
                                self.crossings[ri][(crossing == Crossing::Out) as usize] += 1;
                                emit(HitKind::LineCross, Some(crossing), None);
                            }
                        }
                        st.seen = true;
                        st.prev = p;
                        if side != 0 {
                            st.side = side;
                        }
                    }
                }
            }
        }
        for &id in removed {
            let Some(slot) = self.find(id) else { continue };
            let Some(s) = self.slots[slot].take() else {
                continue;
            };
            let states = &mut self.states[slot * n..(slot + 1) * n];
            for (ri, (rule, st)) in self.rules.iter().zip(states.iter()).enumerate() {
                // A crossing still waiting for its confirmation when the track died (it walked
                // over the line and out of sight): it did cross.
                if let Shape::Line { direction, .. } = rule.shape
                    && st.pending != 0
                    && !(rule.cooldown > 0.0 && t_s - st.last_hit < rule.cooldown)
                {
                    let crossing = side_crossing(st.pending);
                    if wanted(direction, crossing) {
                        self.crossings[ri][(crossing == Crossing::Out) as usize] += 1;
                        let hit = RuleHit {
                            rule: ri,
                            kind: HitKind::LineCross,
                            crossing: Some(crossing),
                            track_id: id,
                            class_id: s.class_id,
                            score: s.score,
                            bbox: s.bbox,
                            dwell_s: None,
                            track_age_s: (s.last_t - s.first_t) as f32,
                            track_mean_score: s.mean_score,
                            t_s: s.last_t,
                        };
                        if hits.push(hit).is_err() {
                            self.dropped_hits += 1;
                        }
                    }
                }
                if let Shape::Zone { leave: true, .. } = rule.shape
                    && st.seen
                    && st.inside
                    && !(rule.cooldown > 0.0 && t_s - st.last_hit < rule.cooldown)
                {
                    let hit = RuleHit {
                        rule: ri,
                        kind: HitKind::ZoneLeave,
                        crossing: None,
                        track_id: id,
                        class_id: s.class_id,
                        score: s.score,
                        bbox: s.bbox,
                        // The stay ended when the track was last seen inside, not at its
                        // removal (nor at a leave still waiting for its inertia).
                        dwell_s: Some(
                            (if st.streak > 0 { st.streak_t } else { s.last_t } - st.enter_t)
                                .max(0.0) as f32,
                        ),
                        track_age_s: (s.last_t - s.first_t) as f32,
                        track_mean_score: s.mean_score,
                        t_s: s.last_t,
                    };
                    if hits.push(hit).is_err() {
                        self.dropped_hits += 1;
                    }
                }
            }
        }
    }

    fn find(&self, id: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.is_some_and(|s| s.track_id == id))
    }

    /// The slot of `id`, taking a free one (with fresh states) if it has none, or the least
    /// recently seen one if none is free.
    fn slot_for(&mut self, id: u64) -> usize {
        if let Some(i) = self.find(id) {
            return i;
        }
        let i = self
            .slots
            .iter()
            .position(|s| s.is_none())
            .unwrap_or_else(|| {
                self.slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.map_or(0, |s| s.last_seen))
                    .map_or(0, |(i, _)| i)
            });
        let n = self.rules.len();
        self.states[i * n..(i + 1) * n].fill(FRESH);
        self.slots[i] = None;
        i
    }
}

/// Whether a line's `direction` fires on `crossing`.
fn wanted(direction: LineDirection, crossing: Crossing) -> bool {
    match direction {
        LineDirection::Both => true,
        LineDirection::In => crossing == Crossing::In,
        LineDirection::Out => crossing == Crossing::Out,
    }
}

/// The crossing that ends on `side` (right of the line = in).
fn side_crossing(side: i8) -> Crossing {
    if side > 0 {
        Crossing::In
    } else {
        Crossing::Out
    }
}

/// A box touching the picture's left, right or bottom border (within 1 % of it): its object is
/// leaving the picture there. Not the top: a head cut off by the top of the picture (someone
/// near the camera) says nothing about where the feet are.
fn at_border(b: &BBox) -> bool {
    const EDGE: f32 = 0.01;
    b.x1 <= EDGE || b.x2 >= 1.0 - EDGE || b.y2 >= 1.0 - EDGE
}

fn anchor_point(b: &BBox, anchor: Anchor) -> Point {
    let cx = (b.x1 + b.x2) * 0.5;
    match anchor {
        Anchor::Bottom => [cx, b.y2],
        Anchor::Center => [cx, (b.y1 + b.y2) * 0.5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn zone(name: &str, polygon: &[[f32; 2]]) -> ZoneConfig {
        ZoneConfig {
            // Most tests look at one frame's transition; inertia and the leave margin have their
            // own tests.
            inertia: 1,
            leave_margin: 0.0,
            name: name.into(),
            polygon: polygon.to_vec(),
            classes: vec![],
            min_score: None,
            events: vec![ZoneEventKind::Enter, ZoneEventKind::Leave],
            dwell: None,
            cooldown: Dur::default(),
            anchor: Anchor::Bottom,
        }
    }

    fn line(name: &str, from: [f32; 2], to: [f32; 2]) -> LineConfig {
        LineConfig {
            name: name.into(),
            from,
            to,
            direction: LineDirection::Both,
            classes: vec![],
            min_score: None,
            cooldown: Dur::default(),
            anchor: Anchor::Bottom,
            confirm: 1,
        }
    }

    /// A track whose bottom-centre anchor is at (x, y), box 0.1 × 0.2.
    fn tv(id: u64, x: f32, y: f32) -> TrackView {
        TrackView {
            id,
            bbox: BBox::new(x - 0.05, y - 0.2, x + 0.05, y),
            score: 0.9,
            class_id: 0,
            hits: 5,
            mean_score: 0.9,
        }
    }

    const SQUARE: [[f32; 2]; 4] = [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]];

    /// (rule, kind, crossing, track) of each hit.
    type Brief = (usize, HitKind, Option<Crossing>, u64);

    fn brief(h: &RuleHits) -> Vec<Brief> {
        h.iter()
            .map(|h| (h.rule, h.kind, h.crossing, h.track_id))
            .collect()
    }

    /// Runs track 7's anchor through `pts`, frame k at t = k s; every hit with its frame.
    fn run_path(e: &mut RuleEngine, pts: &[[f32; 2]]) -> Vec<(usize, Brief)> {
        let mut hits = RuleHits::new();
        let mut all = Vec::new();
        for (k, p) in pts.iter().enumerate() {
            e.update(k as f64, &[tv(7, p[0], p[1])], &[], &mut hits);
            all.extend(brief(&hits).into_iter().map(|b| (k, b)));
        }
        all
    }

    const IN: Option<Crossing> = Some(Crossing::In);
    const OUT: Option<Crossing> = Some(Crossing::Out);

    // A horizontal line from (0.2, 0.5) to (0.8, 0.5): walking rightwards, the right-hand side
    // is below (y down). So moving downwards across it is `in`, upwards is `out`.
    fn hline() -> LineConfig {
        line("door", [0.2, 0.5], [0.8, 0.5])
    }

    #[test]
    fn rule_names_zones_then_lines() {
        let e = RuleEngine::new(&[zone("z", &SQUARE)], &[hline()], 0.3);
        assert_eq!(e.rule_names(), &["z".to_string(), "door".to_string()]);
    }

    #[test]
    fn line_crossing_direction() {
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        let hits = run_path(&mut e, &[[0.5, 0.3], [0.5, 0.45], [0.5, 0.55], [0.5, 0.7]]);
        assert_eq!(hits, vec![(2, (0, HitKind::LineCross, IN, 7))]);
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        let hits = run_path(&mut e, &[[0.5, 0.7], [0.5, 0.55], [0.5, 0.45], [0.5, 0.3]]);
        assert_eq!(hits, vec![(2, (0, HitKind::LineCross, OUT, 7))]);
        // Reversing the line's end points swaps the meaning.
        let mut e = RuleEngine::new(&[], &[line("door", [0.8, 0.5], [0.2, 0.5])], 0.3);
        let hits = run_path(&mut e, &[[0.5, 0.3], [0.5, 0.7]]);
        assert_eq!(hits, vec![(1, (0, HitKind::LineCross, OUT, 7))]);
    }

    #[test]
    fn line_crossing_vertical_line_in_is_left_to_right_walking_down() {
        // Walking from (0.5, 0.1) down to (0.5, 0.9), your right hand points to -x.
        let mut e = RuleEngine::new(&[], &[line("v", [0.5, 0.1], [0.5, 0.9])], 0.3);
        let hits = run_path(&mut e, &[[0.7, 0.5], [0.3, 0.5]]);
        assert_eq!(hits, vec![(1, (0, HitKind::LineCross, IN, 7))]);
    }

    #[test]
    fn back_and_forth_fires_each_crossing_without_cooldown() {
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        let path = [[0.5, 0.4], [0.5, 0.6], [0.5, 0.4], [0.5, 0.6], [0.5, 0.4]];
        let hits = run_path(&mut e, &path);
        assert_eq!(
            hits,
            vec![
                (1, (0, HitKind::LineCross, IN, 7)),
                (2, (0, HitKind::LineCross, OUT, 7)),
                (3, (0, HitKind::LineCross, IN, 7)),
                (4, (0, HitKind::LineCross, OUT, 7)),
            ]
        );
    }

    #[test]
    fn cooldown_suppresses_crossings_per_rule_and_track() {
        let mut l = hline();
        l.cooldown = Dur::millis(2500);
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        let path = [
            [0.5, 0.4],
            [0.5, 0.6],
            [0.5, 0.4],
            [0.5, 0.6],
            [0.5, 0.4],
            [0.5, 0.6],
        ];
        // Hits at t = 1 (fires), 2 and 3 (within 2.5 s: suppressed), 4 (fires), 5 (suppressed).
        let hits = run_path(&mut e, &path);
        assert_eq!(
            hits,
            vec![
                (1, (0, HitKind::LineCross, IN, 7)),
                (4, (0, HitKind::LineCross, OUT, 7))
            ]
        );
        // Another track is not affected by track 7's cooldown.
        let mut l = hline();
        l.cooldown = Dur::secs(100);
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        let mut hits = RuleHits::new();
        e.update(0.0, &[tv(1, 0.5, 0.4), tv(2, 0.6, 0.4)], &[], &mut hits);
        e.update(1.0, &[tv(1, 0.5, 0.6), tv(2, 0.6, 0.4)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::LineCross, IN, 1)]);
        e.update(2.0, &[tv(1, 0.5, 0.4), tv(2, 0.6, 0.6)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::LineCross, IN, 2)]);
    }

    #[test]
    fn touching_the_line_and_retreating_fires_nothing() {
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        let path = [[0.5, 0.3], [0.5, 0.5], [0.5, 0.3], [0.5, 0.5], [0.5, 0.45]];
        assert_eq!(run_path(&mut e, &path), vec![]);
    }

    #[test]
    fn crossing_through_a_point_on_the_line_fires_once() {
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        let path = [[0.5, 0.3], [0.5, 0.5], [0.5, 0.5], [0.5, 0.7], [0.5, 0.8]];
        assert_eq!(
            run_path(&mut e, &path),
            vec![(3, (0, HitKind::LineCross, IN, 7))]
        );
        // First seen exactly on the line: no side yet, so leaving it is no crossing either.
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        let path = [[0.5, 0.5], [0.5, 0.7], [0.5, 0.3]];
        assert_eq!(
            run_path(&mut e, &path),
            vec![(2, (0, HitKind::LineCross, OUT, 7))]
        );
    }

    #[test]
    fn crossing_the_infinite_line_beyond_the_segment_fires_nothing() {
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        // Past the right end (x > 0.8), down then back up.
        let path = [[0.9, 0.3], [0.9, 0.7], [0.85, 0.3]];
        assert_eq!(run_path(&mut e, &path), vec![]);
        // Going round the end changes side silently: coming back through the segment is `out`.
        let mut e = RuleEngine::new(&[], &[hline()], 0.3);
        let path = [[0.5, 0.3], [0.9, 0.3], [0.9, 0.7], [0.5, 0.7], [0.5, 0.3]];
        assert_eq!(
            run_path(&mut e, &path),
            vec![(4, (0, HitKind::LineCross, OUT, 7))]
        );
    }

    #[test]
    fn direction_filter() {
        let path = [[0.5, 0.4], [0.5, 0.6], [0.5, 0.4]];
        let mut l = hline();
        l.direction = LineDirection::In;
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        assert_eq!(
            run_path(&mut e, &path),
            vec![(1, (0, HitKind::LineCross, IN, 7))]
        );
        let mut l = hline();
        l.direction = LineDirection::Out;
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        assert_eq!(
            run_path(&mut e, &path),
            vec![(2, (0, HitKind::LineCross, OUT, 7))]
        );
    }

    #[test]
    fn class_filter_applies() {
        let mut l = hline();
        l.classes = vec!["car".into(), "truck".into()];
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        let mut hits = RuleHits::new();
        let mut person = tv(1, 0.5, 0.4);
        let mut car = tv(2, 0.3, 0.4);
        car.class_id = coco_class_id("car").unwrap();
        e.update(0.0, &[person, car], &[], &mut hits);
        person.bbox = tv(1, 0.5, 0.6).bbox;
        car.bbox = tv(2, 0.3, 0.6).bbox;
        e.update(1.0, &[person, car], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::LineCross, IN, 2)]);
        assert_eq!(hits[0].class_id, 2);
        // Only unknown names: matches nothing (not everything).
        let mut l = hline();
        l.classes = vec!["unicorn".into()];
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        assert_eq!(run_path(&mut e, &[[0.5, 0.4], [0.5, 0.6]]), vec![]);
    }

    #[test]
    fn min_score_filter_rule_overrides_camera() {
        let mut hits = RuleHits::new();
        let low = |id, y| TrackView {
            score: 0.4,
            ..tv(id, 0.5, y)
        };
        // Camera min_score 0.5 filters a 0.4 track.
        let mut e = RuleEngine::new(&[], &[hline()], 0.5);
        e.update(0.0, &[low(1, 0.4)], &[], &mut hits);
        e.update(1.0, &[low(1, 0.6)], &[], &mut hits);
        assert!(hits.is_empty());
        // The rule's own min_score 0.3 lets it through.
        let mut l = hline();
        l.min_score = Some(0.3);
        let mut e = RuleEngine::new(&[], &[l], 0.5);
        e.update(0.0, &[low(1, 0.4)], &[], &mut hits);
        e.update(1.0, &[low(1, 0.6)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::LineCross, IN, 1)]);
        assert_eq!(hits[0].score, 0.4);
    }

    #[test]
    fn low_score_frames_are_skipped_not_reset() {
        let mut e = RuleEngine::new(&[], &[hline()], 0.5);
        let mut hits = RuleHits::new();
        e.update(0.0, &[tv(1, 0.5, 0.4)], &[], &mut hits);
        // Crosses while the detector is unsure: nothing, and no state from that frame.
        let unsure = TrackView {
            score: 0.3,
            ..tv(1, 0.5, 0.6)
        };
        e.update(1.0, &[unsure], &[], &mut hits);
        assert!(hits.is_empty());
        e.update(2.0, &[tv(1, 0.5, 0.65)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::LineCross, IN, 1)]);
    }

    #[test]
    fn zone_enter_and_leave() {
        let mut e = RuleEngine::new(&[zone("z", &SQUARE)], &[], 0.3);
        let path = [
            [0.3, 0.5],
            [0.45, 0.5],
            [0.5, 0.5],
            [0.6, 0.5],
            [0.7, 0.5],
            [0.5, 0.5],
        ];
        assert_eq!(
            run_path(&mut e, &path),
            vec![
                (1, (0, HitKind::ZoneEnter, None, 7)),
                (4, (0, HitKind::ZoneLeave, None, 7)),
                (5, (0, HitKind::ZoneEnter, None, 7)),
            ]
        );
    }

    #[test]
    fn zone_first_seen_inside_counts_as_enter_and_leave_reports_stay() {
        let mut e = RuleEngine::new(&[zone("z", &SQUARE)], &[], 0.3);
        let mut hits = RuleHits::new();
        e.update(10.0, &[tv(3, 0.5, 0.5)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneEnter, None, 3)]);
        assert_eq!(hits[0].dwell_s, None);
        e.update(12.5, &[tv(3, 0.8, 0.5)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneLeave, None, 3)]);
        assert_eq!(hits[0].dwell_s, Some(2.5));
    }

    #[test]
    fn zone_events_filter() {
        let mut z = zone("z", &SQUARE);
        z.events = vec![ZoneEventKind::Leave];
        let mut e = RuleEngine::new(&[z], &[], 0.3);
        let path = [[0.3, 0.5], [0.5, 0.5], [0.7, 0.5]];
        assert_eq!(
            run_path(&mut e, &path),
            vec![(2, (0, HitKind::ZoneLeave, None, 7))]
        );
    }

    /// Track 7 through `ys` (x 0.5) over `hline` with the given `confirm`: (frame, crossing).
    fn confirm_run(confirm: u32, ys: &[f32]) -> Vec<(usize, Option<Crossing>)> {
        let mut l = hline();
        l.confirm = confirm;
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        run_path(&mut e, &ys.iter().map(|&y| [0.5, y]).collect::<Vec<_>>())
            .into_iter()
            .map(|(k, b)| (k, b.2))
            .collect()
    }

    #[test]
    fn a_crossing_fires_once_confirmed_on_the_far_side() {
        let path = [0.3, 0.45, 0.55, 0.6, 0.65, 0.7];
        assert_eq!(confirm_run(1, &path), vec![(2, IN)]);
        // Confirmed by the third frame below the line, the crossing frame included.
        assert_eq!(confirm_run(3, &path), vec![(4, IN)]);
        // Frames on the line itself neither confirm nor cancel.
        assert_eq!(
            confirm_run(2, &[0.3, 0.45, 0.55, 0.5, 0.5, 0.6]),
            vec![(5, IN)]
        );
    }

    #[test]
    fn jitter_across_a_line_shorter_than_confirm_fires_nothing() {
        // Over the line and back, twice, two frames each: with confirm 3 nothing; with 1, four.
        let jitter = [0.45, 0.52, 0.53, 0.47, 0.46, 0.52, 0.53, 0.48, 0.4];
        assert!(confirm_run(3, &jitter).is_empty());
        assert_eq!(
            confirm_run(1, &jitter),
            vec![(1, IN), (3, OUT), (5, IN), (7, OUT)]
        );
        // Back over at once, then a real crossing: one event, the real one.
        assert_eq!(
            confirm_run(2, &[0.45, 0.55, 0.45, 0.55, 0.6, 0.7]),
            vec![(4, IN)]
        );
    }

    #[test]
    fn a_crossing_pending_when_its_track_dies_still_counts() {
        let mut l = hline();
        l.confirm = 3;
        let mut e = RuleEngine::new(&[], &[l], 0.3);
        let mut hits = RuleHits::new();
        e.update(0.0, &[tv(7, 0.5, 0.4)], &[], &mut hits);
        e.update(0.2, &[tv(7, 0.5, 0.6)], &[], &mut hits);
        assert!(hits.is_empty(), "not confirmed yet");
        e.update(0.4, &[], &[7], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::LineCross, IN, 7)]);
        assert_eq!(hits[0].t_s, 0.2, "timed at the last sighting");
        let counted: Vec<(u64, u64)> = e
            .shapes()
            .filter_map(|(_, s)| match s {
                RuleShape::Line { ins, outs, .. } => Some((ins, outs)),
                RuleShape::Zone { .. } => None,
            })
            .collect();
        assert_eq!(counted, vec![(1, 0)]);
    }

    /// Zone `z` alone, in frames of `size` (pixels), over one track's views, a frame every 0.2 s:
    /// (frame, kind, dwell_s) of each hit.
    fn zone_run(
        z: ZoneConfig,
        size: (u32, u32),
        views: impl IntoIterator<Item = TrackView>,
    ) -> Vec<(usize, HitKind, Option<f32>)> {
        let mut e = RuleEngine::new(&[z], &[], 0.3);
        e.set_frame_size(size.0, size.1);
        let mut hits = RuleHits::new();
        let mut out = Vec::new();
        for (i, v) in views.into_iter().enumerate() {
            e.update(i as f64 * 0.2, &[v], &[], &mut hits);
            out.extend(hits.iter().map(|h| (i, h.kind, h.dwell_s)));
        }
        out
    }

    /// A track moving along x through `SQUARE`'s zone with the given inertia: (frame, kind).
    fn inertia_run(inertia: u32, xs: &[f32]) -> Vec<(usize, HitKind, Option<f32>)> {
        let mut z = zone("z", &SQUARE);
        z.inertia = inertia;
        z.events = vec![ZoneEventKind::Enter, ZoneEventKind::Leave];
        zone_run(z, (1, 1), xs.iter().map(|&x| tv(1, x, 0.45)))
    }

    #[test]
    fn jitter_at_a_zone_edge_shorter_than_the_inertia_fires_nothing() {
        // Out, in, out, in... one frame each side of the edge (x = 0.4).
        let jitter = [0.39, 0.41, 0.39, 0.41, 0.39, 0.41, 0.39];
        assert!(inertia_run(3, &jitter).is_empty());
        // Without inertia, every change fires.
        assert_eq!(inertia_run(1, &jitter).len(), 6);
        // Two frames inside, then out: still nothing with inertia 3.
        assert!(inertia_run(3, &[0.1, 0.5, 0.5, 0.1, 0.1, 0.1]).is_empty());
    }

    #[test]
    fn a_real_visit_fires_one_enter_and_one_leave_timed_at_the_edges() {
        // Outside 2 frames, inside 5, outside 4: enter at the third inside frame (index 4),
        // leave at the third outside frame (index 9); the stay is from frame 2 to frame 7:
        // 1.0 s, not the time between the two events.
        let path = [0.1, 0.1, 0.45, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9];
        let got = inertia_run(3, &path);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].1), (4, HitKind::ZoneEnter));
        assert_eq!((got[1].0, got[1].1), (9, HitKind::ZoneLeave));
        assert!((got[1].2.unwrap() - 1.0).abs() < 1e-6, "{got:?}");
        // A dip outside shorter than the inertia keeps the stay whole.
        let dip = [0.5, 0.5, 0.5, 0.9, 0.5, 0.5, 0.9, 0.9, 0.9];
        let got = inertia_run(3, &dip);
        assert_eq!(
            got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            vec![(2, HitKind::ZoneEnter), (8, HitKind::ZoneLeave)]
        );
        assert!((got[1].2.unwrap() - 1.2).abs() < 1e-6, "{got:?}");
    }

    /// A track at `(x, y)` each frame in `SQUARE`'s zone with inertia 3 and the given leave
    /// margin, in frames of `aspect`: (frame, kind).
    fn margin_run(margin: f32, aspect: (u32, u32), path: &[(f32, f32)]) -> Vec<(usize, HitKind)> {
        let mut z = zone("z", &SQUARE);
        z.inertia = 3;
        z.leave_margin = margin;
        let views = path.iter().map(|&(x, y)| tv(1, x, y));
        zone_run(z, aspect, views)
            .into_iter()
            .map(|(i, kind, _)| (i, kind))
            .collect()
    }

    #[test]
    fn a_person_standing_on_a_zone_edge_leaves_only_when_clearly_out() {
        // In the zone (its left edge at x = 0.4), then standing on the edge with the feet
        // (box 0.1 wide) 0.02 outside for four frames, then inside again: with inertia alone that
        // is a leave and a new enter; a margin of half a box width (0.05) keeps the stay whole.
        let edge = [
            (0.5, 0.5),
            (0.45, 0.5),
            (0.42, 0.5),
            (0.38, 0.5),
            (0.38, 0.5),
            (0.38, 0.5),
            (0.38, 0.5),
            (0.42, 0.5),
            (0.43, 0.5),
            (0.45, 0.5),
        ];
        assert_eq!(
            margin_run(0.0, (1, 1), &edge),
            vec![
                (2, HitKind::ZoneEnter),
                (5, HitKind::ZoneLeave),
                (9, HitKind::ZoneEnter)
            ]
        );
        assert_eq!(
            margin_run(0.5, (1, 1), &edge),
            vec![(2, HitKind::ZoneEnter)]
        );
        // Walking out past the margin: one leave, at the third frame beyond it (x 0.34 is 0.06
        // out); the frame within the margin (0.38) does not start the count.
        let out = [
            (0.5, 0.5),
            (0.5, 0.5),
            (0.5, 0.5),
            (0.38, 0.5),
            (0.34, 0.5),
            (0.3, 0.5),
            (0.25, 0.5),
            (0.2, 0.5),
        ];
        assert_eq!(
            margin_run(0.5, (1, 1), &out),
            vec![(2, HitKind::ZoneEnter), (6, HitKind::ZoneLeave)]
        );
        // Entering is not delayed: the first frames inside count, however near the edge.
        let enter = [(0.3, 0.5), (0.41, 0.5), (0.41, 0.5), (0.41, 0.5)];
        assert_eq!(
            margin_run(0.5, (1, 1), &enter),
            vec![(3, HitKind::ZoneEnter)]
        );
    }

    #[test]
    fn leaving_the_picture_through_a_zone_at_its_border_needs_no_margin() {
        // A zone 0.02 from the picture's left border: a person walking out of the picture can
        // never get half a box width clear of it. Once their box touches the border, any point
        // outside counts.
        let mut z = zone("door", &[[0.02, 0.4], [0.3, 0.4], [0.3, 0.6], [0.02, 0.6]]);
        z.inertia = 3;
        z.leave_margin = 0.5;
        let xs = [0.1, 0.1, 0.1, 0.015, 0.015, 0.015];
        let got = zone_run(z, (1, 1), xs.map(|x| tv(1, x, 0.5)));
        assert_eq!(
            got,
            vec![
                (2, HitKind::ZoneEnter, None),
                (5, HitKind::ZoneLeave, Some(0.6))
            ]
        );
    }

    #[test]
    fn the_leave_margin_is_measured_in_the_frames_pixel_proportions() {
        // Feet 0.06 of the height below the zone's bottom edge (y = 0.6) for three frames. The
        // margin is half the box's width, 0.05 of the frame's width: 0.05 of its height in a
        // square frame (so 0.06 is out: a leave), 0.089 in a 16:9 one (still inside).
        let below = [
            (0.5, 0.5),
            (0.5, 0.5),
            (0.5, 0.5),
            (0.5, 0.66),
            (0.5, 0.66),
            (0.5, 0.66),
        ];
        assert_eq!(
            margin_run(0.5, (1000, 1000), &below),
            vec![(2, HitKind::ZoneEnter), (5, HitKind::ZoneLeave)]
        );
        assert_eq!(
            margin_run(0.5, (1920, 1080), &below),
            vec![(2, HitKind::ZoneEnter)]
        );
        // Sideways in 16:9: feet 0.06 of the width left of the zone's left edge (x = 0.4) are
        // 0.107 of the height away, beyond the margin of 0.089: a leave (measured in normalised
        // units, 0.06 < 0.089, it would not be).
        let left = [
            (0.5, 0.5),
            (0.5, 0.5),
            (0.5, 0.5),
            (0.34, 0.5),
            (0.34, 0.5),
            (0.34, 0.5),
        ];
        assert_eq!(
            margin_run(0.5, (1920, 1080), &left),
            vec![(2, HitKind::ZoneEnter), (5, HitKind::ZoneLeave)]
        );
        // A box whose top is cut off by the picture's edge keeps the margin.
        let mut z = zone("z", &SQUARE);
        z.inertia = 1;
        z.leave_margin = 0.5;
        let tall = |x: f32| TrackView {
            bbox: BBox::new(x - 0.05, 0.0, x + 0.05, 0.5),
            ..tv(1, x, 0.5)
        };
        // Entered on the first frame; 0.02 out on the second, within the margin: no leave.
        let got = zone_run(z, (1, 1), [tall(0.5), tall(0.38)]);
        assert_eq!(got, vec![(0, HitKind::ZoneEnter, None)]);
    }

    #[test]
    fn hits_carry_the_tracks_age_and_mean_score() {
        let mut e = RuleEngine::new(&[zone("z", &SQUARE)], &[], 0.3);
        let mut hits = RuleHits::new();
        e.update(10.0, &[tv(1, 0.2, 0.45)], &[], &mut hits);
        e.update(10.5, &[tv(1, 0.3, 0.45)], &[], &mut hits);
        let mut inside = tv(1, 0.5, 0.45);
        inside.mean_score = 0.7;
        e.update(11.25, &[inside], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneEnter, None, 1)]);
        assert_eq!((hits[0].track_age_s, hits[0].track_mean_score), (1.25, 0.7));
        // A leave on removal: the age up to the last sighting.
        e.update(12.0, &[], &[], &mut hits);
        e.update(20.0, &[], &[1], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneLeave, None, 1)]);
        assert_eq!((hits[0].track_age_s, hits[0].track_mean_score), (1.25, 0.7));
    }

    #[test]
    fn leave_on_track_removal() {
        let mut e = RuleEngine::new(&[zone("z", &SQUARE)], &[hline()], 0.3);
        let mut hits = RuleHits::new();
        e.update(0.0, &[tv(4, 0.5, 0.45), tv(5, 0.1, 0.1)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneEnter, None, 4)]);
        e.update(0.5, &[tv(4, 0.5, 0.45), tv(5, 0.1, 0.1)], &[], &mut hits);
        // Lost for a while: nothing.
        e.update(1.0, &[], &[], &mut hits);
        assert!(hits.is_empty());
        // Removed: leave for the one inside, none for the one outside; with its last box, and
        // the stay timed to when it was last seen (0.5 s), not to the removal (3 s).
        e.update(3.0, &[], &[4, 5, 99], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneLeave, None, 4)]);
        assert_eq!(hits[0].bbox, tv(4, 0.5, 0.45).bbox);
        assert_eq!(hits[0].dwell_s, Some(0.5));
        // The event itself is timed at the last sighting too.
        assert_eq!(hits[0].t_s, 0.5);
        // Removed twice: nothing more.
        e.update(4.0, &[], &[4], &mut hits);
        assert!(hits.is_empty());
        // The state is gone: the same id seen again inside is a fresh enter.
        e.update(5.0, &[tv(4, 0.5, 0.45)], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneEnter, None, 4)]);
    }

    #[test]
    fn dwell_fires_once_per_stay() {
        let mut z = zone("z", &SQUARE);
        z.events = vec![ZoneEventKind::Dwell];
        z.dwell = Some(Dur::secs(3));
        let mut e = RuleEngine::new(&[z], &[], 0.3);
        let mut path = vec![[0.3, 0.5]];
        path.extend([[0.5, 0.5]; 6]); // inside at t = 1..=6
        path.push([0.8, 0.5]); // out at 7
        path.extend([[0.5, 0.5]; 5]); // inside at 8..=12
        let hits = run_path(&mut e, &path);
        assert_eq!(
            hits,
            vec![
                (4, (0, HitKind::ZoneDwell, None, 7)),
                (11, (0, HitKind::ZoneDwell, None, 7))
            ]
        );
        // dwell_s is the stay's length so far.
        let mut z = zone("z", &SQUARE);
        z.events = vec![ZoneEventKind::Dwell];
        z.dwell = Some(Dur::millis(2500));
        let mut e = RuleEngine::new(&[z], &[], 0.3);
        let mut hits = RuleHits::new();
        for t in 0..5 {
            e.update(t as f64, &[tv(1, 0.5, 0.5)], &[], &mut hits);
            if t == 3 {
                assert_eq!(brief(&hits), vec![(0, HitKind::ZoneDwell, None, 1)]);
                assert_eq!(hits[0].dwell_s, Some(3.0));
            } else {
                assert!(hits.is_empty(), "t = {t}");
            }
        }
    }

    #[test]
    fn dwell_due_during_cooldown_waits_for_it() {
        let mut z = zone("z", &SQUARE);
        z.events = vec![ZoneEventKind::Enter, ZoneEventKind::Dwell];
        z.dwell = Some(Dur::secs(1));
        z.cooldown = Dur::secs(3);
        let mut e = RuleEngine::new(&[z], &[], 0.3);
        let hits = run_path(&mut e, &[[0.5, 0.5]; 6]);
        assert_eq!(
            hits,
            vec![
                (0, (0, HitKind::ZoneEnter, None, 7)),
                (3, (0, HitKind::ZoneDwell, None, 7))
            ]
        );
    }

    #[test]
    fn anchor_bottom_vs_center() {
        // Box x 0.45..0.55, y 0.5..0.7, half inside a zone covering y 0.65..0.9: its bottom
        // centre (0.5, 0.7) is inside, its centre (0.5, 0.6) outside.
        let lower = [[0.3, 0.65], [0.7, 0.65], [0.7, 0.9], [0.3, 0.9]];
        let b = TrackView {
            bbox: BBox::new(0.45, 0.5, 0.55, 0.7),
            ..tv(1, 0.0, 0.0)
        };
        let mut bottom = zone("bottom", &lower);
        bottom.anchor = Anchor::Bottom;
        let mut center = zone("center", &lower);
        center.anchor = Anchor::Center;
        let mut e = RuleEngine::new(&[bottom, center], &[], 0.3);
        let mut hits = RuleHits::new();
        e.update(0.0, &[b], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneEnter, None, 1)]);
        // The same for a line at y = 0.65 crossed by the box moving down by 0.1.
        let mut lb = line("lb", [0.2, 0.65], [0.8, 0.65]);
        lb.anchor = Anchor::Bottom;
        let mut lc = line("lc", [0.2, 0.65], [0.8, 0.65]);
        lc.anchor = Anchor::Center;
        let mut e = RuleEngine::new(&[], &[lb, lc], 0.3);
        let up = TrackView {
            bbox: BBox::new(0.45, 0.42, 0.55, 0.62),
            ..b
        };
        e.update(0.0, &[up], &[], &mut hits);
        e.update(1.0, &[b], &[], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::LineCross, IN, 1)]);
    }

    #[test]
    fn capacity_is_bounded_and_oldest_state_evicted() {
        let mut e = RuleEngine::new(&[zone("z", &SQUARE)], &[], 0.3);
        let mut hits = RuleHits::new();
        // Never reported removed: MAX_TRACKS + 1 different tracks, one per frame, all inside.
        for id in 1..=(MAX_TRACKS as u64 + 1) {
            e.update(id as f64, &[tv(id, 0.5, 0.5)], &[], &mut hits);
            assert_eq!(brief(&hits), vec![(0, HitKind::ZoneEnter, None, id)]);
        }
        // Track 1's state was the oldest and was evicted: no leave on its removal.
        e.update(1000.0, &[], &[1, 2], &mut hits);
        assert_eq!(brief(&hits), vec![(0, HitKind::ZoneLeave, None, 2)]);
    }

    #[test]
    fn hits_beyond_capacity_are_counted() {
        let mut e = RuleEngine::new(&[zone("z", &SQUARE)], &[], 0.3);
        let mut hits = RuleHits::new();
        let many: Vec<TrackView> = (1..=(MAX_HITS as u64 + 3))
            .map(|id| tv(id, 0.5, 0.5))
            .collect();
        e.update(0.0, &many, &[], &mut hits);
        assert_eq!(hits.len(), MAX_HITS);
        assert_eq!(e.dropped_hits(), 3);
    }
}
