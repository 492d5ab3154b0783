// SFrame: RFC 9605 Appendix C vectors, the KID layout vectors, and the sealroom sender/receiver
// rules (docs/E2EE.md §5).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  CONTEXT_ID,
  PROFILE_SUITE,
  SUITES,
  SframeReceiver,
  SframeSender,
  aeadOpen,
  aeadSeal,
  clearByteCount,
  concatBytes,
  decodeHeader,
  deriveKeyMaterial,
  deriveSframeKey,
  encodeHeader,
  frameNonce,
  importSframeKey,
  keyLabel,
  makeKid,
  saltLabel,
  sframeDecrypt,
  sframeEncrypt,
  sourceOfContext,
  splitKid,
  suiteById,
  type Codec,
  type Suite,
} from '../src/e2ee/sframe';
import type { Source } from '../src/proto';
import { big, existsSync, hex, readJsonExact, repoPath, unhex } from './helpers';

interface HeaderVector {
  kid: unknown;
  ctr: unknown;
  encoded: string;
}
interface CtrHmacVector {
  cipher_suite: number;
  key: string;
  enc_key: string;
  auth_key: string;
  nonce: string;
  aad: string;
  pt: string;
  ct: string;
}
interface FrameVector {
  cipher_suite: number;
  kid: unknown;
  ctr: unknown;
  base_key: string;
  sframe_key_label: string;
  sframe_salt_label: string;
  sframe_secret: string;
  sframe_key: string;
  sframe_salt: string;
  metadata: string;
  nonce: string;
  aad: string;
  pt: string;
  ct: string;
}

const vectors = readJsonExact(repoPath('vectors', 'sframe', 'rfc9605-appendix-c.json')) as {
  header: HeaderVector[];
  aes_ctr_hmac: CtrHmacVector[];
  sframe: FrameVector[];
};

function suite(id: number): Suite {
  const s = suiteById(id);
  assert.ok(s, `suite ${id}`);
  return s;
}

describe('RFC 9605 Appendix C', () => {
  test('C.1 header encoding: every vector encodes and decodes', () => {
    assert.ok(vectors.header.length > 100);
    for (const v of vectors.header) {
      const kid = big(v.kid);
      const ctr = big(v.ctr);
      assert.equal(hex(encodeHeader(kid, ctr)), v.encoded, `kid=${kid} ctr=${ctr}`);
      const h = decodeHeader(unhex(v.encoded));
      assert.deepEqual(h, { kid, ctr, length: v.encoded.length / 2 });
    }
  });

  test('C.1 header decoding refuses a header cut short', () => {
    for (const v of vectors.header) {
      const bytes = unhex(v.encoded);
      if (bytes.length > 1) assert.equal(decodeHeader(bytes.subarray(0, bytes.length - 1)), null);
    }
    assert.equal(decodeHeader(new Uint8Array(0)), null);
  });

  test('C.2 AES-CTR + HMAC AEAD (suites 1-3)', async () => {
    assert.equal(vectors.aes_ctr_hmac.length, 3);
    for (const v of vectors.aes_ctr_hmac) {
      const s = suite(v.cipher_suite);
      assert.equal(hex(unhex(v.key).subarray(0, s.nka)), v.enc_key);
      assert.equal(hex(unhex(v.key).subarray(s.nka)), v.auth_key);
      const key = await importSframeKey(s, 0n, unhex(v.key), new Uint8Array(s.nn));
      const nonce = unhex(v.nonce);
      assert.equal(hex(await aeadSeal(key, nonce, unhex(v.aad), unhex(v.pt))), v.ct, `suite ${s.id}`);
      const pt = await aeadOpen(key, nonce, unhex(v.aad), unhex(v.ct));
      assert.ok(pt);
      assert.equal(hex(pt), v.pt);
      const bad = unhex(v.ct);
      bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
      assert.equal(await aeadOpen(key, nonce, unhex(v.aad), bad), null);
    }
  });

  for (const v of vectors.sframe) {
    test(`C.3 key schedule and encrypt/decrypt, suite ${v.cipher_suite}`, async () => {
      const s = suite(v.cipher_suite);
      const kid = big(v.kid);
      const ctr = big(v.ctr);
      assert.equal(hex(keyLabel(kid, s)), v.sframe_key_label);
      assert.equal(hex(saltLabel(kid, s)), v.sframe_salt_label);
      // sframe_secret = HKDF-Extract("", base_key) = HMAC(HashLen zero bytes, base_key).
      const subtle = globalThis.crypto.subtle;
      const zeros = new Uint8Array(s.hash === 'SHA-256' ? 32 : 64);
      const hk = await subtle.importKey('raw', zeros, { name: 'HMAC', hash: s.hash }, false, ['sign']);
      assert.equal(hex(new Uint8Array(await subtle.sign('HMAC', hk, unhex(v.base_key)))), v.sframe_secret);
      const m = await deriveKeyMaterial(s, unhex(v.base_key), kid);
      assert.equal(hex(m.key), v.sframe_key);
      assert.equal(hex(m.salt), v.sframe_salt);
      assert.equal(hex(frameNonce(m.salt, ctr)), v.nonce);
      assert.equal(hex(concatBytes(encodeHeader(kid, ctr), unhex(v.metadata))), v.aad);
      const key = await deriveSframeKey(s, unhex(v.base_key), kid);
      assert.equal(hex(await sframeEncrypt(key, ctr, unhex(v.metadata), unhex(v.pt))), v.ct);
      const pt = await sframeDecrypt(key, unhex(v.ct), unhex(v.metadata));
      assert.ok(pt);
      assert.equal(hex(pt), v.pt);
      // The metadata is authenticated: other metadata, no plaintext.
      assert.equal(await sframeDecrypt(key, unhex(v.ct), unhex('00')), null);
    });
  }

  test('every suite of the vectors file is supported', () => {
    const ids = new Set(vectors.sframe.map((v) => v.cipher_suite));
    assert.deepEqual([...ids].sort(), [1, 2, 3, 4, 5]);
    assert.deepEqual(Object.keys(SUITES).map(Number), [1, 2, 3, 4, 5]);
  });
});

