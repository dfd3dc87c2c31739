//! The real model on real pictures: detections, class ids and boxes where the people are.

use crate::common;

use vigil_core::analytics::{BBox, Detections, coco_class_id};
use vigil_dataplane::detect::Detector;
use vigil_dataplane::media::still::decode_file;

const VTEST: &str = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";

#[test]
fn astronaut_is_one_person_on_the_left_of_the_picture() {
    let _cpu = common::shared();
    let mut det = Detector::load(&common::model(), 2, 416).expect("model loads");
    let img = decode_file(&common::asset(".cache/media/astronaut.png"), 1, 1).unwrap();
    let mut dets = Detections::new();
    det.detect(&img[0].view(), 0.35, &mut dets).unwrap();
    let person = coco_class_id("person").unwrap();
    let people: Vec<_> = dets.iter().filter(|d| d.class_id == person).collect();
    assert_eq!(people.len(), 1, "{dets:?}");
    let p = people[0];
    // Eileen Collins fills the left two-thirds of the 512×512 picture, head to bottom edge.
    assert!(p.score > 0.6, "score {}", p.score);
    assert!(
        p.bbox.x1 < 0.1 && p.bbox.x2 > 0.55 && p.bbox.x2 < 0.8,
        "{:?}",
        p.bbox
    );
    assert!(p.bbox.y1 < 0.1 && p.bbox.y2 > 0.9, "{:?}", p.bbox);
}

#[test]
fn vtest_frames_show_several_people_with_plausible_boxes() {
    let _cpu = common::shared();
    let mut det = Detector::load(&common::model(), 2, 416).expect("model loads");
    // Frames 0, 100, 200, 300, 400 of the plaza clip: each shows several pedestrians
    // (between 3 and 12 visible when looked at; the parked vans are not people).
    let frames = decode_file(std::path::Path::new(VTEST), 100, 5).unwrap();
    assert_eq!(frames.len(), 5);
    let person = coco_class_id("person").unwrap();
    let mut dets = Detections::new();
    for f in &frames {
        det.detect(&f.view(), 0.4, &mut dets).unwrap();
        let people: Vec<_> = dets.iter().filter(|d| d.class_id == person).collect();
        assert!(
            (3..=14).contains(&people.len()),
            "frame at {}s: {} people",
            f.pts_s,
            people.len()
        );
        for p in people {
            let (w, h) = (p.bbox.width(), p.bbox.height());
            // Pedestrians are upright: taller than wide, and small in this wide shot.
            assert!(h > w && h < 0.5, "frame at {}s: box {:?}", f.pts_s, p.bbox);
        }
    }
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let e = Detector::load(std::path::Path::new("/nonexistent/model.onnx"), 1, 416)
        .err()
        .expect("fails");
    let msg = format!("{e:#}");
    assert!(msg.contains("/nonexistent/model.onnx"), "{msg}");
}

/// `cols`×`rows` copies of an I420 frame side by side: a wide scene in which the frame's people
/// keep their pixel size while the whole picture grows.
fn mosaic(
    f: &vigil_dataplane::media::still::OwnedI420,
    cols: usize,
    rows: usize,
) -> vigil_dataplane::media::still::OwnedI420 {
    let (w, h) = (f.width, f.height);
    assert!(w % 2 == 0 && h % 2 == 0);
    let (mw, mh) = (w * cols, h * rows);
    let mut data = vec![0u8; mw * mh * 3 / 2];
    let src = f.view();
    let (y, uv) = data.split_at_mut(mw * mh);
    let (u, v) = uv.split_at_mut(mw * mh / 4);
    for r in 0..rows {
        for c in 0..cols {
            for line in 0..h {
                let d = (r * h + line) * mw + c * w;
                y[d..d + w].copy_from_slice(&src.y[line * src.y_stride..][..w]);
            }
            for line in 0..h / 2 {
                let d = (r * h / 2 + line) * (mw / 2) + c * w / 2;
                u[d..d + w / 2].copy_from_slice(&src.u[line * src.uv_stride..][..w / 2]);
                v[d..d + w / 2].copy_from_slice(&src.v[line * src.uv_stride..][..w / 2]);
            }
        }
    }
    vigil_dataplane::media::still::OwnedI420 {
        width: mw,
        height: mh,
        data,
        pts_s: f.pts_s,
    }
}

