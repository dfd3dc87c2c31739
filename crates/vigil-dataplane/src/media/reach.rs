//! Does an RTSP camera answer on its TCP port? Used while a camera backs off after a failure:
//! if the camera did not answer when it failed (a cut link, a router saying "unreachable", a
//! camera rebooting), Vigil waits for it to answer and reconnects at once when it does, instead of
//! sleeping out a back-off that has grown during the outage or starting an RTSP connection that
//! can only hang until `stall_timeout`. A camera that answers but fails (a wrong path, a refused
//! password) keeps its ordinary back-off: the probe never makes Vigil try a broken camera faster.
//!
//! A probe is one TCP connect (no RTSP request), made on a short-lived thread so that a name
//! resolution that hangs cannot hold up the camera's thread (or its stop).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

/// How long one connect may take before the camera counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The host and TCP port of an `rtsp://` or `rtsps://` URL (default ports 554 and 322); None for
/// other URLs (files) or a URL without a usable host.
pub fn rtsp_endpoint(url: &str) -> Option<(String, u16)> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let (rest, default) = if lower.starts_with("rtsp://") {
        (&url[7..], 554)
    } else if lower.starts_with("rtsps://") {
        (&url[8..], 322)
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        (h, tail.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => default,
        Some(p) => p.parse().ok()?,
    };
    Some((host.to_string(), port))
}

/// One probe in flight at a time; [`Prober::poll`] never blocks.
pub struct Prober {
    endpoint: (String, u16),
    pending: Option<mpsc::Receiver<bool>>,
}

impl Prober {
    pub fn new(endpoint: (String, u16)) -> Self {
        Self {
            endpoint,
            pending: None,
        }
    }

    /// `host:port` for logs.
    pub fn target(&self) -> String {
        match self.endpoint.0.contains(':') {
            true => format!("[{}]:{}", self.endpoint.0, self.endpoint.1),
            false => format!("{}:{}", self.endpoint.0, self.endpoint.1),
        }
    }

    /// The result of the probe in flight, if it has finished; starts one if none is in flight.
    pub fn poll(&mut self) -> Option<bool> {
        if let Some(rx) = &self.pending {
            return match rx.try_recv() {
                Ok(r) => {
                    self.pending = None;
                    Some(r)
                }
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.pending = None;
                    Some(false)
                }
            };
        }
        let (tx, rx) = mpsc::channel();
        let (host, port) = self.endpoint.clone();
        let spawned = std::thread::Builder::new()
            .name("camera-probe".into())
            .spawn(move || {
                let _ = tx.send(answers(&host, port));
            });
        if spawned.is_ok() {
            self.pending = Some(rx);
        }
        None
    }

    /// Waits (up to [`PROBE_TIMEOUT`] and a little) for one probe's answer.
    pub fn probe_now(&mut self) -> bool {
        self.pending = None;
        let _ = self.poll();
        match self.pending.take() {
            Some(rx) => rx
                .recv_timeout(PROBE_TIMEOUT + Duration::from_millis(500))
                .unwrap_or(false),
            None => false,
        }
    }
}

/// Whether something accepts a TCP connection at `host:port` within [`PROBE_TIMEOUT`].
fn answers(host: &str, port: u16) -> bool {
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => return false,
    };
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_of_rtsp_urls() {
        let e = |u: &str| rtsp_endpoint(u);
        assert_eq!(e("rtsp://cam/stream"), Some(("cam".into(), 554)));
        assert_eq!(
            e("RTSP://10.0.0.5:8554/a?b"),
            Some(("10.0.0.5".into(), 8554))
        );
        assert_eq!(
            e("rtsp://admin:p@ss:w@cam.lan:1554/x"),
            Some(("cam.lan".into(), 1554))
        );
        assert_eq!(e("rtsps://cam"), Some(("cam".into(), 322)));
        assert_eq!(e("rtsp://[fe80::1]:9000/s"), Some(("fe80::1".into(), 9000)));
        assert_eq!(e("rtsp://[::1]/s"), Some(("::1".into(), 554)));
        assert_eq!(e("rtsp://cam:/s"), Some(("cam".into(), 554)));
        assert_eq!(e("file:///clip.mp4"), None);
        assert_eq!(e("rtsp:///s"), None);
        assert_eq!(e("rtsp://cam:99999/s"), None);
        assert_eq!(e("rtsp://[::1/s"), None);
    }

    #[test]
    fn a_listening_port_answers_and_a_closed_one_does_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut p = Prober::new(("127.0.0.1".into(), port));
        assert!(p.probe_now());
        assert_eq!(p.target(), format!("127.0.0.1:{port}"));
        drop(l);
        assert!(!p.probe_now());
        // poll: starts a probe, then gives its answer.
        let mut answer = None;
        for _ in 0..100 {
            answer = p.poll();
            if answer.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(answer, Some(false));
    }
}
