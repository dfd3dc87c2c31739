//! A small RTSP server (gst-rtsp-server) that serves an H.264 MP4 file as a camera: for the demo
//! and the tests (`vigil rtsp-serve`). Each client gets its own playback from the start, in
//! real time.

use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use std::path::Path;

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
    /// Nothing can listen on the address (port taken, say).
    #[error("cannot listen on {}", std::net::SocketAddr::new(*address, *port))]
    Listen {
        address: std::net::IpAddr,
        port: u16,
        #[source]
        source: gstreamer::glib::BoolError,
    },
}

/// Serves `file` at `rtsp://<address>:<port><mount>` until the process ends.
pub fn serve_forever(
    file: &Path,
    address: std::net::IpAddr,
    port: u16,
    mount: &str,
) -> Result<(), RtspServeError> {
    super::init()?;
    let abs = super::absolute(file)?;
    let location = abs
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let server = rtsp::RTSPServer::new();
    server.set_address(&address.to_string());
    server.set_service(&port.to_string());
    let factory = rtsp::RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( filesrc location=\"{location}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    ));
    factory.set_shared(false);
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
        file.display(),
        std::net::SocketAddr::new(address, port)
    );
    main_loop.run();
    Ok(())
}
