// The server's identity binding inside every member's MLS BasicCredential (docs/E2EE.md §2):
//
//   identity = u16be(len(B)) || B || sig            sig = Ed25519(identity_key, LABEL || B)
//   LABEL    = "sealroom/mls-binding/v1" || 0x00
//
// Verification is WebCrypto Ed25519: Node 20 has it, and so does Chromium (ts-mls signs every MLS
// message with WebCrypto Ed25519 whenever `crypto.subtle` exists, and it runs there), so no
// @noble/curves. Pure functions: usable in a worker and in tests.

const enc = new TextEncoder();

/** Domain-separation prefix of the binding signature. */
export const BINDING_LABEL: Uint8Array<ArrayBuffer> = enc.encode('sealroom/mls-binding/v1\0');

/** Prefix of the server's external-sender credential (`"sealroom-server:" || server_id`). */
export const SERVER_CREDENTIAL_PREFIX = 'sealroom-server:';

export type DeviceKind = 'passkey' | 'software';

/** The members of B (docs/E2EE.md §2); unknown members are ignored. */
export interface Binding {
  v: 1;
  server_id: string;
  meeting_id: string;
  user_id: string;
  username: string;
  display_name: string;
  device_id: string;
  device_name: string;
  device_kind: DeviceKind;
  /** base64url (no padding) of the member's MLS signature public key. */
  signature_key: string;
  /** Unix seconds. */
  issued_at: number;
}

/** Why a credential does not verify, in the order they are checked. */
export type BindingFailure =
  /** Not `u16be(len) || B || sig(64)`, or not a basic credential. */
  | 'malformed'
  /** The pinned identity key is not a valid Ed25519 public key. */
  | 'bad-identity-key'
  /** `sig` does not verify under the pinned identity key. */
  | 'bad-signature'
  /** B is not a JSON object with the members above, of the right types. */
  | 'bad-json'
  /** `v` is not 1. */
  | 'wrong-version'
  | 'wrong-server'
  | 'wrong-meeting'
  /** `signature_key` is not the leaf's MLS signature key. */
  | 'wrong-signature-key';

export type BindingResult = { ok: true; binding: Binding } | { ok: false; reason: BindingFailure };

export interface BindingExpectations {
  /** The pinned server identity key: 32 raw bytes, or an imported Ed25519 verify key. */
  identityKey: Uint8Array | CryptoKey;
  serverId: string;
  meetingId: string;
  /** The MLS signature public key of the leaf that carries the credential. */
  signatureKey: Uint8Array;
}

