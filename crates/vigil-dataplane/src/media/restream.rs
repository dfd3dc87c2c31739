//! The annotated RTSP re-stream: a camera's pictures with the overlay drawn, H.264-encoded and
//! served by gst-rtsp-server at `rtsp://<listen>/<camera>`, for NVRs and video players.
//!
//! One server per process ([`RestreamServer`], its GLib main loop on a thread of its own), one
//! mount per camera with `[cameras.restream]`. Each mount's media is shared by its clients and
//! built when the first one connects: `appsrc` (I420 pictures from the analysis worker) →
//! the encoder chosen at start-up → `rtph264pay`. While no client watches there is no media,
//! the camera's [`RestreamFeed`] has no `appsrc` and the worker draws and encodes nothing.
//!
//! The encoder is chosen by probe, in order: `nvv4l2h264enc` (Jetson), `nvcudah264enc` and
//! `nvh264enc` (NVIDIA GPUs with NVENC), `x264enc`, `openh264enc`; an element counts only if it
//! is registered and encodes one trial frame. Only `x264enc` runs here (no NVENC on our GPU
//! hosts, no Jetson): the others' launch strings follow their documented properties, untested.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vigil_core::overlay::Picture420;

/// How one camera is re-streamed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestreamSettings {
    /// Picture width (aspect kept, never wider than the camera).
    pub width: u32,
    /// Pictures a second (never more than the camera's analysis rate).
    pub fps: f32,
    pub bitrate_kbps: u32,
}

/// Why the re-stream server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RestreamError {
    #[error(transparent)]
    Init(#[from] super::InitError),
    #[error(
        "no H.264 encoder works here (tried nvv4l2h264enc, nvcudah264enc, nvh264enc, x264enc, openh264enc: {0}); install gstreamer1.0-plugins-ugly for x264enc"
    )]
    NoEncoder(String),
    #[error("the RTSP server has no mount points")]
    NoMountPoints,
    #[error("cannot listen on {listen}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: gst::glib::BoolError,
    },
}

/// The H.264 encoders, in the order they are tried, with their launch text for `kbps`
/// kbit/s and a key frame every `gop` pictures.
const ENCODERS: [&str; 5] = [
    "nvv4l2h264enc",
    "nvcudah264enc",
    "nvh264enc",
    "x264enc",
    "openh264enc",
];

fn encoder_launch(name: &str, kbps: u32, gop: u32) -> String {
    match name {
        // Jetson: system-memory I420 into NVMM first (untested here).
        "nvv4l2h264enc" => format!(
            "nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc bitrate={} iframeinterval={gop} insert-sps-pps=true",
            kbps * 1000
        ),
        "nvcudah264enc" | "nvh264enc" => {
            format!("{name} bitrate={kbps} gop-size={gop} zerolatency=true")
        }
        "openh264enc" => format!("openh264enc bitrate={} gop-size={gop}", kbps * 1000),
        _ => format!(
            "x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max={gop}"
        ),
    }
}

/// Whether `name` is registered and encodes one frame (within 5 s).
fn trial_encode(name: &str) -> Result<(), String> {
    if gst::ElementFactory::find(name).is_none() {
        return Err(format!("{name}: not registered"));
    }
    let launch = format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=I420,width=320,height=240,framerate=10/1 ! {} ! h264parse ! fakesink",
        encoder_launch(name, 500, 10)
    );
    let p = gst::parse::launch(&launch).map_err(|e| format!("{name}: {e}"))?;
    let result = (|| {
        p.set_state(gst::State::Playing)
            .map_err(|e| format!("{name}: {e}"))?;
        let bus = p.bus().ok_or_else(|| format!("{name}: no bus"))?;
        match bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(5),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) {
            Some(m) => match m.view() {
                gst::MessageView::Eos(_) => Ok(()),
                gst::MessageView::Error(e) => Err(format!("{name}: {}", e.error())),
                _ => Err(format!("{name}: unexpected message")),
            },
            None => Err(format!("{name}: no frame within 5 s")),
        }
    })();
    let _ = p.set_state(gst::State::Null);
    result
}

