// MLS members over ts-mls with sealroom's rules (docs/E2EE.md §2-§4, §6, §7), driven by a small
// in-test server that signs bindings and proposes Add/Remove as the group's external sender.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  createCommit,
  createProposal,
  decodeMlsMessage,
  encodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  proposeExternal,
  type ClientState,
  type GroupInfo,
  type MLSMessage,
  type PublicMessage,
} from 'ts-mls';
import { createMembershipTag } from 'ts-mls/authenticatedContent.js';
import { toTbs } from 'ts-mls/framedContent.js';
import {
  MLS_SUITE,
  Member,
  MlsRejected,
  decodeChat,
  decodeExternalSenders,
  encodeChat,
  encodeExternalSenders,
  securityCode,
  serverExternalSender,
  type HandshakeResult,
  type MlsFailure,
} from '../src/e2ee/mls';
import { SframeReceiver, SframeSender } from '../src/e2ee/sframe';
import { hex } from './helpers';
import { TestServer, type Person } from './server';

const LEVEL = 'internal' as const;
const GEN = 1;

interface Party {
  m: Member;
  kp: Uint8Array;
  who: Person;
}

async function party(
  server: TestServer,
  n: number,
  opts: { requireVerified?: boolean; who?: Person; bind?: Record<string, unknown>; binder?: TestServer } = {},
): Promise<Party> {
  const m = await Member.create({
    serverId: server.serverId,
    meetingId: server.meetingId,
    serverKey: server.publicKey,
    requireVerified: opts.requireVerified ?? true,
  });
  const who = opts.who ?? { user_id: `u-${n}`, device_id: `d-${n}` };
  const identity = await (opts.binder ?? server).bind(m.signaturePublicKey, who, opts.bind ?? {});
  return { m, kp: await m.keyPackage(identity, Date.now() / 1000), who };
}

/** The internal ts-mls state (tests only, to forge messages). */
function stateOf(m: Member): ClientState {
  return (m as unknown as { state: ClientState }).state;
}

async function deliver(bytes: Uint8Array, to: Member[]): Promise<HandshakeResult[]> {
  const out: HandshakeResult[] = [];
  for (const m of to) out.push(await m.handleHandshake(bytes));
  return out;
}

async function rejects(p: Promise<unknown>, reason: MlsFailure, detail?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof MlsRejected, `not MlsRejected: ${String(e)}`);
    assert.equal(e.reason, reason, e.message);
    if (detail) assert.match(e.message, detail);
    return true;
  });
}

async function snapshot(m: Member): Promise<string> {
  return JSON.stringify([String(m.epoch), hex(await m.sframeBaseKey()), hex(m.epochAuthenticator), m.pendingProposals, m.memberLeaves]);
}

/** Everyone is in the same epoch with the same exporter output, authenticator and security code. */
async function assertInSync(ms: Member[]): Promise<void> {
  const first = ms[0] as Member;
  const want = {
    epoch: first.epoch,
    base: hex(await first.sframeBaseKey()),
    other: hex(await first.exporter('other label', new Uint8Array([1, 2]), 32)),
    auth: hex(first.epochAuthenticator),
    code: await first.securityCode(),
    leaves: first.memberLeaves,
  };
  assert.match(want.code, /^\d{5} \d{5} \d{5} \d{5}$/);
  for (const m of ms.slice(1)) {
    assert.deepEqual(
      {
        epoch: m.epoch,
        base: hex(await m.sframeBaseKey()),
        other: hex(await m.exporter('other label', new Uint8Array([1, 2]), 32)),
        auth: hex(m.epochAuthenticator),
        code: await m.securityCode(),
        leaves: m.memberLeaves,
      },
      want,
    );
  }
}

function target(m: Member): { groupId: Uint8Array; epoch: bigint } {
  return { groupId: m.groupId, epoch: m.epoch };
}

