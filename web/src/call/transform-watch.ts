// Watches every receiver's frame transform for the one failure the page can mend itself: RTP
// packets with payload keep arriving on an m-line, but not one frame of it ever reaches the
// transform worker. Chromium (148) occasionally leaves a receiver in that state when its
// transform is attached in the `track` event of a renegotiation that adds m-lines (both the
// audio and the video receiver of one offer, seen about once in ten runs of the three-way call
// test): packets counted, `framesReceived` 0, keyframe requests without end, and nothing
// decoded, since every frame must pass the transform (no plaintext fallback). Attaching a fresh
// transform to the receiver brings its frames to the worker.
//
// A receiver counts as stuck when its payload bytes grew for `STUCK_AFTER_MS` while the worker
// saw no frame of its mid at all. Padding-only packets (no payload) do not count, nor does a
// receiver whose frames reach the worker and fail to decrypt (that is the key's business, shown
// as `stalled` by the worker). At most `MAX_RESTARTS` fresh transforms per mid.

/** How long payload must keep arriving with no frame at the worker before a restart. */
export const STUCK_AFTER_MS = 3_000;
/** Fresh transforms tried per mid before the page stops trying (and says so in its events). */
export const MAX_RESTARTS = 3;

/** One receiving mid's evidence at one statistics sample. */
export interface ReceiverSample {
  mid: string;
  /** Payload bytes received (inbound-rtp `bytesReceived`: headers and padding excluded). */
  bytesReceived: number;
  /** Frames of this mid the transform worker has seen (decrypted or not). */
  workerFrames: number;
}

interface Watch {
  /** Payload bytes at the previous sample. */
  bytes: number;
  /** Since when payload has kept arriving with no frame at the worker (ms). */
  since: number;
  restarts: number;
}

export type WatchVerdict = { mid: string; action: 'restart'; attempt: number } | { mid: string; action: 'give_up' };

export class TransformWatch {
  private readonly watches = new Map<string, Watch>();

  /**
   * Takes one sample of every receiving mid at `now` (ms); returns the mids whose transform
   * should be replaced now, and the ones given up on (reported once).
   */
  sample(now: number, receivers: ReceiverSample[]): WatchVerdict[] {
    const out: WatchVerdict[] = [];
    const seen = new Set<string>();
    for (const r of receivers) {
      seen.add(r.mid);
      let w = this.watches.get(r.mid);
      if (!w) {
        w = { bytes: r.bytesReceived, since: now, restarts: 0 };
        this.watches.set(r.mid, w);
        continue;
      }
      const grew = r.bytesReceived > w.bytes;
      w.bytes = r.bytesReceived;
      if (r.workerFrames > 0 || !grew || w.restarts > MAX_RESTARTS) {
        // Frames flow, or nothing arrived since the last look, or it was given up on.
        w.since = now;
        continue;
      }
      if (now - w.since < STUCK_AFTER_MS) continue;
      w.restarts += 1;
      w.since = now;
      out.push(w.restarts > MAX_RESTARTS ? { mid: r.mid, action: 'give_up' } : { mid: r.mid, action: 'restart', attempt: w.restarts });
    }
    for (const mid of [...this.watches.keys()]) if (!seen.has(mid)) this.watches.delete(mid);
    return out;
  }
}
