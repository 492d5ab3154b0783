// The page side of the frame transforms: starts the transform worker (through a Trusted Types
// policy that admits only this origin's bundled worker script) and puts every RTP sender and
// receiver through an RTCRtpScriptTransform running in it.
//
// Fail closed: when the worker cannot start, no transform can be attached and the caller must
// not send or receive media (there is no plaintext fallback).

import type { Source } from '../proto';
import type { FrameCounts, TransformOptions, WorkerReport } from './transform-worker';
import workerUrl from './transform-worker.ts?worker&url';

// Trusted Types are not in TypeScript's DOM lib yet; the little we use.
interface TrustedTypePolicyLike {
  createScriptURL(input: string): unknown;
}
interface TrustedTypesLike {
  createPolicy(name: string, rules: { createScriptURL(input: string): string }): TrustedTypePolicyLike;
}

/** The Trusted Types policy name the server's CSP must allow (`trusted-types sealroom-worker`). */
export const WORKER_POLICY = 'sealroom-worker';

let policy: TrustedTypePolicyLike | null = null;

/** A script URL the CSP accepts for `new Worker`: same origin, our bundled assets only. */
function trustedWorkerUrl(url: string): string {
  const tt = (window as unknown as { trustedTypes?: TrustedTypesLike }).trustedTypes;
  if (!tt) return url;
  policy ??= tt.createPolicy(WORKER_POLICY, {
    createScriptURL(input: string): string {
      const u = new URL(input, location.href);
      if (u.origin !== location.origin || !(u.pathname.startsWith('/assets/') || u.pathname.startsWith('/src/'))) {
        throw new TypeError(`refusing worker script ${u.href}`);
      }
      return u.href;
    },
  });
  // `new Worker` accepts a TrustedScriptURL where TypeScript only knows strings.
  return policy.createScriptURL(url) as string;
}

export class FrameTransforms {
  private readonly worker: Worker;
  /** Latest counts from the worker. */
  counts: FrameCounts = { send: 0, receive: 0, dropped: 0, byTransceiver: {} };

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

  private transform(opts: TransformOptions): RTCRtpScriptTransform {
    return new RTCRtpScriptTransform(this.worker, opts);
  }

  /** Every frame this sender encodes goes through the worker before packetisation. */
  attachSender(sender: RTCRtpSender, source: Source, mid: string | null): void {
    sender.transform = this.transform({ side: 'send', source, mid });
  }

  /** Every frame this receiver depacketises goes through the worker before decoding. */
  attachReceiver(receiver: RTCRtpReceiver, mid: string | null, source: Source | null): void {
    if (receiver.transform) return;
    receiver.transform = this.transform({ side: 'receive', source, mid });
  }

  close(): void {
    this.worker.terminate();
  }
}
