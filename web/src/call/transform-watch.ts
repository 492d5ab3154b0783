// Watches every frame transform for the one failure the page can mend itself: the media keeps
// coming, but not one frame of it reaches the transform worker. Chromium (148) occasionally
// leaves a transform in that state when it is attached during a renegotiation that adds m-lines
// (seen about once in ten runs of the three-way call test), on either side:
//
// - a receiver: RTP packets with payload counted, `framesReceived` 0, keyframe requests without
//   end, and nothing decoded, since every frame must pass the transform (no plaintext fallback).
//   A fresh transform on the receiver brings its frames to the worker.
// - a sender (the new screen-share transceivers): the encoder counts frames, the worker never
//   sees one, so nothing is encrypted and nothing is sent. A sender's transform cannot simply be
//   set again (Chromium bypasses one set after the first local description: plaintext), so the
//   page replaces the transceivers themselves, with fresh transforms, and renegotiates.
//
// A transform counts as stuck when what feeds it kept growing for `STUCK_AFTER_MS` while the
// worker saw no new frame of it: payload bytes (inbound-rtp `bytesReceived`, so padding-only
// packets do not count) for a receiver, encoded frames (outbound-rtp `framesEncoded`) for a
// sender. Frames that reach the worker and fail to decrypt or lack a key are not stuck: that is
// the key's business, shown as `stalled` by the worker. At most `MAX_RESTARTS` restarts per key.

/** How long input must keep coming with no new frame at the worker before a restart. */
export const STUCK_AFTER_MS = 3_000;
/** Restarts tried per key before the page stops trying (and says so in its events). */
export const MAX_RESTARTS = 3;

/** One transform's evidence at one statistics sample. */
export interface TransformSample {
  /** `receive:<mid>` or `send:<source>`, as the worker counts them. */
  key: string;
  /** What feeds the transform so far: payload bytes received, or frames encoded. */
  input: number;
  /** Frames of this key the transform worker has seen so far (passed or dropped). */
  workerFrames: number;
}

interface Watch {
  /** Input and worker frames at the previous sample. */
  input: number;
  frames: number;
  /** Since when input has kept coming with no new frame at the worker (ms). */
  since: number;
  restarts: number;
}

export type WatchVerdict = { key: string; action: 'restart'; attempt: number } | { key: string; action: 'give_up' };

export class TransformWatch {
  private readonly watches = new Map<string, Watch>();

  /**
   * Takes one sample of every watched transform at `now` (ms); returns the keys whose transform
   * should be restarted now, and the ones given up on (reported once). A key missing from a
   * sample is forgotten.
   */
  sample(now: number, transforms: TransformSample[]): WatchVerdict[] {
    const out: WatchVerdict[] = [];
    const seen = new Set<string>();
    for (const r of transforms) {
      seen.add(r.key);
      let w = this.watches.get(r.key);
      if (!w) {
        w = { input: r.input, frames: r.workerFrames, since: now, restarts: 0 };
        this.watches.set(r.key, w);
        continue;
      }
      const fed = r.input > w.input;
      const flowing = r.workerFrames !== w.frames;
      w.input = r.input;
      w.frames = r.workerFrames;
      if (flowing || !fed || w.restarts > MAX_RESTARTS) {
        // Frames reach the worker, or nothing came since the last look, or it was given up on.
        w.since = now;
        continue;
      }
      if (now - w.since < STUCK_AFTER_MS) continue;
      w.restarts += 1;
      w.since = now;
      out.push(w.restarts > MAX_RESTARTS ? { key: r.key, action: 'give_up' } : { key: r.key, action: 'restart', attempt: w.restarts });
    }
    for (const key of [...this.watches.keys()]) if (!seen.has(key)) this.watches.delete(key);
    return out;
  }
}
