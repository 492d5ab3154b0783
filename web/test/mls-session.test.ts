// The MLS worker's session (e2ee/mls-session.ts) against a small delivery service built on the
// test server: binding checks, creating and joining, who commits when (designated at once, the
// others after the backoff), the echo rule, refused commits, chat held while proposals are
// pending, removal, fail-closed at `restricted` (an unverified member, a member the server never
// announced), the 10-minute update, and that every epoch's key goes to the transform worker (and
// only there) while the page gets code and check value.

import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import type { Level } from '../src/proto';
import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, MlsSession, UPDATE_INTERVAL_MS } from '../src/e2ee/mls-session';
import type { KeyMessage, MlsClientMsg, MlsReport, MlsServerMsg, MlsStatus } from '../src/e2ee/protocol';
import { decodeMlsMessage } from 'ts-mls';
import { TestServer, type Person } from './server';

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}
function unb64(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'base64'));
}

interface Timer {
  ms: number;
  fn: () => void;
  cancelled: boolean;
}

/** One browser: its session, what it reported, the keys it handed to the transform worker, its timers. */
class Client {
  readonly reports: MlsReport[] = [];
  readonly keys: KeyMessage[] = [];
  readonly timers: Timer[] = [];
  readonly session: MlsSession;
  constructor(
    readonly name: string,
    readonly who: Person,
    server: TestServer,
    level: Level,
    opts: { withholdKeys?: boolean; random?: number } = {},
  ) {
    this.session = new MlsSession(
      { meetingId: server.meetingId, level, origin: server.serverId, withholdKeys: opts.withholdKeys ?? false },
      {
        report: (r) => this.reports.push(structuredClone(r)),
        keys: (k) => this.keys.push(structuredClone(k)),
        setTimer: (ms, fn) => {
          const t = { ms, fn, cancelled: false };
          this.timers.push(t);
          return () => {
            t.cancelled = true;
          };
        },
        random: () => opts.random ?? 0.5,
        nowSeconds: () => Date.now() / 1000,
      },
    );
  }
  /** Messages for the server since the last call. */
  private sentUpTo = 0;
  sent(): MlsClientMsg[] {
    const out = this.reports.slice(this.sentUpTo).flatMap((r) => (r.type === 'send' ? [r.msg] : []));
    this.sentUpTo = this.reports.length;
    return out;
  }
  get status(): MlsStatus {
    const s = [...this.reports].reverse().find((r) => r.type === 'status');
    assert.ok(s && s.type === 'status', `${this.name} reported no status`);
    return s.status;
  }
  get lastKey(): KeyMessage | undefined {
    return this.keys[this.keys.length - 1];
  }
  liveTimers(): Timer[] {
    return this.timers.filter((t) => !t.cancelled);
  }
  /** Pending commit timers (backoff, retry), not the 10-minute update. */
  commitTimers(): Timer[] {
    return this.liveTimers().filter((t) => t.ms < UPDATE_INTERVAL_MS);
  }
  async fire(t: Timer): Promise<void> {
    t.cancelled = true;
    t.fn();
    await this.session.idle();
  }
  async give(msg: MlsServerMsg): Promise<void> {
    await this.session.handleServer(msg);
    await this.session.idle();
  }
}

