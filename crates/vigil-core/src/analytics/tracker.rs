//! ByteTrack-style multi-object tracker: detections of one frame → stable track ids.
//!
//! Each track carries a constant-velocity Kalman filter on `(cx, cy, a, h)` (box centre, aspect
//! ratio `w / h`, height, all in normalised coordinates) and their velocities, as in SORT and
//! ByteTrack; one step is one call to [`Tracker::update`] (one analysed frame).
//!
//! Association, per frame, after every track's filter has predicted the frame:
//!
//! 1. high-score detections (`score >= high_thresh`) against the tracks matched last frame
//!    (tracked), then the high-score detections left over against the lost tracks: a track being
//!    followed comes first, so that a lost track's drifting prediction never takes a detection
//!    from it (DeepSORT's matching cascade, in two levels; matching both together let an old
//!    lost track take a walking person's box for a frame on vtest, a duplicate crossing — `vigil
//!    eval` at 5 fps: duplicates 1 → 0, id switches 8 → 7, benches/RESULTS.md);
//! 2. low-score detections (`low_thresh <= score < high_thresh`) against the confirmed tracks
//!    that were tracked last frame and are still unmatched (low-score boxes never revive a lost
//!    track nor start one: this is the ByteTrack "second stage" that keeps occluded objects
//!    alive);
//! 3. the high-score detections left over against the tentative tracks;
//! 4. the high-score detections still left over start new tentative tracks.
//!
//! Each stage matches by IoU between the track's *predicted* box and the detection box, only
//! between the same `class_id`, only pairs with `IoU >= match_iou` (and > 0). The matching is
//! **greedy**, not Hungarian: the candidate pairs are sorted by descending IoU (ties: lower track
//! slot, then lower detection index) and taken in that order whenever both sides are still free.
//! With few objects per camera and the IoU gate, greedy and optimal assignment almost always
//! agree, and greedy is simple and allocation-free.
//!
//! Lifecycle (hysteresis): a new track is *tentative* until it has `min_hits` consecutive
//! matches; a tentative track that misses one frame is dropped silently. On reaching `min_hits`
//! it is *confirmed* and only then gets its public id, from a counter starting at 1, so ids are
//! dense and never reused during the tracker's life ([`Tracker::reset`] included). A confirmed
//! track that goes unmatched is *lost*; it keeps predicting (with its height velocity zeroed, as
//! ByteTrack does) and can be re-acquired, keeping its id, by a high-score detection. A lost
//! track with more than `max_age` consecutive missed frames is removed (as in SORT and
//! ByteTrack: with `max_age = 30`, a track missing for 30 frames can still come back on the
//! 31st; on the 31st miss it dies) and its id is reported once, in [`TrackerOutput::removed`].
//!
//! Storage is fixed-capacity ([`MAX_TRACKS`] tracks; only the first [`MAX_DETECTIONS`]
//! detections of a frame are looked at). The one heap buffer (the candidate pairs) is allocated
//! in [`Tracker::new`]; [`Tracker::update`] does not allocate. When all track slots are taken, a
//! new track replaces the lost track with the most missed frames (its id is reported as removed);
//! with no lost track to replace, the detection starts no track.

use super::kalman::{Kalman, xyah};
use super::{BBox, Detection, MAX_DETECTIONS, MAX_TRACKS};

/// Which detections a matching stage looks at.
type DetFilter<'a> = dyn Fn(&Detection) -> bool + 'a;

