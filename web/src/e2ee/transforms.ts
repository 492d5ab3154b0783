// The page side of the frame transforms: starts the transform worker (through the Trusted Types
// policy that admits only this origin's bundled worker scripts) and puts every RTP sender and
// receiver through an RTCRtpScriptTransform running in it. The worker's keys come from the MLS
// worker over a MessagePort (`connectKeys`); this side only hands the port over.
//
// Fail closed: when the worker cannot start, no transform can be attached and the caller must
// not send or receive media (there is no plaintext fallback). Until the MLS worker gives the
// transform worker a key, it sends nothing and decrypts nothing.

import type { Source } from '../proto';
import type { FrameCounts, TransformCommand, WorkerReport } from './protocol';
import type { TransformOptions } from './transform-worker';
import workerUrl from './transform-worker.ts?worker&url';
import { trustedWorkerUrl } from './worker-url';

export { WORKER_POLICY } from './worker-url';

export function emptyCounts(): FrameCounts {
  return {
    send: 0,
    receive: 0,
    dropped: 0,
    byTransceiver: {},
    sframe: { keyEpoch: null, encrypted: {}, sendDropped: 0, byLeaf: {}, unattributed: {}, byMid: {}, heldEarly: 0, recentDrops: [], timing: emptyTiming() },
  };
}

function emptyTiming(): FrameCounts['sframe']['timing'] {
  const zero = () => ({ frames: 0, totalMs: 0, bytes: 0 });
  const kind = () => ({ encrypt: zero(), decrypt: zero(), copy: zero() });
  return { audio: kind(), video: kind() };
}

export class FrameTransforms {
  private readonly worker: Worker;
  /** Latest counts from the worker. */
  counts: FrameCounts = emptyCounts();

  /** Throws when the worker cannot be started (CSP, no RTCRtpScriptTransform). */
  constructor(onCounts: (c: FrameCounts) => void) {
    if (typeof RTCRtpScriptTransform === 'undefined') {
      throw new Error('this browser has no RTCRtpScriptTransform, which end-to-end encryption needs');
    }
    this.worker = new Worker(trustedWorkerUrl(workerUrl), { type: 'module', name: 'sealroom-frames' });
    this.worker.addEventListener('message', (ev: MessageEvent<WorkerReport>) => {
      if (ev.data?.type === 'counts') {
        this.counts = ev.data.counts;
        onCounts(this.counts);
      }
    });
  }

  /** The transform worker's end of the key channel from the MLS worker (transferred, unread). */
  connectKeys(port: MessagePort): void {
    const cmd: TransformCommand = { type: 'keys', port };
    this.worker.postMessage(cmd, [port]);
  }

  private transform(opts: TransformOptions): RTCRtpScriptTransform {
    return new RTCRtpScriptTransform(this.worker, opts);
  }

  /** Every frame this sender encodes goes through the worker before packetisation. */
  attachSender(sender: RTCRtpSender, kind: 'audio' | 'video', source: Source, mid: string | null): void {
    sender.transform = this.transform({ side: 'send', kind, source, mid });
  }

  /** Every frame this receiver depacketises goes through the worker before decoding. */
  attachReceiver(receiver: RTCRtpReceiver, mid: string | null, source: Source | null): void {
    if (!receiver.transform) this.restartReceiver(receiver, mid, source);
  }

  /** Gives the receiver a fresh transform, replacing any it has (see call/transform-watch.ts). */
  restartReceiver(receiver: RTCRtpReceiver, mid: string | null, source: Source | null): void {
    const kind = receiver.track.kind === 'audio' ? 'audio' : 'video';
    receiver.transform = this.transform({ side: 'receive', kind, source, mid });
  }

  close(): void {
    this.worker.terminate();
  }
}