/** The delivery service's part, as small as these tests need: binding, group id, proposals, fan-out. */
class Delivery {
  groupId: Uint8Array | null = null;
  epoch = 0n;
  readonly members: Client[] = [];
  constructor(
    readonly server: TestServer,
    readonly level: Level,
  ) {}
  get prefix(): string {
    return `sealroom/v1/${this.server.serverId}/${this.server.meetingId}/${this.level}/`;
  }
  /** mls_bind → mls_binding; returns the KeyPackage the client sends next. */
  async bind(c: Client, overrides: Record<string, unknown> = {}, binder: TestServer = this.server): Promise<Uint8Array> {
    await c.session.start();
    await c.session.idle();
    const [bind] = c.sent();
    assert.equal(bind?.type, 'mls_bind');
    const key = unb64((bind as { signature_key: string }).signature_key);
    assert.equal(key.length, 32);
    const identity = await binder.bind(key, c.who, overrides);
    await c.give({ type: 'mls_binding', credential: b64(identity), identity_key: b64(this.server.publicKey), server_id: this.server.serverId, group_id_prefix: this.prefix });
    const [kp] = c.sent();
    assert.equal(kp?.type, 'mls_key_package', `${c.name}: ${JSON.stringify(c.status.failure)}`);
    return unb64((kp as { key_package: string }).key_package);
  }
  async create(c: Client): Promise<void> {
    await this.bind(c);
    await c.give({ type: 'mls_create', group_id: `${this.prefix}1` });
    const [gi] = c.sent();
    assert.equal(gi?.type, 'mls_group_info');
    const msg = decodeMlsMessage(unb64((gi as { group_info: string }).group_info), 0)?.[0];
    assert.equal(msg?.wireformat, 'mls_group_info');
    this.groupId = new TextEncoder().encode(`${this.prefix}1`);
    this.members.push(c);
  }
  async propose(bytes: Uint8Array): Promise<void> {
    for (const m of this.members) await m.give({ type: 'mls_proposal', message: b64(bytes) });
  }
  async proposeAdd(kp: Uint8Array): Promise<void> {
    await this.propose(await this.server.proposeAdd({ groupId: this.groupId as Uint8Array, epoch: this.epoch }, kp));
  }
  async proposeRemove(leaf: number): Promise<void> {
    await this.propose(await this.server.proposeRemove({ groupId: this.groupId as Uint8Array, epoch: this.epoch }, leaf));
  }
  /** Accepts `commit` (from `by`): echo to every member, Welcome to `joining`. */
  async accept(commit: Extract<MlsClientMsg, { type: 'mls_commit' }>, joining: Client[] = []): Promise<void> {
    const epoch = this.epoch;
    this.epoch += 1n;
    for (const m of this.members) await m.give({ type: 'mls_commit', commit: commit.commit, epoch: Number(epoch) });
    for (const j of joining) {
      assert.ok(commit.welcome, 'a commit with Adds comes with a Welcome');
      await j.give({ type: 'mls_welcome', welcome: commit.welcome });
      this.members.push(j);
    }
  }
}

function onlyCommit(c: Client): Extract<MlsClientMsg, { type: 'mls_commit' }> {
  const msgs = c.sent().filter((m) => m.type === 'mls_commit');
  assert.equal(msgs.length, 1, `${c.name} sent ${msgs.length} commits`);
  return msgs[0] as Extract<MlsClientMsg, { type: 'mls_commit' }>;
}

const person = (n: string): Person => ({ user_id: `u-${n}`, device_id: `d-${n}`, username: n, display_name: `${n[0]?.toUpperCase()}${n.slice(1)}` });

