//! Loss that NACK/RTX did not repair, seen from the packets str0m delivers in RTP mode.
//!
//! In RTP mode str0m still keeps the receive register of each incoming stream, sends NACKs
//! for holes and turns RTX repairs back into packets of the main stream (with their
//! original sequence number, delivered late and out of order). What it no longer does is
//! tell the SFU that a hole stayed open: frame mode's `MediaData::contiguous` is gone. This
//! tracker notes each hole when it appears and reports it lost once it is still open after
//! [`REPAIR_WINDOW`]; the SFU then asks the publisher for a keyframe.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a hole may wait for its retransmission (a few NACK rounds at typical RTTs).
pub(crate) const REPAIR_WINDOW: Duration = Duration::from_millis(300);

/// Holes tracked at once; a larger burst is reported as loss at once.
const MAX_HOLES: usize = 128;

/// Holes in one incoming stream's extended sequence numbers.
#[derive(Debug, Default)]
pub(crate) struct LossTracker {
    highest: Option<u64>,
    /// Missing sequence numbers with the time the hole was seen, oldest first.
    holes: VecDeque<(u64, Instant)>,
}

impl LossTracker {
    /// Records a delivered packet; returns true when a hole is now considered lost for good
    /// (the holes are then forgotten: the keyframe that follows repairs them all).
    pub(crate) fn record(&mut self, now: Instant, seq: u64) -> bool {
        match self.highest {
            None => self.highest = Some(seq),
            Some(h) if seq > h => {
                let gap = seq - h - 1;
                if gap as usize > MAX_HOLES - self.holes.len() {
                    self.highest = Some(seq);
                    self.holes.clear();
                    return true;
                }
                for s in h + 1..seq {
                    self.holes.push_back((s, now));
                }
                self.highest = Some(seq);
            }
            Some(_) => {
                // Late: a retransmission (or reordering) fills its hole.
                if let Some(i) = self.holes.iter().position(|(s, _)| *s == seq) {
                    self.holes.remove(i);
                }
            }
        }
        let lost = self
            .holes
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= REPAIR_WINDOW);
        if lost {
            self.holes.clear();
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repaired_hole_is_not_loss() {
        let t0 = Instant::now();
        let mut l = LossTracker::default();
        assert!(!l.record(t0, 10));
        assert!(!l.record(t0, 12));
        assert!(!l.record(t0 + Duration::from_millis(50), 11));
        assert!(!l.record(t0 + Duration::from_secs(1), 13));
    }

    #[test]
    fn an_open_hole_is_loss_once_after_the_window() {
        let t0 = Instant::now();
        let mut l = LossTracker::default();
        l.record(t0, 10);
        assert!(!l.record(t0, 12));
        assert!(!l.record(t0 + Duration::from_millis(100), 13));
        assert!(l.record(t0 + REPAIR_WINDOW, 14));
        // Reported once.
        assert!(!l.record(t0 + REPAIR_WINDOW * 2, 15));
    }

    #[test]
    fn a_huge_gap_is_loss_at_once() {
        let t0 = Instant::now();
        let mut l = LossTracker::default();
        l.record(t0, 10);
        assert!(l.record(t0, 10 + MAX_HOLES as u64 + 2));
        assert!(!l.record(t0, 11 + MAX_HOLES as u64 + 2));
    }
}