/// Tracker settings. See the module documentation for what each one does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Detections scoring at least this take part in the first association stage: they keep
    /// tracked tracks and re-acquire lost ones. Default 0.5.
    pub high_thresh: f32,
    /// Detections scoring at least this (and left over by the first two stages) can match a
    /// tentative track or start a new one. At most `high_thresh`; default 0.5.
    pub start_thresh: f32,
    /// Detections scoring below this are ignored entirely; those between `low_thresh` and
    /// `high_thresh` only keep already-tracked tracks alive. Set it to the camera's `min_score`
    /// when that is what the detector was thresholded at. Default 0.1 (ByteTrack's).
    pub low_thresh: f32,
    /// Least IoU between a track's predicted box and a detection for them to match. Default 0.2:
    /// at the service's default 5 analysed frames per second a walking person's box moves a
    /// third of its width between frames, and 0.3 lost them (`vigil eval`, vtest at 5 fps: 41 of
    /// 47 events and 9 id switches at 0.3, 45 of 47 and 6 at 0.2; at 10 fps 47 of 47 either way,
    /// 3 and 4 id switches; benches/RESULTS.md "Counting accuracy"). The IoU gate is also the
    /// tracker's motion gate: a detection that does not overlap a track's predicted box enough
    /// (a jump no person makes between two analysed frames) never continues it.
    pub match_iou: f32,
    /// Consecutive matches a new track needs to be confirmed (and get an id). Default 3; 0 and 1
    /// both confirm a track on its first frame.
    pub min_hits: u32,
    /// Consecutive missed frames a confirmed track survives. Default 30.
    pub max_age: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            high_thresh: 0.5,
            start_thresh: 0.5,
            low_thresh: 0.1,
            match_iou: 0.2,
            min_hits: 3,
            max_age: 30,
        }
    }
}

impl TrackerConfig {
    /// The tracker of a camera whose rules count detections from `min_score` (the lowest of the
    /// camera's `min_score` and its rules' overrides): a detection a rule would count can start
    /// a track (`start_thresh = min(min_score, 0.5)`, at least 0.05), and tracks are kept alive
    /// by detections down to half of it (`low_thresh`, at least 0.1, at most `start_thresh`).
    /// Re-acquiring a *lost* track still takes a detection of `high_thresh` (0.5): a weak
    /// detection near a lost track's drifting prediction must not take it over (that gave a
    /// phantom crossing on vtest.avi). Starting at a fixed 0.5 instead left people scoring
    /// 0.40–0.47 untracked, so never counted, on a camera whose rules asked for 0.35. New
    /// tracks still need `min_hits` consecutive matches, which keeps one-frame false detections
    /// out.
    ///
    /// **Not used by the service yet**: on the vtest ground-truth run over RTSP it also made a
    /// second track of a person whose old track was lost (a 0.35–0.5 detection starts a new
    /// track where only 0.5 re-acquires the lost one), so two zone entries for one person. It
    /// waits for `vigil eval` to tune it with duplicate suppression (issue 17).
    pub fn for_min_score(min_score: f32) -> Self {
        let start = if min_score.is_finite() {
            min_score.clamp(0.05, 0.5)
        } else {
            0.5
        };
        Self {
            start_thresh: start,
            low_thresh: (start * 0.5).max(0.1).min(start),
            ..Self::default()
        }
    }
}

/// A confirmed track matched in this frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackView {
    /// Public id: dense, starting at 1, stable for the track's life.
    pub id: u64,
    /// The box of the detection matched this frame (not the Kalman-filtered box): rules need a
    /// reference point that is what the detector saw, not a smoothed estimate.
    pub bbox: BBox,
    /// Score of the detection matched this frame.
    pub score: f32,
    pub class_id: u16,
    /// Frames in which this track was matched so far, this one included.
    pub hits: u32,
    /// Mean score of the detections matched so far, this one included.
    pub mean_score: f32,
}

/// What one [`Tracker::update`] produced; borrows the tracker until the next update.
#[derive(Debug, Clone, Copy)]
pub struct TrackerOutput<'a> {
    /// Confirmed tracks matched in this frame, ordered by id.
    pub active: &'a [TrackView],
    /// Ids of confirmed tracks that died in this frame (each id is reported exactly once).
    pub removed: &'a [u64],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Tentative,
    Tracked,
    Lost,
}

#[derive(Debug, Clone)]
struct Track {
    kf: Kalman,
    /// This frame's predicted box (before the measurement update).
    pred: BBox,
    state: State,
    /// 0 while tentative.
    id: u64,
    class_id: u16,
    hits: u32,
    /// Sum of the matched detections' scores.
    score_sum: f32,
    misses: u32,
    /// Index of the detection matched in the current frame.
    matched: Option<u16>,
}