/** Server proposes Add for each newcomer, `committer` commits, the echo is delivered, newcomers join. */
async function add(server: TestServer, committer: Member, members: Member[], newcomers: Party[]): Promise<void> {
  for (const p of newcomers) {
    const r = await deliver(await server.proposeAdd(target(committer), p.kp), members);
    assert.ok(r.every((x) => x.kind === 'proposal' && x.proposal === 'add'));
  }
  const { commit, welcome } = await committer.commitPending();
  assert.ok(welcome);
  const results = await deliver(commit, members);
  for (const [i, r] of results.entries()) {
    assert.equal(r.kind, 'commit');
    assert.equal(r.kind === 'commit' && r.own, members[i] === committer);
    assert.equal(r.kind === 'commit' && r.added.length, newcomers.length);
  }
  for (const p of newcomers) await p.m.joinFromWelcome(welcome, { level: LEVEL, generation: GEN });
}

async function group(server: TestServer, n: number, opts: { requireVerified?: boolean } = {}): Promise<Party[]> {
  const ps: Party[] = [];
  for (let i = 0; i < n; i++) ps.push(await party(server, i, opts));
  const first = ps[0] as Party;
  await first.m.createGroup(LEVEL, GEN);
  if (n > 1) await add(server, first.m, [first.m], ps.slice(1));
  return ps;
}

