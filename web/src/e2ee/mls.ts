// One MLS group member over ts-mls 1.6.4, with sealroom's rules (docs/E2EE.md §1-§4, §6, §7).
//
// ts-mls state is immutable: every operation computes a candidate state, our checks run on it,
// and only then does it replace `this.state`. Whatever fails (our rules or ts-mls throwing)
// leaves the member exactly as it was.
//
// Two things ts-mls 1.6.4 gets wrong that this module works around:
// - The `external_senders` extension data is a vector `ExternalSender external_senders<V>`
//   (RFC 9420 §12.1.8.1; openmls writes it so). ts-mls reads and writes ONE ExternalSender without
//   the vector length, so it can neither create such a group nor verify a proposal from an
//   external sender of an openmls group. We write the RFC encoding ourselves (patched in after
//   `createGroup`, which at epoch 0 derives nothing from the extensions), verify external
//   proposals with the pinned server key (`unprotectPublicMessage` with an override key), and
//   queue them with `processProposal`.
// - An external proposal's signature does not cover the group context (RFC 9420 §6.1), and ts-mls
//   does not compare the group id: we check group id and epoch of every handshake message.
//
// Crypto runs wherever this class is used; the call screen runs it in a worker (STYLE.md).

import {
  createApplicationMessage,
  createCommit,
  createGroup as tsCreateGroup,
  decodeExternalSender,
  decodeMlsMessage,
  defaultCapabilities,
  emptyPskIndex,
  encodeExternalSender,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  mlsExporter,
  processPublicMessage,
  zeroOutUint8Array,
  type CiphersuiteImpl,
  type ClientConfig,
  type ClientState,
  type Credential,
  type Extension,
  type KeyPackage,
  type LeafNode,
  type MLSMessage,
  type PrivateKeyPackage,
  type Proposal,
  type PublicMessage,
  type RatchetTree,
} from 'ts-mls';
import { processProposal } from 'ts-mls/clientState.js';
import { createGroupInfoWithRatchetTree } from 'ts-mls/createCommit.js';
import { unprotectPublicMessage } from 'ts-mls/messageProtectionPublic.js';
import { unprotectPrivateMessage } from 'ts-mls/messageProtection.js';
import { defaultKeyPackageEqualityConfig, defaultLifetimeConfig, defaultPaddingConfig } from 'ts-mls';
import type { Level } from '../proto';
import { SERVER_CREDENTIAL_PREFIX, parseBinding, verifyBinding, type Binding, type BindingFailure } from './credential';
import { BASE_KEY_LENGTH, MLS_EXPORTER_LABEL } from './sframe';

export const MLS_SUITE = 'MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519' as const;

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

/** Why an MLS operation or incoming message was refused. The member's state is unchanged. */
export type MlsFailure =
  /** Bytes that do not decode as the expected MLS message. */
  | 'malformed'
  /** Handshake not as PublicMessage, chat not as PrivateMessage, or a handshake inside a PrivateMessage. */
  | 'wrong-wireformat'
  | 'wrong-group'
  /** Not for the current epoch (first valid commit wins; later ones are refused). */
  | 'wrong-epoch'
  /** A proposal not from the server (external sender 0). */
  | 'not-external-sender'
  /** A proposal other than Add or Remove. */
  | 'proposal-type'
  /** A proposal whose content is unacceptable (suite, credential, empty leaf). */
  | 'bad-proposal'
  /** A commit not from a member. */
  | 'commit-sender'
  /** A commit whose proposals are not exactly the server's pending proposals by reference. */
  | 'commit-proposals'
  /** Two leaves with the same (user_id, device_id) after the commit. */
  | 'duplicate-device'
  /** The committer's new leaf node changed its credential or signature key. */
  | 'committer-identity'
  /** The group context extensions changed. */
  | 'extensions'
  /** A member whose credential does not verify, where verified members are required. */
  | 'unverified-member'
  /** Welcome for another suite. */
  | 'wrong-suite'
  /** The group's external_senders is not exactly the pinned server key and credential. */
  | 'wrong-external-sender'
  /** ts-mls refused it: signature, membership tag, confirmation tag, tree, decryption. */
  | 'crypto'
  /** Chat plaintext not as docs/E2EE.md §7. */
  | 'chat-format'
  /** The API was used in the wrong state (no group, removed, a commit pending, ...). */
  | 'usage';

export class MlsRejected extends Error {
  constructor(
    readonly reason: MlsFailure,
    detail?: string,
  ) {
    super(detail ? `${reason}: ${detail}` : reason);
    this.name = 'MlsRejected';
  }
}

export interface MemberConfig {
  serverId: string;
  meetingId: string;
  /** The pinned server identity key (Ed25519, 32 bytes): binding signer and external sender. */
  serverKey: Uint8Array;
  /** Refuse any Welcome or commit that brings in a member whose credential does not verify (`restricted`). */
  requireVerified: boolean;
}

