//! The capacity search: the largest N-by-N meeting an SFU sustains within the limits, and the
//! sizes that load it to a given share of that.
//!
//! **Owns** the limits (p99 stream loss under 1 %, p99 added delay under 10 ms), the verdict
//! on one trial, the order of the trials ([`Search`]: grow along a ladder of sizes until a
//! failure, then bisect between the last pass and the first failure) and the choice of the
//! sizes whose egress packet rate is closest to a share of the capacity's.
//!
//! **Must not** run anything: main.rs starts a fresh SFU for each size [`Search::next`]
//! names and feeds the verdict back with [`Search::record`].

use crate::report::{added_delay_ms, Traffic};

/// A meeting passes when the 99th percentile of its per-stream loss stays below this.
pub const MAX_STREAM_LOSS_P99: f64 = 0.01;
/// A meeting passes when its p99 added delay stays below this, ms.
pub const MAX_ADDED_DELAY_P99_MS: f64 = 10.0;
/// A meeting is only measured when its publishers sent at least this share of their
/// scheduled frames in the window. Loss counts against the frames sent, so without this a
/// load generator that falls behind (it skips the frames it is late for) offers the SFU
/// less than the meeting's load and the trial still passes: at video N = 48 it once sent
/// 123 k of the 180 k packets per second an N = 48 meeting makes, and the search went on
/// to report N = 61.
pub const MIN_PUBLISHED_SHARE: f64 = 0.98;
/// Load process CPU (% of its core) above which it, not the SFU, may be the limit.
pub const LOAD_BOUND_CPU_PCT: f64 = 85.0;
/// Shares of the capacity's egress packet rate at which latency is measured.
pub const LOAD_POINTS: [f64; 2] = [0.5, 0.9];

/// Why a trial failed the limits; empty when it passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub reasons: Vec<String>,
}

impl Verdict {
    pub fn pass(&self) -> bool {
        self.reasons.is_empty()
    }

    /// `within limits`, or the reasons it is not.
    pub fn describe(&self) -> String {
        if self.pass() {
            "within limits".into()
        } else {
            self.reasons.join("; ")
        }
    }
}

/// Whether a measured meeting is within the limits. `direct_p99_ms` is the p99 delay of the
/// same measurement without an SFU.
pub fn verdict(t: &Traffic, direct_p99_ms: Option<f64>) -> Verdict {
    let mut reasons = Vec::new();
    if t.frames_received == 0 {
        reasons.push("no frames received".into());
        return Verdict { reasons };
    }
    let published = t.published_share();
    if published.is_nan() || published < MIN_PUBLISHED_SHARE {
        reasons.push(format!(
            "the load published {:.1} % of its scheduled frames (< {:.0} %): it fell behind, \
             so the SFU was not offered the meeting's load",
            100.0 * published,
            100.0 * MIN_PUBLISHED_SHARE
        ));
    }
    let loss = t.stream_loss_p99;
    if loss.is_nan() || loss >= MAX_STREAM_LOSS_P99 {
        reasons.push(format!(
            "p99 stream loss {:.2} % ≥ {:.0} %",
            100.0 * loss,
            100.0 * MAX_STREAM_LOSS_P99
        ));
    }
    let delay = added_delay_ms(t.delay_p99_ms, direct_p99_ms);
    if delay.is_nan() || delay >= MAX_ADDED_DELAY_P99_MS {
        reasons.push(format!(
            "p99 added delay {delay:.1} ms ≥ {MAX_ADDED_DELAY_P99_MS:.0} ms"
        ));
    }
    Verdict { reasons }
}

/// The sizes the growth phase tries, in order, up to `max_n`: 4, 8, 12, 16, then half again
/// and double alternately (24, 32, 48, 64, 96 …), with `max_n` itself last.
pub fn ladder(max_n: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    let mut n = 4;
    while n < max_n {
        out.push(n);
        n = if n < 16 {
            n + 4
        } else if n.is_power_of_two() {
            n + n / 2
        } else {
            // n is 1.5 × a power of two: on to the next power of two.
            n / 3 * 4
        };
    }
    out.push(max_n);
    out
}

/// Which sizes to try next, from the verdicts so far.
#[derive(Debug, Clone)]
pub struct Search {
    ladder: Vec<usize>,
    /// The largest size that passed (1: none yet; a meeting of one forwards nothing).
    pass: usize,
    /// The smallest size that failed.
    fail: Option<usize>,
}

/// Which phase of the search a trial belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Growing along the ladder: no failure yet.
    Grow,
    /// Between the last pass and the first failure.
    Bisect,
}

impl Search {
    /// A search for the largest size up to `max_n` (at least 2).
    pub fn new(max_n: usize) -> Search {
        Search {
            ladder: ladder(max_n.max(2)),
            pass: 1,
            fail: None,
        }
    }

    /// The next size to try and its phase, or `None` when the search is over.
    pub fn next(&self) -> Option<(usize, Phase)> {
        match self.fail {
            None => self
                .ladder
                .iter()
                .find(|&&n| n > self.pass)
                .map(|&n| (n, Phase::Grow)),
            Some(fail) if fail > self.pass + 1 => {
                // A meeting needs two participants: below that there is nothing to try.
                let mid = ((self.pass + fail) / 2).max(2);
                (mid < fail).then_some((mid, Phase::Bisect))
            }
            Some(_) => None,
        }
    }