describe('MLS member', () => {
  test('four members: external Add/Remove proposals, commits, exporter and authenticator agree after every change', async () => {
    const server = await TestServer.create();
    const [a, b, c, d] = [await party(server, 0), await party(server, 1), await party(server, 2), await party(server, 3)] as const;
    await a.m.createGroup(LEVEL, GEN);
    assert.equal(a.m.epoch, 0n);
    assert.equal(new TextDecoder().decode(a.m.groupId), `sealroom/v1/${server.serverId}/${server.meetingId}/internal/1`);

    await add(server, a.m, [a.m], [b]);
    await assertInSync([a.m, b.m]);
    assert.equal(a.m.epoch, 1n);

    // Two adds in one commit, committed by leaf 1.
    await add(server, b.m, [a.m, b.m], [c, d]);
    const all = [a.m, b.m, c.m, d.m];
    await assertInSync(all);
    assert.deepEqual(a.m.memberLeaves, [0, 1, 2, 3]);
    assert.deepEqual(
      all.map((m) => m.ownLeafIndex),
      [0, 1, 2, 3],
    );

    // The roster carries every member's verified binding.
    const roster = await c.m.roster();
    assert.deepEqual(
      roster.map((r) => [r.leafIndex, r.self, r.status.verified && r.status.binding.user_id]),
      [
        [0, false, 'u-0'],
        [1, false, 'u-1'],
        [2, true, 'u-2'],
        [3, false, 'u-3'],
      ],
    );

    // Remove leaf 1 (proposed by the server), committed by the lowest remaining leaf.
    const prop = await server.proposeRemove(target(a.m), 1);
    const pr = await deliver(prop, all);
    assert.deepEqual(pr[0] && { ...pr[0], ref: '' }, { kind: 'proposal', proposal: 'remove', ref: '', removed: 1 });
    assert.deepEqual(
      all.map((m) => m.isDesignatedCommitter()),
      [true, false, false, false],
    );
    const { commit, welcome } = await a.m.commitPending();
    assert.equal(welcome, null);
    const res = await deliver(commit, all);
    assert.deepEqual(
      res.map((r) => r.kind === 'commit' && [r.own, r.selfRemoved, r.removed]),
      [
        [true, false, [1]],
        [false, true, [1]],
        [false, false, [1]],
        [false, false, [1]],
      ],
    );
    assert.ok(b.m.removed);
    assert.throws(() => b.m.epoch, MlsRejected);
    await assertInSync([a.m, c.m, d.m]);
    assert.deepEqual(a.m.memberLeaves, [0, 2, 3]);

    // A newcomer takes the free leaf 1.
    const e = await party(server, 4);
    await add(server, d.m, [a.m, c.m, d.m], [e]);
    await assertInSync([a.m, c.m, d.m, e.m]);
    assert.equal(e.m.ownLeafIndex, 1);

    // The 10-minute key update: an empty commit.
    const upd = await c.m.commitPending();
    assert.equal(upd.welcome, null);
    const before = a.m.epoch;
    await deliver(upd.commit, [a.m, c.m, d.m, e.m]);
    assert.equal(a.m.epoch, before + 1n);
    await assertInSync([a.m, c.m, d.m, e.m]);
  });

  test('a removed member cannot decrypt anything sent after the removal', async () => {
    const server = await TestServer.create();
    const [a, b, c] = (await group(server, 3)).map((p) => p.m) as [Member, Member, Member];
    const oldBase = await c.sframeBaseKey();
    const oldEpoch = c.epoch;
    const rxC = new SframeReceiver();
    rxC.setEpoch(oldEpoch, oldBase, c.memberLeaves, 0);

    await deliver(await server.proposeRemove(target(a), 2), [a, b, c]);
    const { commit } = await a.commitPending();
    // a and b process the removal; c has not seen it yet (or ignores it).
    await deliver(commit, [a, b]);
    const newBase = await a.sframeBaseKey();
    assert.notEqual(hex(newBase), hex(oldBase));

    const tx = new SframeSender();
    tx.setEpoch(a.epoch, a.ownLeafIndex, newBase);
    const frame = (await tx.protect('microphone', 'opus', new Uint8Array([1, 2, 3, 4]))) as Uint8Array;
    const rxB = new SframeReceiver();
    rxB.setEpoch(b.epoch, await b.sframeBaseKey(), b.memberLeaves, 0);
    assert.ok((await rxB.unprotect('opus', frame, 1)).ok);
    assert.deepEqual(await rxC.unprotect('opus', frame, 1), { ok: false, reason: 'unknown-kid' });
    // Even guessing the new epoch with the old key: no.
    const forge = new SframeReceiver();
    forge.setEpoch(a.epoch, oldBase, [0, 1, 2], 0);
    assert.deepEqual(await forge.unprotect('opus', frame, 1), { ok: false, reason: 'auth' });

    const chat = await a.encryptChat('after the removal');
    assert.equal((await b.decryptChat(chat)).text, 'after the removal');
    await rejects(c.decryptChat(chat), 'wrong-epoch');

    // When c processes the commit it learns it was removed, and can do nothing more.
    const [r] = await deliver(commit, [c]);
    assert.ok(r?.kind === 'commit' && r.selfRemoved);
    assert.ok(c.removed);
    await rejects(c.encryptChat('hi'), 'usage');
    await rejects(c.sframeBaseKey(), 'usage');
  });

  test('chat: PrivateMessage, padded to 256 bytes, sender leaf; not while proposals are pending', async () => {
    const server = await TestServer.create();
    const [a, b, c] = (await group(server, 3)).map((p) => p.m) as [Member, Member, Member];
    const msg = await c.encryptChat('hello 👋');
    const decoded = decodeMlsMessage(msg, 0)?.[0];
    assert.equal(decoded?.wireformat, 'mls_private_message');
    assert.deepEqual(await a.decryptChat(msg), { senderLeafIndex: 2, text: 'hello 👋' });
    assert.deepEqual(await b.decryptChat(msg), { senderLeafIndex: 2, text: 'hello 👋' });
    await rejects(a.decryptChat(msg), 'crypto'); // its key is used up: no replay

    // The plaintext format.
    const p = encodeChat('x');
    assert.equal(p.length, 256);
    assert.equal(new TextDecoder().decode(p).trimEnd(), '{"t":"chat","text":"x"}');
    assert.equal(encodeChat('y'.repeat(300)).length, 512);
    assert.equal(decodeChat(encodeChat('😀'.repeat(4000))), '😀'.repeat(4000));
    assert.throws(() => encodeChat('z'.repeat(4001)), MlsRejected);
    assert.throws(() => decodeChat(new TextEncoder().encode('{"t":"chat","text":"x"}')), MlsRejected);
    assert.throws(() => decodeChat(encodeChat('x').fill(0x20, 1, 10)), MlsRejected);

    // A chat message in flight across a commit still decrypts (previous epoch kept).
    const inFlight = await b.encryptChat('in flight');
    await deliver(await server.proposeRemove(target(a), 2), [a, b, c]);
    await rejects(a.encryptChat('pending'), 'usage', /proposals pending/);
    const { commit } = await a.commitPending();
    await deliver(commit, [a, b]);
    assert.equal((await a.decryptChat(inFlight)).text, 'in flight');

    // Handshake bytes are not chat, chat bytes are not handshake.
    await rejects(a.decryptChat(commit), 'wrong-wireformat');
    await rejects(b.handleHandshake(await a.encryptChat('x')), 'wrong-wireformat');
  });

  test('tampered commits are refused and leave the state unchanged', async () => {
    const server = await TestServer.create();
    const ps = await group(server, 3);
    const [a, b, c] = ps.map((p) => p.m) as [Member, Member, Member];
    const d = await party(server, 3);
    await deliver(await server.proposeAdd(target(a), d.kp), [a, b, c]);
    const aState = stateOf(a); // still the old epoch: the commit is only pending
    const { commit, welcome } = await a.commitPending();
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName(MLS_SUITE));

    const forge = async (change: (pm: PublicMessage) => PublicMessage, retag: boolean): Promise<Uint8Array> => {
      const msg = decodeMlsMessage(commit, 0)?.[0] as MLSMessage;
      assert.equal(msg.wireformat, 'mls_public_message');
      if (msg.wireformat !== 'mls_public_message') throw new Error('unreachable');
      let pm = change(msg.publicMessage);
      if (retag && pm.senderType === 'member') {
        const tag = await createMembershipTag(
          aState.keySchedule.membershipKey,
          { contentTbs: toTbs(pm.content, 'mls_public_message', aState.groupContext), auth: pm.auth },
          cs.hash,
        );
        pm = { ...pm, membershipTag: tag };
      }
      return encodeMlsMessage({ version: 'mls10', wireformat: 'mls_public_message', publicMessage: pm });
    };
    const flip = (u: Uint8Array): Uint8Array => {
      const v = new Uint8Array(u);
      v[3] = (v[3] as number) ^ 0x40;
      return v;
    };

    const before = await snapshot(b);
    const badSignature = await forge((pm) => ({ ...pm, auth: { ...pm.auth, signature: flip(pm.auth.signature) } }), true);
    await rejects(b.handleHandshake(badSignature), 'crypto', /Signature invalid/);
    const badMembership = await forge((pm) => (pm.senderType === 'member' ? { ...pm, membershipTag: flip(pm.membershipTag) } : pm), false);
    await rejects(b.handleHandshake(badMembership), 'crypto', /membership/);
    const badConfirmation = await forge(
      (pm) => (pm.auth.contentType === 'commit' ? { ...pm, auth: { ...pm.auth, confirmationTag: flip(pm.auth.confirmationTag) } } : pm),
      true,
    );
    await rejects(b.handleHandshake(badConfirmation), 'crypto', /confirmation tag/);
    await rejects(b.handleHandshake(commit.subarray(0, commit.length - 1)), 'malformed');
    assert.equal(await snapshot(b), before);

    // The committer's pending commit is untouched by others' garbage, and the genuine commit works.
    await rejects(a.handleHandshake(badSignature), 'crypto');
    await deliver(commit, [a, b, c]);
    await d.m.joinFromWelcome(welcome as Uint8Array, { level: LEVEL });
    await assertInSync([a, b, c, d.m]);
  });

  test('commit rules: by value, partial, from a non-member, extra proposals', async () => {
    const server = await TestServer.create();
    const [a, b, c] = (await group(server, 3)).map((p) => p.m) as [Member, Member, Member];
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName(MLS_SUITE));

    // An empty commit while server proposals are pending: refused (they must be committed).
    const emptyCommit = await createCommit({ state: stateOf(a), cipherSuite: cs }, { wireAsPublicMessage: true });
    const emptyBytes = encodeMlsMessage(emptyCommit.commit);
    await deliver(await server.proposeRemove(target(a), 2), [a, b, c]);
    await rejects(b.handleHandshake(emptyBytes), 'commit-proposals');

    // A Remove by value (not from the server) is refused even together with the references.
    const byValue = await createCommit(
      { state: stateOf(a), cipherSuite: cs },
      { wireAsPublicMessage: true, extraProposals: [{ proposalType: 'remove', remove: { removed: 1 } }] },
    );
    await rejects(b.handleHandshake(encodeMlsMessage(byValue.commit)), 'commit-proposals', /by value/);

    // A commit that leaves out a pending server proposal is refused.
    const partial = await createCommit({ state: stateOf(a), cipherSuite: cs }, { wireAsPublicMessage: true });
    await deliver(await server.proposeAdd(target(a), (await party(server, 9)).kp), [b]);
    await rejects(b.handleHandshake(encodeMlsMessage(partial.commit)), 'commit-proposals', /not all/);

    // A commit as PrivateMessage is refused before ts-mls sees it.
    const priv = await createCommit({ state: stateOf(a), cipherSuite: cs }, { wireAsPublicMessage: false });
    await rejects(c.handleHandshake(encodeMlsMessage(priv.commit)), 'wrong-wireformat');

    // Proposals: only the server, only Add/Remove, only this group and epoch, only the pinned key.
    const memberProposal = await createProposal(stateOf(b), true, { proposalType: 'remove', remove: { removed: 0 } }, cs);
    await rejects(a.handleHandshake(encodeMlsMessage(memberProposal.message)), 'not-external-sender');
    const other = await TestServer.create(server.serverId, server.meetingId);
    await rejects(a.handleHandshake(await other.proposeRemove(target(a), 1)), 'crypto', /Signature invalid/);
    await rejects(a.handleHandshake(await server.proposeRemove({ groupId: a.groupId, epoch: a.epoch + 1n }, 1)), 'wrong-epoch');
    await rejects(a.handleHandshake(await server.proposeRemove({ groupId: new Uint8Array([1]), epoch: a.epoch }, 1)), 'wrong-group');
    await rejects(
      a.handleHandshake(await server.propose(target(a), { proposalType: 'group_context_extensions', groupContextExtensions: { extensions: [] } })),
      'proposal-type',
    );
    await rejects(a.handleHandshake(await server.proposeRemove(target(a), 7)), 'bad-proposal', /no such leaf/);
    const dup = await server.proposeRemove(target(a), 2);
    await rejects(a.handleHandshake(dup), 'bad-proposal', /duplicate/);
  });

  test('no duplicate (user, device): the committer and every receiver refuse', async () => {
    const server = await TestServer.create();
    const ps = await group(server, 2);
    const [a, b] = ps.map((p) => p.m) as [Member, Member];
    // A second leaf for b's (user, device), with its own fresh key.
    const again = await party(server, 5, { who: (ps[1] as Party).who });
    await deliver(await server.proposeAdd(target(a), again.kp), [a, b]);
    const before = await snapshot(a);
    await rejects(a.commitPending(), 'duplicate-device');
    assert.equal(a.hasPendingCommit, false);
    assert.equal(await snapshot(a), before);
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName(MLS_SUITE));
    const forced = await createCommit({ state: stateOf(a), cipherSuite: cs }, { wireAsPublicMessage: true });
    await rejects(b.handleHandshake(encodeMlsMessage(forced.commit)), 'duplicate-device');
  });

  test('first valid commit wins the epoch; the loser discards its own', async () => {
    const server = await TestServer.create();
    const [a, b, c] = (await group(server, 3)).map((p) => p.m) as [Member, Member, Member];
    await deliver(await server.proposeRemove(target(a), 2), [a, b, c]);
    const fromA = await a.commitPending();
    const fromB = await b.commitPending();
    await rejects(b.commitPending(), 'usage', /already pending/);
    const res = await deliver(fromB.commit, [a, b]);
    assert.deepEqual(
      res.map((r) => r.kind === 'commit' && r.own),
      [false, true],
    );
    assert.equal(a.hasPendingCommit, false);
    await rejects(a.handleHandshake(fromA.commit), 'wrong-epoch');
    await rejects(b.handleHandshake(fromA.commit), 'wrong-epoch');
    await assertInSync([a, b]);
  });

  test('discardPendingCommit keeps the old epoch', async () => {
    const server = await TestServer.create();
    const [a, b] = (await group(server, 2)).map((p) => p.m) as [Member, Member];
    const before = await snapshot(a);
    await a.commitPending();
    assert.equal(await snapshot(a), before);
    a.discardPendingCommit();
    assert.throws(() => a.mergePendingCommit(), MlsRejected);
    const { commit } = await a.commitPending();
    await deliver(commit, [a, b]);
    await assertInSync([a, b]);
  });

  test('Welcome checks: group id, external sender, credentials', async () => {
    const server = await TestServer.create();
    const [a] = (await group(server, 1)).map((p) => p.m) as [Member];
    const j = await party(server, 1);
    await deliver(await server.proposeAdd(target(a), j.kp), [a]);
    const { commit, welcome } = await a.commitPending();
    await deliver(commit, [a]);
    assert.ok(welcome);
    await rejects(j.m.joinFromWelcome(welcome, { level: 'restricted' }), 'wrong-group');
    await rejects(j.m.joinFromWelcome(welcome, { level: LEVEL, generation: 2 }), 'wrong-group');
    await rejects(j.m.joinFromWelcome(commit, { level: LEVEL }), 'wrong-wireformat');
    await j.m.joinFromWelcome(welcome, { level: LEVEL, generation: GEN });
    await assertInSync([a, j.m]);
    await rejects(j.m.joinFromWelcome(welcome, { level: LEVEL }), 'usage');

    // A group whose external sender is another key than the pinned one.
    const rogue = await TestServer.create(server.serverId, server.meetingId);
    const x = await party(rogue, 0, { requireVerified: false });
    await x.m.createGroup(LEVEL, GEN);
    const lax = await party(server, 1, { requireVerified: false });
    await deliver(await rogue.proposeAdd(target(x.m), lax.kp), [x.m]);
    const w2 = await x.m.commitPending();
    await rejects(lax.m.joinFromWelcome(w2.welcome as Uint8Array, { level: LEVEL }), 'wrong-external-sender');

    // Strict (restricted) joiner: a member bound by another key does not verify.
    const strictX = await party(rogue, 0, { requireVerified: false });
    await strictX.m.createGroup(LEVEL, GEN);
    const strict = await party(rogue, 1, { requireVerified: false });
    const strictJoiner = await Member.create({ serverId: server.serverId, meetingId: server.meetingId, serverKey: server.publicKey, requireVerified: true });
    const kp = await strictJoiner.keyPackage(await server.bind(strictJoiner.signaturePublicKey, { user_id: 'u-s', device_id: 'd-s' }), Date.now() / 1000);
    await deliver(await rogue.proposeAdd(target(strictX.m), kp), [strictX.m]);
    const w3 = await strictX.m.commitPending();
    await rejects(strictJoiner.joinFromWelcome(w3.welcome as Uint8Array, { level: LEVEL }), 'unverified-member');
    void strict;
  });

  test('unverified members: refused when verification is required, shown with the reason otherwise', async () => {
    const server = await TestServer.create();
    const [a] = (await group(server, 1)).map((p) => p.m) as [Member];
    const wrongMeeting = await party(server, 1, { bind: { meeting_id: 'm-other' }, requireVerified: false });
    await rejects(a.handleHandshake(await server.proposeAdd(target(a), wrongMeeting.kp)), 'unverified-member', /wrong-meeting/);

    const lax = (await group(server, 1, { requireVerified: false }))[0] as Party;
    const forged = await party(server, 2, { binder: await TestServer.create(), requireVerified: false });
    await deliver(await server.proposeAdd(target(lax.m), forged.kp), [lax.m]);
    const { commit, welcome } = await lax.m.commitPending();
    await deliver(commit, [lax.m]);
    await forged.m.joinFromWelcome(welcome as Uint8Array, { level: LEVEL });
    const roster = await forged.m.roster();
    assert.equal(roster.length, 2);
    assert.ok(roster[0]?.status.verified);
    const r1 = roster[1];
    assert.ok(r1 && !r1.status.verified);
    assert.equal(r1.status.verified === false && r1.status.reason, 'bad-signature');
    assert.equal(r1.status.verified === false && r1.status.claimed?.user_id, 'u-2');
  });

  test('designated committer: the lowest leaf not being removed', async () => {
    const server = await TestServer.create();
    const [a, b, c] = (await group(server, 3)).map((p) => p.m) as [Member, Member, Member];
    assert.deepEqual(
      [a, b, c].map((m) => m.isDesignatedCommitter()),
      [true, false, false],
    );
    await deliver(await server.proposeRemove(target(a), 0), [a, b, c]);
    assert.deepEqual(
      [a, b, c].map((m) => m.isDesignatedCommitter()),
      [false, true, false],
    );
    await rejects(a.commitPending(), 'crypto', /removing committer/);
    const { commit } = await b.commitPending();
    const res = await deliver(commit, [a, b, c]);
    assert.ok(res[0]?.kind === 'commit' && res[0].selfRemoved);
    await assertInSync([b, c]);
  });
});

