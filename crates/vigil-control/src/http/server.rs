//! The HTTP server's connections: accepted on a tokio listener, optionally wrapped in TLS
//! (tokio-rustls, rustls with ring), served by hyper's HTTP/1.1 connection with the axum app,
//! each one watched:
//!
//! - **idle timeout**: a connection with no request in progress (just accepted, or kept alive
//!   after its last response) and no byte received is closed after `idle_timeout`;
//! - **header timeout**: once bytes arrive on an idle connection (a TLS handshake, a request
//!   line), the request's headers must be complete within `header_timeout` (slow clients
//!   sending a byte at a time are closed);
//! - **a cap** on open connections, sized from the file descriptor limit: at the cap a new
//!   connection closes the longest-idle one (a request in progress is never cut), or is
//!   closed at once when every connection is busy. Nothing waits in a queue, and the
//!   descriptors the cameras and models need stay free: before this, 1 100 idle connections
//!   under systemd's default of 1 024 descriptors stopped `/healthz` and failed the camera.
//!
//! The request head's size is bounded by hyper (`max_buf_size`: 431 beyond it).

use axum::Router;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

/// Bytes of request line and headers hyper buffers at most (its minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 << 10;

/// The share of the process's file descriptors the HTTP connections may hold: the rest is the
/// data plane's (RTSP sockets, GStreamer's pipes and decoders, CUDA, the spool, MQTT).
const FD_SHARE: u64 = 4;

/// Connection counts, read by `/metrics` (one server per process).
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed for a new connection at the cap.
    pub evicted: AtomicU64,
    /// Closed at once: at the cap with every connection busy.
    pub refused: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub header_timeouts: AtomicU64,
    /// Closed because the client took nothing of a response for [`WRITE_STALL`].
    pub write_stalls: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
}

pub static CONNECTIONS: ConnCounters = ConnCounters {
    open: AtomicU64::new(0),
    accepted: AtomicU64::new(0),
    evicted: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    idle_timeouts: AtomicU64::new(0),
    header_timeouts: AtomicU64::new(0),
    write_stalls: AtomicU64::new(0),
    tls_failures: AtomicU64::new(0),
};

/// A connection whose client has taken no byte of a response for this long is closed, busy or
/// not (an MJPEG viewer that stopped reading, a download nobody reads): its socket buffer is
/// full and nothing it is sent can arrive.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// The limits a server runs with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
}

/// The soft `RLIMIT_NOFILE` of this process (from `/proc/self/limits`); `None` when unlimited
/// or unknown.
pub fn fd_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection cap: the configured one, at most a quarter of the descriptor limit.
pub fn connection_cap(configured: u32, fd_limit: Option<u64>) -> usize {
    let by_fds = fd_limit.map_or(u64::MAX, |l| (l / FD_SHARE).max(1));
    (u64::from(configured).min(by_fds)) as usize
}

/// What a connection's watcher reads: whether a request is in progress, since when it is
/// idle, and since when a request has been arriving.
struct ConnState {
    epoch: Instant,
    busy: AtomicU32,
    /// Milliseconds since `epoch` + 1 when it became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` + 1 when bytes arrived on the idle connection; 0: none.
    head_started: AtomicU64,
    /// Milliseconds since `epoch` + 1 since when a write waits for the client; 0: none.
    write_blocked: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
}

