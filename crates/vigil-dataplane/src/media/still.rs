//! Decoding a picture or a few frames of a clip into owned I420 images, off the live path:
//! for tests, calibration and `vigil detect`.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use std::path::{Path, PathBuf};
use vigil_core::model::preprocess::YuvView;

/// Why a picture or clip could not be decoded off the live path.
#[derive(Debug, thiserror::Error)]
pub enum StillError {
    #[error(transparent)]
    Init(#[from] super::InitError),
    /// The file cannot be opened.
    #[error(transparent)]
    Open(#[from] super::OpenError),
    /// A GStreamer element is missing, would not link, or a frame could not be mapped.
    #[error("GStreamer")]
    Gst(#[from] gst::glib::BoolError),
    /// The path cannot be made a URI.
    #[error("{}", .path.display())]
    Uri {
        path: PathBuf,
        #[source]
        source: gst::glib::Error,
    },
    /// The pipeline would not start or preroll.
    #[error("{}", .path.display())]
    State {
        path: PathBuf,
        #[source]
        source: gst::StateChangeError,
    },
    /// Decoding failed (GStreamer's error message) or gave no frame.
    #[error("{}: {message}", .path.display())]
    Decode { path: PathBuf, message: String },
    #[error("{}: unknown duration", .path.display())]
    NoDuration { path: PathBuf },
}

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
pub fn decode_file(path: &Path, every: usize, max: usize) -> Result<Vec<OwnedI420>, StillError> {
    super::init()?;
    let abs = super::absolute(path)?;
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", abs.to_string_lossy().as_ref())
        .build()?;
    let decode = gst::ElementFactory::make("decodebin").build()?;
    let convert = gst::ElementFactory::make("videoconvert").build()?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .build();
    let sink = gst_app::AppSink::builder().caps(&caps).sync(false).build();
    pipeline.add_many([&src, &decode, &convert, sink.upcast_ref()])?;
    src.link(&decode)?;
    convert.link(&sink)?;
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
        .map_err(|source| StillError::State {
            path: path.to_path_buf(),
            source,
        })?;
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
                let info = gst_video::VideoInfo::from_caps(caps)?;
                let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)?;
                let (w, h) = (info.width() as usize, info.height() as usize);
                let mut data = Vec::with_capacity(w * h * 3 / 2);
                for plane in 0..3 {
                    let (pw, ph) = if plane == 0 {
                        (w, h)
                    } else {
                        (w.div_ceil(2), h.div_ceil(2))
                    };
                    let stride = frame.plane_stride()[plane] as usize;
                    let bytes = frame.plane_data(plane as u32)?;
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
                break Err(StillError::Decode {
                    path: path.to_path_buf(),
                    message: match err.as_ref().map(|m| m.view()) {
                        Some(gst::MessageView::Error(e)) => e.error().to_string(),
                        _ => "no frame decoded".into(),
                    },
                });
            }
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result?;
    if out.is_empty() {
        return Err(StillError::Decode {
            path: path.to_path_buf(),
            message: "no frame decoded".into(),
        });
    }
    Ok(out)
}

/// Duration of a clip in seconds.
pub fn duration_s(path: &Path) -> Result<f64, StillError> {
    super::init()?;
    let abs = super::absolute(path)?;
    let uri = gst::glib::filename_to_uri(&abs, None).map_err(|source| StillError::Uri {
        path: path.to_path_buf(),
        source,
    })?;
    let fake = || gst::ElementFactory::make("fakesink").build();
    let playbin = gst::ElementFactory::make("playbin")
        .property("uri", uri.as_str())
        .property("video-sink", fake()?)
        .property("audio-sink", fake()?)
        .build()?;
    let state = |source| StillError::State {
        path: path.to_path_buf(),
        source,
    };
    playbin.set_state(gst::State::Paused).map_err(state)?;
    let (res, _, _) = playbin.state(gst::ClockTime::from_seconds(10));
    let d = playbin.query_duration::<gst::ClockTime>();
    let _ = playbin.set_state(gst::State::Null);
    res.map_err(state)?;
    d.map(|d| d.nseconds() as f64 / 1e9)
        .ok_or_else(|| StillError::NoDuration {
            path: path.to_path_buf(),
        })
}
