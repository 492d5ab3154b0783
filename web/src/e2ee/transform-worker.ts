// The encoded-frame transform of every sender and receiver (RTCRtpScriptTransform), in a
// dedicated module worker: SFrame (RFC 9605) with sealroom's profile (docs/E2EE.md §5, DESIGN §7
// "SFrame profile"). Crypto never runs on the UI thread (STYLE.md "Web client").
//
// Keys come only from the MLS worker, over the MessagePort the page hands us (`keys`), one
// base key per epoch; the page never sees them.
// - Sender: the KID's context id is the transceiver's source (microphone 0, camera 1, screen 2,
//   screen audio 3), the codec comes from the frame's metadata (or the transceiver's kind).
//   Nothing is sent before a key exists: frames are dropped until then.
// - Receiver: the KID names the sender's leaf and source; one key per KID, replay window, the
//   previous epoch kept per sender under the grace rule (SframeReceiver). A frame of the next
//   epoch that arrives before our MLS worker has processed the commit is held up to 300 ms for
//   its key. Frames that fail are dropped and counted per sender leaf and reason; nothing is
//   ever passed through.
//
// The worker reports counts and SFrame statistics to the page (`window.__sealroom`) so the call
// screen can label tiles from the KID and warn when a sender's frames stop decrypting, and tests
// can prove every frame went through here.

import type { Source } from '../proto';
import type { FrameCounts, FrameTiming, KeyMessage, LeafStats, MidStats, SframeTiming, TransformCommand, WorkerReport } from './protocol';
import { SframeReceiver, SframeSender, clearByteCount, decodeHeader, splitKid, type Codec, type DropReason } from './sframe';

/** Options of one RTCRtpScriptTransform (see e2ee/transforms.ts). */
export interface TransformOptions {
  side: 'send' | 'receive';
  /** What a sender carries (its KID context); on the receive side only a hint: the KID says. */
  source: Source | null;
  /** The transceiver's mid: receivers only (a sender's transform must exist before its mid). */
  mid: string | null;
  kind: 'audio' | 'video';
}

export type { FrameCounts, WorkerReport };

/** How long an early frame (next epoch) waits for its key (DESIGN §7). */
const EARLY_HOLD_MS = 300;
/** "Sender X sends but nothing decrypts for 2 s" (DESIGN §7). */
const STALL_MS = 2000;
const REPORT_EVERY_MS = 250;

// The DOM lib is in scope for the whole program; these are the few worker-side types we use.
interface EncodedFrame {
  data: ArrayBuffer;
  readonly type?: 'key' | 'delta' | 'empty';
  getMetadata?(): { mimeType?: string };
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
  addEventListener(type: 'message', listener: (ev: MessageEvent<TransformCommand>) => void): void;
  postMessage(message: WorkerReport): void;
}
const scope = self as unknown as WorkerScope;

const sender = new SframeSender();
const receiver = new SframeReceiver();
let keyGroup: string | null = null;
let keyEpoch: bigint | null = null;
let epochWaiters: (() => void)[] = [];

function zeroTimings(): SframeTiming {
  const zero = (): FrameTiming => ({ frames: 0, totalMs: 0, bytes: 0 });
  return { encrypt: zero(), decrypt: zero(), copy: zero() };
}

function addTiming(t: FrameTiming, ms: number, bytes: number): void {
  t.frames += 1;
  t.totalMs += ms;
  t.bytes += bytes;
}

/** The identity baseline (SframeTiming.copy) is measured on every COPY_SAMPLE-th frame. */
const COPY_SAMPLE = 8;
let copyTick = 0;

const counts: FrameCounts = {
  send: 0,
  receive: 0,
  dropped: 0,
  byTransceiver: {},
  sframe: { keyEpoch: null, encrypted: {}, sendDropped: 0, byLeaf: {}, unattributed: {}, byMid: {}, heldEarly: 0, recentDrops: [], timing: { audio: zeroTimings(), video: zeroTimings() } },
};
let dirty = false;

interface MidTrack {
  lastReceivedAt: number;
  lastDecryptedAt: number | null;
  failingSince: number | null;
}
const midTimes = new Map<string, MidTrack>();

function wakeEpochWaiters(): void {
  const w = epochWaiters;
  epochWaiters = [];
  for (const f of w) f();
}

