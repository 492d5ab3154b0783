// The server binding in a member's credential (docs/E2EE.md §2).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  BINDING_LABEL,
  base64UrlDecode,
  base64UrlEncode,
  importIdentityKey,
  joinIdentity,
  splitIdentity,
  verifyBinding,
  type BindingExpectations,
} from '../src/e2ee/credential';
import { hex, utf8 } from './helpers';
import { TestServer } from './server';

const who = { user_id: 'u-1', device_id: 'd-1', display_name: 'Ada' };

async function setup(): Promise<{ server: TestServer; leafKey: Uint8Array; expect: BindingExpectations }> {
  const server = await TestServer.create();
  const leafKey = globalThis.crypto.getRandomValues(new Uint8Array(32));
  return { server, leafKey, expect: { identityKey: server.publicKey, serverId: server.serverId, meetingId: server.meetingId, signatureKey: leafKey } };
}

describe('verifyBinding', () => {
  test('a binding the server signed verifies and parses', async () => {
    const { server, leafKey, expect } = await setup();
    const id = await server.bind(leafKey, who);
    const r = await verifyBinding(id, expect);
    assert.ok(r.ok);
    assert.equal(r.binding.user_id, 'u-1');
    assert.equal(r.binding.device_id, 'd-1');
    assert.equal(r.binding.display_name, 'Ada');
    assert.equal(r.binding.device_kind, 'passkey');
    assert.equal(r.binding.server_id, server.serverId);
    // An imported key works the same.
    assert.ok((await verifyBinding(id, { ...expect, identityKey: await importIdentityKey(server.publicKey) })).ok);
  });

  test('the label is "sealroom/mls-binding/v1" and a zero byte', () => {
    assert.equal(hex(BINDING_LABEL), hex(utf8('sealroom/mls-binding/v1\u0000')));
  });

  test('unknown members of B are ignored', async () => {
    const { server, leafKey, expect } = await setup();
    assert.ok((await verifyBinding(await server.bind(leafKey, who, { level: 'restricted', extra: [1, 2] }), expect)).ok);
  });

  test('any changed byte of B or of the signature breaks it', async () => {
    const { server, leafKey, expect } = await setup();
    const id = await server.bind(leafKey, who);
    for (const at of [2, 10, id.length - 65, id.length - 64, id.length - 1]) {
      const bad = new Uint8Array(id);
      bad[at] = (bad[at] as number) ^ 0x20;
      const r = await verifyBinding(bad, expect);
      assert.deepEqual(r, { ok: false, reason: 'bad-signature' }, `byte ${at}`);
    }
  });

  test('another identity key, or a signature without the label, does not verify', async () => {
    const { server, leafKey, expect } = await setup();
    const other = await TestServer.create();
    assert.deepEqual(await verifyBinding(await other.bind(leafKey, who), expect), { ok: false, reason: 'bad-signature' });
    // Signed over B alone (no domain separation): refused.
    const b = server.bindingJson(leafKey, who);
    const noLabel = new Uint8Array(
      await globalThis.crypto.subtle.sign({ name: 'Ed25519' }, (server as unknown as { signKey: CryptoKey }).signKey, b),
    );
    assert.deepEqual(await verifyBinding(joinIdentity(b, noLabel), expect), { ok: false, reason: 'bad-signature' });
    assert.deepEqual(await verifyBinding(await server.bind(leafKey, who), { ...expect, identityKey: new Uint8Array(31) }), {
      ok: false,
      reason: 'bad-identity-key',
    });
  });

  test('server, meeting and leaf key must be the client\'s', async () => {
    const { server, leafKey, expect } = await setup();
    const id = await server.bind(leafKey, who);
    assert.deepEqual(await verifyBinding(id, { ...expect, serverId: 'https://other' }), { ok: false, reason: 'wrong-server' });
    assert.deepEqual(await verifyBinding(id, { ...expect, meetingId: 'm-other' }), { ok: false, reason: 'wrong-meeting' });
    const otherLeaf = globalThis.crypto.getRandomValues(new Uint8Array(32));
    assert.deepEqual(await verifyBinding(id, { ...expect, signatureKey: otherLeaf }), { ok: false, reason: 'wrong-signature-key' });
  });

  test('signed but wrong content: version, types, JSON, key spelling', async () => {
    const { server, leafKey, expect } = await setup();
    const signed = async (b: Uint8Array): Promise<Uint8Array> => joinIdentity(b, await server.signBinding(b));
    assert.deepEqual(await verifyBinding(await server.bind(leafKey, who, { v: 2 }), expect), { ok: false, reason: 'wrong-version' });
    assert.deepEqual(await verifyBinding(await server.bind(leafKey, who, { user_id: 7 }), expect), { ok: false, reason: 'bad-json' });
    assert.deepEqual(await verifyBinding(await server.bind(leafKey, who, { device_kind: 'attested' }), expect), { ok: false, reason: 'bad-json' });
    assert.deepEqual(await verifyBinding(await server.bind(leafKey, who, { issued_at: '1' }), expect), { ok: false, reason: 'bad-json' });
    assert.deepEqual(await verifyBinding(await signed(utf8('[1,2]')), expect), { ok: false, reason: 'bad-json' });
    assert.deepEqual(await verifyBinding(await signed(utf8('{"v":1')), expect), { ok: false, reason: 'bad-json' });
    assert.deepEqual(await verifyBinding(await signed(new Uint8Array([0x7b, 0xff, 0x7d])), expect), { ok: false, reason: 'bad-json' });
    // Standard base64 (padding) instead of base64url without padding.
    const std = btoa(String.fromCharCode(...leafKey));
    assert.deepEqual(await verifyBinding(await server.bind(leafKey, who, { signature_key: std }), expect), {
      ok: false,
      reason: 'wrong-signature-key',
    });
  });

  test('framing: length prefix must match and the signature is 64 bytes', async () => {
    const { server, leafKey, expect } = await setup();
    const id = await server.bind(leafKey, who);
    assert.deepEqual(await verifyBinding(id.subarray(0, id.length - 1), expect), { ok: false, reason: 'malformed' });
    assert.deepEqual(await verifyBinding(new Uint8Array([...id, 0]), expect), { ok: false, reason: 'malformed' });
    assert.deepEqual(await verifyBinding(new Uint8Array([0]), expect), { ok: false, reason: 'malformed' });
    const parts = splitIdentity(id);
    assert.ok(parts);
    assert.equal(parts.sig.length, 64);
    assert.equal(hex(joinIdentity(parts.b, parts.sig)), hex(id));
  });
});

describe('base64url', () => {
  test('round trip and strictness', () => {
    for (let n = 0; n < 40; n++) {
      const b = globalThis.crypto.getRandomValues(new Uint8Array(n));
      const s = base64UrlEncode(b);
      assert.ok(!/[+/=]/.test(s));
      assert.equal(hex(base64UrlDecode(s) as Uint8Array), hex(b));
    }
    assert.equal(base64UrlDecode('AA=='), null);
    assert.equal(base64UrlDecode('A+'), null);
    assert.equal(base64UrlDecode('AB'), null, 'non-zero padding bits');
    assert.equal(base64UrlDecode('A'), null);
  });
});