interface RustFrame {
  base_key: string;
  clear_len: number;
  codec: Codec;
  ctr: unknown;
  epoch: unknown;
  frame: string;
  kid: unknown;
  leaf_index: number;
  source: Source;
  wire: string;
}

interface KidVector {
  context: number;
  leaf: number;
  epoch: bigint;
  kid: bigint;
  ctr: bigint | null;
  header: string | null;
}

/** Reads a KID vector file: an array, or an object with one array member of vectors. */
function loadKidVectors(path: string): KidVector[] {
  const doc = readJsonExact(path);
  const o = doc as Record<string, unknown>;
  const arr = Array.isArray(doc) ? doc : ([o['vectors'], o['kid'], o['cases']].find((v) => Array.isArray(v)) as unknown[] | undefined);
  assert.ok(Array.isArray(arr) && arr.length > 0, `${path}: no vector array`);
  return arr.map((raw, i) => {
    const e = raw as Record<string, unknown>;
    const pick = (...names: string[]): unknown => names.map((n) => e[n]).find((v) => v !== undefined);
    const context = pick('context', 'context_id');
    const leaf = pick('leaf_index', 'leaf', 'sender_index', 'member_index', 'index');
    const epoch = pick('epoch');
    const kid = pick('kid', 'key_id');
    assert.ok(context !== undefined && leaf !== undefined && epoch !== undefined && kid !== undefined, `${path}[${i}]: fields`);
    const ctr = pick('ctr', 'counter');
    const header = pick('header', 'encoded', 'header_hex');
    const source = pick('source');
    if (source !== undefined) assert.equal(sourceOfContext(Number(big(context))), source, `${path}[${i}]: source`);
    return {
      context: Number(big(context)),
      leaf: Number(big(leaf)),
      epoch: big(epoch),
      kid: big(kid),
      ctr: ctr === undefined ? null : big(ctr),
      header: typeof header === 'string' ? header : null,
    };
  });
}