function onKeys(k: KeyMessage): void {
  if (k.type === 'clear') {
    sender.clear();
    receiver.clear();
    keyGroup = null;
    keyEpoch = null;
  } else {
    const now = performance.now();
    // A new group (generation) or an epoch that does not move forward: start afresh.
    if (keyGroup !== k.group || (keyEpoch !== null && k.epoch <= keyEpoch)) receiver.clear();
    sender.setEpoch(k.epoch, k.ownLeaf, k.baseKey);
    try {
      receiver.setEpoch(k.epoch, k.baseKey, k.members, now);
    } catch {
      receiver.clear();
      receiver.setEpoch(k.epoch, k.baseKey, k.members, now);
    }
    // Our copies live in the sender and receiver; the message's can go.
    k.baseKey.fill(0);
    keyGroup = k.group;
    keyEpoch = k.epoch;
  }
  counts.sframe.keyEpoch = keyEpoch === null ? null : Number(keyEpoch);
  dirty = true;
  wakeEpochWaiters();
}

scope.addEventListener('message', (ev) => {
  const cmd = ev.data;
  if (cmd?.type === 'keys') {
    cmd.port.onmessage = (m: MessageEvent<KeyMessage>) => onKeys(m.data);
  }
});

function codecOf(frame: EncodedFrame, kind: 'audio' | 'video'): Codec | null {
  let mime: string | undefined;
  try {
    mime = frame.getMetadata?.().mimeType;
  } catch {
    mime = undefined;
  }
  if (mime !== undefined && mime !== '') {
    const m = mime.toLowerCase();
    if (m === 'video/vp8') return 'vp8';
    if (m === 'audio/opus') return 'opus';
    return null; // a codec the profile does not cover: nothing passes
  }
  return kind === 'audio' ? 'opus' : 'vp8';
}

function leafStats(leaf: number): LeafStats {
  const key = String(leaf);
  let s = counts.sframe.byLeaf[key];
  if (!s) {
    s = { decrypted: 0, failed: {}, sources: [], firstDecryptedAt: null };
    counts.sframe.byLeaf[key] = s;
  }
  return s;
}

function midStats(mid: string): MidStats {
  let s = counts.sframe.byMid[mid];
  if (!s) {
    s = { leaf: null, source: null, epoch: null, received: 0, decrypted: 0, stalled: false, sinceDecryptedMs: null };
    counts.sframe.byMid[mid] = s;
  }
  return s;
}

function bump(rec: Partial<Record<DropReason, number>>, reason: DropReason): void {
  rec[reason] = (rec[reason] ?? 0) + 1;
}

/** The epoch whose key an early frame waited for in vain: later frames of it do not wait again. */
let earlyGaveUp: bigint | null = null;

/** Waits (at most `ms`) for the next epoch's key; false when it did not come. */
function waitForEpoch(ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      epochWaiters = epochWaiters.filter((f) => f !== done);
      resolve(false);
    }, ms);
    const done = () => {
      clearTimeout(t);
      resolve(true);
    };
    epochWaiters.push(done);
  });
}

async function protect(frame: EncodedFrame, opts: TransformOptions): Promise<EncodedFrame | null> {
  const t0 = performance.now();
  const codec = codecOf(frame, opts.kind);
  const source = opts.source;
  if (codec === null || source === null) {
    counts.sframe.sendDropped += 1;
    return null;
  }
  const data = new Uint8Array(frame.data);
  const out = await sender.protect(source, codec, data);
  if (out === null) {
    counts.sframe.sendDropped += 1;
    return null;
  }
  frame.data = out.buffer;
  counts.sframe.encrypted[source] = (counts.sframe.encrypted[source] ?? 0) + 1;
  addTiming(counts.sframe.timing[opts.kind].encrypt, performance.now() - t0, data.byteLength);
  return frame;
}

