//! Which spooled event a PUBACK acknowledges: the link's in-flight bookkeeping for one
//! connection, apart from the rumqttc client so that it can be tested on its own.
//!
//! rumqttc assigns a packet id when a QoS 1 publish leaves (`Outgoing::Publish(pkid)`), not when
//! it is queued, and it sends the QoS 1 publishes of one connection in the order they were
//! queued. So the n-th outgoing QoS 1 publish is the n-th queued one: each queued QoS 1 publish
//! (an event with its seq, or anything else: status, replies, replays, OTA messages) takes its
//! place in a queue, and each outgoing publish with a non-zero packet id takes the front of that
//! queue. QoS 0 publishes (telemetry) leave with packet id 0 and take nothing. Packet ids are
//! reused once acknowledged (rumqttc counts them from 1 up to its inflight limit, then wraps to
//! 1; the protocol allows up to 65535), so the map from packet id to seq holds only the
//! publishes still awaiting their PUBACK. When the next packet id is still awaiting its PUBACK
//! (a collision), rumqttc holds that publish (`Outgoing::AwaitAck`, which takes nothing here)
//! and sends it with the same packet id right after that PUBACK arrives: the PUBACK comes first,
//! then its `Outgoing::Publish`, so the order still holds.
//!
//! At most [`WINDOW`] events are queued or awaiting their PUBACK at once. A lost connection
//! clears everything ([`InFlight::connection_lost`]): the next connection starts again from the
//! oldest event the spool holds as unsent, since nothing not acknowledged was marked sent.

use std::collections::{HashMap, VecDeque};

/// Most event publishes queued or awaiting their PUBACK at once.
pub const WINDOW: usize = 64;

/// One connection's in-flight event publishes.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Per QoS 1 publish queued on the client and not yet gone out, in order: the event's seq,
    /// or None for a publish that is not an event.
    queued: VecDeque<Option<u64>>,
    /// Packet id → seq of the event publishes awaiting their PUBACK.
    awaiting: HashMap<u16, u64>,
    /// Highest seq queued on this connection (0: none yet).
    cursor: u64,
}

impl InFlight {
    pub fn new() -> Self {
        Self::default()
    }

    /// An event's QoS 1 publish was handed to the client.
    pub fn queued_event(&mut self, seq: u64) {
        self.queued.push_back(Some(seq));
        self.cursor = seq;
    }

    /// A QoS 1 publish that is not an event (status, a reply, a replay, OTA) was handed to the
    /// client: it will take a packet id in its turn.
    pub fn queued_other(&mut self) {
        self.queued.push_back(None);
    }

    /// A publish went out with this packet id (rumqttc's `Outgoing::Publish`). Packet id 0 is a
    /// QoS 0 publish and counts for nothing; an outgoing publish when nothing is queued is
    /// ignored.
    pub fn outgoing_publish(&mut self, pkid: u16) {
        if pkid == 0 {
            return;
        }
        if let Some(Some(seq)) = self.queued.pop_front() {
            self.awaiting.insert(pkid, seq);
        }
    }

    /// A PUBACK arrived: the seq of the event it acknowledges, if it is one (a PUBACK for
    /// another publish, or for an unknown packet id, gives None).
    pub fn puback(&mut self, pkid: u16) -> Option<u64> {
        self.awaiting.remove(&pkid)
    }

    /// The connection is gone: nothing is queued or in flight any more, and the next connection
    /// queues again from the oldest unsent event (cursor 0).
    pub fn connection_lost(&mut self) {
        self.queued.clear();
        self.awaiting.clear();
        self.cursor = 0;
    }

    /// Event publishes awaiting their PUBACK.
    pub fn awaiting_puback(&self) -> usize {
        self.awaiting.len()
    }

    /// Event publishes queued or awaiting their PUBACK.
    pub fn pending(&self) -> usize {
        self.awaiting.len() + self.queued.iter().filter(|q| q.is_some()).count()
    }

    /// How many more events may be queued now (0 when the window is full).
    pub fn room(&self) -> usize {
        WINDOW.saturating_sub(self.pending())
    }

    /// Highest seq queued on this connection; the next events to queue come after it.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues events `seqs`, each followed by a going-out with the next packet id from `pkid`.
    fn send(f: &mut InFlight, seqs: impl IntoIterator<Item = u64>, pkid: &mut u16) {
        for seq in seqs {
            f.queued_event(seq);
            f.outgoing_publish(*pkid);
            *pkid = if *pkid == u16::MAX { 1 } else { *pkid + 1 };
        }
    }

