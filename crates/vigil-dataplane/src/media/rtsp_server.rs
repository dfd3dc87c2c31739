//! A small RTSP server (gst-rtsp-server) that serves an H.264 MP4 file as a camera: for the demo
//! and the tests (`vigil rtsp-serve`). Each client gets its own playback from the start, in
//! real time; with `looped`, without end (the file's H.264 access units are read once into
//! memory and sent again and again with their times moved on by the clip's length, as a live
//! camera would: no decoding, no re-encoding, so hundreds of clients cost the server little).

use gstreamer::prelude::*;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// A clip's H.264 access units (byte-stream, with SPS/PPS in band) and their caps, for looping.
struct Clip {
    caps: gstreamer::Caps,
    units: Vec<gstreamer::Buffer>,
    /// From the first unit's time to the end of the last one: the shift of each lap.
    length: gstreamer::ClockTime,
}

/// Reads every access unit of an MP4's H.264 track into memory (bounded: 512 MiB).
fn read_clip(location: &str) -> Result<Clip, String> {
    const MAX_BYTES: usize = 512 << 20;
    let pipeline = gstreamer::parse::launch(&format!(
        "filesrc location=\"{location}\" ! qtdemux ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=units sync=false"
    ))
    .map_err(|e| e.to_string())?
    .downcast::<gstreamer::Pipeline>()
    .map_err(|_| "not a pipeline".to_string())?;
    let sink = pipeline
        .by_name("units")
        .and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok())
        .ok_or("no appsink")?;
    pipeline
        .set_state(gstreamer::State::Playing)
        .map_err(|e| e.to_string())?;
    let mut units = Vec::new();
    let (mut caps, mut bytes, mut end) = (None, 0usize, gstreamer::ClockTime::ZERO);
    let result = loop {
        match sink.pull_sample() {
            Ok(sample) => {
                if caps.is_none() {
                    caps = sample.caps_owned();
                }
                let Some(buf) = sample.buffer_owned() else {
                    continue;
                };
                bytes += buf.size();
                if bytes > MAX_BYTES {
                    break Err(format!("more than {} MiB of H.264", MAX_BYTES >> 20));
                }
                if let Some(pts) = buf.pts() {
                    end = end.max(pts + buf.duration().unwrap_or(gstreamer::ClockTime::ZERO));
                }
                units.push(buf);
            }
            Err(_) => break Ok(()),
        }
    };
    let _ = pipeline.set_state(gstreamer::State::Null);
    result?;
    let caps = caps.ok_or("no H.264 track")?;
    let first = units
        .first()
        .and_then(|b| b.pts())
        .ok_or("no H.264 access unit")?;
    Ok(Clip {
        caps,
        length: end.saturating_sub(first),
        units,
    })
}

/// Why the RTSP server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum RtspServeError {
    #[error(transparent)]
    Init(#[from] super::InitError),
    /// The file cannot be opened.
    #[error(transparent)]
    Open(#[from] super::OpenError),
    #[error("RTSP server has no mount points")]
    NoMountPoints,
    /// The file could not be read as H.264 for looping.
    #[error("reading {path} for looping: {why}")]
    Read { path: String, why: String },
    /// Nothing can listen on the address (port taken, say).
    #[error("cannot listen on {}", std::net::SocketAddr::new(*address, *port))]
    Listen {
        address: std::net::IpAddr,
        port: u16,
        #[source]
        source: gstreamer::glib::BoolError,
    },
}

/// What a mount serves.
pub enum Source<'a> {
    /// An H.264 MP4 file; `looped`: without end (see the module's notes).
    File { path: &'a Path, looped: bool },
    /// A GStreamer launch description whose payloaders are named `pay0`, `pay1`, …, as
    /// `gst-rtsp-server` wants (tests: cameras of other codecs, with audio).
    Launch(&'a str),
}

/// Serves `source` at `rtsp://<address>:<port><mount>` until the process ends.
pub fn serve_forever(
    source: Source,
    address: std::net::IpAddr,
    port: u16,
    mount: &str,
    transport: vigil_core::config::RtspTransport,
) -> Result<(), RtspServeError> {
    super::init()?;
    let server = rtsp::RTSPServer::new();
    server.set_address(&address.to_string());
    server.set_service(&port.to_string());
    let factory = rtsp::RTSPMediaFactory::new();
    let what = match source {
        Source::Launch(description) => {
            factory.set_launch(&format!("( {description} )"));
            description.to_string()
        }
        Source::File { path, looped } => {
            serve_file(&factory, path, looped)?;
            path.display().to_string()
        }
    };
    factory.set_shared(false);
    // What clients may ask for (`auto`: anything; tests and benches use tcp/udp to check that
    // a camera asks for what its `rtsp_transport` says).
    use rtsp::gst_rtsp::RTSPLowerTrans as T;
    factory.set_protocols(match transport {
        vigil_core::config::RtspTransport::Auto => T::TCP | T::UDP | T::UDP_MCAST,
        vigil_core::config::RtspTransport::Tcp => T::TCP,
        vigil_core::config::RtspTransport::Udp => T::UDP | T::UDP_MCAST,
    });
    let mounts = server.mount_points().ok_or(RtspServeError::NoMountPoints)?;
    mounts.add_factory(mount, factory);
    let main_loop = gstreamer::glib::MainLoop::new(None, false);
    let _id = server
        .attach(None)
        .map_err(|source| RtspServeError::Listen {
            address,
            port,
            source,
        })?;
    println!(
        "serving {} at rtsp://{}{mount}",
        what,
        std::net::SocketAddr::new(address, port)
    );
    main_loop.run();
    Ok(())
}

/// The factory of a file's mount.
fn serve_file(
    factory: &rtsp::RTSPMediaFactory,
    file: &Path,
    looped: bool,
) -> Result<(), RtspServeError> {
    let abs = super::absolute(file)?;
    let location = abs
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    if looped {
        let clip = Arc::new(read_clip(&location).map_err(|why| RtspServeError::Read {
            path: abs.display().to_string(),
            why,
        })?);
        factory.set_launch(
            "( appsrc name=clip is-live=true format=time do-timestamp=false max-bytes=2000000 ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )",
        );
        factory.connect_media_configure(move |_, media| {
            let Some(src) = media
                .element()
                .downcast::<gstreamer::Bin>()
                .ok()
                .and_then(|b| b.by_name("clip"))
                .and_then(|e| e.downcast::<gstreamer_app::AppSrc>().ok())
            else {
                return;
            };
            src.set_caps(Some(&clip.caps));
            let clip = clip.clone();
            let next = std::sync::atomic::AtomicU64::new(0);
            src.set_callbacks(
                gstreamer_app::AppSrcCallbacks::builder()
                    .need_data(move |src, _| {
                        // One access unit per call: appsrc asks again while its queue has room,
                        // and the server's sinks pace the stream at the clock.
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let len = clip.units.len() as u64;
                        let (lap, i) = (n / len, (n % len) as usize);
                        let mut buf = clip.units[i].copy();
                        {
                            let b = buf.make_mut();
                            let shift = clip.length * lap;
                            b.set_pts(clip.units[i].pts().map(|t| t + shift));
                            b.set_dts(clip.units[i].dts().map(|t| t + shift));
                            if lap > 0 && i == 0 {
                                b.set_flags(gstreamer::BufferFlags::DISCONT);
                            }
                        }
                        let _ = src.push_buffer(buf);
                    })
                    .build(),
            );
        });
    } else {
        factory.set_launch(&format!(
            "( filesrc location=\"{location}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        ));
    }
    Ok(())
}
