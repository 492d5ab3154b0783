// The roster each client draws from its own MLS state joined with the server's participant list
// (e2ee/roster.ts): every disagreement is flagged, and tiles take their label from the KID's leaf.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Participant } from '../src/proto';
import type { MidStats, RosterMember } from '../src/e2ee/protocol';
import { AnnouncementWatch, DEPARTED_GRACE_MS, NO_KEYS_AFTER_MS, joinRoster, tileIdentity } from '../src/e2ee/roster';

const member = (leaf: number, username: string, deviceId: string, extra: Partial<RosterMember> = {}): RosterMember => ({
  leaf,
  self: false,
  verified: true,
  failure: null,
  userId: `u-${username}`,
  username,
  displayName: username.toUpperCase(),
  deviceId,
  deviceName: `${username}'s laptop`,
  deviceKind: 'passkey',
  ...extra,
});

const participant = (id: string, user: string, deviceId: string): Participant => ({
  id,
  user_name: user,
  display_name: user.toUpperCase(),
  device_name: `${user}'s laptop`,
  device_kind: 'passkey',
  network: 'loopback',
  host: false,
  audio_muted: false,
  video_muted: false,
  screen: false,
  media_connected: true,
  away: false,
  device_id: deviceId,
});

const mid = (leaf: number | null, decrypted: number, stalled = false): MidStats => ({ leaf, source: 'camera', epoch: 1, received: decrypted + 1, decrypted, stalled, sinceDecryptedMs: 10 });

describe('joinRoster', () => {
  const ps = [participant('p-a', 'alice', 'd-a'), participant('p-b', 'bob', 'd-b')];

  test('members matched by (user name, device id) are verified; ours is marked', () => {
    const rows = joinRoster([member(0, 'alice', 'd-a', { self: true }), member(1, 'bob', 'd-b')], ps, 'p-a', new Map(), 0, true);
    assert.deepEqual(
      rows.map((r) => [r.key, r.state, r.self, r.participant?.id, r.flags]),
      [
        ['leaf:0', 'verified', true, 'p-a', []],
        ['leaf:1', 'verified', false, 'p-b', []],
      ],
    );
  });

  test('a member the server does not announce, a participant without a leaf after 5 s, an unverified member', () => {
    const first = new Map([
      ['p-a', 0],
      ['p-b', 0],
      ['p-c', 0],
    ]);
    const members = [member(0, 'alice', 'd-a', { self: true }), member(1, 'ghost', 'd-g'), member(2, 'bob', 'd-OTHER', { verified: false, failure: 'bad-signature' })];
    const list = [...ps, participant('p-c', 'carol', 'd-c')];
    const early = joinRoster(members, list, 'p-a', first, NO_KEYS_AFTER_MS - 1, true);
    assert.equal(early.find((r) => r.participant?.id === 'p-c')?.state, 'joining');
    const rows = joinRoster(members, list, 'p-a', first, NO_KEYS_AFTER_MS, true);
    const byKey = Object.fromEntries(rows.map((r) => [r.key, r]));
    assert.equal(byKey['leaf:1']?.state, 'not-announced');
    assert.deepEqual(byKey['leaf:1']?.flags, ['not announced by the server']);
    assert.equal(byKey['leaf:2']?.state, 'unverified');
    assert.match(byKey['leaf:2']?.flags.join(';') ?? '', /does not verify \(bad-signature\)/);
    // bob's device id differs from his leaf's: he is a participant without keys.
    assert.equal(byKey['participant:p-b']?.state, 'no-keys');
    assert.equal(byKey['participant:p-c']?.state, 'no-keys');
    // Before we are in the group nobody is judged.
    assert.ok(joinRoster([], list, 'p-a', first, 60_000, false).every((r) => r.state === 'joining'));
  });

  test('two leaves for one device are flagged', () => {
    const rows = joinRoster([member(0, 'alice', 'd-a'), member(3, 'alice', 'd-a')], ps.slice(0, 1), null, new Map(), 0, true);
    assert.deepEqual(rows[1]?.flags, ['a second leaf for the same device']);
  });
});

