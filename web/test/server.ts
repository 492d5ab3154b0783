// The server's two MLS roles, as small as the tests need them: the identity authority that signs
// bindings (docs/E2EE.md §2), and the delivery service's external sender that proposes Add and
// Remove (§3, §4). The real ones live in Rust (crates/e2ee).

import { getCiphersuiteFromName, getCiphersuiteImpl, type CiphersuiteImpl, type GroupContext, type Proposal } from 'ts-mls';
import { decodeMlsMessage, encodeMlsMessage } from 'ts-mls';
import { protectExternalProposalPublic } from 'ts-mls/messageProtectionPublic.js';
import { base64UrlEncode, bindingSignedBytes, joinIdentity } from '../src/e2ee/credential';
import { MLS_SUITE } from '../src/e2ee/mls';

export interface Person {
  user_id: string;
  device_id: string;
  username?: string;
  display_name?: string;
  device_name?: string;
  device_kind?: 'passkey' | 'software';
}

export class TestServer {
  private constructor(
    readonly serverId: string,
    readonly meetingId: string,
    readonly publicKey: Uint8Array,
    private readonly signKey: CryptoKey,
    private readonly pkcs8: Uint8Array,
    private readonly cs: CiphersuiteImpl,
  ) {}

  static async create(serverId = 'https://sealroom.test:8443', meetingId = 'm-123'): Promise<TestServer> {
    const subtle = globalThis.crypto.subtle;
    const kp = (await subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const raw = new Uint8Array(await subtle.exportKey('raw', kp.publicKey));
    const pkcs8 = new Uint8Array(await subtle.exportKey('pkcs8', kp.privateKey));
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName(MLS_SUITE));
    return new TestServer(serverId, meetingId, raw, kp.privateKey, pkcs8, cs);
  }

  /** Signs `LABEL || b` with the identity key. */
  async signBinding(b: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await globalThis.crypto.subtle.sign({ name: 'Ed25519' }, this.signKey, bindingSignedBytes(b)));
  }

  /** The binding B for a person's fresh signature key, as the server writes it. */
  bindingJson(signatureKey: Uint8Array, who: Person, overrides: Record<string, unknown> = {}): Uint8Array<ArrayBuffer> {
    const b = {
      v: 1,
      server_id: this.serverId,
      meeting_id: this.meetingId,
      user_id: who.user_id,
      username: who.username ?? `user-${who.user_id}`,
      display_name: who.display_name ?? `User ${who.user_id}`,
      device_id: who.device_id,
      device_name: who.device_name ?? `device ${who.device_id}`,
      device_kind: who.device_kind ?? 'passkey',
      signature_key: base64UrlEncode(signatureKey),
      issued_at: 1_800_000_000,
      ...overrides,
    };
    return new TextEncoder().encode(JSON.stringify(b));
  }

  /** Credential identity bytes `u16be(len) || B || sig`. */
  async bind(signatureKey: Uint8Array, who: Person, overrides: Record<string, unknown> = {}): Promise<Uint8Array> {
    const b = this.bindingJson(signatureKey, who, overrides);
    return joinIdentity(b, await this.signBinding(b));
  }

  /** An external proposal (PublicMessage, sender external index 0) for a group at an epoch. */
  async propose(target: { groupId: Uint8Array; epoch: bigint }, proposal: Proposal, signKey: Uint8Array = this.pkcs8): Promise<Uint8Array> {
    // An external sender's signature does not cover the group context (RFC 9420 §6.1): only the
    // group id, epoch and version of it are used.
    const gc: GroupContext = {
      version: 'mls10',
      cipherSuite: MLS_SUITE,
      groupId: target.groupId,
      epoch: target.epoch,
      treeHash: new Uint8Array(),
      confirmedTranscriptHash: new Uint8Array(),
      extensions: [],
    };
    const { publicMessage } = await protectExternalProposalPublic(signKey, gc, new Uint8Array(), proposal, { senderType: 'external', senderIndex: 0 }, this.cs);
    return encodeMlsMessage({ version: 'mls10', wireformat: 'mls_public_message', publicMessage });
  }

  async proposeAdd(target: { groupId: Uint8Array; epoch: bigint }, keyPackageMessage: Uint8Array): Promise<Uint8Array> {
    const m = decodeMlsMessage(keyPackageMessage, 0)?.[0];
    if (m?.wireformat !== 'mls_key_package') throw new Error('not a key package');
    return this.propose(target, { proposalType: 'add', add: { keyPackage: m.keyPackage } });
  }

  async proposeRemove(target: { groupId: Uint8Array; epoch: bigint }, leafIndex: number): Promise<Uint8Array> {
    return this.propose(target, { proposalType: 'remove', remove: { removed: leafIndex } });
  }
}
