//! The real model on real pictures: detections, class ids and boxes where the people are.

use crate::common;

use vigil_core::analytics::{Detections, coco_class_id};
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
