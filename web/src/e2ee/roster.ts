// The roster each client draws from its own MLS group state (DESIGN T4, flow 7), joined with the
// server's participant list by (user name, device id). Disagreement either way is flagged: an
// MLS member the server does not announce, a participant without an MLS leaf after a few seconds.
// Pure: the call screen renders the rows; the meeting page acts on them.

import type { Participant } from '../proto';
import type { MidStats, RosterMember } from './protocol';

/** A participant without an MLS leaf for this long is flagged "no keys". */
export const NO_KEYS_AFTER_MS = 5000;

export type RowState =
  /** MLS member with a verifying credential, announced by the server. */
  | 'verified'
  /** MLS member whose credential does not verify. */
  | 'unverified'
  /** MLS member (verified) that the server's participant list does not have. */
  | 'not-announced'
  /** Participant without an MLS leaf for longer than NO_KEYS_AFTER_MS. */
  | 'no-keys'
  /** Participant without an MLS leaf yet (joining). */
  | 'joining';

export interface RosterRow {
  key: string;
  state: RowState;
  self: boolean;
  member: RosterMember | null;
  participant: Participant | null;
  /** Text flags, for the screen (and screen readers). */
  flags: string[];
}

/** The key members and participants are matched by: (user name, device id). */
export function matchKey(username: string | null, deviceId: string | null): string | null {
  return username === null || deviceId === null ? null : JSON.stringify([username, deviceId]);
}

/** Why we leave at `restricted` over a member the server does not announce (shown to the user). */
export function unannouncedMessage(m: RosterMember, neverAnnounced: boolean): string {
  const name = `${m.displayName ?? 'unreadable credential'}${m.username ? ` (${m.username})` : ''}`;
  const why = neverAnnounced ? 'the server never announced it as a participant' : 'the server stopped listing it as a participant but it is still in the group';
  return `${name} on ${m.deviceName ?? 'an unknown device'} (leaf ${m.leaf}) holds the call's keys, but ${why}: someone may be listening unseen.`;
}

/**
 * Rows: every MLS member (leaf order), then every participant without a leaf. `firstSeen` holds
 * since when each participant id has been in the list without a leaf (ms, same clock as `now`);
 * `inGroup` says we hold the group (before that nobody can be judged "no keys"). A participant
 * whose connection dropped (`away`) is expected back with a new leaf and is not flagged.
 */
export function joinRoster(
  members: readonly RosterMember[],
  participants: readonly Participant[],
  you: string | null,
  firstSeen: ReadonlyMap<string, number>,
  now: number,
  inGroup: boolean,
): RosterRow[] {
  const byKey = new Map<string, Participant>();
  for (const p of participants) {
    const k = matchKey(p.user_name, p.device_id);
    if (k !== null) byKey.set(k, p);
  }
  const matched = new Set<string>();
  const rows: RosterRow[] = [];
  for (const m of [...members].sort((a, b) => a.leaf - b.leaf)) {
    const k = matchKey(m.username, m.deviceId);
    const p = k === null ? undefined : byKey.get(k);
    const flags: string[] = [];
    if (p && matched.has(p.id)) flags.push('a second leaf for the same device');
    if (p) matched.add(p.id);
    let state: RowState;
    if (!m.verified) {
      state = 'unverified';
      flags.push(`credential does not verify (${m.failure ?? 'unknown'})`);
    } else {
      state = p ? 'verified' : 'not-announced';
    }
    if (!p) flags.push('not announced by the server');
    if (p && m.self !== (p.id === you)) flags.push('the server and the keys disagree about who this is');
    rows.push({ key: `leaf:${m.leaf}`, state, self: m.self, member: m, participant: p ?? null, flags });
  }
  for (const p of participants) {
    if (matched.has(p.id)) continue;
    const seen = firstSeen.get(p.id) ?? now;
    const late = inGroup && !p.away && now - seen >= NO_KEYS_AFTER_MS;
    rows.push({
      key: `participant:${p.id}`,
      state: late ? 'no-keys' : 'joining',
      self: p.id === you,
      member: null,
      participant: p,
      flags: late ? ['no keys: announced by the server but not in the encrypted group'] : [],
    });
  }
  return rows;
}

