//! Detections → tracks → rule hits. Pure host code: no GStreamer, no MQTT, no I/O.
//!
//! Coordinates are normalised to the source frame: x and y in `0.0..=1.0`, origin top-left.

pub mod geometry;
mod kalman;
pub mod motion;
pub mod nms;
pub mod rules;
pub mod tiles;
pub mod tracker;

/// Most detections kept for one frame after NMS; more are dropped lowest score first.
pub const MAX_DETECTIONS: usize = 128;
/// Most live tracks per camera.
pub const MAX_TRACKS: usize = 128;
/// Most rule hits produced by one frame.
pub const MAX_HITS: usize = 64;

/// An axis-aligned box, normalised coordinates, `x1 <= x2`, `y1 <= y2`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub const fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }
    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
    pub fn iou(&self, other: &BBox) -> f32 {
        let ix = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let iy = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = ix * iy;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// One detection of one frame, after decoding and NMS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub bbox: BBox,
    pub score: f32,
    pub class_id: u16,
}

/// Per-frame detection list: fixed capacity, no allocation on the hot path.
pub type Detections = heapless::Vec<Detection, MAX_DETECTIONS>;

/// The 80 COCO class names, in the order NanoDet (and most COCO detectors) emit them.
pub const COCO_CLASSES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// The COCO class id of a class name, if it is one.
pub fn coco_class_id(name: &str) -> Option<u16> {
    COCO_CLASSES
        .iter()
        .position(|c| *c == name)
        .map(|i| i as u16)
}
