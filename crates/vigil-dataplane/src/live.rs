//! Live pictures of one camera for whoever watches (the browser live view, MJPEG): the worker
//! makes an annotated JPEG at most `fps` times a second **only while a [`Viewer`] exists**,
//! and publishes it in a one-slot `watch` channel: the newest picture replaces the older one,
//! so a slow viewer skips pictures (and counts them from the gaps in `seq`) and nothing queues.
//!
//! Knows nothing of HTTP or WebSockets: viewers are made by whoever serves them.

use crate::picture::Jpeg;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::watch;

/// One live picture, with the tracks drawn on it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveFrame {
    /// 1, 2, 3, … per feed: a viewer that sees a gap skipped pictures.
    pub seq: u64,
    pub jpeg: Jpeg,
    pub tracks: Vec<LiveTrack>,
}

/// A track as drawn on a live picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveTrack {
    pub id: u64,
    pub class_id: u16,
    pub score: f32,
    /// `[x1, y1, x2, y2]`, normalised to the frame.
    pub bbox: [f32; 4],
}

/// The live pictures of one camera, and pictures asked for once (the `snapshot` command).
#[derive(Debug)]
pub struct LiveFeed {
    viewers: AtomicUsize,
    seq: AtomicU64,
    tx: watch::Sender<Option<Arc<LiveFrame>>>,
    /// Pending one-off requests, and how many of them want a clean picture too.
    requests: AtomicUsize,
    clean_requests: AtomicUsize,
    answers: watch::Sender<Option<Arc<Requested>>>,
}

/// A picture asked for once: annotated, and clean (no overlay) when a request wanted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Requested {
    pub annotated: Jpeg,
    pub clean: Option<Jpeg>,
}

/// One pending request for a picture ([`LiveFeed::request`]); withdrawn when dropped.
#[derive(Debug)]
pub struct PictureRequest {
    feed: Arc<LiveFeed>,
    clean: bool,
    rx: watch::Receiver<Option<Arc<Requested>>>,
}

impl PictureRequest {
    /// The next picture made after the request (with a clean one if it asked), `None` when
    /// the feed is gone.
    pub async fn next(&mut self) -> Option<Arc<Requested>> {
        let clean = self.clean;
        next_value(&mut self.rx, |r| !clean || r.clean.is_some()).await
    }
}

impl Drop for PictureRequest {
    fn drop(&mut self) {
        self.feed.requests.fetch_sub(1, Ordering::Relaxed);
        if self.clean {
            self.feed.clean_requests.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl LiveFeed {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            viewers: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            tx: watch::Sender::new(None),
            requests: AtomicUsize::new(0),
            clean_requests: AtomicUsize::new(0),
            answers: watch::Sender::new(None),
        })
    }

    /// Asks for one picture of the next analysed frame (and a clean one with `clean`).
    pub fn request(self: &Arc<Self>, clean: bool) -> PictureRequest {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if clean {
            self.clean_requests.fetch_add(1, Ordering::Relaxed);
        }
        let mut rx = self.answers.subscribe();
        rx.mark_unchanged();
        PictureRequest {
            feed: self.clone(),
            clean,
            rx,
        }
    }

    /// Whether requests are pending, and whether one wants a clean picture (the worker's
    /// side).
    pub fn requested(&self) -> (bool, bool) {
        (
            self.requests.load(Ordering::Relaxed) > 0,
            self.clean_requests.load(Ordering::Relaxed) > 0,
        )
    }

    /// Answers the pending requests (the worker's side).
    pub fn answer(&self, annotated: Jpeg, clean: Option<Jpeg>) {
        self.answers
            .send_replace(Some(Arc::new(Requested { annotated, clean })));
    }

    /// How many viewers watch now: the worker makes pictures only while this is above 0.
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// Pictures published so far.
    pub fn published(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// A new viewer: counted until dropped. Its first `changed()` is the next picture.
    pub fn watch(self: &Arc<Self>) -> Viewer {
        self.viewers.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.tx.subscribe();
        rx.mark_unchanged();
        Viewer {
            feed: self.clone(),
            rx,
        }
    }

    /// Publishes a picture and the tracks drawn on it, replacing the previous one (the
    /// worker's side).
    pub fn publish(&self, jpeg: Jpeg, tracks: Vec<LiveTrack>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.tx
            .send_replace(Some(Arc::new(LiveFrame { seq, jpeg, tracks })));
    }
}

/// The next value sent on `rx` that `wanted` takes (the newest, if several came); `None` when
/// the sender is gone.
async fn next_value<T>(
    rx: &mut watch::Receiver<Option<Arc<T>>>,
    wanted: impl Fn(&T) -> bool,
) -> Option<Arc<T>> {
    loop {
        rx.changed().await.ok()?;
        if let Some(v) = rx.borrow_and_update().clone().filter(|v| wanted(v)) {
            return Some(v);
        }
    }
}

/// One viewer of a [`LiveFeed`].
#[derive(Debug)]
pub struct Viewer {
    feed: Arc<LiveFeed>,
    rx: watch::Receiver<Option<Arc<LiveFrame>>>,
}

impl Viewer {
    /// The next picture newer than the last one returned (the newest, if several came).
    /// `None` when the feed is gone.
    pub async fn next(&mut self) -> Option<Arc<LiveFrame>> {
        next_value(&mut self.rx, |_| true).await
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.feed.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_pending_until_answered_and_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let feed = LiveFeed::new();
        assert_eq!(feed.requested(), (false, false));
        let mut clean = feed.request(true);
        let mut plain = feed.request(false);
        assert_eq!(feed.requested(), (true, true));
        // An answer without a clean picture satisfies only the plain request.
        feed.answer(jpeg(1), None);
        assert_eq!(rt.block_on(plain.next()).unwrap().annotated.bytes[0], 1);
        feed.answer(jpeg(2), Some(jpeg(3)));
        let r = rt.block_on(clean.next()).unwrap();
        assert_eq!(
            (r.annotated.bytes[0], r.clean.as_ref().unwrap().bytes[0]),
            (2, 3)
        );
        drop(clean);
        assert_eq!(feed.requested(), (true, false));
        drop(plain);
        assert_eq!(feed.requested(), (false, false));
    }

    fn jpeg(n: u8) -> Jpeg {
        Jpeg {
            bytes: Arc::from(&[n][..]),
            width: 2,
            height: 2,
        }
    }

    #[test]
    fn viewers_are_counted_and_a_slow_one_gets_the_newest_picture() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let feed = LiveFeed::new();
        assert_eq!(feed.viewers(), 0);
        feed.publish(jpeg(0), Vec::new());
        let mut a = feed.watch();
        let b = feed.watch();
        assert_eq!(feed.viewers(), 2);
        drop(b);
        assert_eq!(feed.viewers(), 1);
        for n in 1..=5 {
            feed.publish(jpeg(n), Vec::new());
        }
        let f = rt.block_on(a.next()).unwrap();
        assert_eq!(
            (f.seq, f.jpeg.bytes[0]),
            (6, 5),
            "the newest, not the first missed"
        );
        let none = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(50), a.next()).await
        });
        assert!(none.is_err(), "nothing new: waits");
        drop(a);
        assert_eq!(feed.viewers(), 0);
    }
}
