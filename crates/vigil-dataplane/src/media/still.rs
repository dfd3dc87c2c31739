//! Decoding a picture or a few frames of a clip into owned I420 images, off the live path:
//! for tests, calibration and `vigil detect`.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use std::path::Path;
use vigil_core::model::preprocess::YuvView;

/// A tightly packed I420 image.
#[derive(Debug, Clone)]
pub struct OwnedI420 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
    /// Position in the clip (0 for a picture).
    pub pts_s: f64,
}

impl OwnedI420 {
    pub fn view(&self) -> YuvView<'_> {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let (y, rest) = self.data.split_at(w * h);
        let (u, v) = rest.split_at(cw * ch);
        YuvView {
            width: w,
            height: h,
            y,
            y_stride: w,
            u,
            v,
            uv_stride: cw,
            uv_step: 1,
        }
    }
}

/// Decodes `path` (any picture or clip GStreamer can read) and keeps every `every`-th frame,
/// at most `max` of them.
pub fn decode_file(path: &Path, every: usize, max: usize) -> Result<Vec<OwnedI420>, String> {
    super::init().map_err(|e| vigil_core::error::chain(&e))?;
    let abs = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", abs.to_string_lossy().as_ref())
        .build()
        .map_err(|e| e.to_string())?;
    let decode = gst::ElementFactory::make("decodebin")
        .build()
        .map_err(|e| e.to_string())?;
    let convert = gst::ElementFactory::make("videoconvert")
        .build()
        .map_err(|e| e.to_string())?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .build();
    let sink = gst_app::AppSink::builder().caps(&caps).sync(false).build();
    pipeline
        .add_many([&src, &decode, &convert, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;
    src.link(&decode).map_err(|e| e.to_string())?;
    convert.link(&sink).map_err(|e| e.to_string())?;
    let convert_weak = convert.downgrade();
    decode.connect_pad_added(move |_, pad| {
        if let Some(c) = convert_weak.upgrade()
            && let Some(sp) = c.static_pad("sink")
            && !sp.is_linked()
        {
            let _ = pad.link(&sp);
        }
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut n = 0usize;
    let result = loop {
        match sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
            Some(sample) => {
                let take = n.is_multiple_of(every.max(1));
                n += 1;
                if !take {
                    continue;
                }
                let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                    continue;
                };
                let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
                let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
                    .map_err(|e| e.to_string())?;
                let (w, h) = (info.width() as usize, info.height() as usize);
                let mut data = Vec::with_capacity(w * h * 3 / 2);
                for plane in 0..3 {
                    let (pw, ph) = if plane == 0 {
                        (w, h)
                    } else {
                        (w.div_ceil(2), h.div_ceil(2))
                    };
                    let stride = frame.plane_stride()[plane] as usize;
                    let bytes = frame.plane_data(plane as u32).map_err(|e| e.to_string())?;
                    for row in 0..ph {
                        data.extend_from_slice(&bytes[row * stride..row * stride + pw]);
                    }
                }
                let pts_s = buffer
                    .pts()
                    .map(|t| t.nseconds() as f64 / 1e9)
                    .unwrap_or(0.0);
                out.push(OwnedI420 {
                    width: w,
                    height: h,
                    data,
                    pts_s,
                });
                if out.len() >= max {
                    break Ok(());
                }
            }
            None => {
                if sink.is_eos() {
                    break Ok(());
                }
                let err = pipeline
                    .bus()
                    .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
                break Err(match err.as_ref().map(|m| m.view()) {
                    Some(gst::MessageView::Error(e)) => {
                        format!("{}: {}", path.display(), e.error())
                    }
                    _ => format!("{}: no frame decoded", path.display()),
                });
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    if out.is_empty() {
        return Err(format!("{}: no frame decoded", path.display()));
    }
    Ok(out)
}

/// Duration of a clip in seconds.
pub fn duration_s(path: &Path) -> Result<f64, String> {
    super::init().map_err(|e| vigil_core::error::chain(&e))?;
    let abs = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let uri = gst::glib::filename_to_uri(&abs, None).map_err(|e| e.to_string())?;
    let fake = || {
        gst::ElementFactory::make("fakesink")
            .build()
            .map_err(|e| e.to_string())
    };
    let playbin = gst::ElementFactory::make("playbin")
        .property("uri", uri.as_str())
        .property("video-sink", fake()?)
        .property("audio-sink", fake()?)
        .build()
        .map_err(|e| e.to_string())?;
    playbin
        .set_state(gst::State::Paused)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (res, _, _) = playbin.state(gst::ClockTime::from_seconds(10));
    let d = playbin.query_duration::<gst::ClockTime>();
    let _ = playbin.set_state(gst::State::Null);
    res.map_err(|e| format!("{}: {e}", path.display()))?;
    d.map(|d| d.nseconds() as f64 / 1e9)
        .ok_or_else(|| format!("{}: unknown duration", path.display()))
}