describe('wire details', () => {
  test('external_senders is the RFC 9420 vector; ts-mls 1.6.4 reads only a bare ExternalSender', async () => {
    const server = await TestServer.create();
    const one = serverExternalSender(server.publicKey, server.serverId);
    const data = encodeExternalSenders([one]);
    const back = decodeExternalSenders(data);
    assert.ok(back && back.length === 1);
    assert.equal(hex(back[0]?.signaturePublicKey as Uint8Array), hex(server.publicKey));
    assert.equal(decodeExternalSenders(data.subarray(1)), null);
    assert.equal(decodeExternalSenders(new Uint8Array([...data, 0])), null);
    // The vector's length prefix (2-byte variable-length integer, RFC 9420 §2.1.2).
    assert.equal(((((data[0] as number) & 0x3f) << 8) | (data[1] as number)) + 2, data.length);
    assert.equal((data[0] as number) >> 6, 1);

    // ts-mls's own proposeExternal cannot find the sender in an RFC-encoded extension (the
    // reason this module verifies external proposals itself). If this starts passing, ts-mls
    // got fixed and the workaround in mls.ts can go.
    const [a] = (await group(server, 1)).map((p) => p.m) as [Member];
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName(MLS_SUITE));
    const gi = { groupContext: stateOf(a).groupContext } as unknown as GroupInfo;
    const kp = await cs.signature.keygen();
    await assert.rejects(proposeExternal(gi, { proposalType: 'remove', remove: { removed: 0 } }, server.publicKey, kp.signKey, cs));
  });

  test('security code: HMAC-SHA256(epoch_authenticator, label), 8 bytes as 20 digits', async () => {
    // Independent computation with node:crypto.
    const { createHmac } = await import('node:crypto');
    const key = new Uint8Array(32).map((_, i) => i);
    const mac = createHmac('sha256', key).update('sealroom security code v1').digest();
    const digits = mac.readBigUInt64BE(0).toString().padStart(20, '0');
    assert.equal(await securityCode(key), digits.replace(/(\d{5})(?=\d)/g, '$1 '));
    assert.equal(await securityCode(new Uint8Array(32)), (await securityCode(new Uint8Array(32))));
    assert.match(await securityCode(new Uint8Array(32)), /^\d{5} \d{5} \d{5} \d{5}$/);
  });
});
