// The encoded-frame transform of every sender and receiver (RTCRtpScriptTransform), in a
// dedicated module worker: crypto never runs on the UI thread (STYLE.md "Web client").
//
// Today `protect`/`unprotect` are the identity. The E2EE issue replaces them with SFrame
// (DESIGN.md §7 "SFrame profile"): the sender side encrypts with the key of its KID (context id
// from `source`), the receiver side looks the KID up and drops whatever fails. Both return
// `null` to drop a frame; a receiver never falls back to passing plaintext through.
//
// The worker counts frames per side and per transceiver and posts the counts to the page
// (`window.__sealroom.transformFrames`), so tests can prove every frame went through here.

import type { Source } from '../proto';

/** Options of one RTCRtpScriptTransform (see e2ee/transforms.ts). */
export interface TransformOptions {
  side: 'send' | 'receive';
  /** What the sender carries; on the receive side only a hint (SFrame labels from the KID). */
  source: Source | null;
  /** The transceiver's mid: receivers only (a sender's transform must exist before its mid). */
  mid: string | null;
}

/** Counts the worker reports: frames passed per side, and per `send:<source>` / `receive:<mid>`. */
export interface FrameCounts {
  send: number;
  receive: number;
  dropped: number;
  byTransceiver: Record<string, number>;
}

/** Worker → page. */
export type WorkerReport = { type: 'counts'; counts: FrameCounts };

// The DOM lib is in scope for the whole program; these are the few worker-side types we use.
interface EncodedFrame {
  data: ArrayBuffer;
  readonly type?: 'key' | 'delta' | 'empty';
}
interface ScriptTransformer {
  readonly readable: ReadableStream<EncodedFrame>;
  readonly writable: WritableStream<EncodedFrame>;
  readonly options: unknown;
}
interface TransformEvent extends Event {
  readonly transformer: ScriptTransformer;
}
interface WorkerScope {
  addEventListener(type: 'rtctransform', listener: (ev: TransformEvent) => void): void;
  postMessage(message: WorkerReport): void;
}
const scope = self as unknown as WorkerScope;

/** Where the SFrame issue plugs in: one encoded frame in, the frame to pass on (or null: drop). */
interface FrameProtector {
  protect(frame: EncodedFrame, opts: TransformOptions): EncodedFrame | null | Promise<EncodedFrame | null>;
  unprotect(frame: EncodedFrame, opts: TransformOptions): EncodedFrame | null | Promise<EncodedFrame | null>;
}

/** No encryption yet: every frame passes unchanged. */
const identity: FrameProtector = {
  protect: (frame) => frame,
  unprotect: (frame) => frame,
};

const protector: FrameProtector = identity;

const counts: FrameCounts = { send: 0, receive: 0, dropped: 0, byTransceiver: {} };
let dirty = false;

function parseOptions(raw: unknown): TransformOptions | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const o = raw as Record<string, unknown>;
  if (o['side'] !== 'send' && o['side'] !== 'receive') return null;
  const source = typeof o['source'] === 'string' ? (o['source'] as Source) : null;
  const mid = typeof o['mid'] === 'string' ? o['mid'] : null;
  return { side: o['side'], source, mid };
}

scope.addEventListener('rtctransform', (ev) => {
  const { transformer } = ev;
  const opts = parseOptions(transformer.options);
  // Senders by source (their mid is not known when the transform is made), receivers by mid.
  const key = opts ? `${opts.side}:${opts.side === 'send' ? (opts.source ?? '?') : (opts.mid ?? '?')}` : 'invalid';
  const stream = new TransformStream<EncodedFrame, EncodedFrame>({
    async transform(frame, controller) {
      // Unknown options: nothing may pass (fail closed).
      const out = opts === null ? null : opts.side === 'send' ? await protector.protect(frame, opts) : await protector.unprotect(frame, opts);
      if (out === null || opts === null) {
        counts.dropped += 1;
      } else {
        counts[opts.side] += 1;
        counts.byTransceiver[key] = (counts.byTransceiver[key] ?? 0) + 1;
        controller.enqueue(out);
      }
      dirty = true;
    },
  });
  transformer.readable
    .pipeThrough(stream)
    .pipeTo(transformer.writable)
    .catch(() => {
      // The transceiver stopped or the transform was replaced: its streams close or error.
    });
});

// Report at most twice a second, and only when something changed.
setInterval(() => {
  if (!dirty) return;
  dirty = false;
  scope.postMessage({ type: 'counts', counts: { ...counts, byTransceiver: { ...counts.byTransceiver } } });
}, 500);