export type MemberStatus = { verified: true; binding: Binding } | { verified: false; reason: BindingFailure | 'not-basic'; claimed: Binding | null };

export interface RosterEntry {
  leafIndex: number;
  self: boolean;
  signatureKey: Uint8Array;
  status: MemberStatus;
}

export type HandshakeResult =
  | { kind: 'proposal'; proposal: 'add'; ref: string }
  | { kind: 'proposal'; proposal: 'remove'; ref: string; removed: number }
  | {
      kind: 'commit';
      /** Our own commit, echoed by the delivery service and merged. */
      own: boolean;
      epoch: bigint;
      added: number[];
      removed: number[];
      /** We were removed: the member is unusable from now on. */
      selfRemoved: boolean;
    };

export interface ChatMessage {
  senderLeafIndex: number;
  text: string;
}

/** Text of a chat message at most this many characters (Unicode code points). */
export const CHAT_MAX_CHARS = 4000;
const CHAT_PAD = 256;

/** `"sealroom/v1/" || server_id || "/" || meeting_id || "/" || level || "/" || generation` */
export function groupIdFor(serverId: string, meetingId: string, level: Level, generation: number | bigint | string): Uint8Array {
  const g = String(generation);
  if (!/^(0|[1-9][0-9]*)$/.test(g)) throw new RangeError('generation is a decimal counter');
  return enc.encode(`sealroom/v1/${serverId}/${meetingId}/${level}/${g}`);
}

// --- RFC 9420 §2.1.2 variable-length vector header, for the external_senders extension.

function varintLength(len: number): Uint8Array {
  if (len < 0x40) return Uint8Array.of(len);
  if (len < 0x4000) return Uint8Array.of(0x40 | (len >> 8), len & 0xff);
  if (len < 0x40000000) return Uint8Array.of(0x80 | (len >>> 24), (len >> 16) & 0xff, (len >> 8) & 0xff, len & 0xff);
  throw new RangeError('vector too long');
}

function readVarint(b: Uint8Array, off: number): [number, number] | null {
  const b0 = b[off];
  if (b0 === undefined) return null;
  const n = 1 << (b0 >> 6);
  if (n === 8 || off + n > b.length) return null;
  let v = b0 & 0x3f;
  for (let i = 1; i < n; i++) v = v * 256 + (b[off + i] as number);
  // Minimal encoding only (RFC 9420 §2.1.2).
  if ((n === 2 && v < 0x40) || (n === 4 && v < 0x4000)) return null;
  return [v, n];
}

export interface ExternalSenderInfo {
  signaturePublicKey: Uint8Array;
  credential: Credential;
}

/** RFC 9420 `ExternalSender external_senders<V>` as extension data. */
export function encodeExternalSenders(senders: ExternalSenderInfo[]): Uint8Array {
  const body = concat(...senders.map((s) => encodeExternalSender(s)));
  return concat(varintLength(body.length), body);
}

export function decodeExternalSenders(data: Uint8Array): ExternalSenderInfo[] | null {
  const h = readVarint(data, 0);
  if (h === null || h[1] + h[0] !== data.length) return null;
  const out: ExternalSenderInfo[] = [];
  let off = h[1];
  while (off < data.length) {
    let r: ReturnType<typeof decodeExternalSender>;
    try {
      r = decodeExternalSender(data, off);
    } catch {
      return null;
    }
    if (r === undefined || r[1] === 0) return null;
    out.push(r[0]);
    off += r[1];
  }
  return off === data.length ? out : null;
}

/** The server's external-sender entry: identity key and `BasicCredential("sealroom-server:" || server_id)`. */
export function serverExternalSender(serverKey: Uint8Array, serverId: string): ExternalSenderInfo {
  return { signaturePublicKey: serverKey, credential: { credentialType: 'basic', identity: enc.encode(SERVER_CREDENTIAL_PREFIX + serverId) } };
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= (a[i] as number) ^ (b[i] as number);
  return d === 0;
}

function b64(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function leavesOf(tree: RatchetTree): Map<number, LeafNode> {
  const out = new Map<number, LeafNode>();
  for (let i = 0; i < tree.length; i += 2) {
    const n = tree[i];
    if (n?.nodeType === 'leaf') out.set(i / 2, n.leaf);
  }
  return out;
}

function extensionsEqual(a: Extension[], b: Extension[]): boolean {
  return a.length === b.length && a.every((x, i) => x.extensionType === b[i]?.extensionType && bytesEqual(x.extensionData, (b[i] as Extension).extensionData));
}

/** Decodes one whole MLSMessage, or refuses. */
function decodeWhole(bytes: Uint8Array): MLSMessage {
  let r: ReturnType<typeof decodeMlsMessage>;
  try {
    r = decodeMlsMessage(bytes, 0);
  } catch (e) {
    throw new MlsRejected('malformed', String(e));
  }
  if (r === undefined || r[1] !== bytes.length) throw new MlsRejected('malformed');
  return r[0];
}

async function guarded<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof MlsRejected) throw e;
    const message = e instanceof Error ? e.message : String(e);
    // ts-mls's words when our authentication service said no.
    if (/^Could not validate (external )?credential$/.test(message)) throw new MlsRejected('unverified-member', message);
    throw new MlsRejected('crypto', message);
  }
}

