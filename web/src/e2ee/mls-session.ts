// One browser's MLS participation in one admission (DESIGN flow 5, docs/E2EE.md §2-§7), as run
// by the MLS worker: the binding, the KeyPackage, creating or joining the group, following the
// delivery service's proposals and commits with our commit rules (e2ee/mls.ts), committing
// (the designated committer at once, the others after a random 1.5-3 s backoff), chat, and,
// after every epoch change, the SFrame base key to the transform worker (never to the page).
//
// IO is injected (`SessionIO`): messages to the server, keys to the transform worker, status to
// the page, timers and randomness; so the logic runs the same in the worker and in unit tests.
// Every input goes through one promise chain: ts-mls calls never interleave.

import type { Level } from '../proto';
import { verifyBinding } from './credential';
import { matchKey, unannouncedMessage } from './roster';
import { CHAT_MAX_CHARS, Member, MlsRejected, generateSignatureKeyPair, type SignatureKeyPair } from './mls';
import type { KeyMessage, MlsClientMsg, MlsReport, MlsServerMsg, MlsStatus, RosterMember } from './protocol';

/** Exporter label of the test check value (independent of every key in use). */
export const CHECK_LABEL = 'sealroom test';

/** docs/E2EE.md §4: non-designated members commit after a random backoff in this range (ms). */
export const BACKOFF_MIN_MS = 1500;
export const BACKOFF_MAX_MS = 3000;
/** DESIGN §7 "an Update commit every 10 minutes" (by the lowest leaf, when nothing is pending). */
export const UPDATE_INTERVAL_MS = 10 * 60 * 1000;

export interface SessionConfig {
  meetingId: string;
  level: Level;
  /** The page's origin: the server id every binding must name. */
  origin: string;
  withholdKeys: boolean;
}

export interface SessionIO {
  report(r: MlsReport): void;
  keys(k: KeyMessage): void;
  /** Runs `fn` after `ms`; returns a cancel function. */
  setTimer(ms: number, fn: () => void): () => void;
  /** Uniform in [0, 1) (scheduling only, never key material). */
  random(): number;
  /** Unix seconds. */
  nowSeconds(): number;
}

