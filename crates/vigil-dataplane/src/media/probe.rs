//! Decoder choice by probing the GStreamer registry: `nvv4l2decoder` (Jetson) >
//! `nvh264dec`/`nvh265dec` (NVIDIA dGPU, NVDEC) > `avdec_*` (CPU). The chosen decoders are
//! given the highest rank so that `decodebin` picks them; the choice is reported at start-up.

use gstreamer as gst;
use gstreamer::prelude::*;

/// Decoders per codec, best first.
const PREFERENCE: &[(&str, &[&str])] = &[
    ("h264", &["nvv4l2decoder", "nvh264dec", "avdec_h264"]),
    ("h265", &["nvv4l2decoder", "nvh265dec", "avdec_h265"]),
];

/// The rank given to the chosen decoders.
fn chosen_rank() -> gst::Rank {
    gst::Rank::PRIMARY + 100
}

/// What the probe found: per codec, the decoder that will be used (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderChoice {
    pub per_codec: Vec<(&'static str, Option<&'static str>)>,
    /// Whether the chosen H.264 decoder is a hardware one.
    pub hardware: bool,
}

impl DecoderChoice {
    pub fn summary(&self) -> String {
        self.per_codec
            .iter()
            .map(|(c, d)| format!("{c}: {}", d.unwrap_or("none")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Probes the registry and ranks the preferred decoders above every other one. `allow_hw`
/// false keeps to CPU decoders (e.g. `backend = "cpu"` on a box that has NVDEC).
pub fn choose_decoders(allow_hw: bool) -> DecoderChoice {
    let registry = gst::Registry::get();
    let mut per_codec = Vec::new();
    let mut hardware = false;
    for (codec, candidates) in PREFERENCE {
        let chosen = candidates
            .iter()
            .copied()
            .filter(|name| allow_hw || name.starts_with("avdec_"))
            .find(|name| registry.lookup_feature(name).is_some());
        if let Some(name) = chosen {
            if let Some(feature) = registry.lookup_feature(name) {
                feature.set_rank(chosen_rank());
            }
            if *codec == "h264" {
                hardware = !name.starts_with("avdec_");
            }
        }
        // Hardware decoders not chosen must not win either.
        for name in candidates
            .iter()
            .filter(|n| Some(**n) != chosen && !n.starts_with("avdec_"))
        {
            if let Some(feature) = registry.lookup_feature(name) {
                feature.set_rank(gst::Rank::NONE);
            }
        }
        per_codec.push((*codec, chosen));
    }
    DecoderChoice {
        per_codec,
        hardware,
    }
}

/// Whether [`choose_decoders`] chose Jetson's `nvv4l2decoder` (its frames come in
/// `memory:NVMM`). False where the element does not exist, as on every dGPU box without
/// DeepStream.
pub fn nvv4l2_chosen() -> bool {
    gst::Registry::get()
        .lookup_feature("nvv4l2decoder")
        .is_some_and(|f| f.rank() == chosen_rank())
}