interface PendingCommit {
  bytes: Uint8Array;
  state: ClientState;
  consumed: Uint8Array[];
  added: number[];
  removed: number[];
}

/** An MLS signature key pair (Ed25519) of the profile suite. */
export interface SignatureKeyPair {
  signKey: Uint8Array;
  publicKey: Uint8Array;
}

/**
 * A fresh signature key pair, for asking the server's binding (`mls_bind`) before the member
 * exists: the binding brings the server id and key the member's config needs.
 */
export async function generateSignatureKeyPair(): Promise<SignatureKeyPair> {
  const cs = await getCiphersuiteImpl(getCiphersuiteFromName(MLS_SUITE));
  const kp = await cs.signature.keygen();
  return { signKey: kp.signKey, publicKey: kp.publicKey };
}

export class Member {
  private state: ClientState | null = null;
  private keyPkg: { public: KeyPackage; private: PrivateKeyPackage } | null = null;
  private pending: PendingCommit | null = null;
  private wasRemoved = false;
  private readonly verified = new Map<string, MemberStatus>();
  private readonly clientConfig: ClientConfig;

  readonly config: Readonly<MemberConfig>;

  private constructor(
    config: MemberConfig,
    private readonly cs: CiphersuiteImpl,
    private readonly signKey: Uint8Array,
    /** The fresh MLS signature key the server binds (send it when asking for the binding). */
    readonly signaturePublicKey: Uint8Array,
  ) {
    if (config.serverKey.length !== 32) throw new RangeError('the server key is a 32-byte Ed25519 key');
    // A private copy: verification results are cached against it.
    this.config = Object.freeze({ ...config, serverKey: new Uint8Array(config.serverKey) });
    this.clientConfig = {
      // Receiver data of one previous epoch: enough for chat in flight across a commit.
      keyRetentionConfig: { retainKeysForGenerations: 10, retainKeysForEpochs: 1, maximumForwardRatchetSteps: 200 },
      lifetimeConfig: defaultLifetimeConfig,
      keyPackageEqualityConfig: defaultKeyPackageEqualityConfig,
      paddingConfig: defaultPaddingConfig,
      authService: {
        validateCredential: async (credential, signaturePublicKey) => {
          if (credential.credentialType !== 'basic') return false;
          if (!this.config.requireVerified) return true;
          return (await this.verifyCredential(credential, signaturePublicKey)).verified;
        },
      },
    };
  }