/// The small people of a wide scene: eight copies of a plaza frame (3072×1152; its people
/// 60–150 px tall, 8–20 px at a 416 input) are found by tiles and by the native input size,
/// each where it is, once, and mostly not by the whole picture at 416.
#[test]
fn tiles_and_the_native_input_size_find_the_small_people_of_a_wide_scene() {
    use vigil_core::config::{InputSize, TilesConfig};
    let _cpu = common::shared();
    let person = coco_class_id("person").unwrap();
    let frame = decode_file(std::path::Path::new(VTEST), 200, 2)
        .unwrap()
        .remove(1);
    let people = |det: &mut Detector, pic: &vigil_dataplane::media::still::OwnedI420| {
        let mut dets = Detections::new();
        det.detect(&pic.view(), 0.4, &mut dets).unwrap();
        dets.into_iter()
            .filter(|d| d.class_id == person)
            .collect::<Vec<_>>()
    };
    // Who is in the frame, at 768 (the frame's own width: every person as big as can be).
    let mut own = Detector::load(&common::model(), 2, 768).unwrap();
    let reference = people(&mut own, &frame);
    assert!(reference.len() >= 4, "{reference:?}");
    let (cols, rows) = (4, 2);
    let wide = mosaic(&frame, cols, rows);
    // Each reference person, in every copy, in the wide picture's coordinates.
    let expected: Vec<BBox> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (c, r)))
        .flat_map(|(c, r)| {
            reference.iter().map(move |p| {
                let (fx, fy) = (
                    |x: f32| (c as f32 + x) / cols as f32,
                    |y: f32| (r as f32 + y) / rows as f32,
                );
                BBox::new(fx(p.bbox.x1), fy(p.bbox.y1), fx(p.bbox.x2), fy(p.bbox.y2))
            })
        })
        .collect();
    let score = |found: &[vigil_core::analytics::Detection]| {
        let hits = expected
            .iter()
            .filter(|e| found.iter().any(|d| d.bbox.iou(e) >= 0.4))
            .count();
        // One person, one box: no two boxes on one expected person.
        let doubled = expected
            .iter()
            .filter(|e| found.iter().filter(|d| d.bbox.iou(e) >= 0.3).count() > 1)
            .count();
        (hits as f32 / expected.len() as f32, doubled)
    };
    let mut whole = Detector::load(&common::model(), 2, 416).unwrap();
    let (whole_recall, _) = score(&people(&mut whole, &wide));
    let tiles = TilesConfig {
        grid: [cols as u32, rows as u32],
        overlap: 0.2,
        full_frame: true,
    };
    let mut tiled =
        Detector::load_sized(&common::model(), 2, InputSize::Pixels(416), Some(tiles)).unwrap();
    let (tiled_recall, tiled_doubled) = score(&people(&mut tiled, &wide));
    let mut native = Detector::load_sized(&common::model(), 2, InputSize::Native, None).unwrap();
    let (native_recall, native_doubled) = score(&people(&mut native, &wide));
    eprintln!(
        "{} people × {}: recall whole picture at 416 {whole_recall:.2}, tiles {cols}×{rows} {tiled_recall:.2} ({tiled_doubled} doubled), native (2048) {native_recall:.2} ({native_doubled} doubled)",
        reference.len(),
        cols * rows
    );
    assert!(
        whole_recall <= 0.35,
        "the whole picture at 416: {whole_recall}"
    );
    assert!(tiled_recall >= 0.7, "tiles: {tiled_recall}");
    assert!(native_recall >= 0.7, "native: {native_recall}");
    assert_eq!(tiled_doubled, 0, "tiles: a person found twice");
    assert_eq!(native_doubled, 0, "native: a person found twice");
}
