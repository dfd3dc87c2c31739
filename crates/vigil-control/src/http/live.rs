//! The live view: `GET /live` (a page shipped in the binary: every camera in a grid, one large,
//! overlay drawn by Vigil), `GET /api/live` (one WebSocket per browser for all cameras) and
//! `GET /api/cameras/{name}/mjpeg` (one camera as `multipart/x-mixed-replace`, for tools).
//!
//! Each client holds a [`Viewer`] of every camera it shows: while a camera has none, its worker
//! makes no live picture. A client is bounded: the newest picture of each camera replaces the
//! older one while the client is slow (skipped pictures are counted), one picture per camera at
//! most waits for its socket, a send that does not finish in [`SEND_TIMEOUT`] closes the
//! WebSocket, and at most `[live] max_clients` clients are served at once (503 beyond).
//!
//! WebSocket protocol: the server sends one text message first,
//! `{"cameras": ["plaza", …], "fps": 5}`, then binary messages, each a 2-byte big-endian camera
//! index into that list, a 4-byte big-endian length and that many bytes of JSON
//! (`{"seq", "width", "height", "tracks": [{"id", "class", "score", "bbox"}]}`: what the
//! picture shows), then one JPEG. What the client sends is ignored (a close ends it).

use super::{AppState, read};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vigil_dataplane::live::{LiveFeed, LiveFrame, Viewer};

/// A send to a live client that takes longer ends it.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The page, plain HTML and JavaScript, no build step.
const PAGE: &str = include_str!("live.html");

/// Live clients and what they were sent, for metrics, in one place.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Clients now (WebSocket and MJPEG).
    pub clients: AtomicU64,
    /// Clients refused at `max_clients`.
    pub refused: AtomicU64,
    /// Pictures sent to clients.
    pub sent: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Pictures a slow client skipped (a newer one replaced them before it could take them).
    pub skipped: AtomicU64,
    /// Clients closed because a send took longer than [`SEND_TIMEOUT`].
    pub timed_out: AtomicU64,
}

pub static LIVE: LiveStats = LiveStats {
    clients: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    sent: AtomicU64::new(0),
    sent_bytes: AtomicU64::new(0),
    skipped: AtomicU64::new(0),
    timed_out: AtomicU64::new(0),
};

/// One admitted client: counted until dropped.
#[derive(Debug)]
struct Client;

impl Client {
    /// A client slot, or `None` at the cap (counted).
    fn admit(max: u32) -> Option<Self> {
        let admitted = LIVE
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < u64::from(max)).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            LIVE.refused.fetch_add(1, Ordering::Relaxed);
        }
        // `then`, not `then_some`: a `Client` made and dropped would uncount one.
        admitted.then(|| Client)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        LIVE.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

fn error(code: StatusCode, msg: String) -> Response {
    (code, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

fn busy(max: u32) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "10")],
        axum::Json(serde_json::json!({
            "error": format!("{max} live viewers already (live.max_clients)")
        })),
    )
        .into_response()
}

fn disabled() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "the live view is off (live.enabled = false)".into(),
    )
}

/// The live feeds of the running cameras, in camera order.
fn feeds(s: &AppState) -> Vec<(String, Arc<LiveFeed>)> {
    read(&s.cameras)
        .into_iter()
        .filter_map(|c| Some((c.name, c.live?)))
        .collect()
}

/// `GET /live`: the page. It asks `/api/live` for the pictures; a token in the page's URL
/// fragment (`/live#token=…`, never sent to the server in a URL) goes with the WebSocket.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /api/live`: the WebSocket of one browser.
pub async fn websocket(State(s): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let Some(max) = s.live_max_clients else {
        return disabled();
    };
    let Some(client) = Client::admit(max) else {
        return busy(max);
    };
    let cams = feeds(&s);
    let fps = s.live_fps;
    ws.protocols(["vigil"])
        // Clients send nothing the server reads: small messages only.
        .max_message_size(4096)
        .max_frame_size(4096)
        .on_upgrade(move |socket| session(socket, cams, fps, client))
}