    /// The verdict on size `n`.
    pub fn record(&mut self, n: usize, pass: bool) {
        if pass {
            self.pass = self.pass.max(n);
        } else {
            self.fail = Some(self.fail.map_or(n, |f| f.min(n)));
        }
    }

    /// The largest size that passed, if any did.
    pub fn capacity(&self) -> Option<usize> {
        (self.pass >= 2).then_some(self.pass)
    }

    /// Every size up to the largest allowed passed: the real capacity may be higher.
    pub fn reached_max(&self) -> bool {
        self.fail.is_none() && self.ladder.last() == Some(&self.pass)
    }
}

/// The size (2 ..= `capacity`) whose egress packet rate, N·(N−1) streams at the same rate
/// each, is closest to `share` of the capacity's; the smaller on a tie.
pub fn size_at_share(capacity: usize, share: f64) -> usize {
    let streams = |n: usize| (n * n.saturating_sub(1)) as f64;
    let target = share * streams(capacity);
    (2..=capacity.max(2))
        .min_by(|&a, &b| {
            (streams(a) - target)
                .abs()
                .total_cmp(&(streams(b) - target).abs())
        })
        .unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a search against an SFU that passes every size up to `limit`.
    fn run(max_n: usize, limit: usize) -> (Vec<usize>, Option<usize>, bool) {
        let mut s = Search::new(max_n);
        let mut tried = Vec::new();
        while let Some((n, _)) = s.next() {
            assert!(!tried.contains(&n), "{n} tried twice: {tried:?}");
            tried.push(n);
            s.record(n, n <= limit);
        }
        (tried, s.capacity(), s.reached_max())
    }

    #[test]
    fn the_ladder_grows_then_stops_at_the_maximum() {
        assert_eq!(ladder(48), [4, 8, 12, 16, 24, 32, 48]);
        assert_eq!(ladder(100), [4, 8, 12, 16, 24, 32, 48, 64, 96, 100]);
        assert_eq!(ladder(40), [4, 8, 12, 16, 24, 32, 40]);
        assert_eq!(ladder(8), [4, 8]);
        assert_eq!(ladder(3), [3]);
    }

    #[test]
    fn search_grows_then_bisects_to_the_exact_size() {
        let (tried, cap, max) = run(48, 20);
        assert_eq!(tried, [4, 8, 12, 16, 24, 20, 22, 21]);
        assert_eq!((cap, max), (Some(20), false));
        for limit in 2..=48 {
            let (_, cap, max) = run(48, limit);
            assert_eq!(cap, Some(limit));
            assert_eq!(max, limit == 48);
        }
    }

    #[test]
    fn search_reports_no_capacity_when_two_fail() {
        let (tried, cap, max) = run(48, 1);
        assert_eq!(tried, [4, 2]);
        assert_eq!((cap, max), (None, false));
        let (tried, cap, _) = run(48, 3);
        assert_eq!(tried, [4, 2, 3]);
        assert_eq!(cap, Some(3));
    }

    #[test]
    fn search_stops_at_the_maximum() {
        let (tried, cap, max) = run(8, 1000);
        assert_eq!(tried, [4, 8]);
        assert_eq!((cap, max), (Some(8), true));
    }

    #[test]
    fn verdicts_apply_both_limits_to_the_added_delay() {
        let mut t = Traffic::example(4, true);
        assert!(verdict(&t, Some(0.3)).pass());
        t.delay_p99_ms = 10.2;
        assert!(verdict(&t, Some(0.3)).pass(), "9.9 ms added");
        assert!(
            !verdict(&t, None).pass(),
            "without a baseline all of it counts"
        );
        t.stream_loss_p99 = 0.01;
        let v = verdict(&t, None);
        assert_eq!(v.reasons.len(), 2, "{v:?}");
        t.frames_received = 0;
        assert_eq!(verdict(&t, None).describe(), "no frames received");
    }

    #[test]
    fn a_load_that_falls_behind_its_schedule_fails_the_trial() {
        let mut t = Traffic::example(48, true);
        assert!(
            verdict(&t, Some(0.3)).pass(),
            "{:?}",
            verdict(&t, Some(0.3))
        );
        // Every frame sent arrived, in time: only the schedule was missed, as at video N = 48
        // when the load generator's core was full.
        t.frames_published = t.frames_published * 2 / 3;
        let v = verdict(&t, Some(0.3));
        assert_eq!(v.reasons.len(), 1, "{v:?}");
        assert!(v.describe().contains("published 66."), "{}", v.describe());
        // One frame short per publisher and kind (the window's edges) still passes.
        let mut t = Traffic::example(48, true);
        t.frames_published -= 2 * 48;
        assert!(verdict(&t, Some(0.3)).pass());
    }

    #[test]
    fn load_points_pick_the_closest_packet_rate() {
        // Capacity 10: 90 streams. 50 %: 45 → 7 (42) beats 8 (56). 90 %: 81 → 9 (72) and
        // 10 (90) tie; the smaller wins.
        assert_eq!(size_at_share(10, 0.5), 7);
        assert_eq!(size_at_share(10, 0.9), 9);
        assert_eq!(size_at_share(24, 0.5), 17);
        assert_eq!(size_at_share(2, 0.5), 2);
        assert_eq!(size_at_share(4, 0.9), 4);
    }
}