function b64(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function unb64(s: string): Uint8Array<ArrayBuffer> {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

class Fatal extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

const FAILURE_TEXT: Record<string, string> = {
  'unverified-member': 'a member’s credential does not verify against the server’s identity key',
  'duplicate-device': 'two members claim the same device',
  'commit-proposals': 'a commit did not match the server’s proposals',
  'committer-identity': 'a committer changed its identity',
  'wrong-external-sender': 'the group does not name this server as its external sender',
  'wrong-group': 'the group is not this meeting’s',
  'wrong-suite': 'the group uses another cipher suite',
  extensions: 'the group’s extensions changed',
  crypto: 'a message failed its cryptographic checks',
  'proposal-type': 'a commit carried a proposal type that is not allowed',
  'commit-sender': 'a commit came from a non-member',
};

export class MlsSession {
  private chain: Promise<void> = Promise.resolve();
  private keyPair: SignatureKeyPair | null = null;
  private member: Member | null = null;
  private prefix: string | null = null;
  private groupIdText: string | null = null;
  private cancelCommitTimer: (() => void) | null = null;
  private cancelUpdateTimer: (() => void) | null = null;
  private held: { id: number; text: string }[] = [];
  /** Every (user name, device id) the server's participant lists have named (roster.ts matchKey). */
  private readonly announced = new Set<string>();
  private readonly status: MlsStatus;

  constructor(
    private readonly config: SessionConfig,
    private readonly io: SessionIO,
  ) {
    this.status = {
      phase: 'binding',
      groupId: null,
      epoch: null,
      ownLeaf: null,
      securityCode: null,
      checkValue: null,
      members: [],
      pendingProposals: 0,
      commitPending: false,
      heldChat: 0,
      failure: null,
      keysWithheld: config.withholdKeys,
      commits: { seen: 0, ours: 0, refused: 0 },
    };
  }

  private run(step: () => Promise<void>): Promise<void> {
    const next = this.chain.then(async () => {
      if (this.status.phase === 'failed' || this.status.phase === 'stopped' || this.status.phase === 'removed') return;
      try {
        await step();
      } catch (e) {
        this.fail(e);
      }
    });
    this.chain = next;
    return next;
  }

  private send(msg: MlsClientMsg): void {
    this.io.report({ type: 'send', msg });
  }

  private publish(): void {
    const m = this.member;
    const inGroup = m !== null && m.hasGroup && !m.removed;
    this.status.pendingProposals = inGroup ? m.pendingProposals.length : 0;
    this.status.commitPending = inGroup ? m.hasPendingCommit : false;
    this.status.heldChat = this.held.length;
    this.io.report({ type: 'status', status: structuredClone(this.status) });
  }

  /** Fail closed: forget the keys, stop following the group, say why. */
  private fail(e: unknown): void {
    const reason = e instanceof Fatal ? e.reason : e instanceof MlsRejected ? e.reason : 'internal';
    const message =
      e instanceof Fatal
        ? e.message
        : e instanceof MlsRejected
          ? `The encrypted group could not be followed: ${FAILURE_TEXT[e.reason] ?? e.reason}.`
          : `The encrypted group could not be followed: ${e instanceof Error ? e.message : String(e)}.`;
    this.stopTimers();
    this.io.keys({ type: 'clear' });
    this.status.phase = 'failed';
    this.status.failure = { reason, message };
    for (const h of this.held) this.io.report({ type: 'chat_failed', id: h.id, message: 'not sent: the encrypted group failed' });
    this.held = [];
    this.publish();
  }

  private stopTimers(): void {
    this.cancelCommitTimer?.();
    this.cancelCommitTimer = null;
    this.cancelUpdateTimer?.();
    this.cancelUpdateTimer = null;
  }

  // --- inputs

  /** Asks the identity authority to bind a fresh signature key. */
  start(): Promise<void> {
    return this.run(async () => {
      this.keyPair = await generateSignatureKeyPair();
      this.send({ type: 'mls_bind', signature_key: b64(this.keyPair.publicKey) });
      this.publish();
    });
  }

  /** The call ends: keys are forgotten, nothing more is done. */
  stop(): void {
    this.stopTimers();
    this.io.keys({ type: 'clear' });
    this.status.phase = 'stopped';
    this.publish();
  }

  handleServer(msg: MlsServerMsg): Promise<void> {
    return this.run(async () => {
      switch (msg.type) {
        case 'mls_binding':
          return this.onBinding(msg);
        case 'mls_create':
          return this.onCreate(msg.group_id);
        case 'mls_welcome':
          return this.onWelcome(unb64(msg.welcome));
        case 'mls_proposal':
          return this.onProposal(unb64(msg.message));
        case 'mls_commit':
          return this.onCommit(unb64(msg.commit), BigInt(msg.epoch));
        case 'mls_rejected':
          return this.onRejected(msg.reason);
        case 'mls_app':
          return this.onApp(unb64(msg.message));
      }
    });
  }

  /** A participant list from the server: every (user name, device id) it ever announced counts. */
  participants(devices: readonly [string, string][]): Promise<void> {
    return this.run(async () => {
      for (const [user, device] of devices) {
        const k = matchKey(user, device);
        if (k !== null) this.announced.add(k);
      }
    });
  }

  /** A chat message from the user; held while proposals are pending. */
  chat(id: number, text: string): Promise<void> {
    return this.run(async () => {
      if ([...text].length > CHAT_MAX_CHARS) {
        this.io.report({ type: 'chat_failed', id, message: `longer than ${CHAT_MAX_CHARS} characters` });
        return;
      }
      const m = this.member;
      if (m === null || !m.hasGroup) {
        this.io.report({ type: 'chat_failed', id, message: 'not sent: not in the encrypted group yet' });
        return;
      }
      this.held.push({ id, text });
      await this.flushChat();
      this.publish();
    });
  }

  // --- the steps

  private async onBinding(msg: Extract<MlsServerMsg, { type: 'mls_binding' }>): Promise<void> {
    const kp = this.keyPair;
    if (kp === null || this.member !== null) throw new Fatal('protocol', 'The server sent a second binding.');
    if (msg.server_id !== this.config.origin) {
      throw new Fatal('wrong-server', `The server’s binding names the server “${msg.server_id}”, but this page is ${this.config.origin}.`);
    }
    const prefix = `sealroom/v1/${msg.server_id}/${this.config.meetingId}/${this.config.level}/`;
    if (msg.group_id_prefix !== prefix) throw new Fatal('wrong-group', 'The server’s group id is not this meeting’s.');
    const serverKey = unb64(msg.identity_key);
    if (serverKey.length !== 32) throw new Fatal('bad-identity-key', 'The server’s identity key is not an Ed25519 key.');
    const identity = unb64(msg.credential);
    const check = await verifyBinding(identity, { identityKey: serverKey, serverId: msg.server_id, meetingId: this.config.meetingId, signatureKey: kp.publicKey });
    if (!check.ok) throw new Fatal('bad-binding', `The server’s binding of our own key does not verify (${check.reason}).`);
    this.prefix = prefix;
    this.member = await Member.create(
      { serverId: msg.server_id, meetingId: this.config.meetingId, serverKey, requireVerified: this.config.level === 'restricted' },
      kp,
    );
    const keyPackage = await this.member.keyPackage(identity, this.io.nowSeconds());
    this.status.phase = 'joining';
    this.send({ type: 'mls_key_package', key_package: b64(keyPackage) });
    this.publish();
  }

  private async onCreate(groupId: string): Promise<void> {
    const m = this.need();
    const prefix = this.prefix as string;
    const generation = groupId.startsWith(prefix) ? groupId.slice(prefix.length) : '';
    if (!/^(0|[1-9][0-9]*)$/.test(generation)) throw new Fatal('wrong-group', 'The server asked to create a group that is not this meeting’s.');
    await m.createGroup(this.config.level, generation);
    this.send({ type: 'mls_group_info', group_info: b64(await m.groupInfo()) });
    await this.epochChanged();
  }

  private async onWelcome(welcome: Uint8Array): Promise<void> {
    const m = this.need();
    if (m.hasGroup) throw new Fatal('protocol', 'A Welcome arrived while already in the group.');
    await m.joinFromWelcome(welcome, { level: this.config.level });
    await this.epochChanged();
  }

  private async onProposal(bytes: Uint8Array): Promise<void> {
    const m = this.need();
    if (!m.hasGroup) return; // not ours yet: the Welcome brings the group as it is after the commit
    try {
      await m.handleHandshake(bytes);
    } catch (e) {
      // A proposal we refuse is not committed by us; the delivery service cannot make us.
      if (e instanceof MlsRejected && (e.reason === 'wrong-epoch' || e.reason === 'bad-proposal')) {
        this.io.report({ type: 'notice', message: `An MLS proposal was ignored (${e.message}).` });
        return;
      }
      throw e;
    }
    this.scheduleCommit();
    this.publish();
  }

  private async onCommit(bytes: Uint8Array, madeInEpoch: bigint): Promise<void> {
    const m = this.need();
    if (!m.hasGroup) return; // made before we joined (the Welcome comes after it)
    if (madeInEpoch < m.epoch) return; // already applied
    // A commit the delivery service accepted and our rules refuse throws: we cannot follow the
    // group any more and leave it (fail closed, in `run`).
    const res = await m.handleHandshake(bytes);
    if (res.kind !== 'commit') throw new Fatal('protocol', 'The server echoed a proposal as a commit.');
    this.status.commits.seen += 1;
    if (res.own) this.status.commits.ours += 1;
    if (res.selfRemoved) {
      this.stopTimers();
      this.io.keys({ type: 'clear' });
      this.status.phase = 'removed';
      this.status.failure = { reason: 'removed', message: 'A commit removed this device from the encrypted group.' };
      for (const h of this.held) this.io.report({ type: 'chat_failed', id: h.id, message: 'not sent: removed from the group' });
      this.held = [];
      this.publish();
      return;
    }
    await this.epochChanged();
  }

  private onRejected(_reason: string): Promise<void> {
    const m = this.need();
    if (m.hasPendingCommit) m.discardPendingCommit();
    this.status.commits.refused += 1;
    // Another commit won the epoch (its echo merges it) or the proposals changed meanwhile:
    // commit again what is pending now, after a short pause (never a tight loop).
    this.scheduleCommit(200);
    this.publish();
    return Promise.resolve();
  }

  private async onApp(bytes: Uint8Array): Promise<void> {
    const m = this.need();
    if (!m.hasGroup) return;
    try {
      const c = await m.decryptChat(bytes);
      this.io.report({ type: 'chat', fromLeaf: c.senderLeafIndex, self: false, text: c.text, epoch: Number(m.epoch), id: null });
    } catch (e) {
      this.io.report({ type: 'notice', message: `A chat message could not be decrypted and was dropped (${e instanceof Error ? e.message : String(e)}).` });
    }
  }

  private need(): Member {
    if (this.member === null) throw new Fatal('protocol', 'An MLS message arrived before the binding.');
    return this.member;
  }

  // --- committing

  /** Commit the pending proposals: at once when we are the designated committer, else after a backoff. */
  private scheduleCommit(minDelayMs = 0): void {
    const m = this.member;
    if (m === null || !m.hasGroup || m.removed || m.pendingProposals.length === 0 || m.hasPendingCommit) return;
    if (this.cancelCommitTimer !== null) return;
    const epoch = m.epoch;
    const delay = m.isDesignatedCommitter() ? minDelayMs : BACKOFF_MIN_MS + this.io.random() * (BACKOFF_MAX_MS - BACKOFF_MIN_MS);
    const go = () => {
      this.cancelCommitTimer = null;
      void this.run(async () => {
        if (!m.hasGroup || m.removed || m.epoch !== epoch || m.hasPendingCommit || m.pendingProposals.length === 0) return;
        await this.commitNow();
      });
    };
    if (delay <= 0) {
      // Synchronously inside the current step's turn of the chain is not possible (we are in
      // it): queue right behind it.
      this.cancelCommitTimer = () => {};
      queueMicrotask(go);
      return;
    }
    this.cancelCommitTimer = this.io.setTimer(delay, go);
  }

  private async commitNow(): Promise<void> {
    const m = this.need();
    const { commit, welcome } = await m.commitPending();
    this.send({ type: 'mls_commit', commit: b64(commit), welcome: welcome ? b64(welcome) : null });
    this.publish();
  }

  /** The 10-minute key update: an empty commit by the lowest leaf while nothing is pending. */
  private scheduleUpdate(): void {
    this.cancelUpdateTimer?.();
    const m = this.member;
    if (m === null || !m.hasGroup) return;
    const epoch = m.epoch;
    this.cancelUpdateTimer = this.io.setTimer(UPDATE_INTERVAL_MS, () => {
      this.cancelUpdateTimer = null;
      void this.run(async () => {
        if (!m.hasGroup || m.removed || m.epoch !== epoch || m.hasPendingCommit || m.pendingProposals.length > 0) return;
        if (!m.isDesignatedCommitter()) return;
        await this.commitNow();
      });
    });
  }

  private async flushChat(): Promise<void> {
    const m = this.member;
    if (m === null || !m.hasGroup || m.removed) return;
    // ts-mls sends no application message while proposals are pending; our own commit in flight
    // would move the epoch under it.
    while (this.held.length > 0 && m.pendingProposals.length === 0 && !m.hasPendingCommit) {
      const h = this.held.shift() as { id: number; text: string };
      try {
        const bytes = await m.encryptChat(h.text);
        this.send({ type: 'mls_app', message: b64(bytes) });
        this.io.report({ type: 'chat', fromLeaf: m.ownLeafIndex, self: true, text: h.text, epoch: Number(m.epoch), id: h.id });
      } catch (e) {
        this.io.report({ type: 'chat_failed', id: h.id, message: e instanceof Error ? e.message : String(e) });
      }
    }
  }

  /** After joining or a commit: keys to the transform worker, status to the page. */
  private async epochChanged(): Promise<void> {
    const m = this.need();
    this.cancelCommitTimer?.();
    this.cancelCommitTimer = null;
    const roster = await m.roster();
    const members: RosterMember[] = roster.map((r) => {
      const b = r.status.verified ? r.status.binding : r.status.claimed;
      return {
        leaf: r.leafIndex,
        self: r.self,
        verified: r.status.verified,
        failure: r.status.verified ? null : r.status.reason,
        userId: b?.user_id ?? null,
        username: b?.username ?? null,
        displayName: b?.display_name ?? null,
        deviceId: b?.device_id ?? null,
        deviceName: b?.device_name ?? null,
        deviceKind: b?.device_kind ?? null,
      };
    });
    // DESIGN §4 `restricted`: a member whose binding does not verify ends our participation.
    // (Member refuses such a Welcome or commit already; this is the second line.)
    if (this.config.level === 'restricted') {
      const bad = members.find((x) => !x.verified);
      if (bad) throw new Fatal('unverified-member', `Member at leaf ${bad.leaf} has a credential that does not verify (${bad.failure ?? 'unknown'}).`);
      // DESIGN T4 at `restricted`: a member the server never announced (a ghost) gets no key of
      // ours. An honest server announces an admission before it proposes the Add, and the page
      // relays the lists in socket order, so a real member is always announced by now. (One
      // the server stops listing later is the page's to judge, after a grace: roster.ts.)
      const ghost = members.find((x) => !x.self && !this.announced.has(matchKey(x.username, x.deviceId) ?? ''));
      if (ghost) throw new Fatal('unannounced-member', unannouncedMessage(ghost, true));
    }
    const epoch = m.epoch;
    const groupId = new TextDecoder().decode(m.groupId);
    if (!this.config.withholdKeys) {
      const baseKey = await m.sframeBaseKey();
      this.io.keys({ type: 'epoch', group: groupId, epoch, baseKey, ownLeaf: m.ownLeafIndex, members: m.memberLeaves });
    }
    this.groupIdText = groupId;
    this.status.phase = 'member';
    this.status.groupId = groupId;
    this.status.epoch = Number(epoch);
    this.status.ownLeaf = m.ownLeafIndex;
    this.status.securityCode = await m.securityCode();
    this.status.checkValue = hex(await m.exporter(CHECK_LABEL, new Uint8Array(0), 16));
    this.status.members = members;
    this.scheduleUpdate();
    await this.flushChat();
    this.publish();
  }

  /** The group id text of the current group. */
  get groupId(): string | null {
    return this.groupIdText;
  }

  /** Resolves once every queued input (and a commit it queued) has been handled (tests). */
  async idle(): Promise<void> {
    for (;;) {
      const c = this.chain;
      await c;
      await new Promise((r) => setTimeout(r, 0));
      if (c === this.chain) return;
    }
  }
}