describe('AnnouncementWatch (restricted: an unannounced member ends our participation)', () => {
  const alice = participant('p-a', 'alice', 'd-a');
  const bob = participant('p-b', 'bob', 'd-b');
  const me = member(0, 'alice', 'd-a', { self: true });
  const rows = (members: RosterMember[], list: Participant[]) => joinRoster(members, list, 'p-a', new Map(), 0, true);

  test('a member the server never announced is judged at once, with its identity', () => {
    const w = new AnnouncementWatch();
    w.saw([alice, bob]);
    assert.equal(w.check(rows([me, member(1, 'bob', 'd-b')], [alice, bob]), 0), null);
    const v = w.check(rows([me, member(1, 'bob', 'd-b'), member(2, 'eve', 'd-e')], [alice, bob]), 10);
    assert.equal(v?.row.member?.username, 'eve');
    assert.equal(v?.row.member?.deviceId, 'd-e');
    assert.equal(v?.neverAnnounced, true);
  });

  test('a member that left the list (its Remove on the way) gets DEPARTED_GRACE_MS', () => {
    const w = new AnnouncementWatch();
    w.saw([alice, bob]);
    w.saw([alice]);
    const members = [me, member(1, 'bob', 'd-b')];
    assert.equal(w.check(rows(members, [alice]), 1000), null);
    assert.equal(w.check(rows(members, [alice]), 1000 + DEPARTED_GRACE_MS - 1), null);
    const v = w.check(rows(members, [alice]), 1000 + DEPARTED_GRACE_MS);
    assert.equal(v?.row.member?.username, 'bob');
    assert.equal(v?.neverAnnounced, false);
    // Removed, then back with a new leaf while announced: nothing to judge, the clock restarts.
    const w2 = new AnnouncementWatch();
    w2.saw([alice, bob]);
    assert.equal(w2.check(rows(members, [alice]), 0), null);
    assert.equal(w2.check(rows([me], [alice]), 5000), null);
    assert.equal(w2.check(rows([me, member(1, 'bob', 'd-b')], [alice]), 6000), null, 'a new departure starts its own grace');
  });

  test('our own leaf, announced members and a second leaf of an announced device are never judged', () => {
    const w = new AnnouncementWatch();
    w.saw([bob]);
    assert.equal(w.check(rows([me, member(1, 'bob', 'd-b'), member(4, 'bob', 'd-b')], [bob]), 0), null);
  });
});

describe('tileIdentity', () => {
  const members = [member(0, 'alice', 'd-a'), member(1, 'bob', 'd-b')];
  const bob = participant('p-b', 'bob', 'd-b');

  test('labelled from the leaf whose frames decrypt on the tile’s tracks', () => {
    const id = tileIdentity(bob, ['1', '2'], { '1': mid(1, 40), '2': mid(1, 30) }, members);
    assert.equal(id.leaf, 1);
    assert.equal(id.member?.username, 'bob');
    assert.equal(id.mismatch, false);
  });

  test('media the server gives to bob but encrypted by alice is a mismatch', () => {
    const id = tileIdentity(bob, ['1'], { '1': mid(0, 40) }, members);
    assert.equal(id.member?.username, 'alice');
    assert.equal(id.mismatch, true);
  });

  test('nothing decrypted: no label (a KID alone, unauthenticated, names nobody); stalled is passed on', () => {
    const id = tileIdentity(bob, ['1'], { '1': mid(1, 0, true) }, members);
    assert.equal(id.leaf, null);
    assert.equal(id.member, null);
    assert.equal(id.stalled, true);
    assert.equal(tileIdentity(bob, ['1'], { '1': mid(7, 5) }, members).mismatch, true, 'a leaf that is not a member');
  });
});
