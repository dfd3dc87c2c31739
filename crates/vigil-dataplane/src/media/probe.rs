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
        // The chosen decoder's plugin is loaded here, once, before any camera starts: cameras
        // starting together would otherwise load it from their streaming threads, and a plugin
        // makes its factories usable before its init has finished. nvcodec (GStreamer 1.22)
        // registers the CUDA memory allocator last, so decoders created meanwhile failed with
        // "CudaAllocator is unavailable" → "Failed to configure the buffer pool" (seen at 96
        // cameras on an H100). A decoder whose plugin does not load is passed over.
        let chosen = candidates
            .iter()
            .copied()
            .filter(|name| allow_hw || name.starts_with("avdec_"))
            .find(|name| {
                registry
                    .lookup_feature(name)
                    .is_some_and(|f| match f.load() {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(
                                decoder = name,
                                "decoder passed over: its plugin does not load ({e})"
                            );
                            false
                        }
                    })
            });
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
    // Decoders of CUDA memory need its allocator, registered by their plugin's init.
    let nvdec = per_codec
        .iter()
        .any(|(_, d)| d.is_some_and(|d| d.starts_with("nvh26")));
    if nvdec && gst::Allocator::find(Some(CUDA_MEMORY)).is_none() {
        tracing::warn!(
            "the NVDEC decoders' plugin is loaded but GStreamer's CUDA memory allocator is not registered: their pipelines will fail to configure their buffer pools"
        );
    }
    DecoderChoice {
        per_codec,
        hardware,
    }
}

/// The name GStreamer's CUDA memory allocator is registered under (`GST_CUDA_MEMORY_TYPE_NAME`;
/// not the caps feature `memory:CUDAMemory`).
const CUDA_MEMORY: &str = "gst.cuda.memory";

/// The decoder [`choose_decoders`] chose for `codec` ("h264", "h265"), if any.
pub fn chosen(codec: &str) -> Option<&'static str> {
    let registry = gst::Registry::get();
    PREFERENCE
        .iter()
        .find(|(c, _)| *c == codec)?
        .1
        .iter()
        .copied()
        .find(|name| {
            registry
                .lookup_feature(name)
                .is_some_and(|f| f.rank() == chosen_rank())
        })
}

/// Whether [`choose_decoders`] chose Jetson's `nvv4l2decoder` (its frames come in
/// `memory:NVMM`). False where the element does not exist, as on every dGPU box without
/// DeepStream.
pub fn nvv4l2_chosen() -> bool {
    gst::Registry::get()
        .lookup_feature("nvv4l2decoder")
        .is_some_and(|f| f.rank() == chosen_rank())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regression check that runs without a GPU: the chosen decoders' plugins are loaded
    /// (their init finished) by the probe itself, before any camera's pipeline asks for them.
    /// On the GPU machine the same holds for nvcodec, whose late allocator registration made
    /// decoders of cameras started together fail.
    #[test]
    fn the_chosen_decoders_plugins_are_loaded_by_the_probe() {
        gst::init().unwrap();
        let choice = choose_decoders(false);
        let registry = gst::Registry::get();
        let chosen: Vec<&str> = choice.per_codec.iter().filter_map(|(_, d)| *d).collect();
        assert!(
            !chosen.is_empty(),
            "no H.264/H.265 decoder: is gst-libav installed?"
        );
        for name in chosen {
            let feature = registry.lookup_feature(name).unwrap();
            let plugin = feature
                .plugin_name()
                .and_then(|p| registry.find_plugin(&p))
                .unwrap();
            assert!(
                plugin.is_loaded(),
                "{name}'s plugin {} is not loaded",
                plugin.plugin_name()
            );
            assert_eq!(feature.rank(), chosen_rank(), "{name}");
        }
    }
}