async function unprotect(frame: EncodedFrame, opts: TransformOptions): Promise<EncodedFrame | null> {
  const mid = opts.mid ?? '?';
  const now = performance.now();
  const ms = midStats(mid);
  /** Time spent waiting for the next epoch's key (not work: left out of the timing). */
  let heldMs = 0;
  let times = midTimes.get(mid);
  if (!times) {
    times = { lastReceivedAt: now, lastDecryptedAt: null, failingSince: null };
    midTimes.set(mid, times);
  }
  times.lastReceivedAt = now;
  ms.received += 1;
  const codec = codecOf(frame, opts.kind);
  const wire = new Uint8Array(frame.data);
  // The sender leaf, for counting (the receiver looks the KID up again itself).
  const n = codec === null ? null : clearByteCount(codec, wire);
  const header = n === null ? null : decodeHeader(wire, n);
  const parts = header === null ? null : splitKid(header.kid);
  const fail = (reason: DropReason, leaf: number | null): null => {
    if (leaf === null) bump(counts.sframe.unattributed, reason);
    else bump(leafStats(leaf).failed, reason);
    times.failingSince ??= now;
    const drops = counts.sframe.recentDrops;
    drops.push({
      mid,
      reason,
      leaf,
      epochLow: parts?.epochLow ?? null,
      context: parts === null ? null : Number(parts.context),
      ctr: header === null ? null : header.ctr.toString(),
      keyFrame: codec === 'vp8' && wire.length > 0 ? ((wire[0] as number) & 1) === 0 : null,
      at: Math.round(now),
    });
    if (drops.length > 20) drops.shift();
    return null;
  };
  if (codec === null) return fail('malformed', null);
  if (parts !== null) ms.leaf = parts.leafIndex;
  if (parts !== null && keyEpoch !== null && parts.epochLow === Number((keyEpoch + 1n) & 0xffn) && earlyGaveUp !== keyEpoch + 1n) {
    // From a sender that processed the next commit before our MLS worker did (or a frame
    // claiming so: a key that does not come within 300 ms is not waited for again).
    counts.sframe.heldEarly += 1;
    const next = keyEpoch + 1n;
    const h0 = performance.now();
    if (!(await waitForEpoch(EARLY_HOLD_MS))) earlyGaveUp = next;
    heldMs = performance.now() - h0;
  }
  const r = await receiver.unprotect(codec, wire, performance.now());
  if (!r.ok) return fail(r.reason, parts?.leafIndex ?? null);
  const ls = leafStats(r.leafIndex);
  ls.decrypted += 1;
  ls.firstDecryptedAt ??= Date.now();
  if (!ls.sources.includes(r.source)) ls.sources.push(r.source);
  ms.decrypted += 1;
  ms.leaf = r.leafIndex;
  ms.source = r.source;
  ms.epoch = Number(r.epoch);
  times.failingSince = null;
  frame.data = r.frame.buffer;
  const done = performance.now();
  times.lastDecryptedAt = done;
  addTiming(counts.sframe.timing[opts.kind].decrypt, done - now - heldMs, wire.byteLength);
  return frame;
}

function parseOptions(raw: unknown): TransformOptions | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const o = raw as Record<string, unknown>;
  if (o['side'] !== 'send' && o['side'] !== 'receive') return null;
  if (o['kind'] !== 'audio' && o['kind'] !== 'video') return null;
  const source = typeof o['source'] === 'string' ? (o['source'] as Source) : null;
  const mid = typeof o['mid'] === 'string' ? o['mid'] : null;
  return { side: o['side'], source, mid, kind: o['kind'] };
}

scope.addEventListener('rtctransform', (ev) => {
  const { transformer } = ev;
  const opts = parseOptions(transformer.options);
  // Senders by source (their mid is not known when the transform is made), receivers by mid.
  const key = opts ? `${opts.side}:${opts.side === 'send' ? (opts.source ?? '?') : (opts.mid ?? '?')}` : 'invalid';
  // Listed from the start, at 0: a transform that never sees a frame shows as such.
  counts.byTransceiver[key] ??= 0;
  dirty = true;
  const stream = new TransformStream<EncodedFrame, EncodedFrame>({
    async transform(frame, controller) {
      let out: EncodedFrame | null = null;
      if (opts !== null && ++copyTick % COPY_SAMPLE === 0) {
        // The identity baseline: what passing this frame on with a copy of its bytes costs.
        const c0 = performance.now();
        const copy = new Uint8Array(frame.data).slice();
        addTiming(counts.sframe.timing[opts.kind].copy, performance.now() - c0, copy.byteLength);
      }
      try {
        // Unknown options: nothing may pass (fail closed).
        out = opts === null ? null : opts.side === 'send' ? await protect(frame, opts) : await unprotect(frame, opts);
      } catch {
        out = null;
      }
      // Every frame that reached this transform, passed on or not (call/transform-watch.ts).
      counts.byTransceiver[key] = (counts.byTransceiver[key] ?? 0) + 1;
      if (out === null || opts === null) {
        counts.dropped += 1;
      } else {
        counts[opts.side] += 1;
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

setInterval(() => {
  const now = performance.now();
  for (const [mid, t] of midTimes) {
    const s = midStats(mid);
    const stalled = t.failingSince !== null && now - t.failingSince >= STALL_MS && now - t.lastReceivedAt < 1000;
    const since = t.lastDecryptedAt === null ? null : Math.round(now - t.lastDecryptedAt);
    if (stalled !== s.stalled) dirty = true;
    s.stalled = stalled;
    s.sinceDecryptedMs = since;
  }
  if (!dirty) return;
  dirty = false;
  scope.postMessage({ type: 'counts', counts: structuredClone(counts) });
}, REPORT_EVERY_MS);