impl ConnState {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms.saturating_sub(1))
    }

    /// When the connection must be closed if nothing changes, and why; `None` while busy.
    fn deadline(&self, l: &Limits) -> Option<(Instant, Close)> {
        match self.write_blocked.load(Ordering::Acquire) {
            0 => {}
            t => return Some((self.at(t) + WRITE_STALL, Close::Stalled)),
        }
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some((
                self.at(self.idle_since.load(Ordering::Acquire)) + l.idle_timeout,
                Close::Idle,
            )),
            t => Some((self.at(t) + l.header_timeout, Close::Header)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Close {
    Idle,
    Header,
    Stalled,
}

/// Marks a request in progress until dropped (the handler returned or was cancelled).
pub struct Busy(Arc<ConnState>);

/// Handed to every request (an extension): a response whose body streams on (MJPEG) holds
/// [`ConnHold::busy`] in its body, so the connection is not idle, and not closed as idle,
/// while the stream runs.
#[derive(Clone)]
pub struct ConnHold(Arc<ConnState>);

impl ConnHold {
    pub fn busy(&self) -> Busy {
        Busy::new(self.0.clone())
    }
}

impl Busy {
    fn new(s: Arc<ConnState>) -> Self {
        s.busy.fetch_add(1, Ordering::AcqRel);
        s.head_started.store(0, Ordering::Release);
        Self(s)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now(), Ordering::Release);
        s.head_started.store(0, Ordering::Release);
        s.busy.fetch_sub(1, Ordering::AcqRel);
        s.wake.notify_one();
    }
}

/// The TCP stream, noting the first bytes that arrive on an idle connection and since when a
/// write has waited for the client.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl Watched {
    /// A write went through (the client is reading) or has to wait (since now, if it was not
    /// waiting already: the watcher then looks at the new deadline).
    fn note_write(&self, pending: bool) {
        let s = &self.state;
        if !pending {
            s.write_blocked.store(0, Ordering::Release);
        } else if s.write_blocked.load(Ordering::Acquire) == 0 {
            s.write_blocked.store(s.now(), Ordering::Release);
            s.wake.notify_one();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let s = &self.state;
        if buf.filled().len() > before
            && s.busy.load(Ordering::Acquire) == 0
            && s.head_started.load(Ordering::Acquire) == 0
        {
            s.head_started.store(s.now(), Ordering::Release);
            s.wake.notify_one();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(r.is_pending());
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(r.is_pending());
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The open connections, for the cap.
#[derive(Default)]
struct Table {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits connection `id`: under the cap, or by evicting the longest-idle connection;
    /// `false` when every connection is busy.
    fn admit(&self, id: u64, state: Arc<ConnState>, cap: usize) -> bool {
        let mut conns = self.lock();
        if conns.len() >= cap {
            let victim = conns
                .iter()
                .filter(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, s)| s.idle_since.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            let Some(victim) = victim.and_then(|v| conns.remove(&v)) else {
                return false;
            };
            victim.evicted.store(true, Ordering::Release);
            victim.wake.notify_one();
            CONNECTIONS.evicted.fetch_add(1, Ordering::Relaxed);
        }
        conns.insert(id, state);
        true
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Accepts and serves connections until the task is dropped.
pub async fn run(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: Limits,
) {
    let table = Arc::new(Table::default());
    let epoch = Instant::now();
    let mut last_accept_error: Option<Instant> = None;
    for id in 0u64.. {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was
                // taken: log at most every 10 s, and give the system a moment.
                if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("HTTP accept failed: {e}");
                    last_accept_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::new(ConnState {
            epoch,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(epoch.elapsed().as_millis() as u64 + 1),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        if !table.admit(id, state.clone(), limits.max_connections) {
            CONNECTIONS.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        CONNECTIONS.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (table, tls, app) = (table.clone(), tls.clone(), app.clone());
        tokio::spawn(async move {
            CONNECTIONS.open.fetch_add(1, Ordering::Relaxed);
            let io = Watched {
                inner: stream,
                state: state.clone(),
            };
            match tls {
                None => serve(io, state, app, limits).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(io));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(io)) => serve(io, state, app, limits).await,
                            _ => {
                                CONNECTIONS.tls_failures.fetch_add(1, Ordering::Relaxed);
                            }
                        },
                        _ = evicted(&state) => {}
                    }
                }
            }
            table.remove(id);
            CONNECTIONS.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Returns once the connection is evicted.
async fn evicted(state: &ConnState) {
    while !state.evicted.load(Ordering::Acquire) {
        state.wake.notified().await;
    }
}

/// Serves one connection until it ends, times out or is evicted.
async fn serve<I>(io: I, state: Arc<ConnState>, app: Router, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let state = state.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let busy = Busy::new(state.clone());
            let app = app.clone();
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnHold(state.clone()));
            async move {
                let resp = app.oneshot(req).await;
                drop(busy);
                resp
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        // The live view's WebSocket: after the 101 the socket is the WebSocket task's (bounded
        // by `[live] max_clients`), and this connection's limits no longer apply to it.
        .with_upgrades();
    tokio::pin!(conn);
    loop {
        if state.evicted.load(Ordering::Acquire) {
            return;
        }
        let deadline = state.deadline(&limits);
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut conn => return,
            _ = state.wake.notified() => {}
            _ = sleep => {
                // Still the same deadline (nothing arrived meanwhile): close.
                if let Some((at, why)) = state.deadline(&limits)
                    && at <= Instant::now()
                {
                    let c = match why {
                        Close::Idle => &CONNECTIONS.idle_timeouts,
                        Close::Header => &CONNECTIONS.header_timeouts,
                        Close::Stalled => &CONNECTIONS.write_stalls,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_three_quarters_of_the_descriptors() {
        assert_eq!(connection_cap(256, Some(1024)), 256);
        assert_eq!(connection_cap(1000, Some(1024)), 256);
        assert_eq!(connection_cap(256, Some(65536)), 256);
        assert_eq!(connection_cap(8, None), 8);
        assert_eq!(connection_cap(8, Some(2)), 1);
        assert!(fd_limit().is_some_and(|l| l > 0));
    }

    fn state(epoch: Instant, idle_since: u64, busy: u32) -> Arc<ConnState> {
        Arc::new(ConnState {
            epoch,
            busy: AtomicU32::new(busy),
            idle_since: AtomicU64::new(idle_since),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    #[test]
    fn at_the_cap_the_longest_idle_goes_and_busy_ones_stay() {
        let epoch = Instant::now();
        let t = Table::default();
        let (a, b) = (state(epoch, 5, 0), state(epoch, 1, 1));
        assert!(t.admit(1, a.clone(), 2));
        assert!(t.admit(2, b.clone(), 2));
        assert!(t.admit(3, state(epoch, 9, 0), 2), "a is idle: evicted");
        assert!(a.evicted.load(Ordering::Acquire));
        assert!(!b.evicted.load(Ordering::Acquire), "b is busy");
        // Now 2 (busy) and 3 (idle): 3 goes.
        assert!(t.admit(4, state(epoch, 10, 1), 2));
        // 2 and 4 are busy: nothing can go.
        assert!(!t.admit(5, state(epoch, 11, 0), 2));
        assert_eq!(t.lock().len(), 2);
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let epoch = Instant::now();
        let l = Limits {
            max_connections: 1,
            idle_timeout: Duration::from_secs(15),
            header_timeout: Duration::from_secs(5),
        };
        let s = state(epoch, 1, 0);
        let (at, why) = s.deadline(&l).unwrap();
        assert!(matches!(why, Close::Idle) && at == epoch + l.idle_timeout);
        s.head_started.store(2001, Ordering::Release);
        let (at, why) = s.deadline(&l).unwrap();
        assert!(matches!(why, Close::Header));
        assert_eq!(at, epoch + Duration::from_secs(2) + l.header_timeout);
        let busy = Busy::new(s.clone());
        assert!(
            s.deadline(&l).is_none(),
            "a request in progress is never cut"
        );
        drop(busy);
        let (_, why) = s.deadline(&l).unwrap();
        assert!(matches!(why, Close::Idle));
        // A write the client does not take: closed after WRITE_STALL, busy or not.
        let _busy = Busy::new(s.clone());
        s.write_blocked.store(3001, Ordering::Release);
        let (at, why) = s.deadline(&l).unwrap();
        assert!(matches!(why, Close::Stalled));
        assert_eq!(at, epoch + Duration::from_secs(3) + WRITE_STALL);
    }

    /// A real connection whose client asks for an endless response and never reads it: its
    /// socket buffers fill, and the server closes it once no byte was taken for WRITE_STALL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_is_closed() {
        use tokio::io::AsyncWriteExt;
        let chunk = axum::body::Bytes::from(vec![b'x'; 1 << 16]);
        let app = Router::new().route(
            "/flood",
            axum::routing::get(move || {
                let chunk = chunk.clone();
                async move {
                    let s = futures_util::stream::repeat_with(move || {
                        Ok::<_, std::convert::Infallible>(chunk.clone())
                    });
                    axum::body::Body::from_stream(s)
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 4,
            idle_timeout: Duration::from_secs(15),
            header_timeout: Duration::from_secs(5),
        };
        tokio::spawn(run(listener, None, app, limits));
        let before = CONNECTIONS.write_stalls.load(Ordering::Relaxed);
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let t0 = Instant::now();
        while CONNECTIONS.write_stalls.load(Ordering::Relaxed) == before {
            assert!(
                t0.elapsed() < WRITE_STALL + Duration::from_secs(20),
                "a client that never reads is closed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(t0.elapsed() >= WRITE_STALL, "not before the stall limit");
        drop(c);
    }
}
