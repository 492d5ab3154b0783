// SFrame (RFC 9605) on WebCrypto, and sealroom's media profile on top of it (docs/E2EE.md §5).
//
// Runs in the frame-transform worker: no DOM, no clock (every time is a parameter, in
// milliseconds), no state shared with the page. The RFC core (header codec, key schedule, AEAD)
// supports every suite of RFC 9605 §4.5 so the Appendix C vectors can check all of it; the
// sealroom profile uses AES_128_GCM_SHA256_128 (0x0004) only.
//
// Keying is RFC 9605 §5.2 as published (and as the Rust `sframe` crate's `derive_from_mls`):
// one `base_key = MLS-Exporter("SFrame 1.0 Base Key", "", Nk)` per epoch; senders are kept apart
// by the KID, which enters the key schedule of §4.4.2 (`"SFrame 1.0 Secret key " || KID || suite`).

import type { Source } from '../proto';

// ---------------------------------------------------------------------------------------------
// Cipher suites (RFC 9605 §4.5, §8.1)

export type SuiteId = 1 | 2 | 3 | 4 | 5;

export interface Suite {
  readonly id: SuiteId;
  /** Key length of the AEAD (for the CTR+HMAC suites: encryption key + authentication key). */
  readonly nk: number;
  readonly nn: number;
  readonly nt: number;
  readonly hash: 'SHA-256' | 'SHA-512';
  readonly aead: 'gcm' | 'ctr-hmac';
  /** AES key length inside `nk` for the CTR+HMAC suites (RFC 9605 §4.5.1 `Nka`). */
  readonly nka: number;
}

export const SUITES: Readonly<Record<SuiteId, Suite>> = {
  1: { id: 1, nk: 48, nn: 12, nt: 10, hash: 'SHA-256', aead: 'ctr-hmac', nka: 16 },
  2: { id: 2, nk: 48, nn: 12, nt: 8, hash: 'SHA-256', aead: 'ctr-hmac', nka: 16 },
  3: { id: 3, nk: 48, nn: 12, nt: 4, hash: 'SHA-256', aead: 'ctr-hmac', nka: 16 },
  4: { id: 4, nk: 16, nn: 12, nt: 16, hash: 'SHA-256', aead: 'gcm', nka: 16 },
  5: { id: 5, nk: 32, nn: 12, nt: 16, hash: 'SHA-512', aead: 'gcm', nka: 32 },
};

/** The only suite of the sealroom profile: AES_128_GCM_SHA256_128. */
export const PROFILE_SUITE: Suite = SUITES[4];

/** `base_key` length for the profile suite = the MLS exporter length (`AEAD.Nk`). */
export const BASE_KEY_LENGTH = PROFILE_SUITE.nk;

/** The exporter label of RFC 9605 §5.2. */
export const MLS_EXPORTER_LABEL = 'SFrame 1.0 Base Key';

export function suiteById(id: number): Suite | null {
  return id === 1 || id === 2 || id === 3 || id === 4 || id === 5 ? SUITES[id] : null;
}

// ---------------------------------------------------------------------------------------------
// Bytes

const U64_MAX = (1n << 64n) - 1n;
const enc = new TextEncoder();