    #[test]
    fn in_order_pubacks_acknowledge_the_events_in_order() {
        let mut f = InFlight::new();
        for seq in 1..=3 {
            f.queued_event(seq);
        }
        assert_eq!((f.pending(), f.awaiting_puback(), f.cursor()), (3, 0, 3));
        for pkid in 1..=3 {
            f.outgoing_publish(pkid);
        }
        assert_eq!((f.pending(), f.awaiting_puback()), (3, 3));
        assert_eq!(
            (1..=3).map(|p| f.puback(p)).collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3)]
        );
        assert_eq!((f.pending(), f.room()), (0, WINDOW));
    }

    #[test]
    fn out_of_order_pubacks_find_their_own_events() {
        let mut f = InFlight::new();
        let mut pkid = 10;
        send(&mut f, 100..104, &mut pkid);
        assert_eq!(f.puback(12), Some(102));
        assert_eq!(f.puback(10), Some(100));
        assert_eq!(f.puback(13), Some(103));
        assert_eq!(f.puback(12), None, "acknowledged once only");
        assert_eq!(f.puback(11), Some(101));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_puback_for_an_unknown_packet_id_is_ignored() {
        let mut f = InFlight::new();
        f.queued_event(1);
        f.outgoing_publish(1);
        assert_eq!(f.puback(2), None);
        assert_eq!(f.puback(0), None);
        assert_eq!((f.pending(), f.awaiting_puback()), (1, 1));
        assert_eq!(f.puback(1), Some(1));
    }

    #[test]
    fn other_qos1_publishes_take_their_packet_ids_and_qos0_takes_none() {
        let mut f = InFlight::new();
        // status, then an event, then a reply, then another event
        f.queued_other();
        f.queued_event(7);
        f.queued_other();
        f.queued_event(8);
        assert_eq!(f.pending(), 2, "only events count against the window");
        f.outgoing_publish(1); // status
        f.outgoing_publish(0); // telemetry (QoS 0) in between: takes nothing
        f.outgoing_publish(2); // event 7
        f.outgoing_publish(0);
        f.outgoing_publish(3); // reply
        f.outgoing_publish(4); // event 8
        assert_eq!(f.puback(1), None, "the status is no event");
        assert_eq!(f.puback(3), None);
        assert_eq!(f.puback(4), Some(8));
        assert_eq!(f.puback(2), Some(7));
        // An outgoing publish with nothing queued (none of ours) is ignored.
        f.outgoing_publish(5);
        assert_eq!(f.puback(5), None);
    }

    #[test]
    fn packet_ids_are_reused_after_wrap_around() {
        let mut f = InFlight::new();
        let mut pkid = 65534;
        send(&mut f, [1, 2, 3], &mut pkid); // 65534, 65535, 1
        assert_eq!(pkid, 2);
        assert_eq!(f.puback(65535), Some(2));
        assert_eq!(f.puback(1), Some(3));
        // 1 and 65535 are free again and now stand for other events.
        f.queued_event(4);
        f.outgoing_publish(1);
        f.queued_event(5);
        f.outgoing_publish(65535);
        assert_eq!(f.puback(1), Some(4));
        assert_eq!(f.puback(65534), Some(1));
        assert_eq!(f.puback(65535), Some(5));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_collision_on_a_reused_packet_id_is_sent_after_its_puback() {
        // rumqttc with inflight 80: packet ids 1..=80, then 1 again.
        let mut f = InFlight::new();
        let mut pkid = 1;
        send(&mut f, 1..=80, &mut pkid);
        for p in 2..=80 {
            assert_eq!(f.puback(p), Some(u64::from(p)));
        }
        // Event 81 gets packet id 1, still awaiting its PUBACK: held (AwaitAck), not sent.
        f.queued_event(81);
        assert_eq!((f.awaiting_puback(), f.pending()), (1, 2));
        // The PUBACK of the first 1, then the held publish goes out as 1.
        assert_eq!(f.puback(1), Some(1));
        f.outgoing_publish(1);
        assert_eq!(f.puback(1), Some(81));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn at_most_the_window_is_queued_or_awaiting_a_puback() {
        let mut f = InFlight::new();
        let mut pkid = 1;
        send(&mut f, 1..=40, &mut pkid);
        assert_eq!(f.room(), WINDOW - 40);
        for seq in 41..=WINDOW as u64 {
            f.queued_event(seq); // queued, not yet gone out: counts as well
        }
        assert_eq!((f.pending(), f.room()), (WINDOW, 0));
        assert_eq!(f.awaiting_puback(), 40);
        f.queued_other();
        assert_eq!(f.room(), 0, "other publishes do not take room");
        assert_eq!(f.puback(5), Some(5));
        assert_eq!(f.room(), 1);
    }

    #[test]
    fn a_lost_connection_clears_everything_and_starts_from_the_oldest_unsent() {
        let mut f = InFlight::new();
        let mut pkid = 1;
        send(&mut f, 1..=5, &mut pkid);
        f.queued_event(6);
        f.queued_other();
        assert_eq!(f.puback(1), Some(1));
        assert_eq!(f.cursor(), 6);
        f.connection_lost();
        assert_eq!(
            (f.pending(), f.awaiting_puback(), f.room(), f.cursor()),
            (0, 0, WINDOW, 0)
        );
        // A PUBACK of the old connection finds nothing; the new one pairs from scratch.
        assert_eq!(f.puback(2), None);
        f.queued_event(2);
        f.outgoing_publish(1);
        assert_eq!(f.puback(1), Some(2));
    }
}