/// The tracker of one camera.
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: heapless::Vec<Track, MAX_TRACKS>,
    next_id: u64,
    /// Candidate (IoU, track slot, detection index) pairs; capacity for every pair, reserved once.
    pairs: Vec<(f32, u16, u16)>,
    active: heapless::Vec<TrackView, MAX_TRACKS>,
    removed: heapless::Vec<u64, MAX_TRACKS>,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            cfg,
            tracks: heapless::Vec::new(),
            next_id: 1,
            pairs: Vec::with_capacity(MAX_TRACKS * MAX_DETECTIONS),
            active: heapless::Vec::new(),
            removed: heapless::Vec::new(),
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Live tracks of any state (tentative, tracked, lost).
    pub fn live_tracks(&self) -> usize {
        self.tracks.len()
    }

    /// Advances one frame with this frame's detections (any order; only the first
    /// [`MAX_DETECTIONS`] are used; boxes that are not finite or have no area are ignored).
    pub fn update(&mut self, dets: &[Detection]) -> TrackerOutput<'_> {
        self.active.clear();
        self.removed.clear();
        let cfg = self.cfg;
        let dets = &dets[..dets.len().min(MAX_DETECTIONS)];

        for t in self.tracks.iter_mut() {
            if t.state == State::Lost {
                t.kf.x[7] = 0.0;
            }
            t.kf.predict();
            t.pred = t.kf.bbox();
            t.matched = None;
        }

        let usable = |d: &Detection| {
            let b = &d.bbox;
            d.score.is_finite()
                && d.score >= cfg.low_thresh
                && b.x1.is_finite()
                && b.y1.is_finite()
                && b.x2.is_finite()
                && b.y2.is_finite()
                && b.x2 > b.x1
                && b.y2 > b.y1
        };
        let high = |d: &Detection| usable(d) && d.score >= cfg.high_thresh;
        let low = |d: &Detection| usable(d) && d.score < cfg.high_thresh;
        let start = |d: &Detection| usable(d) && d.score >= cfg.start_thresh.min(cfg.high_thresh);

        let mut used = [false; MAX_DETECTIONS];
        let iou = cfg.match_iou;
        let (pairs, tracks) = (&mut self.pairs, &mut self.tracks[..]);
        // The stages of the module documentation, in order (a state is the one at the frame's
        // start: `Tracked` = matched last frame).
        let stages: [(State, &DetFilter); 4] = [
            (State::Tracked, &high),
            (State::Lost, &high),
            (State::Tracked, &low),
            (State::Tentative, &start),
        ];
        for (state, which) in stages {
            greedy_match(
                pairs,
                tracks,
                dets,
                &mut used,
                iou,
                |t| t.state == state,
                which,
            );
        }

        let mut i = 0;
        while i < self.tracks.len() {
            let t = &mut self.tracks[i];
            match t.matched {
                Some(di) => {
                    let d = &dets[di as usize];
                    t.kf.update(xyah(&d.bbox));
                    t.hits = t.hits.saturating_add(1);
                    t.score_sum += d.score;
                    t.misses = 0;
                    match t.state {
                        State::Tentative => {
                            if t.hits >= cfg.min_hits {
                                t.state = State::Tracked;
                                t.id = self.next_id;
                                self.next_id += 1;
                            }
                        }
                        State::Tracked | State::Lost => t.state = State::Tracked,
                    }
                    if t.state == State::Tracked {
                        let _ = self.active.push(view(t, d));
                    }
                }
                None => match t.state {
                    State::Tentative => {
                        self.tracks.swap_remove(i);
                        continue;
                    }
                    State::Tracked | State::Lost => {
                        t.state = State::Lost;
                        t.misses = t.misses.saturating_add(1);
                        if t.misses > cfg.max_age {
                            let _ = self.removed.push(t.id);
                            self.tracks.swap_remove(i);
                            continue;
                        }
                    }
                },
            }
            i += 1;
        }

        // Births, best score first so that the best detections get the free slots.
        let mut births: heapless::Vec<u16, MAX_DETECTIONS> = heapless::Vec::new();
        for (di, d) in dets.iter().enumerate() {
            if !used[di] && start(d) {
                let _ = births.push(di as u16);
            }
        }
        births.sort_unstable_by(|&a, &b| {
            dets[b as usize]
                .score
                .total_cmp(&dets[a as usize].score)
                .then(a.cmp(&b))
        });
        for &di in births.iter() {
            let d = &dets[di as usize];
            if self.tracks.is_full() {
                let victim = self
                    .tracks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.state == State::Lost)
                    .max_by(|a, b| a.1.misses.cmp(&b.1.misses).then(b.0.cmp(&a.0)))
                    .map(|(i, _)| i);
                let Some(v) = victim else { break };
                let _ = self.removed.push(self.tracks[v].id);
                self.tracks.swap_remove(v);
            }
            let kf = Kalman::new(xyah(&d.bbox));
            let mut t = Track {
                pred: d.bbox,
                kf,
                state: State::Tentative,
                id: 0,
                class_id: d.class_id,
                hits: 1,
                score_sum: d.score,
                misses: 0,
                matched: Some(di),
            };
            if cfg.min_hits <= 1 {
                t.state = State::Tracked;
                t.id = self.next_id;
                self.next_id += 1;
                let _ = self.active.push(view(&t, d));
            }
            let _ = self.tracks.push(t);
        }

        self.active.sort_unstable_by_key(|v| v.id);
        TrackerOutput {
            active: &self.active,
            removed: &self.removed,
        }
    }

    /// Drops every track (the id counter keeps counting, so ids are never reused) and returns the
    /// ids of the confirmed tracks dropped, for the caller to pass on as removed (e.g. to
    /// `RuleEngine::update`) if it wants their zone `leave` events.
    pub fn reset(&mut self) -> &[u64] {
        self.active.clear();
        self.removed.clear();
        for t in self.tracks.iter() {
            if t.state != State::Tentative {
                let _ = self.removed.push(t.id);
            }
        }
        self.tracks.clear();
        &self.removed
    }
}