/** What a tile shows about who really sends on it: the KID's leaf → the member's credential. */
export interface TileIdentity {
  /** The leaf whose frames decrypt on this participant's tracks (null: none yet). */
  leaf: number | null;
  member: RosterMember | null;
  /** The sender by its keys differs from the participant the server says this is. */
  mismatch: boolean;
  /** Frames arrive and nothing decrypts for 2 s. */
  stalled: boolean;
}

/**
 * For the tracks (mids) the server attributes to `p`: the leaf their frames' KIDs name, and
 * whether that leaf's credential is the same (user, device) as `p`.
 */
export function tileIdentity(p: Participant, mids: readonly string[], byMid: Readonly<Record<string, MidStats>>, members: readonly RosterMember[]): TileIdentity {
  let leaf: number | null = null;
  let stalled = false;
  let mismatch = false;
  for (const mid of mids) {
    const s = byMid[mid];
    if (!s) continue;
    if (s.stalled) stalled = true;
    if (s.leaf === null || s.decrypted === 0) continue;
    if (leaf !== null && leaf !== s.leaf) mismatch = true;
    leaf ??= s.leaf;
  }
  const member = leaf === null ? null : (members.find((m) => m.leaf === leaf) ?? null);
  if (leaf !== null && (member === null || member.username !== p.user_name || member.deviceId !== p.device_id)) mismatch = true;
  return { leaf, member, mismatch, stalled };
}

/**
 * At `restricted`, how long a member the server did announce may stay in the group after it
 * left the server's list: its Remove is on the way (the committer commits at once, the others
 * after at most 3 s). A member the server never announced gets no such grace.
 */
export const DEPARTED_GRACE_MS = 10_000;

/** Why a member ends our participation at `restricted` (DESIGN §4, T4). */
export interface UnannouncedVerdict {
  row: RosterRow;
  /** The server never listed this (user, device) during this call (else: it left the list long ago). */
  neverAnnounced: boolean;
}

/**
 * Watches the server's participant list against our MLS members for the `restricted` rule "a
 * server that adds a member without announcing it makes the clients leave" (the page's side:
 * the MLS worker applies the first half already, before it hands out the epoch's key). A member without a
 * participant is judged at once when the server never announced its (user, device) during this
 * call: the server announces an admission before it proposes the Add, and both go over one
 * ordered socket, so an honest server never lets such a member reach us first. A member the
 * server announced and later dropped is leaving (its Remove is on the way): it is judged only
 * after DEPARTED_GRACE_MS. Our own leaf is never judged (the server not listing us hides nothing
 * from us).
 */
export class AnnouncementWatch {
  private readonly announced = new Set<string>();
  /** (leaf, user, device) → since when it has been without a participant (same clock as `now`). */
  private readonly since = new Map<string, number>();

  /** Every participant list the server sends (the first one comes with our admission). */
  saw(participants: readonly Participant[]): void {
    for (const p of participants) {
      const k = matchKey(p.user_name, p.device_id);
      if (k !== null) this.announced.add(k);
    }
  }

  /** The first member that must end our participation, or null. */
  check(rows: readonly RosterRow[], now: number): UnannouncedVerdict | null {
    const current = new Set<string>();
    let verdict: UnannouncedVerdict | null = null;
    for (const r of rows) {
      const m = r.member;
      if (!m || r.self || r.participant !== null) continue;
      const k = matchKey(m.username, m.deviceId);
      const at = `${m.leaf}:${k ?? '?'}`;
      current.add(at);
      const since = this.since.get(at) ?? now;
      this.since.set(at, since);
      const neverAnnounced = k === null || !this.announced.has(k);
      if (verdict === null && (neverAnnounced || now - since >= DEPARTED_GRACE_MS)) verdict = { row: r, neverAnnounced };
    }
    for (const at of [...this.since.keys()]) if (!current.has(at)) this.since.delete(at);
    return verdict;
  }
}