/// The first encoder that works and why those before it did not, or why none does.
pub fn probe_encoder() -> Result<(String, String), String> {
    let mut why = Vec::new();
    for name in ENCODERS {
        match trial_encode(name) {
            Ok(()) => return Ok((name.to_string(), why.join("; "))),
            Err(e) => why.push(e),
        }
    }
    Err(why.join("; "))
}

/// One camera's mount: where its worker pushes pictures while a client watches.
#[derive(Debug)]
pub struct RestreamFeed {
    pub settings: RestreamSettings,
    /// The `appsrc` of the mount's media while it exists (a client watches).
    src: Mutex<Option<gst_app::AppSrc>>,
    /// Pictures dropped because their size was not the stream's (the camera changed size).
    pub wrong_size: std::sync::atomic::AtomicU64,
    /// Buffers the pictures are copied into (allocated once per picture size, at most
    /// [`POOL_BUFFERS`]; a picture finding none free is dropped, counted in `busy`).
    pool: Mutex<Option<(gst::BufferPool, usize)>>,
    pub busy: std::sync::atomic::AtomicU64,
}

/// Buffers of a re-stream's pool: the pictures waiting for the encoder and the one it encodes.
const POOL_BUFFERS: u32 = 6;

impl RestreamFeed {
    /// Whether a client watches (the worker then draws a picture when one is due).
    pub fn watched(&self) -> bool {
        self.src.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// Pushes one picture (copied into a GStreamer buffer). The first picture of a media
    /// sets its caps; a picture of another size is dropped (counted). Returns whether it was
    /// taken.
    pub fn push(&self, pic: &Picture420) -> bool {
        let src = self.src.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(src) = src else { return false };
        let (w, h) = (pic.width as i32, pic.height as i32);
        match src.caps().and_then(|c| {
            let s = c.structure(0)?;
            Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
        }) {
            Some(size) if size != (w, h) => {
                self.wrong_size
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return false;
            }
            Some(_) => {}
            None => {
                let fps = self.settings.fps.round().max(1.0) as i32;
                src.set_caps(Some(
                    &gst::Caps::builder("video/x-raw")
                        .field("format", "I420")
                        .field("width", w)
                        .field("height", h)
                        .field("framerate", gst::Fraction::new(fps, 1))
                        .build(),
                ));
                // Bounded: a few pictures at most wait for the encoder; more are dropped.
                src.set_max_bytes(4 * (w as u64 * h as u64 * 3 / 2));
            }
        }
        let Some(mut buf) = self.buffer(pic.y.len() + pic.u.len() + pic.v.len()) else {
            self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        };
        {
            let Some(b) = buf.get_mut() else { return false };
            let Ok(mut map) = b.map_writable() else {
                return false;
            };
            let (y, rest) = map.as_mut_slice().split_at_mut(pic.y.len());
            let (u, v) = rest.split_at_mut(pic.u.len());
            y.copy_from_slice(&pic.y);
            u.copy_from_slice(&pic.u);
            v[..pic.v.len()].copy_from_slice(&pic.v);
        }
        src.push_buffer(buf).is_ok()
    }

    /// A free buffer of `size` bytes from the pool (made, or remade for a new size, here);
    /// `None` when every one is still queued or encoding.
    fn buffer(&self, size: usize) -> Option<gst::Buffer> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.as_ref().is_none_or(|(_, s)| *s != size) {
            if let Some((old, _)) = pool.take() {
                let _ = old.set_active(false);
            }
            let p = gst::BufferPool::new();
            let mut config = p.config();
            config.set_params(None, size as u32, 0, POOL_BUFFERS);
            p.set_config(config).ok()?;
            p.set_active(true).ok()?;
            *pool = Some((p, size));
        }
        let (p, _) = pool.as_ref()?;
        let params =
            gst::BufferPoolAcquireParams::with_flags(gst::BufferPoolAcquireFlags::DONTWAIT);
        p.acquire_buffer(Some(&params)).ok()
    }
}

/// The re-stream server.
pub struct RestreamServer {
    /// Held so the server lives as long as this value; only its main loop uses it.
    _server: rtsp::RTSPServer,
    mounts: rtsp::RTSPMountPoints,
    feeds: Mutex<HashMap<String, Arc<RestreamFeed>>>,
    encoder: String,
    /// Why the encoders tried before it were not taken.
    pub skipped: String,
    pub listen: SocketAddr,
    main_loop: gst::glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RestreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestreamServer({}, {})", self.listen, self.encoder)
    }
}