describe('MlsSession', () => {
  let server: TestServer;
  beforeEach(async () => {
    server = await TestServer.create('http://localhost:8443', 'm-1');
  });

  test('create, add two members: designated committer at once, keys per epoch to the transform worker only, code and check value agree', async () => {
    const ds = new Delivery(server, 'internal');
    const a = new Client('a', person('alice'), server, 'internal');
    await ds.create(a);
    assert.equal(a.status.phase, 'member');
    assert.equal(a.status.epoch, 0);
    const k0 = a.lastKey;
    assert.ok(k0 && k0.type === 'epoch' && k0.epoch === 0n && k0.baseKey.length === 16 && k0.ownLeaf === 0);
    // The page's view never carries a key.
    assert.doesNotMatch(JSON.stringify(a.reports, (_k, v) => (typeof v === 'bigint' ? String(v) : v)), /baseKey/);

    const b = new Client('b', person('bob'), server, 'internal');
    const kpB = await ds.bind(b);
    assert.equal(b.status.phase, 'joining');
    await ds.proposeAdd(kpB);
    const cB = onlyCommit(a); // the only member commits at once
    assert.ok(cB.welcome);
    assert.equal(a.status.epoch, 0, 'the committer merges only on the echo');
    assert.equal(a.status.commitPending, true);
    await ds.accept(cB, [b]);
    assert.equal(a.status.epoch, 1);
    assert.equal(b.status.epoch, 1);
    assert.equal(a.status.securityCode, b.status.securityCode);
    assert.equal(a.status.checkValue, b.status.checkValue);
    assert.match(a.status.securityCode ?? '', /^\d{5} \d{5} \d{5} \d{5}$/);
    const ka = a.lastKey;
    const kb = b.lastKey;
    assert.ok(ka?.type === 'epoch' && kb?.type === 'epoch');
    assert.deepEqual(ka.baseKey, kb.baseKey, 'one base key per epoch for the whole group');
    assert.notDeepEqual(ka.baseKey, k0.baseKey);
    assert.deepEqual(ka.members, [0, 1]);
    assert.equal(kb.ownLeaf, 1);
    assert.deepEqual(
      b.status.members.map((m) => [m.leaf, m.verified, m.username, m.deviceId, m.self]),
      [
        [0, true, 'alice', 'd-alice', false],
        [1, true, 'bob', 'd-bob', true],
      ],
    );

    // A third member: bob is not the designated committer and waits 1.5-3 s; alice commits at once.
    const c = new Client('c', person('carol'), server, 'internal');
    const kpC = await ds.bind(c);
    await ds.proposeAdd(kpC);
    assert.equal(b.sent().length, 0);
    const [bTimer] = b.commitTimers();
    assert.ok(bTimer && bTimer.ms >= BACKOFF_MIN_MS && bTimer.ms <= BACKOFF_MAX_MS, 'bob backs off');
    await ds.accept(onlyCommit(a), [c]);
    assert.ok(bTimer.cancelled, 'the commit that arrived cancels the backoff');
    for (const x of [a, b, c]) assert.equal(x.status.epoch, 2);
    assert.equal(new Set([a, b, c].map((x) => x.status.checkValue)).size, 1);
  });

  test('a member commits after its backoff when the designated committer does not; a refused commit is made again', async () => {
    const ds = new Delivery(server, 'open');
    const a = new Client('a', person('alice'), server, 'open');
    await ds.create(a);
    const b = new Client('b', person('bob'), server, 'open');
    await ds.proposeAdd(await ds.bind(b));
    await ds.accept(onlyCommit(a), [b]);
    const c = new Client('c', person('carol'), server, 'open');
    const kpC = await ds.bind(c);
    await ds.proposeAdd(kpC);
    a.sent(); // alice's commit is lost (alice went away)
    const [t] = b.commitTimers();
    assert.ok(t && t.ms >= BACKOFF_MIN_MS);
    await b.fire(t);
    const cb = onlyCommit(b);
    // The delivery service refuses it (say the proposals changed): bob commits again, after a pause.
    await b.give({ type: 'mls_rejected', reason: 'not the pending proposals' });
    assert.equal(b.status.commits.refused, 1);
    assert.equal(b.status.commitPending, false);
    const [again] = b.commitTimers();
    assert.ok(again);
    await b.fire(again);
    const cb2 = onlyCommit(b); // (an Add-only commit has no path: the same bytes again)
    void cb;
    // Its echo: everyone (alice's pending commit is discarded by the winner) moves on.
    await ds.accept(cb2, [c]);
    for (const x of [a, b, c]) assert.equal(x.status.epoch, 2, x.name);
    assert.equal(a.status.commitPending, false);
  });

  test('chat is held while proposals are pending and sent after the commit; plaintext arrives at the others', async () => {
    const ds = new Delivery(server, 'open');
    const a = new Client('a', person('alice'), server, 'open');
    await ds.create(a);
    const b = new Client('b', person('bob'), server, 'open');
    await ds.proposeAdd(await ds.bind(b));
    await ds.accept(onlyCommit(a), [b]);

    await b.session.chat(1, 'hello <b>alice</b>');
    await b.session.idle();
    const [app] = b.sent();
    assert.equal(app?.type, 'mls_app');
    await a.give({ type: 'mls_app', message: (app as { message: string }).message });
    const got = a.reports.find((r) => r.type === 'chat');
    assert.ok(got && got.type === 'chat');
    assert.equal(got.text, 'hello <b>alice</b>');
    assert.equal(got.fromLeaf, 1);
    assert.equal(got.self, false);

    // A proposal is pending: bob's message waits for the commit.
    const c = new Client('c', person('carol'), server, 'open');
    await ds.proposeAdd(await ds.bind(c));
    await b.session.chat(2, 'after the commit');
    await b.session.idle();
    assert.equal(b.sent().length, 0);
    assert.equal(b.status.heldChat, 1);
    await ds.accept(onlyCommit(a), [c]);
    const [held] = b.sent();
    assert.equal(held?.type, 'mls_app', 'sent once the commit is in');
    assert.equal(b.status.heldChat, 0);
    const mine = b.reports.filter((r) => r.type === 'chat' && r.self);
    assert.deepEqual(
      mine.map((r) => (r.type === 'chat' ? [r.id, r.epoch] : null)),
      [
        [1, 1],
        [2, 2],
      ],
    );
    // Too long: refused before anything is encrypted.
    await b.session.chat(3, 'x'.repeat(4001));
    await b.session.idle();
    assert.ok(b.reports.some((r) => r.type === 'chat_failed' && r.id === 3));
  });

  test('removal: the others commit the Remove; the removed member forgets its keys', async () => {
    const ds = new Delivery(server, 'open');
    const a = new Client('a', person('alice'), server, 'open');
    await ds.create(a);
    const b = new Client('b', person('bob'), server, 'open');
    await ds.proposeAdd(await ds.bind(b));
    await ds.accept(onlyCommit(a), [b]);
    // The server proposes to remove alice (leaf 0): bob is now the designated committer.
    await ds.proposeRemove(0);
    const commit = onlyCommit(b);
    assert.equal(a.sent().length, 0, 'a member being removed does not commit at once');
    await ds.accept(commit);
    assert.equal(b.status.epoch, 2);
    assert.deepEqual(b.status.members.map((m) => m.leaf), [1]);
    assert.equal(a.status.phase, 'removed');
    assert.deepEqual(a.lastKey, { type: 'clear' });
  });

  test('the 10-minute update: an empty commit by the lowest leaf moves the epoch', async () => {
    const ds = new Delivery(server, 'open');
    const a = new Client('a', person('alice'), server, 'open');
    await ds.create(a);
    const b = new Client('b', person('bob'), server, 'open');
    await ds.proposeAdd(await ds.bind(b));
    await ds.accept(onlyCommit(a), [b]);
    const before = a.status.securityCode;
    const [ta] = a.liveTimers().filter((t) => t.ms === UPDATE_INTERVAL_MS);
    const [tb] = b.liveTimers().filter((t) => t.ms === UPDATE_INTERVAL_MS);
    assert.ok(ta && tb);
    await b.fire(tb);
    assert.equal(b.sent().length, 0, 'only the lowest leaf updates');
    await a.fire(ta);
    const update = onlyCommit(a);
    assert.equal(update.welcome, null);
    await ds.accept(update);
    assert.equal(a.status.epoch, 2);
    assert.equal(b.status.epoch, 2);
    assert.notEqual(a.status.securityCode, before);
    assert.equal(a.status.securityCode, b.status.securityCode);
  });

  test('binding checks: another server id, or a binding of another key, fail closed', async () => {
    const ds = new Delivery(server, 'open');
    const a = new Client('a', person('alice'), server, 'open');
    await a.session.start();
    await a.session.idle();
    a.sent();
    const identity = await server.bind(new Uint8Array(32).fill(7), a.who);
    await a.give({ type: 'mls_binding', credential: b64(identity), identity_key: b64(server.publicKey), server_id: server.serverId, group_id_prefix: ds.prefix });
    assert.equal(a.status.phase, 'failed');
    assert.equal(a.status.failure?.reason, 'bad-binding');
    assert.deepEqual(a.lastKey, { type: 'clear' });

    const b = new Client('b', person('bob'), server, 'open');
    await b.session.start();
    await b.session.idle();
    await b.give({ type: 'mls_binding', credential: 'AAAA', identity_key: b64(server.publicKey), server_id: 'https://elsewhere.test', group_id_prefix: ds.prefix });
    assert.equal(b.status.failure?.reason, 'wrong-server');
  });

  test('restricted: a proposal to add a member whose credential does not verify ends participation', async () => {
    const ds = new Delivery(server, 'restricted');
    const a = new Client('a', person('alice'), server, 'restricted');
    await ds.create(a);
    const other = await TestServer.create(server.serverId, server.meetingId);
    const m = new Client('m', person('mallory'), server, 'restricted');
    // Mallory's binding is signed by some other key: her own session refuses it...
    await m.session.start();
    await m.session.idle();
    const [bind] = m.sent();
    const key = unb64((bind as { signature_key: string }).signature_key);
    const badIdentity = await other.bind(key, m.who);
    await m.give({ type: 'mls_binding', credential: b64(badIdentity), identity_key: b64(server.publicKey), server_id: server.serverId, group_id_prefix: ds.prefix });
    assert.equal(m.status.failure?.reason, 'bad-binding');
    // ...and a KeyPackage with such a credential, proposed by the server, makes alice leave.
    const forged = new Client('f', person('mallory'), other, 'open');
    const kp = await new Delivery(other, 'open').bind(forged);
    await ds.proposeAdd(kp);
    assert.equal(a.status.phase, 'failed');
    assert.equal(a.status.failure?.reason, 'unverified-member');
    assert.deepEqual(a.lastKey, { type: 'clear' });
    assert.equal(a.sent().filter((x) => x.type === 'mls_commit').length, 0, 'nothing committed');
  });

  test('restricted: a member the server never announced gets no key; every member leaves on the epoch that adds it', async () => {
    const ds = new Delivery(server, 'restricted');
    const a = new Client('a', person('alice'), server, 'restricted');
    const b = new Client('b', person('bob'), server, 'restricted');
    const listed = (...names: string[]): [string, string][] => names.map((n) => [n, `d-${n}`]);
    await a.session.participants(listed('alice'));
    await ds.create(a);
    await a.session.participants(listed('alice', 'bob'));
    await b.session.participants(listed('alice', 'bob'));
    const kpB = await ds.bind(b);
    await ds.proposeAdd(kpB);
    await ds.accept(onlyCommit(a), [b]);
    assert.equal(a.status.phase, 'member', JSON.stringify(a.status.failure));
    assert.equal(b.status.phase, 'member', JSON.stringify(b.status.failure));
    const keysBefore = [a.keys.length, b.keys.length];

    // The server adds eve and never lists her.
    const e = new Client('e', person('eve'), server, 'restricted');
    const kpE = await ds.bind(e);
    await ds.proposeAdd(kpE);
    await ds.accept(onlyCommit(a), [e]);
    for (const x of [a, b]) {
      assert.equal(x.status.phase, 'failed', x.name);
      assert.equal(x.status.failure?.reason, 'unannounced-member');
      assert.match(x.status.failure?.message ?? '', /^Eve \(eve\) on .+ \(leaf 2\) holds the call's keys, but the server never announced it as a participant/);
      // Not a single key of the epoch with eve reached the transform worker: only `clear`.
      assert.deepEqual(x.keys.slice(x === a ? keysBefore[0] : keysBefore[1]), [{ type: 'clear' }], x.name);
    }

    // The same Add with eve announced (an honest server) is an ordinary join.
    const s2 = await TestServer.create('http://localhost:8443', 'm-2');
    const ds2 = new Delivery(s2, 'restricted');
    const a2 = new Client('a2', person('alice'), s2, 'restricted');
    await ds2.create(a2);
    await a2.session.participants(listed('alice', 'eve'));
    const e2 = new Client('e2', person('eve'), s2, 'restricted');
    await e2.session.participants(listed('alice', 'eve'));
    await ds2.proposeAdd(await ds2.bind(e2));
    await ds2.accept(onlyCommit(a2), [e2]);
    assert.equal(a2.status.phase, 'member');
    assert.equal(e2.status.phase, 'member');
    assert.equal(a2.lastKey?.type, 'epoch');
  });

  test('withheld keys (test switch): the group works, the transform worker gets nothing', async () => {
    const ds = new Delivery(server, 'open');
    const a = new Client('a', person('alice'), server, 'open', { withholdKeys: true });
    await ds.create(a);
    assert.equal(a.status.phase, 'member');
    assert.equal(a.status.keysWithheld, true);
    assert.equal(a.keys.length, 0);
  });
});