function checkKidVectors(vs: KidVector[]): void {
  for (const v of vs) {
    const kid = makeKid(v.context, v.leaf, v.epoch);
    assert.equal(kid, v.kid, `context=${v.context} leaf=${v.leaf} epoch=${v.epoch}`);
    assert.deepEqual(splitKid(kid), { context: BigInt(v.context), leafIndex: v.leaf, epochLow: Number(v.epoch & 0xffn) });
    if (v.ctr !== null && v.header !== null) assert.equal(hex(encodeHeader(kid, v.ctr)), v.header);
  }
}

describe('KID layout (E=8, S=16, context above)', () => {
  test('vectors in web/test/vectors/kid.json', () => {
    const vs = loadKidVectors(repoPath('web', 'test', 'vectors', 'kid.json'));
    assert.ok(vs.length >= 10);
    checkKidVectors(vs);
  });

  const rust = repoPath('crates', 'e2ee', 'tests', 'vectors', 'kid.json');
  const rustSkip = existsSync(rust) ? false : 'crates/e2ee/tests/vectors/kid.json not written yet';
  test('KID vectors of the Rust side (crates/e2ee/tests/vectors/kid.json)', { skip: rustSkip }, () => {
    checkKidVectors(loadKidVectors(rust));
  });

  test('frame vectors of the Rust side: same wire bytes, and they decrypt here', { skip: rustSkip }, async () => {
    const doc = readJsonExact(rust) as { suite?: unknown; frames?: RustFrame[] };
    if (doc.suite !== undefined) assert.equal(Number(big(doc.suite)), PROFILE_SUITE.id);
    const frames = doc.frames ?? [];
    assert.ok(frames.length > 0, 'no frames');
    for (const [i, f] of frames.entries()) {
      const what = `frames[${i}]`;
      const frame = unhex(f.frame);
      const wire = unhex(f.wire);
      const epoch = big(f.epoch);
      const kid = makeKid(CONTEXT_ID[f.source], f.leaf_index, epoch);
      assert.equal(kid, big(f.kid), what);
      assert.equal(clearByteCount(f.codec, frame), f.clear_len, what);
      const key = await deriveSframeKey(PROFILE_SUITE, unhex(f.base_key), kid);
      const clear = frame.subarray(0, f.clear_len);
      const ours = concatBytes(clear, await sframeEncrypt(key, big(f.ctr), clear, frame.subarray(f.clear_len)));
      assert.equal(hex(ours), f.wire, what);
      if (big(f.ctr) === 0n) {
        const tx = new SframeSender();
        tx.setEpoch(epoch, f.leaf_index, unhex(f.base_key));
        assert.equal(hex((await tx.protect(f.source, f.codec, frame)) as Uint8Array), f.wire, `${what} via SframeSender`);
      }
      const rx = new SframeReceiver();
      rx.setEpoch(epoch, unhex(f.base_key), [f.leaf_index], 0);
      const r = await rx.unprotect(f.codec, wire, 0);
      assert.ok(r.ok, `${what}: ${r.ok ? '' : r.reason}`);
      assert.deepEqual([hex(r.frame), r.leafIndex, r.source, r.epoch, r.ctr], [f.frame, f.leaf_index, f.source, epoch, big(f.ctr)], what);
    }
  });

  test('out-of-range fields are refused', () => {
    assert.throws(() => makeKid(0, 65536, 0));
    assert.throws(() => makeKid(0, -1, 0));
    assert.throws(() => makeKid(-1, 0, 0));
    assert.equal(makeKid(1, 2, 0x1ff), (1n << 24n) | (2n << 8n) | 0xffn);
  });
});

// --- The sealroom profile

const BASE_A = unhex('000102030405060708090a0b0c0d0e0f');
const BASE_B = unhex('f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff');
const VP8_KEY = unhex('1003009d012a8002e001' + '11'.repeat(50)); // bit 0 of byte 0 clear: key frame
const VP8_DELTA = unhex('31' + '22'.repeat(40));
const OPUS = unhex('7801020304050607');

