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

/// The live pictures of one camera.
#[derive(Debug)]
pub struct LiveFeed {
    viewers: AtomicUsize,
    seq: AtomicU64,
    tx: watch::Sender<Option<Arc<LiveFrame>>>,
}

impl LiveFeed {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            viewers: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            tx: watch::Sender::new(None),
        })
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
        loop {
            self.rx.changed().await.ok()?;
            if let Some(f) = self.rx.borrow_and_update().clone() {
                return Some(f);
            }
        }
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
