use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtp_::Bitrate;

/// Time window for averaging estimate changes.
const ESTIMATE_WINDOW: Duration = Duration::from_secs(3);

type TimeBitrate = (Instant, Bitrate);

const TOLERANCE: f64 = 0.05;

/// Smooths BWE estimates by averaging over a time window.
pub struct EstimateSmoother {
    estimates: VecDeque<TimeBitrate>,
    /// sealroom: the sum of `estimates` (in bit/s), kept as they come and go, so that `poll`
    /// does not add up the whole window each time an estimate changed (PATCHES.md). Set to
    /// the remaining value whenever one is left, so rounding cannot build up.
    total: f64,
    maybe_emit: bool,
    emitted: Option<Bitrate>,
}

impl EstimateSmoother {
    pub fn new() -> Self {
        Self {
            estimates: VecDeque::new(),
            total: 0.0,
            maybe_emit: false,
            emitted: None,
        }
    }

    /// Record a new estimate and update the smoothed average.
    pub fn record(&mut self, now: Instant, estimate: Bitrate) {
        // Did value change from previous?
        let do_update = self.estimates.back().map(|b| b.1) != Some(estimate);

        if do_update {
            self.maybe_emit = true;
            self.estimates.push_back((now, estimate));
            self.total += estimate.as_f64();
        }

        // Remove entries older than the window.
        while let Some((time, _)) = self.estimates.front() {
            if now.duration_since(*time) > ESTIMATE_WINDOW {
                // Keep last entry
                if self.estimates.len() == 1 {
                    break;
                }

                self.maybe_emit = true;
                if let Some((_, gone)) = self.estimates.pop_front() {
                    self.total -= gone.as_f64();
                }
            } else {
                break;
            }
        }
        if let (1, Some((_, only))) = (self.estimates.len(), self.estimates.front()) {
            self.total = only.as_f64();
        }
    }

    /// Poll for an estimate to emit. Returns Some only when there's a new value to emit.
    pub fn poll(&mut self) -> Option<Bitrate> {
        if !self.maybe_emit {
            return None;
        }

        if self.estimates.is_empty() {
            return None;
        }

        debug_assert!({
            let fresh: f64 = self.estimates.iter().map(|b| b.1.as_f64()).sum();
            (fresh - self.total).abs() <= fresh.abs() * 1e-9 + 1e-6
        });
        let avg = self.total / self.estimates.len() as f64;
        let rate: Bitrate = avg.into();

        // This forces emitting if we have the first ever value, or a last
        // where the rest of the window is gone (estimates stop coming).
        let force = self.estimates.len() == 1 && self.emitted != Some(rate);

        // Emit if we deviate enough from previously emitted.
        let deviate = if let Some(emitted) = self.emitted {
            !in_tolerance(emitted, rate)
        } else {
            true
        };

        self.maybe_emit = false;

        // Are we not to emit?
        if !force && !deviate {
            return None;
        }

        self.emitted = Some(rate);
        Some(rate)
    }
}

fn in_tolerance(b1: Bitrate, b2: Bitrate) -> bool {
    let min = b1 * (1.0 - TOLERANCE);
    let max = b1 * (1.0 + TOLERANCE);
    b2 > min && b2 < max
}

#[cfg(test)]
mod test {
    use super::*;

    /// sealroom (PATCHES.md): the kept total is the window's sum, and what `poll` emits is the
    /// window's average, as a fresh sum would give, while estimates come and go.
    #[test]
    fn the_kept_total_follows_the_window() {
        let start = Instant::now();
        let mut s = EstimateSmoother::new();
        let mut emitted = 0;
        for i in 0..2_000u64 {
            let now = start + Duration::from_millis(10 * i);
            // A value that changes most of the time and repeats sometimes.
            let bps = 300_000.0 + ((i * 7_919) % 1_000) as f64 * 1_234.5 + (i % 3) as f64;
            s.record(now, Bitrate::from(bps));
            let fresh: f64 = s.estimates.iter().map(|b| b.1.as_f64()).sum();
            assert!(
                (fresh - s.total).abs() <= fresh * 1e-12,
                "at {i}: {fresh} vs {}",
                s.total
            );
            if let Some(rate) = s.poll() {
                emitted += 1;
                let avg = fresh / s.estimates.len() as f64;
                assert!((rate.as_f64() - avg).abs() <= avg * 1e-12);
            }
        }
        assert!(
            emitted > 10,
            "the average moved, so it was emitted ({emitted})"
        );
        // A single value left after a long quiet spell is that value exactly.
        let later = start + Duration::from_secs(100);
        s.record(later, Bitrate::from(123_456.0));
        s.record(later + Duration::from_secs(4), Bitrate::from(123_456.0));
        assert_eq!(s.estimates.len(), 1);
        assert_eq!(s.total, 123_456.0);
        assert_eq!(s.poll(), Some(Bitrate::from(123_456.0)));
    }
}