  /**
   * A member with a fresh Ed25519 signature key pair (one per group generation), or with the
   * pair made by `generateSignatureKeyPair` before the server's binding (and so this config)
   * was known.
   */
  static async create(config: MemberConfig, keys?: SignatureKeyPair): Promise<Member> {
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName(MLS_SUITE));
    const kp = keys ?? (await cs.signature.keygen());
    return new Member(config, cs, kp.signKey, kp.publicKey);
  }

  // --- Status

  get hasGroup(): boolean {
    return this.state !== null;
  }

  /** True once a commit removed us; nothing may be sent any more. */
  get removed(): boolean {
    return this.wasRemoved;
  }

  private active(): ClientState {
    if (this.wasRemoved) throw new MlsRejected('usage', 'removed from the group');
    if (this.state === null) throw new MlsRejected('usage', 'not in a group');
    return this.state;
  }

  get epoch(): bigint {
    return this.active().groupContext.epoch;
  }

  get groupId(): Uint8Array {
    return this.active().groupContext.groupId;
  }

  get ownLeafIndex(): number {
    return this.active().privatePath.leafIndex;
  }

  get epochAuthenticator(): Uint8Array {
    return new Uint8Array(this.active().keySchedule.epochAuthenticator);
  }

  /** Leaf indices of the current members. */
  get memberLeaves(): number[] {
    return [...leavesOf(this.active().ratchetTree).keys()];
  }

  /** References (base64) of the server proposals received this epoch and not yet committed. */
  get pendingProposals(): string[] {
    return Object.keys(this.active().unappliedProposals);
  }

  get hasPendingCommit(): boolean {
    return this.pending !== null;
  }

  /**
   * docs/E2EE.md §4: the member with the lowest leaf index that the pending proposals do not
   * remove commits at once; the others wait 1.5-3 s.
   */
  isDesignatedCommitter(): boolean {
    const st = this.active();
    const removed = new Set<number>();
    for (const p of Object.values(st.unappliedProposals)) if (p.proposal.proposalType === 'remove') removed.add(p.proposal.remove.removed);
    const staying = [...leavesOf(st.ratchetTree).keys()].filter((i) => !removed.has(i));
    return staying.length > 0 && Math.min(...staying) === st.privatePath.leafIndex;
  }

  // --- Credentials

  private async verifyCredential(credential: Credential, signatureKey: Uint8Array): Promise<MemberStatus> {
    if (credential.credentialType !== 'basic') return { verified: false, reason: 'not-basic', claimed: null };
    // The outcome depends only on these bytes and the (fixed) config: verify each leaf once.
    const cacheKey = `${b64(credential.identity)}|${b64(signatureKey)}`;
    const hit = this.verified.get(cacheKey);
    if (hit !== undefined) return hit;
    const r = await verifyBinding(credential.identity, {
      identityKey: this.config.serverKey,
      serverId: this.config.serverId,
      meetingId: this.config.meetingId,
      signatureKey,
    });
    const status: MemberStatus = r.ok ? { verified: true, binding: r.binding } : { verified: false, reason: r.reason, claimed: claimedBinding(credential) };
    if (this.verified.size >= 4096) this.verified.clear();
    this.verified.set(cacheKey, status);
    return status;
  }

  /** Every member with its leaf index and binding, or why its credential does not verify. */
  async roster(): Promise<RosterEntry[]> {
    const st = this.active();
    const out: RosterEntry[] = [];
    for (const [leafIndex, leaf] of leavesOf(st.ratchetTree)) {
      out.push({
        leafIndex,
        self: leafIndex === st.privatePath.leafIndex,
        signatureKey: leaf.signaturePublicKey,
        status: await this.verifyCredential(leaf.credential, leaf.signaturePublicKey),
      });
    }
    return out;
  }

  /** Every leaf verifies (when required) and no two leaves share (user_id, device_id). */
  private async checkLeaves(leaves: Iterable<LeafNode>): Promise<void> {
    const seen = new Set<string>();
    for (const leaf of leaves) {
      const status = await this.verifyCredential(leaf.credential, leaf.signaturePublicKey);
      if (this.config.requireVerified && !status.verified) throw new MlsRejected('unverified-member', status.reason);
      const b = status.verified ? status.binding : status.claimed;
      if (b === null) continue;
      const key = JSON.stringify([b.user_id, b.device_id]);
      if (seen.has(key)) throw new MlsRejected('duplicate-device');
      seen.add(key);
    }
  }

  // --- Joining

  /**
   * A single-use KeyPackage for this member's signature key, with the server's binding as the
   * BasicCredential identity. Returns the encoded MLSMessage; the private keys stay here until
   * `createGroup` or `joinFromWelcome` uses them.
   */
  async keyPackage(identity: Uint8Array, nowUnixSeconds: number): Promise<Uint8Array> {
    const credential: Credential = { credentialType: 'basic', identity: new Uint8Array(identity) };
    const now = BigInt(Math.floor(nowUnixSeconds));
    const lifetime = { notBefore: now - 3600n, notAfter: now + 24n * 3600n };
    const kp = await generateKeyPackageWithKey(credential, defaultCapabilities(), lifetime, [], { signKey: this.signKey, publicKey: this.signaturePublicKey }, this.cs);
    this.keyPkg = { public: kp.publicPackage, private: kp.privatePackage };
    return encodeMlsMessage({ version: 'mls10', wireformat: 'mls_key_package', keyPackage: kp.publicPackage });
  }

  private takeKeyPackage(): { public: KeyPackage; private: PrivateKeyPackage } {
    if (this.state !== null) throw new MlsRejected('usage', 'already in a group');
    const kp = this.keyPkg;
    if (kp === null) throw new MlsRejected('usage', 'no key package');
    return kp;
  }

  /** Start a new group (generation) as its first member, with the server as external sender. */
  async createGroup(level: Level, generation: number | bigint | string): Promise<void> {
    const kp = this.takeKeyPackage();
    const groupId = groupIdFor(this.config.serverId, this.config.meetingId, level, generation);
    await this.checkLeaves([kp.public.leafNode]);
    const ext: Extension = {
      extensionType: 'external_senders',
      extensionData: encodeExternalSenders([serverExternalSender(this.config.serverKey, this.config.serverId)]),
    };
    const st = await guarded(() => tsCreateGroup(groupId, kp.public, kp.private, [], this.cs, this.clientConfig));
    // Epoch 0 derives nothing from the extensions, so setting them afterwards is the same group
    // createGroup would have made (ts-mls cannot parse the RFC encoding it would validate).
    this.state = { ...st, groupContext: { ...st.groupContext, extensions: [ext] } };
    this.keyPkg = null;
  }

  /**
   * The GroupInfo (MLSMessage bytes, signed by us, with the ratchet tree) of the current epoch:
   * the creator sends it (`mls_group_info`) so the delivery service can follow the group.
   */
  async groupInfo(): Promise<Uint8Array> {
    const st = this.active();
    const gi = await guarded(() => createGroupInfoWithRatchetTree(st.groupContext, st.confirmationTag, st, st.ratchetTree, [], this.cs));
    return encodeMlsMessage({ version: 'mls10', wireformat: 'mls_group_info', groupInfo: gi });
  }

  /**
   * Join from a Welcome (as MLSMessage bytes) after our checks: suite, group id (server,
   * meeting, level and, when given, generation), external_senders = the pinned server key and
   * credential only, every leaf's credential (ts-mls asks our authentication service), no
   * duplicate (user, device).
   */
  async joinFromWelcome(welcomeBytes: Uint8Array, expect: { level: Level; generation?: number | bigint | string }): Promise<void> {
    const kp = this.takeKeyPackage();
    const msg = decodeWhole(welcomeBytes);
    if (msg.wireformat !== 'mls_welcome') throw new MlsRejected('wrong-wireformat');
    if (msg.welcome.cipherSuite !== MLS_SUITE) throw new MlsRejected('wrong-suite');
    const st = await guarded(() => joinGroup(msg.welcome, kp.public, kp.private, emptyPskIndex, this.cs, undefined, undefined, this.clientConfig));
    const gc = st.groupContext;
    if (gc.cipherSuite !== MLS_SUITE) throw new MlsRejected('wrong-suite');
    const prefix = `sealroom/v1/${this.config.serverId}/${this.config.meetingId}/${expect.level}/`;
    let gid: string;
    try {
      gid = dec.decode(gc.groupId);
    } catch {
      throw new MlsRejected('wrong-group');
    }
    const gen = gid.startsWith(prefix) ? gid.slice(prefix.length) : null;
    if (gen === null || !/^(0|[1-9][0-9]*)$/.test(gen) || (expect.generation !== undefined && gen !== String(expect.generation))) {
      throw new MlsRejected('wrong-group');
    }
    this.checkExtensions(gc.extensions);
    await this.checkLeaves(leavesOf(st.ratchetTree).values());
    this.state = st;
    this.keyPkg = null;
  }

  private checkExtensions(exts: Extension[]): void {
    const senders = exts.filter((e) => e.extensionType === 'external_senders');
    const other = exts.filter((e) => e.extensionType !== 'external_senders' && e.extensionType !== 'required_capabilities');
    if (other.length > 0) throw new MlsRejected('extensions');
    const only = senders.length === 1 ? decodeExternalSenders((senders[0] as Extension).extensionData) : null;
    const want = serverExternalSender(this.config.serverKey, this.config.serverId);
    const s = only?.length === 1 ? only[0] : undefined;
    if (
      s === undefined ||
      !bytesEqual(s.signaturePublicKey, want.signaturePublicKey) ||
      s.credential.credentialType !== 'basic' ||
      want.credential.credentialType !== 'basic' ||
      !bytesEqual(s.credential.identity, want.credential.identity)
    ) {
      throw new MlsRejected('wrong-external-sender');
    }
  }

  // --- Handshake messages from the delivery service

  /**
   * One handshake message (an MLSMessage carrying a PublicMessage): a proposal of the server,
   * or a commit. Our own commit echoed back is merged; another valid commit for this epoch wins
   * over our pending one (which is discarded). Throws MlsRejected, state unchanged, on anything
   * the rules of docs/E2EE.md §4 refuse or ts-mls cannot verify.
   */
  async handleHandshake(bytes: Uint8Array): Promise<HandshakeResult> {
    const st = this.active();
    if (this.pending && bytesEqual(bytes, this.pending.bytes)) return this.mergePendingCommit();
    const msg = decodeWhole(bytes);
    if (msg.wireformat !== 'mls_public_message') throw new MlsRejected('wrong-wireformat');
    const pm = msg.publicMessage;
    if (!bytesEqual(pm.content.groupId, st.groupContext.groupId)) throw new MlsRejected('wrong-group');
    if (pm.content.epoch !== st.groupContext.epoch) throw new MlsRejected('wrong-epoch');
    if (pm.content.contentType === 'proposal') return this.handleProposal(st, pm);
    if (pm.content.contentType === 'commit') return this.handleCommit(st, pm);
    throw new MlsRejected('wrong-wireformat', 'application data in a PublicMessage');
  }

  private async handleProposal(st: ClientState, pm: PublicMessage): Promise<HandshakeResult> {
    const sender = pm.content.sender;
    if (pm.senderType !== 'external' || sender.senderType !== 'external' || sender.senderIndex !== 0) throw new MlsRejected('not-external-sender');
    if (pm.content.contentType !== 'proposal') throw new MlsRejected('malformed');
    // The server's signature, with the pinned key (ts-mls cannot read the RFC external_senders).
    const content = await guarded(() =>
      unprotectPublicMessage(st.keySchedule.membershipKey, st.groupContext, st.ratchetTree, pm, this.cs, this.config.serverKey),
    );
    const proposal: Proposal = pm.content.proposal;
    if (proposal.proposalType === 'add') {
      const kp = proposal.add.keyPackage;
      if (kp.cipherSuite !== MLS_SUITE) throw new MlsRejected('bad-proposal', 'suite');
      const status = await this.verifyCredential(kp.leafNode.credential, kp.leafNode.signaturePublicKey);
      if (kp.leafNode.credential.credentialType !== 'basic' || (this.config.requireVerified && !status.verified)) {
        throw new MlsRejected('unverified-member', status.verified ? undefined : status.reason);
      }
    } else if (proposal.proposalType === 'remove') {
      if (!leavesOf(st.ratchetTree).has(proposal.remove.removed)) throw new MlsRejected('bad-proposal', 'no such leaf');
    } else {
      throw new MlsRejected('proposal-type');
    }
    const next = await guarded(() => processProposal(st, content, proposal, this.cs.hash));
    const ref = Object.keys(next.unappliedProposals).find((k) => !(k in st.unappliedProposals));
    if (ref === undefined) throw new MlsRejected('bad-proposal', 'duplicate proposal');
    this.state = next;
    return proposal.proposalType === 'add' ? { kind: 'proposal', proposal: 'add', ref } : { kind: 'proposal', proposal: 'remove', ref, removed: proposal.remove.removed };
  }

  /**
   * docs/E2EE.md §4 on a commit's content before ts-mls processes it: every proposal by
   * reference and the set equal to our pending server proposals (only Add/Remove get queued), or
   * an empty commit when none are pending; the committer keeps its credential and key; no
   * duplicate (user, device) after it. Returns the leaves removed.
   */
  private async checkCommitRules(st: ClientState, pm: PublicMessage): Promise<{ removed: number[] }> {
    if (pm.content.contentType !== 'commit') throw new MlsRejected('malformed');
    const sender = pm.content.sender;
    if (pm.senderType !== 'member' || sender.senderType !== 'member') throw new MlsRejected('commit-sender');
    const commit = pm.content.commit;
    const pendingRefs = new Set(Object.keys(st.unappliedProposals));
    const refs = new Set<string>();
    for (const p of commit.proposals) {
      if (p.proposalOrRefType !== 'reference') throw new MlsRejected('commit-proposals', 'proposal by value');
      const r = b64(p.reference);
      if (!pendingRefs.has(r) || refs.has(r)) throw new MlsRejected('commit-proposals', 'unknown or repeated reference');
      refs.add(r);
    }
    if (refs.size !== pendingRefs.size) throw new MlsRejected('commit-proposals', 'not all pending proposals');
    const leaves = leavesOf(st.ratchetTree);
    const committer = leaves.get(sender.leafIndex);
    if (committer === undefined) throw new MlsRejected('commit-sender');
    if (commit.path !== undefined) {
      const nl = commit.path.leafNode;
      const same =
        nl.credential.credentialType === 'basic' &&
        committer.credential.credentialType === 'basic' &&
        bytesEqual(nl.credential.identity, committer.credential.identity) &&
        bytesEqual(nl.signaturePublicKey, committer.signaturePublicKey);
      if (!same) throw new MlsRejected('committer-identity');
    }
    const removed: number[] = [];
    const after = new Map(leaves);
    const addedLeaves: LeafNode[] = [];
    for (const r of refs) {
      const p = (st.unappliedProposals[r] as { proposal: Proposal }).proposal;
      if (p.proposalType === 'remove') {
        removed.push(p.remove.removed);
        after.delete(p.remove.removed);
      } else if (p.proposalType === 'add') {
        addedLeaves.push(p.add.keyPackage.leafNode);
      } else {
        throw new MlsRejected('proposal-type');
      }
    }
    await this.checkLeaves([...after.values(), ...addedLeaves]);
    return { removed };
  }

  private async handleCommit(st: ClientState, pm: PublicMessage): Promise<HandshakeResult> {
    const { removed } = await this.checkCommitRules(st, pm);
    const res = await guarded(() =>
      processPublicMessage(st, pm, emptyPskIndex, this.cs, (incoming) =>
        incoming.kind === 'commit' && incoming.proposals.every((p) => p.proposal.proposalType === 'add' || p.proposal.proposalType === 'remove') ? 'accept' : 'reject',
      ),
    );
    if (res.actionTaken !== 'accept') throw new MlsRejected('proposal-type');
    const next = res.newState;
    const selfRemoved = next.groupActiveState.kind === 'removedFromGroup';
    if (!selfRemoved) {
      if (next.groupContext.epoch !== st.groupContext.epoch + 1n) throw new MlsRejected('crypto', 'epoch did not advance');
      if (!extensionsEqual(next.groupContext.extensions, st.groupContext.extensions)) throw new MlsRejected('extensions');
    }
    const added = addedLeaves(st.ratchetTree, next.ratchetTree);
    // Adopt: this commit wins the epoch; a pending commit of ours for it is void.
    if (this.pending) this.discardPendingCommit();
    res.consumed.forEach(zeroOutUint8Array);
    if (selfRemoved) {
      // Out of the group: forget every secret of it.
      this.wasRemoved = true;
      this.state = null;
    } else {
      this.state = next;
    }
    return { kind: 'commit', own: false, epoch: selfRemoved ? st.groupContext.epoch : next.groupContext.epoch, added, removed, selfRemoved };
  }

  // --- Committing

  /**
   * Commit every pending server proposal (by reference), or an empty commit (key update) when
   * none are pending. Returns the commit (PublicMessage) and, when it adds members, the Welcome
   * (with the ratchet tree in its GroupInfo). Nothing changes until the delivery service echoes
   * the commit (`handleHandshake` / `mergePendingCommit`) or it is given up (`discardPendingCommit`).
   */
  async commitPending(): Promise<{ commit: Uint8Array; welcome: Uint8Array | null }> {
    const st = this.active();
    if (this.pending) throw new MlsRejected('usage', 'a commit is already pending');
    const res = await guarded(() => createCommit({ state: st, cipherSuite: this.cs }, { wireAsPublicMessage: true, ratchetTreeExtension: true }));
    if (res.commit.wireformat !== 'mls_public_message') throw new MlsRejected('usage', 'commit is not a PublicMessage');
    // The same rules every other member will apply to it.
    const { removed } = await this.checkCommitRules(st, res.commit.publicMessage);
    const bytes = encodeMlsMessage(res.commit);
    const welcome = res.welcome ? encodeMlsMessage({ version: 'mls10', wireformat: 'mls_welcome', welcome: res.welcome }) : null;
    this.pending = { bytes, state: res.newState, consumed: res.consumed, added: addedLeaves(st.ratchetTree, res.newState.ratchetTree), removed };
    return { commit: bytes, welcome };
  }

  /** The delivery service accepted our commit: move to its epoch. */
  mergePendingCommit(): HandshakeResult {
    const p = this.pending;
    if (p === null) throw new MlsRejected('usage', 'no pending commit');
    this.pending = null;
    this.state = p.state;
    p.consumed.forEach(zeroOutUint8Array);
    return { kind: 'commit', own: true, epoch: p.state.groupContext.epoch, added: p.added, removed: p.removed, selfRemoved: false };
  }

  /** Our commit lost (another commit won the epoch, or the delivery service refused it). */
  discardPendingCommit(): void {
    this.pending = null;
  }

  // --- Exporter, authenticator, security code

  /** MLS-Exporter(label, context, length) of the current epoch (RFC 9420 §8.5). */
  async exporter(label: string, context: Uint8Array, length: number): Promise<Uint8Array> {
    const st = this.active();
    return mlsExporter(st.keySchedule.exporterSecret, label, context, length, this.cs);
  }

  /** RFC 9605 §5.2 `base_key` of this epoch for SFrame (suite 0x0004: 16 bytes). */
  async sframeBaseKey(): Promise<Uint8Array> {
    return this.exporter(MLS_EXPORTER_LABEL, new Uint8Array(0), BASE_KEY_LENGTH);
  }

  /** docs/E2EE.md §6: twenty digits in four groups of five. */
  async securityCode(): Promise<string> {
    return securityCode(this.epochAuthenticator);
  }

  // --- Chat (docs/E2EE.md §7)

  /** A chat message as PrivateMessage bytes. Refused while server proposals are pending (ts-mls does not send then). */
  async encryptChat(text: string): Promise<Uint8Array> {
    const st = this.active();
    const plain = encodeChat(text);
    if (Object.keys(st.unappliedProposals).length > 0) throw new MlsRejected('usage', 'proposals pending: send after the commit');
    const res = await guarded(() => createApplicationMessage(st, plain, this.cs));
    this.state = res.newState;
    res.consumed.forEach(zeroOutUint8Array);
    return encodeMlsMessage({ version: 'mls10', wireformat: 'mls_private_message', privateMessage: res.privateMessage });
  }

  /** Decrypts a chat PrivateMessage of this epoch (or the previous one, in flight across a commit). */
  async decryptChat(bytes: Uint8Array): Promise<ChatMessage> {
    const st = this.active();
    const msg = decodeWhole(bytes);
    if (msg.wireformat !== 'mls_private_message') throw new MlsRejected('wrong-wireformat');
    const pm = msg.privateMessage;
    // Handshake messages travel as PublicMessage only (docs/E2EE.md §1).
    if (pm.contentType !== 'application') throw new MlsRejected('wrong-wireformat', 'handshake in a PrivateMessage');
    if (!bytesEqual(pm.groupId, st.groupContext.groupId)) throw new MlsRejected('wrong-group');
    let next: ClientState;
    let out: Awaited<ReturnType<typeof unprotectPrivateMessage>>;
    if (pm.epoch === st.groupContext.epoch) {
      out = await guarded(() =>
        unprotectPrivateMessage(st.keySchedule.senderDataSecret, pm, st.secretTree, st.ratchetTree, st.groupContext, st.clientConfig.keyRetentionConfig, this.cs),
      );
      next = { ...st, secretTree: out.tree };
    } else {
      const old = pm.epoch < st.groupContext.epoch ? st.historicalReceiverData.get(pm.epoch) : undefined;
      if (old === undefined) throw new MlsRejected('wrong-epoch');
      out = await guarded(() =>
        unprotectPrivateMessage(old.senderDataSecret, pm, old.secretTree, old.ratchetTree, old.groupContext, st.clientConfig.keyRetentionConfig, this.cs),
      );
      const hist = new Map(st.historicalReceiverData);
      hist.set(pm.epoch, { ...old, secretTree: out.tree });
      next = { ...st, historicalReceiverData: hist };
    }
    const c = out.content.content;
    if (c.contentType !== 'application' || c.sender.senderType !== 'member') throw new MlsRejected('wrong-wireformat');
    const text = decodeChat(c.applicationData);
    this.state = next;
    out.consumed.forEach(zeroOutUint8Array);
    return { senderLeafIndex: c.sender.leafIndex, text };
  }
}