/** WebCrypto wants an ArrayBuffer-backed view; frames and test data may sit on anything. */
function ab(u: Uint8Array): Uint8Array<ArrayBuffer> {
  return u.buffer instanceof ArrayBuffer ? (u as Uint8Array<ArrayBuffer>) : new Uint8Array(u);
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function bigEndian(v: bigint, len: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(len);
  for (let i = len - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

function byteLength(v: bigint): number {
  let n = 1;
  while (v >> BigInt(8 * n) > 0n) n++;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Header (RFC 9605 §4.3)
//
//  0 1 2 3 4 5 6 7
// +-+-+-+-+-+-+-+-+---------------------------------+---------------------+
// |X|  K  |Y|  C  |   KID (if X=1, K+1 bytes)       |  CTR (if Y=1, C+1)  |
// +-+-+-+-+-+-+-+-+---------------------------------+---------------------+

export interface Header {
  kid: bigint;
  ctr: bigint;
  /** Encoded length in bytes. */
  length: number;
}

/** The shortest encoding of (KID, CTR), as a sender must write it. */
export function encodeHeader(kid: bigint, ctr: bigint): Uint8Array<ArrayBuffer> {
  if (kid < 0n || kid > U64_MAX || ctr < 0n || ctr > U64_MAX) throw new RangeError('KID and CTR are 64-bit unsigned');
  const kidLen = kid < 8n ? 0 : byteLength(kid);
  const ctrLen = ctr < 8n ? 0 : byteLength(ctr);
  const out = new Uint8Array(1 + kidLen + ctrLen);
  const k = kidLen === 0 ? Number(kid) << 4 : 0x80 | ((kidLen - 1) << 4);
  const c = ctrLen === 0 ? Number(ctr) : 0x08 | (ctrLen - 1);
  out[0] = k | c;
  out.set(bigEndian(kid, kidLen), 1);
  out.set(bigEndian(ctr, ctrLen), 1 + kidLen);
  return out;
}

/** Parses a header at `offset`; null when the bytes end inside it. */
export function decodeHeader(bytes: Uint8Array, offset = 0): Header | null {
  const b0 = bytes[offset];
  if (b0 === undefined) return null;
  let pos = offset + 1;
  const readLong = (len: number): bigint | null => {
    if (pos + len > bytes.length) return null;
    let v = 0n;
    for (let i = 0; i < len; i++) v = (v << 8n) | BigInt(bytes[pos + i] as number);
    pos += len;
    return v;
  };
  const kid = b0 & 0x80 ? readLong(((b0 >> 4) & 0x07) + 1) : BigInt((b0 >> 4) & 0x07);
  if (kid === null) return null;
  const ctr = b0 & 0x08 ? readLong((b0 & 0x07) + 1) : BigInt(b0 & 0x07);
  if (ctr === null) return null;
  return { kid, ctr, length: pos - offset };
}

// ---------------------------------------------------------------------------------------------
// Key schedule (RFC 9605 §4.4.2)

/** `"SFrame 1.0 Secret key " || KID (8 bytes) || suite (2 bytes)` */
export function keyLabel(kid: bigint, suite: Suite): Uint8Array<ArrayBuffer> {
  return concatBytes(enc.encode('SFrame 1.0 Secret key '), bigEndian(kid, 8), bigEndian(BigInt(suite.id), 2));
}

/** `"SFrame 1.0 Secret salt " || KID (8 bytes) || suite (2 bytes)` */
export function saltLabel(kid: bigint, suite: Suite): Uint8Array<ArrayBuffer> {
  return concatBytes(enc.encode('SFrame 1.0 Secret salt '), bigEndian(kid, 8), bigEndian(BigInt(suite.id), 2));
}

/**
 * `sframe_key` and `sframe_salt` for one KID: `sframe_secret = HKDF-Extract("", base_key)`, then
 * HKDF-Expand with the labels above (WebCrypto's HKDF does both steps; an empty salt is HashLen
 * zeros in RFC 5869, as the RFC 9605 vectors assume).
 */
export async function deriveKeyMaterial(
  suite: Suite,
  baseKey: Uint8Array,
  kid: bigint,
): Promise<{ key: Uint8Array<ArrayBuffer>; salt: Uint8Array<ArrayBuffer> }> {
  const subtle = globalThis.crypto.subtle;
  const ikm = await subtle.importKey('raw', ab(baseKey), 'HKDF', false, ['deriveBits']);
  const expand = async (info: Uint8Array<ArrayBuffer>, len: number): Promise<Uint8Array<ArrayBuffer>> =>
    new Uint8Array(await subtle.deriveBits({ name: 'HKDF', hash: suite.hash, salt: new Uint8Array(0), info }, ikm, len * 8));
  const [key, salt] = await Promise.all([expand(keyLabel(kid, suite), suite.nk), expand(saltLabel(kid, suite), suite.nn)]);
  return { key, salt };
}

/** A derived key, ready for the AEAD. Keys are non-extractable. */
export interface SframeKey {
  readonly suite: Suite;
  readonly kid: bigint;
  readonly salt: Uint8Array<ArrayBuffer>;
  readonly gcm: CryptoKey | null;
  readonly ctr: CryptoKey | null;
  readonly hmac: CryptoKey | null;
}

export async function importSframeKey(suite: Suite, kid: bigint, key: Uint8Array, salt: Uint8Array): Promise<SframeKey> {
  const subtle = globalThis.crypto.subtle;
  if (key.length !== suite.nk || salt.length !== suite.nn) throw new RangeError('wrong key or salt length for the suite');
  if (suite.aead === 'gcm') {
    const gcm = await subtle.importKey('raw', ab(key), 'AES-GCM', false, ['encrypt', 'decrypt']);
    return { suite, kid, salt: new Uint8Array(salt), gcm, ctr: null, hmac: null };
  }
  const [ctr, hmac] = await Promise.all([
    subtle.importKey('raw', ab(key.slice(0, suite.nka)), 'AES-CTR', false, ['encrypt', 'decrypt']),
    subtle.importKey('raw', ab(key.slice(suite.nka)), { name: 'HMAC', hash: suite.hash }, false, ['sign']),
  ]);
  return { suite, kid, salt: new Uint8Array(salt), gcm: null, ctr, hmac };
}

export async function deriveSframeKey(suite: Suite, baseKey: Uint8Array, kid: bigint): Promise<SframeKey> {
  const { key, salt } = await deriveKeyMaterial(suite, baseKey, kid);
  const k = await importSframeKey(suite, kid, key, salt);
  key.fill(0);
  return k;
}

// ---------------------------------------------------------------------------------------------
// AEAD (RFC 9605 §4.4.3-4.4.4, §4.5.1)

/** `nonce = sframe_salt XOR encode_big_endian(CTR, Nn)` */
export function frameNonce(salt: Uint8Array, ctr: bigint): Uint8Array<ArrayBuffer> {
  const nonce = bigEndian(ctr, salt.length);
  for (let i = 0; i < nonce.length; i++) nonce[i] = (nonce[i] as number) ^ (salt[i] as number);
  return nonce;
}

async function ctrHmacTag(
  key: SframeKey,
  nonce: Uint8Array<ArrayBuffer>,
  aad: Uint8Array,
  ct: Uint8Array,
): Promise<Uint8Array<ArrayBuffer>> {
  const data = concatBytes(
    bigEndian(BigInt(aad.length), 8),
    bigEndian(BigInt(ct.length), 8),
    bigEndian(BigInt(key.suite.nt), 8),
    nonce,
    aad,
    ct,
  );
  const mac = await globalThis.crypto.subtle.sign('HMAC', key.hmac as CryptoKey, data);
  return new Uint8Array(mac, 0, key.suite.nt);
}

/** AEAD.Encrypt: ciphertext || tag. */
export async function aeadSeal(
  key: SframeKey,
  nonce: Uint8Array<ArrayBuffer>,
  aad: Uint8Array,
  pt: Uint8Array,
): Promise<Uint8Array<ArrayBuffer>> {
  const subtle = globalThis.crypto.subtle;
  if (key.gcm) {
    return new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: ab(aad), tagLength: 128 }, key.gcm, ab(pt)));
  }
  const counter = concatBytes(nonce, new Uint8Array(4));
  const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-CTR', counter, length: 32 }, key.ctr as CryptoKey, ab(pt)));
  return concatBytes(ct, await ctrHmacTag(key, nonce, aad, ct));
}

/** AEAD.Decrypt of ciphertext || tag; null when authentication fails. */
export async function aeadOpen(
  key: SframeKey,
  nonce: Uint8Array<ArrayBuffer>,
  aad: Uint8Array,
  ctAndTag: Uint8Array,
): Promise<Uint8Array<ArrayBuffer> | null> {
  const subtle = globalThis.crypto.subtle;
  if (ctAndTag.length < key.suite.nt) return null;
  if (key.gcm) {
    try {
      return new Uint8Array(
        await subtle.decrypt({ name: 'AES-GCM', iv: nonce, additionalData: ab(aad), tagLength: 128 }, key.gcm, ab(ctAndTag)),
      );
    } catch {
      return null;
    }
  }
  const ct = ctAndTag.subarray(0, ctAndTag.length - key.suite.nt);
  const tag = ctAndTag.subarray(ctAndTag.length - key.suite.nt);
  const expected = await ctrHmacTag(key, nonce, aad, ct);
  let diff = 0;
  for (let i = 0; i < expected.length; i++) diff |= (expected[i] as number) ^ (tag[i] as number);
  if (diff !== 0) return null;
  const counter = concatBytes(nonce, new Uint8Array(4));
  return new Uint8Array(await subtle.decrypt({ name: 'AES-CTR', counter, length: 32 }, key.ctr as CryptoKey, ab(ct)));
}

/** SFrame encryption (§4.4.3): `header || ciphertext || tag`, with `AAD = header || metadata`. */
export async function sframeEncrypt(key: SframeKey, ctr: bigint, metadata: Uint8Array, plaintext: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const header = encodeHeader(key.kid, ctr);
  const sealed = await aeadSeal(key, frameNonce(key.salt, ctr), concatBytes(header, metadata), plaintext);
  return concatBytes(header, sealed);
}

/**
 * SFrame decryption (§4.4.4) of `header || ciphertext || tag` once the caller has looked the
 * key up by the header's KID. Null when authentication fails.
 */
export async function sframeDecrypt(key: SframeKey, frame: Uint8Array, metadata: Uint8Array): Promise<Uint8Array<ArrayBuffer> | null> {
  const header = decodeHeader(frame);
  if (header === null || header.kid !== key.kid) return null;
  const headerBytes = frame.subarray(0, header.length);
  return aeadOpen(key, frameNonce(key.salt, header.ctr), concatBytes(headerBytes, metadata), frame.subarray(header.length));
}

// ---------------------------------------------------------------------------------------------
// The sealroom profile (docs/E2EE.md §5)

/** Epoch bits `E` and sender-index bits `S` of RFC 9605 §5.2. */
export const EPOCH_BITS = 8;
export const INDEX_BITS = 16;

/** Context ids per media source; the context id sits above the leaf index in the KID. */
export const CONTEXT_ID: Readonly<Record<Source, number>> = {
  microphone: 0,
  camera: 1,
  screen: 2,
  screen_audio: 3,
};
const SOURCE_BY_CONTEXT: readonly Source[] = ['microphone', 'camera', 'screen', 'screen_audio'];

export function sourceOfContext(context: number): Source | null {
  return SOURCE_BY_CONTEXT[context] ?? null;
}

/** `KID = (context << 24) | (leaf_index << 8) | (epoch & 0xff)` */
export function makeKid(context: number, leafIndex: number, epoch: bigint | number): bigint {
  if (!Number.isInteger(context) || context < 0 || context >= 2 ** (64 - EPOCH_BITS - INDEX_BITS)) throw new RangeError('context id out of range');
  if (!Number.isInteger(leafIndex) || leafIndex < 0 || leafIndex >= 1 << INDEX_BITS) throw new RangeError('leaf index does not fit in 16 bits');
  const e = BigInt(epoch);
  if (e < 0n) throw new RangeError('negative epoch');
  return (BigInt(context) << BigInt(EPOCH_BITS + INDEX_BITS)) | (BigInt(leafIndex) << BigInt(EPOCH_BITS)) | (e & 0xffn);
}

export interface KidParts {
  context: bigint;
  leafIndex: number;
  epochLow: number;
}

export function splitKid(kid: bigint): KidParts {
  return {
    context: kid >> BigInt(EPOCH_BITS + INDEX_BITS),
    leafIndex: Number((kid >> BigInt(EPOCH_BITS)) & 0xffffn),
    epochLow: Number(kid & 0xffn),
  };
}

export type Codec = 'vp8' | 'opus';

/**
 * Bytes left in clear at the front of a frame, authenticated as SFrame metadata: the VP8 payload
 * header the SFU and depacketiser read (10 on key frames, 1 on delta frames; a key frame has bit 0
 * of byte 0 clear, RFC 6386 §9.1), nothing for Opus. Null when the frame is too short to be a
 * valid frame of that codec. The same rule reads the first byte of a received SFrame frame.
 */
export function clearByteCount(codec: Codec, frame: Uint8Array): number | null {
  if (codec === 'opus') return 0;
  const b0 = frame[0];
  if (b0 === undefined) return null;
  const n = (b0 & 0x01) === 0 ? 10 : 1;
  return frame.length < n ? null : n;
}

/** The sender side: one counter per KID, starting at 0 in each epoch, never reused. */
export class SframeSender {
  private epoch: { number: bigint; leafIndex: number; baseKey: Uint8Array; keys: Map<bigint, Promise<SframeKey>>; counters: Map<bigint, bigint> } | null =
    null;
  /** Frames dropped because they were not valid frames of their codec, or no epoch was set. */
  dropped = 0;

  /** Switch to a new epoch's base key (as soon as this member has processed the commit). */
  setEpoch(epoch: bigint | number, leafIndex: number, baseKey: Uint8Array): void {
    const e = BigInt(epoch);
    makeKid(0, leafIndex, e); // range checks
    if (baseKey.length !== PROFILE_SUITE.nk) throw new RangeError('base key length');
    const cur = this.epoch;
    // Same epoch and key again: keep the counters (restarting them would reuse nonces).
    if (cur && cur.number === e && cur.leafIndex === leafIndex && equalBytes(cur.baseKey, baseKey)) return;
    this.epoch = { number: e, leafIndex, baseKey: new Uint8Array(baseKey), keys: new Map(), counters: new Map() };
  }

  /** Forget the keys (left the group): every later frame is dropped. */
  clear(): void {
    this.epoch = null;
  }

  get currentEpoch(): bigint | null {
    return this.epoch?.number ?? null;
  }

  /** `clear_bytes || header || ciphertext || tag`, or null (drop) when nothing may be sent. */
  async protect(source: Source, codec: Codec, frame: Uint8Array): Promise<Uint8Array<ArrayBuffer> | null> {
    const ep = this.epoch;
    const n = clearByteCount(codec, frame);
    if (ep === null || n === null) {
      this.dropped += 1;
      return null;
    }
    const kid = makeKid(CONTEXT_ID[source], ep.leafIndex, ep.number);
    // Take the counter before any await: concurrent calls never share one.
    const ctr = ep.counters.get(kid) ?? 0n;
    if (ctr > U64_MAX) {
      this.dropped += 1;
      return null;
    }
    ep.counters.set(kid, ctr + 1n);
    let keyP = ep.keys.get(kid);
    if (keyP === undefined) {
      keyP = deriveSframeKey(PROFILE_SUITE, ep.baseKey, kid);
      ep.keys.set(kid, keyP);
    }
    const key = await keyP;
    const clear = frame.subarray(0, n);
    return concatBytes(clear, await sframeEncrypt(key, ctr, clear, frame.subarray(n)));
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= (a[i] as number) ^ (b[i] as number);
  return d === 0;
}

/** Why a received frame was dropped. */
export type DropReason =
  /** Shorter than its clear bytes, or the header is cut off. */
  | 'malformed'
  /** No key for this KID: unknown epoch bits, a context id we do not use, a leaf not in the epoch. */
  | 'unknown-kid'
  /** The KID's epoch is the previous one and its grace period for this sender is over. */
  | 'expired-epoch'
  /** Counter seen before, or older than the 128-counter window. */
  | 'replay'
  /** AEAD authentication failed (wrong key, tampered frame or clear bytes). */
  | 'auth';

export type UnprotectResult =
  | { ok: true; frame: Uint8Array<ArrayBuffer>; leafIndex: number; source: Source; epoch: bigint; ctr: bigint }
  | { ok: false; reason: DropReason };

/** Sliding window of RFC 9605 §9.3 style anti-replay over one KID's counters. */
export class ReplayWindow {
  private top = -1n;
  private seen = 0n;
  private readonly inFlight = new Set<bigint>();
  constructor(readonly size: number = 128) {}

  /** May a frame with this counter be tried? (It is marked in flight until `finish`.) */
  begin(ctr: bigint): boolean {
    if (this.inFlight.has(ctr)) return false;
    if (ctr <= this.top) {
      const d = this.top - ctr;
      if (d >= BigInt(this.size) || ((this.seen >> d) & 1n) === 1n) return false;
    }
    this.inFlight.add(ctr);
    return true;
  }

  /** Record the outcome: only authenticated frames move the window. */
  finish(ctr: bigint, authenticated: boolean): void {
    this.inFlight.delete(ctr);
    if (!authenticated) return;
    const mask = (1n << BigInt(this.size)) - 1n;
    if (ctr > this.top) {
      const shift = ctr - this.top;
      this.seen = shift >= BigInt(this.size) ? 1n : ((this.seen << shift) | 1n) & mask;
      this.top = ctr;
    } else {
      this.seen |= 1n << (this.top - ctr);
    }
  }
}

interface ReceiverEpoch {
  number: bigint;
  baseKey: Uint8Array;
  members: Set<number>;
  keys: Map<bigint, Promise<SframeKey>>;
  windows: Map<bigint, ReplayWindow>;
  /** When each sender's first frame of this epoch decrypted. */
  firstFrameAt: Map<number, number>;
}

export interface ReceiverOptions {
  /** Old epoch kept after a sender's first new-epoch frame (ms). */
  graceMs?: number;
  /** Old epoch never kept longer than this after the new epoch was installed (ms). */
  maxGraceMs?: number;
  replayWindow?: number;
}

/**
 * The receiver side: one key per KID (no trial decryption), a replay window per KID, the
 * previous epoch kept per sender until its first new-epoch frame + 250 ms and at most 1 s.
 * Frames that fail are dropped and counted; nothing is ever passed through.
 */
export class SframeReceiver {
  private current: ReceiverEpoch | null = null;
  private previous: ReceiverEpoch | null = null;
  private previousUntil = 0;
  private readonly graceMs: number;
  private readonly maxGraceMs: number;
  private readonly windowSize: number;
  readonly failures: Record<DropReason, number> = { malformed: 0, 'unknown-kid': 0, 'expired-epoch': 0, replay: 0, auth: 0 };
  decrypted = 0;
  /** Last successful decryption per sender leaf (ms), for "X sends but nothing decrypts". */
  readonly lastDecryptedAt = new Map<number, number>();

  constructor(opts: ReceiverOptions = {}) {
    this.graceMs = opts.graceMs ?? 250;
    this.maxGraceMs = opts.maxGraceMs ?? 1000;
    this.windowSize = opts.replayWindow ?? 128;
  }

  get currentEpoch(): bigint | null {
    return this.current?.number ?? null;
  }

  /**
   * Install a new epoch's base key and its members' leaf indices. The epoch before it stays
   * usable under the grace rule; anything older is forgotten. Epochs only move forward (a new
   * group starts with `clear()`).
   */
  setEpoch(epoch: bigint | number, baseKey: Uint8Array, memberLeaves: Iterable<number>, now: number): void {
    const e = BigInt(epoch);
    if (baseKey.length !== PROFILE_SUITE.nk) throw new RangeError('base key length');
    const cur = this.current;
    if (cur && e <= cur.number) {
      if (e === cur.number && equalBytes(cur.baseKey, baseKey)) return;
      throw new RangeError('epochs only move forward; clear() for a new group');
    }
    this.previous = cur;
    this.previousUntil = now + this.maxGraceMs;
    this.current = {
      number: e,
      baseKey: new Uint8Array(baseKey),
      members: new Set(memberLeaves),
      keys: new Map(),
      windows: new Map(),
      firstFrameAt: new Map(),
    };
  }

  /** Forget every key (left the group, or a new group follows). */
  clear(): void {
    this.current = null;
    this.previous = null;
  }

  private drop(reason: DropReason): UnprotectResult {
    this.failures[reason] += 1;
    return { ok: false, reason };
  }

  /** Which epoch a KID's low epoch bits select for this sender at `now`, or why none. */
  private epochFor(epochLow: number, leafIndex: number, now: number): ReceiverEpoch | DropReason {
    const cur = this.current;
    if (cur && Number(cur.number & 0xffn) === epochLow) return cur;
    const prev = this.previous;
    if (prev && Number(prev.number & 0xffn) === epochLow) {
      if (now >= this.previousUntil) {
        this.previous = null; // past the hard limit for everyone
        return 'expired-epoch';
      }
      const first = cur?.firstFrameAt.get(leafIndex);
      if (first !== undefined && now >= first + this.graceMs) return 'expired-epoch';
      return prev;
    }
    return 'unknown-kid';
  }

  /** Decrypt one wire frame `clear_bytes || header || ciphertext || tag`. */
  async unprotect(codec: Codec, wire: Uint8Array, now: number): Promise<UnprotectResult> {
    const n = clearByteCount(codec, wire);
    if (n === null) return this.drop('malformed');
    const header = decodeHeader(wire, n);
    if (header === null || wire.length < n + header.length + PROFILE_SUITE.nt) return this.drop('malformed');
    const { context, leafIndex, epochLow } = splitKid(header.kid);
    const source = context < 4n ? sourceOfContext(Number(context)) : null;
    if (source === null) return this.drop('unknown-kid');
    const ep = this.epochFor(epochLow, leafIndex, now);
    if (typeof ep === 'string') return this.drop(ep);
    if (!ep.members.has(leafIndex)) return this.drop('unknown-kid');
    let window = ep.windows.get(header.kid);
    if (window === undefined) {
      window = new ReplayWindow(this.windowSize);
      ep.windows.set(header.kid, window);
    }
    if (!window.begin(header.ctr)) return this.drop('replay');
    let keyP = ep.keys.get(header.kid);
    if (keyP === undefined) {
      keyP = deriveSframeKey(PROFILE_SUITE, ep.baseKey, header.kid);
      ep.keys.set(header.kid, keyP);
    }
    const key = await keyP;
    const clear = wire.subarray(0, n);
    const headerBytes = wire.subarray(n, n + header.length);
    const pt = await aeadOpen(key, frameNonce(key.salt, header.ctr), concatBytes(headerBytes, clear), wire.subarray(n + header.length));
    window.finish(header.ctr, pt !== null);
    if (pt === null) return this.drop('auth');
    if (ep === this.current && !ep.firstFrameAt.has(leafIndex)) ep.firstFrameAt.set(leafIndex, now);
    this.decrypted += 1;
    this.lastDecryptedAt.set(leafIndex, now);
    return { ok: true, frame: concatBytes(clear, pt), leafIndex, source, epoch: ep.number, ctr: header.ctr };
  }
}
