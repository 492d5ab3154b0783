//! Simulcast layer choice, from RTP alone (DESIGN flow 6).
//!
//! Policy, kept simple on purpose:
//! - The SFU measures each incoming layer's bitrate over 1 s windows (payload bytes; the
//!   payloads are SFrame ciphertext, so sizes are all it can see). Layers are ranked by that
//!   rate, not by their rid names, which browsers choose freely.
//! - Each subscriber has one bandwidth estimate from str0m's TWCC estimator. Audio is
//!   reserved first ([`AUDIO_RESERVE_BPS`] per audio track received); the rest is split
//!   evenly between the video tracks it receives, with 15 % headroom.
//! - Per track, the target is the highest layer whose measured rate fits the share, else the
//!   lowest layer. A layer whose rate is not known yet ranks above all known ones, so a new
//!   subscriber starts low and climbs once rates are measured.
//! - The subscriber switches to the target only on a keyframe of the target layer (a delta
//!   frame of another layer cannot be decoded); until then it keeps the current layer, and
//!   the SFU asks the publisher for a keyframe on the target layer (throttled like all
//!   keyframe requests).

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// Bandwidth set aside per received audio track (Opus at 32-48 kbit/s plus headers).
pub const AUDIO_RESERVE_BPS: u64 = 64_000;

const WINDOW: Duration = Duration::from_secs(1);

/// A layer with no packet for this long is considered paused by the publisher.
const STALE: Duration = Duration::from_millis(1000);

#[derive(Debug)]
struct Layer {
    rid: Rid,
    window_start: Instant,
    window_bytes: u64,
    /// Rate of the last complete window, if any.
    bps: Option<u64>,
    /// When a packet of this layer last arrived.
    last_seen: Instant,
}

/// Bitrate of each simulcast layer of one incoming track.
#[derive(Debug, Default)]
pub(crate) struct LayerMeter {
    layers: Vec<Layer>,
}

impl LayerMeter {
    pub(crate) fn record(&mut self, rid: Rid, now: Instant, bytes: usize) {
        let layer = match self.layers.iter_mut().position(|l| l.rid == rid) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(Layer {
                    rid,
                    window_start: now,
                    window_bytes: 0,
                    bps: None,
                    last_seen: now,
                });
                // Just pushed: the vector is not empty.
                let last = self.layers.len() - 1;
                &mut self.layers[last]
            }
        };
        let elapsed = now.saturating_duration_since(layer.window_start);
        if elapsed >= WINDOW {
            layer.bps = Some(layer.window_bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64);
            layer.window_start = now;
            layer.window_bytes = 0;
        }
        layer.window_bytes += bytes as u64;
        layer.last_seen = now;
    }

    /// Layers from lowest to highest rate; unknown rates last, in order of appearance.
    /// Layers that are alive at `now`, lowest rate first. A layer the publisher paused (CPU or
    /// bandwidth adaptation) stops counting after [`STALE`]: otherwise a subscriber targeting it
    /// would wait forever for its keyframe and receive nothing.
    #[cfg(test)]
    pub(crate) fn ranked(&self, now: Instant) -> Vec<(Rid, Option<u64>)> {
        let mut v = Vec::new();
        self.rank_into(now, &mut v);
        v
    }

    /// [`LayerMeter::ranked`] into a buffer the caller reuses (called per forwarded frame).
    pub(crate) fn rank_into(&self, now: Instant, out: &mut Vec<(Rid, Option<u64>)>) {
        out.clear();
        out.extend(
            self.layers
                .iter()
                .filter(|l| now.saturating_duration_since(l.last_seen) < STALE)
                .map(|l| (l.rid, l.bps)),
        );
        out.sort_by_key(|(_, bps)| bps.unwrap_or(u64::MAX));
    }
}

/// The layer a subscriber should receive given its share of the estimate.
pub(crate) fn choose(ranked: &[(Rid, Option<u64>)], share_bps: u64) -> Option<Rid> {
    let budget = share_bps * 85 / 100;
    ranked
        .iter()
        .rev()
        .find(|(_, bps)| bps.is_some_and(|b| b <= budget))
        .or_else(|| ranked.first())
        .map(|(rid, _)| *rid)
}

/// The share of `estimate_bps` for one video track of a subscriber receiving `audio` audio
/// and `video` video tracks.
pub(crate) fn video_share(estimate_bps: u64, audio: usize, video: usize) -> u64 {
    let rest = estimate_bps.saturating_sub(AUDIO_RESERVE_BPS * audio as u64);
    rest / video.max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter_with(rates: &[(&str, u64)]) -> LayerMeter {
        let t0 = Instant::now();
        let mut m = LayerMeter::default();
        for step in 0..=10u64 {
            let now = t0 + Duration::from_millis(100 * step + 1);
            for (rid, bps) in rates {
                m.record((*rid).into(), now, (bps / 8 / 10) as usize);
            }
        }
        m
    }

    #[test]
    fn layers_rank_by_measured_rate_not_name() {
        let m = meter_with(&[("h", 1_500_000), ("q", 150_000), ("f", 500_000)]);
        let ranked: Vec<Rid> = m
            .ranked(m.layers[0].last_seen)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(ranked, vec!["q".into(), "f".into(), "h".into()]);
    }

    #[test]
    fn highest_fitting_layer_is_chosen_else_lowest() {
        let m = meter_with(&[("l", 150_000), ("m", 500_000), ("h", 1_500_000)]);
        let r = m.ranked(m.layers[0].last_seen);
        assert_eq!(choose(&r, 3_000_000), Some("h".into()));
        assert_eq!(choose(&r, 1_000_000), Some("m".into()));
        assert_eq!(choose(&r, 50_000), Some("l".into()));
    }

    #[test]
    fn unknown_rates_start_at_the_first_seen_layer() {
        let t0 = Instant::now();
        let mut m = LayerMeter::default();
        m.record("l".into(), t0, 100);
        m.record("h".into(), t0, 1000);
        assert_eq!(choose(&m.ranked(t0), 10_000_000), Some("l".into()));
    }

    #[test]
    fn a_paused_layer_stops_being_a_target() {
        let m = meter_with(&[("l", 150_000), ("m", 500_000), ("h", 1_500_000)]);
        let t = m.layers[0].last_seen;
        assert_eq!(choose(&m.ranked(t), 3_000_000), Some("h".into()));
        // The publisher pauses "h": after a second only "l" and "m" are candidates.
        let mut m = m;
        let later = t + Duration::from_millis(1200);
        m.record("l".into(), later, 100);
        m.record("m".into(), later, 100);
        let r = m.ranked(later);
        assert_eq!(r.len(), 2);
        assert_eq!(choose(&r, 3_000_000), Some("m".into()));
    }

    #[test]
    fn audio_is_reserved_before_video_is_split() {
        assert_eq!(video_share(1_128_000, 2, 2), 500_000);
        assert_eq!(video_share(10_000, 2, 1), 0);
    }
}