fn view(t: &Track, d: &Detection) -> TrackView {
    TrackView {
        id: t.id,
        bbox: d.bbox,
        score: d.score,
        class_id: t.class_id,
        hits: t.hits,
        mean_score: t.score_sum / t.hits.max(1) as f32,
    }
}

/// Greedy IoU matching of the still-free tracks selected by `track_sel` with the still-free
/// detections selected by `det_sel`, same class only.
fn greedy_match(
    pairs: &mut Vec<(f32, u16, u16)>,
    tracks: &mut [Track],
    dets: &[Detection],
    used: &mut [bool; MAX_DETECTIONS],
    min_iou: f32,
    track_sel: impl Fn(&Track) -> bool,
    det_sel: impl Fn(&Detection) -> bool,
) {
    pairs.clear();
    for (ti, t) in tracks.iter().enumerate() {
        if t.matched.is_some() || !track_sel(t) {
            continue;
        }
        for (di, d) in dets.iter().enumerate() {
            if used[di] || d.class_id != t.class_id || !det_sel(d) {
                continue;
            }
            let iou = t.pred.iou(&d.bbox);
            if iou > 0.0 && iou >= min_iou {
                // Never reallocates: at most MAX_TRACKS * MAX_DETECTIONS pairs, reserved in new().
                pairs.push((iou, ti as u16, di as u16));
            }
        }
    }
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for &(_, ti, di) in pairs.iter() {
        let t = &mut tracks[ti as usize];
        if t.matched.is_none() && !used[di as usize] {
            t.matched = Some(di);
            used[di as usize] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(cx: f32, cy: f32, w: f32, h: f32, score: f32, class_id: u16) -> Detection {
        Detection {
            bbox: BBox::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0),
            score,
            class_id,
        }
    }

    fn ids(out: &TrackerOutput<'_>) -> Vec<u64> {
        out.active.iter().map(|v| v.id).collect()
    }

    #[test]
    fn thresholds_follow_the_lowest_min_score() {
        let c = TrackerConfig::for_min_score(0.35);
        assert_eq!(
            (c.start_thresh, c.low_thresh, c.high_thresh),
            (0.35, 0.175, 0.5)
        );
        let c = TrackerConfig::for_min_score(0.12);
        assert_eq!((c.start_thresh, c.low_thresh), (0.12, 0.1));
        let c = TrackerConfig::for_min_score(0.05);
        assert_eq!((c.start_thresh, c.low_thresh), (0.05, 0.05));
        assert_eq!(TrackerConfig::for_min_score(0.7).start_thresh, 0.5);
        assert_eq!(TrackerConfig::for_min_score(f32::NAN).start_thresh, 0.5);
        // A person scoring 0.40–0.47 for 5 frames: tracked (with an id) when the rules ask for
        // 0.35, never with the fixed 0.5 start.
        let run = |cfg: TrackerConfig| {
            let mut t = Tracker::new(cfg);
            let mut ids = Vec::new();
            for (i, s) in [0.41f32, 0.44, 0.40, 0.47, 0.43].iter().enumerate() {
                let d = [det(0.3 + 0.005 * i as f32, 0.5, 0.05, 0.2, *s, 0)];
                ids.extend(t.update(&d).active.iter().map(|v| v.id));
            }
            ids
        };
        assert_eq!(run(TrackerConfig::for_min_score(0.35)), vec![1, 1, 1]);
        assert!(run(TrackerConfig::default()).is_empty());
        // A lost track is re-acquired only by a detection of high_thresh: a 0.45 at its place
        // starts a new (tentative) track instead; a 0.6 takes the lost track back.
        let mut t = Tracker::new(TrackerConfig::for_min_score(0.35));
        let strong = [det(0.5, 0.5, 0.05, 0.2, 0.9, 0)];
        for _ in 0..3 {
            t.update(&strong);
        }
        assert_eq!(ids(&t.update(&strong)), vec![1]);
        assert!(t.update(&[]).active.is_empty(), "lost");
        assert!(
            t.update(&[det(0.5, 0.5, 0.05, 0.2, 0.45, 0)])
                .active
                .is_empty()
        );
        let mut t2 = Tracker::new(TrackerConfig::for_min_score(0.35));
        for _ in 0..4 {
            t2.update(&strong);
        }
        t2.update(&[]);
        assert_eq!(
            ids(&t2.update(&[det(0.5, 0.5, 0.05, 0.2, 0.6, 0)])),
            vec![1]
        );
    }

    #[test]
    fn a_followed_track_keeps_its_detection_against_a_lost_one_nearer_to_it() {
        // Track 1 at x 0.30 and track 2 at x 0.34 (standing); track 2 goes unseen (lost). A
        // detection at 0.325 overlaps lost track 2 more (IoU 0.54) than track 1 (0.33): it
        // continues track 1, which was seen last frame, and track 2 stays lost.
        let mut t = Tracker::new(TrackerConfig::default());
        let both = [
            det(0.30, 0.5, 0.05, 0.2, 0.9, 0),
            det(0.34, 0.5, 0.05, 0.2, 0.9, 0),
        ];
        for _ in 0..4 {
            t.update(&both);
        }
        assert_eq!(ids(&t.update(&both)), vec![1, 2]);
        assert_eq!(ids(&t.update(&both[..1])), vec![1]);
        let out = t.update(&[det(0.325, 0.5, 0.05, 0.2, 0.9, 0)]);
        assert_eq!(ids(&out), vec![1]);
        assert!(out.removed.is_empty());
    }

    #[test]
    fn birth_needs_min_hits_and_ids_start_at_one() {
        let mut t = Tracker::new(TrackerConfig::default());
        let d = [det(0.5, 0.5, 0.1, 0.2, 0.9, 0)];
        assert!(t.update(&d).active.is_empty());
        assert!(t.update(&d).active.is_empty());
        let out = t.update(&d);
        assert_eq!(ids(&out), vec![1]);
        assert_eq!(out.active[0].hits, 3);
        assert_eq!(out.active[0].bbox, d[0].bbox);
        assert_eq!(out.active[0].score, 0.9);
        assert_eq!(t.update(&d).active[0].hits, 4);
    }

    #[test]
    fn tentative_track_dies_on_one_miss() {
        let mut t = Tracker::new(TrackerConfig::default());
        let d = [det(0.5, 0.5, 0.1, 0.2, 0.9, 0)];
        t.update(&d);
        t.update(&d);
        let out = t.update(&[]);
        assert!(out.active.is_empty());
        assert!(
            out.removed.is_empty(),
            "tentative tracks have no id to report"
        );
        assert_eq!(t.live_tracks(), 0);
        // Starting over takes min_hits again, and the first confirmed id is still 1.
        t.update(&d);
        assert!(t.update(&d).active.is_empty());
        assert_eq!(ids(&t.update(&d)), vec![1]);
    }

    #[test]
    fn low_score_detection_alone_starts_no_track() {
        let mut t = Tracker::new(TrackerConfig::default());
        let d = [det(0.5, 0.5, 0.1, 0.2, 0.3, 0)];
        for _ in 0..5 {
            assert!(t.update(&d).active.is_empty());
        }
        assert_eq!(t.live_tracks(), 0);
    }

    #[test]
    fn steady_motion_keeps_one_id() {
        let mut t = Tracker::new(TrackerConfig::default());
        for k in 0..60 {
            let d = [det(0.1 + 0.012 * k as f32, 0.5, 0.08, 0.2, 0.8, 0)];
            let out = t.update(&d);
            if k >= 2 {
                assert_eq!(ids(&out), vec![1], "frame {k}");
                assert_eq!(out.active[0].hits, k + 1);
            }
            assert!(out.removed.is_empty());
        }
        assert_eq!(t.live_tracks(), 1);
    }

    #[test]
    fn an_implausible_jump_starts_a_new_track_instead_of_continuing_one() {
        // A person tracked walking slowly at x 0.2; then the only detection is 0.3 away (almost
        // four box widths): not the same person, so their track is lost and a new one starts.
        let mut t = Tracker::new(TrackerConfig::default());
        for k in 0..5 {
            let out = t.update(&[det(0.2 + 0.005 * k as f32, 0.5, 0.08, 0.2, 0.8, 0)]);
            if k >= 2 {
                assert_eq!(ids(&out), vec![1]);
            }
        }
        let mut seen = Vec::new();
        for k in 0..4 {
            let out = t.update(&[det(0.55 + 0.005 * k as f32, 0.5, 0.08, 0.2, 0.8, 0)]);
            seen.extend(ids(&out));
        }
        assert_eq!(seen, vec![2, 2], "a new id once confirmed, never id 1");
        // A step of half a box width between analysed frames is still followed.
        let mut t = Tracker::new(TrackerConfig::default());
        for k in 0..12 {
            let out = t.update(&[det(0.1 + 0.04 * k as f32, 0.5, 0.08, 0.2, 0.8, 0)]);
            if k >= 2 {
                assert_eq!(ids(&out), vec![1], "frame {k}");
            }
        }
    }

    #[test]
    fn fast_motion_is_followed_thanks_to_velocity() {
        // Moves 0.05 per frame with a 0.08-wide box: IoU between consecutive raw boxes is
        // 0.03/0.13 ≈ 0.23 < 0.3, so only the velocity prediction keeps the match.
        let mut t = Tracker::new(TrackerConfig {
            min_hits: 1,
            match_iou: 0.3,
            ..TrackerConfig::default()
        });
        // Ramp up the speed so that the filter can learn it while raw IoU is still high.
        let mut x = 0.05;
        let mut v = 0.0;
        for k in 0..24 {
            if v < 0.05 {
                v += 0.005;
            }
            x += v;
            let d = [det(x, 0.5, 0.08, 0.2, 0.9, 0)];
            let out = t.update(&d);
            assert_eq!(ids(&out), vec![1], "frame {k}, x {x}");
        }
    }

    #[test]
    fn different_classes_crossing_never_swap() {
        let mut t = Tracker::new(TrackerConfig::default());
        // Same path, opposite directions, identical box at the crossing frame.
        let mut by_class = [0u64; 2];
        for k in 0..40 {
            let a = det(0.1 + 0.02 * k as f32, 0.5, 0.1, 0.2, 0.9, 0);
            let b = det(0.88 - 0.02 * k as f32, 0.5, 0.1, 0.2, 0.9, 1);
            let out = t.update(&[a, b]);
            if k >= 2 {
                assert_eq!(out.active.len(), 2, "frame {k}");
                for v in out.active {
                    let c = v.class_id as usize;
                    if by_class[c] == 0 {
                        by_class[c] = v.id;
                    }
                    assert_eq!(v.id, by_class[c], "frame {k}");
                }
            }
        }
        assert_eq!(by_class, [1, 2]);
    }

    #[test]
    fn same_class_crossing_with_distinct_velocity_keeps_ids() {
        let mut t = Tracker::new(TrackerConfig::default());
        // Two people walking towards each other, vertically offset by a quarter of their
        // height; at the crossing the boxes overlap with IoU 0.6.
        let mut id_of_left_walker = 0;
        let mut id_of_right_walker = 0;
        for k in 0..60 {
            let a = det(0.1 + 0.013 * k as f32, 0.45, 0.08, 0.2, 0.9, 0);
            let b = det(0.87 - 0.013 * k as f32, 0.50, 0.08, 0.2, 0.9, 0);
            let out = t.update(&[a, b]);
            if k < 2 {
                continue;
            }
            assert_eq!(out.active.len(), 2, "frame {k}");
            for v in out.active {
                if v.bbox == a.bbox {
                    if id_of_left_walker == 0 {
                        id_of_left_walker = v.id;
                    }
                    assert_eq!(v.id, id_of_left_walker, "frame {k}");
                } else {
                    assert_eq!(v.bbox, b.bbox);
                    if id_of_right_walker == 0 {
                        id_of_right_walker = v.id;
                    }
                    assert_eq!(v.id, id_of_right_walker, "frame {k}");
                }
            }
        }
        assert_eq!((id_of_left_walker, id_of_right_walker), (1, 2));
    }

    #[test]
    fn lost_track_reacquired_within_max_age_keeps_id() {
        let mut t = Tracker::new(TrackerConfig::default());
        let at = |k: u32| [det(0.2 + 0.005 * k as f32, 0.5, 0.1, 0.2, 0.9, 0)];
        for k in 0..10 {
            t.update(&at(k));
        }
        // Occluded for 30 frames (= max_age): still lost, not removed.
        for k in 10..40 {
            let out = t.update(&[]);
            assert!(out.active.is_empty(), "frame {k}");
            assert!(out.removed.is_empty(), "frame {k}");
        }
        let out = t.update(&at(40));
        assert_eq!(ids(&out), vec![1]);
        assert_eq!(out.active[0].hits, 11);
    }

    #[test]
    fn removal_after_max_age_is_reported_once() {
        let mut t = Tracker::new(TrackerConfig {
            max_age: 5,
            ..TrackerConfig::default()
        });
        let d = [det(0.5, 0.5, 0.1, 0.2, 0.9, 0)];
        for _ in 0..4 {
            t.update(&d);
        }
        let mut removed_at = Vec::new();
        for k in 1..=10 {
            let out = t.update(&[]);
            for &id in out.removed {
                removed_at.push((k, id));
            }
        }
        assert_eq!(removed_at, vec![(6, 1)]);
        assert_eq!(t.live_tracks(), 0);
        // A new object there is a new track with the next id.
        for _ in 0..2 {
            t.update(&d);
        }
        assert_eq!(ids(&t.update(&d)), vec![2]);
    }

    #[test]
    fn low_score_detection_keeps_track_alive() {
        let mut t = Tracker::new(TrackerConfig {
            max_age: 2,
            ..TrackerConfig::default()
        });
        let hi = [det(0.5, 0.5, 0.1, 0.2, 0.9, 0)];
        let lo = [det(0.5, 0.5, 0.1, 0.2, 0.3, 0)];
        for _ in 0..3 {
            t.update(&hi);
        }
        for k in 0..10 {
            let out = t.update(&lo);
            assert_eq!(ids(&out), vec![1], "frame {k}");
            assert_eq!(out.active[0].score, 0.3);
            assert!(out.removed.is_empty());
        }
        // Without the low-score boxes it would have died after 2 misses.
        t.update(&[]);
        t.update(&[]);
        assert_eq!(t.update(&[]).removed, &[1]);
    }

    #[test]
    fn low_score_detection_does_not_revive_a_lost_track() {
        let mut t = Tracker::new(TrackerConfig::default());
        let hi = [det(0.5, 0.5, 0.1, 0.2, 0.9, 0)];
        let lo = [det(0.5, 0.5, 0.1, 0.2, 0.3, 0)];
        for _ in 0..3 {
            t.update(&hi);
        }
        assert!(t.update(&[]).active.is_empty());
        assert!(t.update(&lo).active.is_empty());
        assert_eq!(ids(&t.update(&hi)), vec![1]);
    }

    #[test]
    fn detections_below_low_thresh_are_ignored() {
        let mut t = Tracker::new(TrackerConfig {
            low_thresh: 0.2,
            max_age: 0,
            ..TrackerConfig::default()
        });
        let hi = [det(0.5, 0.5, 0.1, 0.2, 0.9, 0)];
        for _ in 0..3 {
            t.update(&hi);
        }
        let out = t.update(&[det(0.5, 0.5, 0.1, 0.2, 0.15, 0)]);
        assert!(out.active.is_empty());
        assert_eq!(out.removed, &[1]);
    }

    #[test]
    fn class_mismatch_does_not_match() {
        let mut t = Tracker::new(TrackerConfig {
            min_hits: 1,
            ..TrackerConfig::default()
        });
        assert_eq!(ids(&t.update(&[det(0.5, 0.5, 0.1, 0.2, 0.9, 0)])), vec![1]);
        let out = t.update(&[det(0.5, 0.5, 0.1, 0.2, 0.9, 2)]);
        assert_eq!(ids(&out), vec![2]);
        assert_eq!(out.active[0].class_id, 2);
    }

    #[test]
    fn greedy_prefers_the_higher_iou() {
        let mut t = Tracker::new(TrackerConfig {
            min_hits: 1,
            ..TrackerConfig::default()
        });
        t.update(&[det(0.5, 0.5, 0.1, 0.2, 0.9, 0)]);
        // Two candidates; the closer one (listed second) must keep id 1.
        let far = det(0.54, 0.5, 0.1, 0.2, 0.95, 0);
        let near = det(0.51, 0.5, 0.1, 0.2, 0.6, 0);
        let out = t.update(&[far, near]);
        assert_eq!(out.active.len(), 2);
        assert_eq!(out.active[0].id, 1);
        assert_eq!(out.active[0].bbox, near.bbox);
        assert_eq!(out.active[1].id, 2);
        assert_eq!(out.active[1].bbox, far.bbox);
    }

    #[test]
    fn reset_reports_confirmed_ids_and_keeps_counting() {
        let mut t = Tracker::new(TrackerConfig {
            min_hits: 2,
            ..TrackerConfig::default()
        });
        let a = det(0.2, 0.5, 0.1, 0.2, 0.9, 0);
        let b = det(0.7, 0.5, 0.1, 0.2, 0.9, 0);
        t.update(&[a]);
        t.update(&[a, b]); // a confirmed (id 1), b tentative
        assert_eq!(t.reset(), &[1]);
        assert_eq!(t.live_tracks(), 0);
        t.update(&[b]);
        assert_eq!(ids(&t.update(&[b])), vec![2]);
    }

    #[test]
    fn invalid_boxes_are_ignored() {
        let mut t = Tracker::new(TrackerConfig {
            min_hits: 1,
            ..TrackerConfig::default()
        });
        let mut nan = det(0.5, 0.5, 0.1, 0.2, 0.9, 0);
        nan.bbox.x1 = f32::NAN;
        let flat = Detection {
            bbox: BBox::new(0.2, 0.3, 0.4, 0.3),
            score: 0.9,
            class_id: 0,
        };
        assert!(t.update(&[nan, flat]).active.is_empty());
        assert_eq!(t.live_tracks(), 0);
    }

    #[test]
    fn full_storage_replaces_the_oldest_lost_track() {
        let mut t = Tracker::new(TrackerConfig {
            min_hits: 1,
            max_age: 1000,
            ..TrackerConfig::default()
        });
        let grid = |k: usize| {
            det(
                0.02 + 0.06 * (k % 16) as f32,
                0.05 + 0.12 * (k / 16) as f32,
                0.04,
                0.08,
                0.9,
                0,
            )
        };
        let all: Vec<Detection> = (0..MAX_TRACKS).map(grid).collect();
        assert_eq!(t.update(&all).active.len(), MAX_TRACKS);
        // Every track but the first misses one frame, then the first one misses too.
        t.update(&all[..1]);
        t.update(&[]);
        // One new object: the longest-lost track (id 2..) must make room, not track 1.
        let newcomer = det(0.5, 0.97, 0.04, 0.04, 0.9, 0);
        let out = t.update(&[newcomer]);
        assert_eq!(ids(&out), vec![MAX_TRACKS as u64 + 1]);
        assert_eq!(out.removed.len(), 1);
        assert_ne!(out.removed[0], 1);
        assert_eq!(t.live_tracks(), MAX_TRACKS);
    }
}