impl RestreamServer {
    /// Chooses the encoder and listens on `listen` (port 0: any free port).
    pub fn start(listen: SocketAddr) -> Result<Self, RestreamError> {
        super::init()?;
        let (encoder, skipped) = probe_encoder().map_err(RestreamError::NoEncoder)?;
        let ctx = gst::glib::MainContext::new();
        let server = rtsp::RTSPServer::new();
        server.set_address(&listen.ip().to_string());
        server.set_service(&listen.port().to_string());
        let mounts = server.mount_points().ok_or(RestreamError::NoMountPoints)?;
        // The source lives as long as the context (its id is not needed to keep it).
        server
            .attach(Some(&ctx))
            .map_err(|source| RestreamError::Listen { listen, source })?;
        let port = server.bound_port();
        let main_loop = gst::glib::MainLoop::new(Some(&ctx), false);
        let ml = main_loop.clone();
        let thread = std::thread::Builder::new()
            .name("restream".into())
            .spawn(move || {
                let _ = ctx.with_thread_default(|| ml.run());
            })
            .ok();
        Ok(Self {
            _server: server,
            mounts,
            feeds: Mutex::new(HashMap::new()),
            encoder,
            skipped,
            listen: SocketAddr::new(listen.ip(), port as u16),
            main_loop,
            thread,
        })
    }

    /// The encoder element in use.
    pub fn encoder(&self) -> &str {
        &self.encoder
    }

    /// `rtsp://<listen>/<camera>`.
    pub fn url(&self, camera: &str) -> String {
        format!("rtsp://{}/{camera}", self.listen)
    }

    /// Serves `camera` with `settings` (replacing its mount when they changed); its feed.
    pub fn mount(&self, camera: &str, settings: RestreamSettings) -> Arc<RestreamFeed> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = feeds.get(camera).filter(|f| f.settings == settings) {
            return f.clone();
        }
        let feed = Arc::new(RestreamFeed {
            settings,
            src: Mutex::new(None),
            wrong_size: Default::default(),
            pool: Mutex::new(None),
            busy: Default::default(),
        });
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_shared(true);
        // The caps are set by the first picture pushed (`RestreamFeed::push`).
        let fps = settings.fps.round().max(1.0) as u32;
        let gop = (2 * fps).max(1);
        factory.set_launch(&format!(
            "( appsrc name=src is-live=true format=time do-timestamp=true ! queue max-size-buffers=2 leaky=downstream ! {} ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )",
            encoder_launch(&self.encoder, settings.bitrate_kbps, gop)
        ));
        let f = feed.clone();
        factory.connect_media_configure(move |_, media| {
            let Some(bin) = media.element().downcast::<gst::Bin>().ok() else {
                return;
            };
            let Some(src) = bin
                .by_name("src")
                .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            else {
                return;
            };
            src.set_leaky_type(gst_app::AppLeakyType::Downstream);
            *f.src.lock().unwrap_or_else(|e| e.into_inner()) = Some(src);
            let f2 = f.clone();
            media.connect_unprepared(move |_| {
                *f2.src.lock().unwrap_or_else(|e| e.into_inner()) = None;
            });
        });
        self.mounts.add_factory(&format!("/{camera}"), factory);
        feeds.insert(camera.to_string(), feed.clone());
        feed
    }

    /// Stops serving every mounted camera `keep` says no to (cameras removed by a reload).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            feeds.keys().filter(|c| !keep(c)).cloned().collect()
        };
        for camera in gone {
            self.unmount(&camera);
        }
    }

    /// Stops serving `camera` (its clients are cut off when their media ends).
    pub fn unmount(&self, camera: &str) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if feeds.remove(camera).is_some() {
            self.mounts.remove_factory(&format!("/{camera}"));
        }
    }
}

impl Drop for RestreamServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often a watched camera gets a re-stream picture.
pub fn interval(settings: &RestreamSettings) -> Duration {
    Duration::from_secs_f32(1.0 / settings.fps.max(0.1))
}