async fn session(
    mut socket: WebSocket,
    cams: Vec<(String, Arc<LiveFeed>)>,
    fps: f32,
    _client: Client,
) {
    let names: Vec<&str> = cams.iter().map(|(n, _)| n.as_str()).collect();
    let hello = serde_json::json!({ "cameras": names, "fps": fps }).to_string();
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    // One forwarder per camera: waits for its newest picture and hands it over; while the
    // socket is slow it waits here, and its viewer keeps only the newest picture.
    let (tx, mut rx) = tokio::sync::mpsc::channel(cams.len().max(1));
    let mut forwarders = tokio::task::JoinSet::new();
    for (i, (_, feed)) in cams.iter().enumerate() {
        let mut viewer: Viewer = feed.watch();
        let tx = tx.clone();
        forwarders.spawn(async move {
            while let Some(f) = viewer.next().await {
                if tx.send((i, f)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut last = vec![0u64; cams.len()];
    // With no camera (or every feed gone) the socket stays open until the client closes it:
    // a page that reconnected at once would only hammer the server.
    let mut feeding = !cams.is_empty();
    loop {
        tokio::select! {
            next = rx.recv(), if feeding => {
                let Some((i, f)) = next else {
                    feeding = false;
                    continue;
                };
                if last[i] != 0 && f.seq > last[i] + 1 {
                    LIVE.skipped.fetch_add(f.seq - last[i] - 1, Ordering::Relaxed);
                }
                last[i] = f.seq;
                let meta = meta(&f).to_string();
                let mut msg = Vec::with_capacity(6 + meta.len() + f.jpeg.bytes.len());
                msg.extend_from_slice(&(i as u16).to_be_bytes());
                msg.extend_from_slice(&(meta.len() as u32).to_be_bytes());
                msg.extend_from_slice(meta.as_bytes());
                msg.extend_from_slice(&f.jpeg.bytes);
                let n = msg.len() as u64;
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Binary(msg.into()))).await {
                    Ok(Ok(())) => {
                        LIVE.sent.fetch_add(1, Ordering::Relaxed);
                        LIVE.sent_bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        LIVE.timed_out.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // Dropping the forwarders drops their viewers: cameras nobody watches stop encoding.
    forwarders.abort_all();
}

/// What a live picture shows, for the page: its `seq`, size and the tracks drawn on it.
fn meta(f: &LiveFrame) -> serde_json::Value {
    let tracks: Vec<serde_json::Value> = f
        .tracks
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "class": vigil_core::analytics::COCO_CLASSES.get(t.class_id as usize).copied().unwrap_or("unknown"),
                "score": t.score,
                "bbox": t.bbox,
            })
        })
        .collect();
    serde_json::json!({
        "seq": f.seq,
        "width": f.jpeg.width,
        "height": f.jpeg.height,
        "tracks": tracks,
    })
}

/// `GET /api/cameras/{name}/mjpeg`: one camera's live pictures as an MJPEG stream.
pub async fn mjpeg(
    State(s): State<AppState>,
    Path(name): Path<String>,
    hold: Option<axum::Extension<super::server::ConnHold>>,
) -> Response {
    let Some(max) = s.live_max_clients else {
        return disabled();
    };
    let Some((_, feed)) = feeds(&s).into_iter().find(|(n, _)| *n == name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no running camera named {:?}",
                vigil_ota::text::bounded(&name, 200)
            ),
        );
    };
    let Some(client) = Client::admit(max) else {
        return busy(max);
    };
    // The connection stays busy (not idle-closed) while the stream runs.
    let busy = hold.map(|h| h.busy());
    let state = (feed.watch(), (client, busy), 0u64);
    let parts = futures_util::stream::unfold(state, |(mut viewer, client, last)| async move {
        let f = viewer.next().await?;
        if last != 0 && f.seq > last + 1 {
            LIVE.skipped.fetch_add(f.seq - last - 1, Ordering::Relaxed);
        }
        let head = format!(
            "--vigilframe\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            f.jpeg.bytes.len()
        );
        let mut part = Vec::with_capacity(head.len() + f.jpeg.bytes.len() + 2);
        part.extend_from_slice(head.as_bytes());
        part.extend_from_slice(&f.jpeg.bytes);
        part.extend_from_slice(b"\r\n");
        LIVE.sent.fetch_add(1, Ordering::Relaxed);
        LIVE.sent_bytes
            .fetch_add(part.len() as u64, Ordering::Relaxed);
        let seq = f.seq;
        Some((
            Ok::<_, std::convert::Infallible>(part),
            (viewer, client, seq),
        ))
    });
    (
        [
            (
                header::CONTENT_TYPE,
                "multipart/x-mixed-replace; boundary=vigilframe",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(parts),
    )
        .into_response()
}
