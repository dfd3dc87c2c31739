//! A small RTSP server (gst-rtsp-server) that serves an H.264 MP4 file as a camera: for the demo
//! and the tests (`vigil rtsp-serve`). Each client gets its own playback from the start, in
//! real time.

use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use std::path::Path;

/// Serves `file` at `rtsp://127.0.0.1:<port><mount>` until the process ends.
pub fn serve_forever(file: &Path, port: u16, mount: &str) -> Result<(), String> {
    super::init().map_err(|e| vigil_core::error::chain(&e))?;
    let abs = std::fs::canonicalize(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let location = abs
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let server = rtsp::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port.to_string());
    let factory = rtsp::RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( filesrc location=\"{location}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    ));
    factory.set_shared(false);
    let mounts = server
        .mount_points()
        .ok_or("RTSP server has no mount points")?;
    mounts.add_factory(mount, factory);
    let main_loop = gstreamer::glib::MainLoop::new(None, false);
    let _id = server
        .attach(None)
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    println!(
        "serving {} at rtsp://127.0.0.1:{port}{mount}",
        file.display()
    );
    main_loop.run();
    Ok(())
}