function claimedBinding(credential: Credential): Binding | null {
  if (credential.credentialType !== 'basic') return null;
  const id = credential.identity;
  if (id.length < 2) return null;
  const len = ((id[0] as number) << 8) | (id[1] as number);
  if (id.length !== 2 + len + 64) return null;
  const p = parseBinding(id.subarray(2, 2 + len));
  return p.ok ? p.binding : null;
}

/** Leaves present in `after` that were not there (with the same signature key) in `before`. */
function addedLeaves(before: RatchetTree, after: RatchetTree): number[] {
  const old = leavesOf(before);
  const out: number[] = [];
  for (const [i, leaf] of leavesOf(after)) {
    const o = old.get(i);
    if (o === undefined || !bytesEqual(o.signaturePublicKey, leaf.signaturePublicKey)) out.push(i);
  }
  return out;
}

/** `{"t":"chat","text":...}` in UTF-8, padded with spaces to a multiple of 256 bytes. */
export function encodeChat(text: string): Uint8Array {
  if ([...text].length > CHAT_MAX_CHARS) throw new MlsRejected('chat-format', 'text too long');
  const json = enc.encode(JSON.stringify({ t: 'chat', text }));
  const padded = new Uint8Array(Math.ceil(json.length / CHAT_PAD) * CHAT_PAD);
  padded.fill(0x20);
  padded.set(json);
  return padded;
}

