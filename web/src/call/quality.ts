// Pure helpers of the call screen: connection quality from receiver statistics, and the active
// speaker from audio levels. No DOM, no timers: samples in, decisions out.

export type Quality = 'connecting' | 'good' | 'fair' | 'poor';

/** The counters of one inbound RTP stream that matter here (from `getStats()` inbound-rtp). */
export interface InboundCounters {
  packetsReceived: number;
  packetsLost: number;
  /** Seconds. */
  jitter: number;
}

/** Thresholds: loss in percent of packets in the interval, jitter in milliseconds. */
const GOOD = { loss: 2, jitterMs: 30 };
const FAIR = { loss: 8, jitterMs: 80 };

/**
 * Quality over one interval of all of a participant's inbound streams: the worst loss and
 * jitter decide. No packets at all in the interval (nothing received yet, or the streams
 * stalled) is `connecting` until the first packets arrived, `poor` afterwards.
 */
export function rateInterval(
  streams: { prev: InboundCounters | undefined; cur: InboundCounters }[],
  everReceived: boolean,
): Quality {
  let received = 0;
  let worstLoss = 0;
  let worstJitterMs = 0;
  for (const { prev, cur } of streams) {
    const got = cur.packetsReceived - (prev?.packetsReceived ?? 0);
    const lost = Math.max(0, cur.packetsLost - (prev?.packetsLost ?? 0));
    received += Math.max(0, got);
    if (got + lost > 0) worstLoss = Math.max(worstLoss, (100 * lost) / (got + lost));
    if (got > 0) worstJitterMs = Math.max(worstJitterMs, cur.jitter * 1000);
  }
  if (received === 0) return everReceived ? 'poor' : 'connecting';
  return rate(worstLoss, worstJitterMs);
}

/** Loss in percent and jitter in milliseconds to a word. */
export function rate(lossPercent: number, jitterMs: number): Quality {
  if (lossPercent <= GOOD.loss && jitterMs <= GOOD.jitterMs) return 'good';
  if (lossPercent <= FAIR.loss && jitterMs <= FAIR.jitterMs) return 'fair';
  return 'poor';
}

/** Below this (0..1 linear, as `audioLevel` in getStats) nobody is speaking. */
export const SPEAKING_LEVEL = 0.02;

/**
 * Chooses the active speaker from audio levels sampled at a steady rate. A new speaker takes
 * over only when it is the loudest for `holdSamples` samples in a row, so the highlight does not
 * flicker between people talking at once; silence for as long clears it.
 */
export class SpeakerTracker {
  private current: string | null = null;
  private candidate: string | null = null;
  private streak = 0;

  constructor(private readonly holdSamples = 2) {}

  get speaker(): string | null {
    return this.current;
  }

  /** One sample: level per participant id. Returns the active speaker (or null). */
  update(levels: ReadonlyMap<string, number>): string | null {
    let loudest: string | null = null;
    let max = SPEAKING_LEVEL;
    for (const [id, level] of levels) {
      if (level > max) {
        max = level;
        loudest = id;
      }
    }
    if (loudest === this.current) {
      this.candidate = null;
      this.streak = 0;
      return this.current;
    }
    if (loudest === this.candidate) {
      this.streak += 1;
    } else {
      this.candidate = loudest;
      this.streak = 1;
    }
    if (this.streak >= this.holdSamples) {
      this.current = loudest;
      this.candidate = null;
      this.streak = 0;
    }
    return this.current;
  }

  /** Someone left: forget them. */
  forget(id: string): void {
    if (this.current === id) this.current = null;
    if (this.candidate === id) {
      this.candidate = null;
      this.streak = 0;
    }
  }
}