describe('codec clear bytes', () => {
  test('VP8 key frames keep 10 bytes, delta frames 1, Opus none', () => {
    assert.equal(clearByteCount('vp8', VP8_KEY), 10);
    assert.equal(clearByteCount('vp8', VP8_DELTA), 1);
    assert.equal(clearByteCount('opus', OPUS), 0);
    assert.equal(clearByteCount('vp8', new Uint8Array(0)), null);
    assert.equal(clearByteCount('vp8', unhex('10030000')), null, 'a key frame shorter than its header');
  });
});

async function pair(): Promise<{ tx: SframeSender; rx: SframeReceiver }> {
  const tx = new SframeSender();
  tx.setEpoch(5n, 3, BASE_A);
  const rx = new SframeReceiver();
  rx.setEpoch(5n, BASE_A, [0, 3, 7], 0);
  return { tx, rx };
}

describe('SframeSender / SframeReceiver', () => {
  test('round trip for VP8 key, VP8 delta and Opus; clear bytes stay in clear', async () => {
    const { tx, rx } = await pair();
    for (const [source, codec, frame, n] of [
      ['camera', 'vp8', VP8_KEY, 10],
      ['camera', 'vp8', VP8_DELTA, 1],
      ['microphone', 'opus', OPUS, 0],
    ] as const) {
      const wire = await tx.protect(source, codec, frame);
      assert.ok(wire);
      assert.equal(hex(wire.subarray(0, n)), hex(frame.subarray(0, n)), 'clear prefix');
      assert.equal(wire.length, frame.length + decodeHeaderAt(wire, n) + 16);
      assert.ok(!hex(wire.subarray(n)).includes(hex(frame.subarray(n))), 'payload is encrypted');
      const r = await rx.unprotect(codec, wire, 1);
      assert.ok(r.ok);
      assert.equal(hex(r.frame), hex(frame));
      assert.equal(r.leafIndex, 3);
      assert.equal(r.source, source);
      assert.equal(r.epoch, 5n);
    }
    assert.equal(rx.decrypted, 3);
  });

  test('one counter per KID from 0, never reused; the KID carries context, leaf and epoch', async () => {
    const { tx } = await pair();
    const seen = new Map<bigint, bigint[]>();
    for (let i = 0; i < 5; i++) {
      for (const source of ['microphone', 'camera', 'screen', 'screen_audio'] as const) {
        const wire = await tx.protect(source, 'opus', OPUS);
        assert.ok(wire);
        const h = decodeHeader(wire);
        assert.ok(h);
        const list = seen.get(h.kid) ?? [];
        list.push(h.ctr);
        seen.set(h.kid, list);
      }
    }
    assert.deepEqual(
      [...seen.keys()].sort((a, b) => (a < b ? -1 : 1)),
      [makeKid(0, 3, 5), makeKid(1, 3, 5), makeKid(2, 3, 5), makeKid(3, 3, 5)],
    );
    for (const ctrs of seen.values()) assert.deepEqual(ctrs, [0n, 1n, 2n, 3n, 4n]);
    // Setting the same epoch again keeps the counters; a new epoch starts at 0 with a new KID.
    tx.setEpoch(5n, 3, BASE_A);
    assert.equal(decodeHeader((await tx.protect('microphone', 'opus', OPUS)) as Uint8Array)?.ctr, 5n);
    tx.setEpoch(6n, 3, BASE_B);
    const h = decodeHeader((await tx.protect('microphone', 'opus', OPUS)) as Uint8Array);
    assert.deepEqual(h && [h.kid, h.ctr], [makeKid(0, 3, 6), 0n]);
  });

  test('concurrent protect calls get distinct counters', async () => {
    const { tx } = await pair();
    const wires = await Promise.all(Array.from({ length: 20 }, () => tx.protect('camera', 'vp8', VP8_DELTA)));
    const ctrs = wires.map((w) => decodeHeader((w as Uint8Array).subarray(1))?.ctr);
    assert.equal(new Set(ctrs).size, 20);
  });

  test('no epoch, no frame: a sender without keys drops', async () => {
    const tx = new SframeSender();
    assert.equal(await tx.protect('camera', 'vp8', VP8_KEY), null);
    tx.setEpoch(1, 0, BASE_A);
    tx.clear();
    assert.equal(await tx.protect('camera', 'vp8', VP8_KEY), null);
    assert.equal(tx.dropped, 2);
  });

  test('replay: the same frame twice is dropped; reordering within 128 passes; older is dropped', async () => {
    const { tx, rx } = await pair();
    const wires: Uint8Array[] = [];
    for (let i = 0; i < 200; i++) wires.push((await tx.protect('microphone', 'opus', OPUS)) as Uint8Array);
    assert.ok((await rx.unprotect('opus', wires[0] as Uint8Array, 1)).ok);
    assert.deepEqual(await rx.unprotect('opus', wires[0] as Uint8Array, 1), { ok: false, reason: 'replay' });
    assert.ok((await rx.unprotect('opus', wires[150] as Uint8Array, 1)).ok);
    assert.ok((await rx.unprotect('opus', wires[23] as Uint8Array, 1)).ok, '127 behind the newest');
    assert.deepEqual(await rx.unprotect('opus', wires[22] as Uint8Array, 1), { ok: false, reason: 'replay' }, '128 behind');
    assert.deepEqual(await rx.unprotect('opus', wires[150] as Uint8Array, 1), { ok: false, reason: 'replay' });
    assert.ok((await rx.unprotect('opus', wires[149] as Uint8Array, 1)).ok);
    // Two copies in flight at once: one wins.
    const both = await Promise.all([rx.unprotect('opus', wires[199] as Uint8Array, 1), rx.unprotect('opus', wires[199] as Uint8Array, 1)]);
    assert.deepEqual(both.map((r) => r.ok).sort(), [false, true]);
    assert.equal(rx.failures.replay, 4);
  });

  test('a forged frame does not move the replay window', async () => {
    const { tx, rx } = await pair();
    const good = (await tx.protect('microphone', 'opus', OPUS)) as Uint8Array;
    // Same KID, counter 1000, garbage ciphertext.
    const forged = concatBytes(encodeHeader(makeKid(0, 3, 5), 1000n), new Uint8Array(30));
    assert.deepEqual(await rx.unprotect('opus', forged, 1), { ok: false, reason: 'auth' });
    assert.ok((await rx.unprotect('opus', good, 1)).ok, 'counter 0 is still inside the window');
  });

  test('tampering with clear bytes, header, ciphertext or tag fails authentication', async () => {
    const { tx, rx } = await pair();
    const wire = (await tx.protect('camera', 'vp8', VP8_KEY)) as Uint8Array;
    const hlen = decodeHeaderAt(wire, 10);
    // Byte 2 is a clear VP8 byte; the others: counter byte in the header, ciphertext, tag.
    for (const at of [2, 10 + hlen - 1, 10 + hlen + 3, wire.length - 1]) {
      const bad = new Uint8Array(wire);
      bad[at] = (bad[at] as number) ^ 0x01;
      const r = await rx.unprotect('vp8', bad, 1);
      assert.equal(r.ok, false, `byte ${at}`);
    }
    assert.ok((await rx.unprotect('vp8', wire, 1)).ok, 'the genuine frame still passes');
    assert.equal(rx.failures.auth + rx.failures.replay + rx.failures['unknown-kid'], 4);
  });

  test('unknown KIDs are dropped without trying any key', async () => {
    const { rx } = await pair();
    const other = new SframeSender();
    other.setEpoch(5n, 4, BASE_A); // leaf 4 is not a member of the epoch
    assert.deepEqual(await rx.unprotect('opus', (await other.protect('microphone', 'opus', OPUS)) as Uint8Array, 1), {
      ok: false,
      reason: 'unknown-kid',
    });
    other.setEpoch(9n, 3, BASE_A); // epoch bits the receiver has no key for
    assert.deepEqual(await rx.unprotect('opus', (await other.protect('microphone', 'opus', OPUS)) as Uint8Array, 1), {
      ok: false,
      reason: 'unknown-kid',
    });
    const ctx4 = concatBytes(encodeHeader(makeKid(4, 3, 5), 0n), new Uint8Array(30)); // context 4 does not exist
    assert.deepEqual(await rx.unprotect('opus', ctx4, 1), { ok: false, reason: 'unknown-kid' });
    assert.deepEqual(await rx.unprotect('opus', unhex('00'), 1), { ok: false, reason: 'malformed' });
    assert.deepEqual(await rx.unprotect('opus', unhex('0f0000'), 1), { ok: false, reason: 'malformed' });
    assert.equal(rx.failures['unknown-kid'], 3);
    assert.equal(rx.decrypted, 0);
  });

  test('a frame with the right KID but another epoch key fails (no passthrough, no fallback)', async () => {
    const { rx } = await pair();
    const tx = new SframeSender();
    tx.setEpoch(5n, 3, BASE_B);
    const r = await rx.unprotect('vp8', (await tx.protect('camera', 'vp8', VP8_KEY)) as Uint8Array, 1);
    assert.deepEqual(r, { ok: false, reason: 'auth' });
  });

  test("epoch change: the old epoch stays until the sender's first new frame + 250 ms", async () => {
    const tx = new SframeSender();
    tx.setEpoch(5n, 3, BASE_A);
    const rx = new SframeReceiver();
    rx.setEpoch(5n, BASE_A, [3, 7], 0);
    const old1 = (await tx.protect('microphone', 'opus', OPUS)) as Uint8Array;
    const old2 = (await tx.protect('microphone', 'opus', OPUS)) as Uint8Array;
    const old3 = (await tx.protect('microphone', 'opus', OPUS)) as Uint8Array;
    const otherSender = new SframeSender();
    otherSender.setEpoch(5n, 7, BASE_A);
    const old7 = (await otherSender.protect('microphone', 'opus', OPUS)) as Uint8Array;

    rx.setEpoch(6n, BASE_B, [3, 7], 1000);
    assert.ok((await rx.unprotect('opus', old1, 1100)).ok, 'old epoch before any new frame');
    tx.setEpoch(6n, 3, BASE_B);
    const fresh = (await tx.protect('microphone', 'opus', OPUS)) as Uint8Array;
    const r = await rx.unprotect('opus', fresh, 1200);
    assert.ok(r.ok && r.epoch === 6n);
    assert.ok((await rx.unprotect('opus', old2, 1449)).ok, 'within 250 ms of the first new frame');
    assert.deepEqual(await rx.unprotect('opus', old3, 1450), { ok: false, reason: 'expired-epoch' });
    // Sender 7 has not switched yet: its old frames pass until 1 s after the new epoch.
    assert.ok((await rx.unprotect('opus', old7, 1999)).ok);
    const old7b = (await otherSender.protect('microphone', 'opus', OPUS)) as Uint8Array;
    assert.deepEqual(await rx.unprotect('opus', old7b, 2000), { ok: false, reason: 'expired-epoch' });
    // After the hard limit the old epoch is gone for good.
    const old7c = (await otherSender.protect('microphone', 'opus', OPUS)) as Uint8Array;
    assert.deepEqual(await rx.unprotect('opus', old7c, 2001), { ok: false, reason: 'unknown-kid' });
  });

  test('only the previous epoch is kept; epochs only move forward', async () => {
    const rx = new SframeReceiver();
    rx.setEpoch(1n, BASE_A, [0], 0);
    const tx = new SframeSender();
    tx.setEpoch(1n, 0, BASE_A);
    const e1 = (await tx.protect('microphone', 'opus', OPUS)) as Uint8Array;
    rx.setEpoch(2n, BASE_B, [0], 10);
    rx.setEpoch(3n, BASE_A, [0], 20);
    assert.deepEqual(await rx.unprotect('opus', e1, 30), { ok: false, reason: 'unknown-kid' });
    assert.throws(() => rx.setEpoch(2n, BASE_B, [0], 40));
    rx.setEpoch(3n, BASE_A, [0], 50); // same epoch and key: no-op
    rx.clear();
    rx.setEpoch(0n, BASE_A, [0], 60); // a new group starts over
    assert.equal(rx.currentEpoch, 0n);
  });
});

function decodeHeaderAt(wire: Uint8Array, offset: number): number {
  const h = decodeHeader(wire, offset);
  assert.ok(h);
  return h.length;
}