export function decodeChat(plain: Uint8Array): string {
  if (plain.length === 0 || plain.length % CHAT_PAD !== 0) throw new MlsRejected('chat-format', 'not padded');
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(plain));
  } catch {
    throw new MlsRejected('chat-format', 'not JSON');
  }
  if (typeof v !== 'object' || v === null) throw new MlsRejected('chat-format');
  const o = v as Record<string, unknown>;
  if (o['t'] !== 'chat' || typeof o['text'] !== 'string' || [...o['text']].length > CHAT_MAX_CHARS) throw new MlsRejected('chat-format');
  return o['text'];
}

/** `HMAC-SHA256(epoch_authenticator, "sealroom security code v1")`, first 8 bytes, 20 digits in groups of five. */
export async function securityCode(epochAuthenticator: Uint8Array): Promise<string> {
  const subtle = globalThis.crypto.subtle;
  const key = await subtle.importKey('raw', new Uint8Array(epochAuthenticator), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = new Uint8Array(await subtle.sign('HMAC', key, enc.encode('sealroom security code v1')));
  let v = 0n;
  for (let i = 0; i < 8; i++) v = (v << 8n) | BigInt(mac[i] as number);
  const digits = v.toString().padStart(20, '0');
  return `${digits.slice(0, 5)} ${digits.slice(5, 10)} ${digits.slice(10, 15)} ${digits.slice(15, 20)}`;
}