export function base64UrlEncode(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Strict base64url without padding; null on any other character or a non-canonical tail. */
export function base64UrlDecode(s: string): Uint8Array<ArrayBuffer> | null {
  if (!/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) return null;
  let bin: string;
  try {
    bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  } catch {
    return null;
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  // Reject encodings with non-zero padding bits, so one key has exactly one spelling.
  return base64UrlEncode(out) === s ? out : null;
}

/** Splits `u16be(len(B)) || B || sig`. */
export function splitIdentity(identity: Uint8Array): { b: Uint8Array<ArrayBuffer>; sig: Uint8Array<ArrayBuffer> } | null {
  if (identity.length < 2) return null;
  const len = ((identity[0] as number) << 8) | (identity[1] as number);
  if (identity.length !== 2 + len + 64) return null;
  return { b: identity.slice(2, 2 + len), sig: identity.slice(2 + len) };
}

/** Builds identity bytes from B and a signature (the server's side; tests use it). */
export function joinIdentity(b: Uint8Array, sig: Uint8Array): Uint8Array<ArrayBuffer> {
  if (b.length > 0xffff || sig.length !== 64) throw new RangeError('binding too long or signature not 64 bytes');
  const out = new Uint8Array(2 + b.length + 64);
  out[0] = b.length >> 8;
  out[1] = b.length & 0xff;
  out.set(b, 2);
  out.set(sig, 2 + b.length);
  return out;
}

/** The bytes the server signs: `LABEL || B`. */
export function bindingSignedBytes(b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(BINDING_LABEL.length + b.length);
  out.set(BINDING_LABEL, 0);
  out.set(b, BINDING_LABEL.length);
  return out;
}

const STRING_MEMBERS = [
  'server_id',
  'meeting_id',
  'user_id',
  'username',
  'display_name',
  'device_id',
  'device_name',
  'signature_key',
] as const;

/** Parses B without checking the signature (for display and duplicate checks of unverified leaves). */
export function parseBinding(b: Uint8Array): { ok: true; binding: Binding } | { ok: false; reason: 'bad-json' | 'wrong-version' } {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(b));
  } catch {
    return { ok: false, reason: 'bad-json' };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { ok: false, reason: 'bad-json' };
  const o = raw as Record<string, unknown>;
  for (const k of STRING_MEMBERS) if (typeof o[k] !== 'string') return { ok: false, reason: 'bad-json' };
  if (o['device_kind'] !== 'passkey' && o['device_kind'] !== 'software') return { ok: false, reason: 'bad-json' };
  const issued = o['issued_at'];
  if (typeof issued !== 'number' || !Number.isSafeInteger(issued) || issued < 0) return { ok: false, reason: 'bad-json' };
  if (o['v'] !== 1) return { ok: false, reason: 'wrong-version' };
  return {
    ok: true,
    binding: {
      v: 1,
      server_id: o['server_id'] as string,
      meeting_id: o['meeting_id'] as string,
      user_id: o['user_id'] as string,
      username: o['username'] as string,
      display_name: o['display_name'] as string,
      device_id: o['device_id'] as string,
      device_name: o['device_name'] as string,
      device_kind: o['device_kind'],
      signature_key: o['signature_key'] as string,
      issued_at: issued,
    },
  };
}

/** Imports a raw 32-byte Ed25519 public key for verification. */
export async function importIdentityKey(raw: Uint8Array): Promise<CryptoKey> {
  if (raw.length !== 32) throw new RangeError('an Ed25519 public key is 32 bytes');
  return globalThis.crypto.subtle.importKey('raw', new Uint8Array(raw), { name: 'Ed25519' }, false, ['verify']);
}

/**
 * Verifies a member's credential identity bytes (docs/E2EE.md §2): the signature under the
 * pinned identity key over exactly the B received, then B's members against the client's server,
 * meeting and the leaf's signature key.
 */
export async function verifyBinding(identity: Uint8Array, expect: BindingExpectations): Promise<BindingResult> {
  const parts = splitIdentity(identity);
  if (parts === null) return { ok: false, reason: 'malformed' };
  let key: CryptoKey;
  try {
    key = expect.identityKey instanceof Uint8Array ? await importIdentityKey(expect.identityKey) : expect.identityKey;
  } catch {
    return { ok: false, reason: 'bad-identity-key' };
  }
  let good = false;
  try {
    good = await globalThis.crypto.subtle.verify({ name: 'Ed25519' }, key, parts.sig, bindingSignedBytes(parts.b));
  } catch {
    good = false;
  }
  if (!good) return { ok: false, reason: 'bad-signature' };
  const parsed = parseBinding(parts.b);
  if (!parsed.ok) return parsed;
  const bnd = parsed.binding;
  if (bnd.server_id !== expect.serverId) return { ok: false, reason: 'wrong-server' };
  if (bnd.meeting_id !== expect.meetingId) return { ok: false, reason: 'wrong-meeting' };
  const sk = base64UrlDecode(bnd.signature_key);
  if (sk === null || sk.length !== expect.signatureKey.length || !sk.every((v, i) => v === expect.signatureKey[i])) {
    return { ok: false, reason: 'wrong-signature-key' };
  }
  return { ok: true, binding: bnd };
}
