// Wording shared by several pages: every security-relevant state has a text form here.

import { formatDateTime } from './dom';
import type { DeviceKind, Level, Role } from './proto';

/** "passkey" or "software device" (DESIGN.md: software devices are labelled as such everywhere). */
export function kindLabel(kind: DeviceKind): string {
  return kind === 'software' ? 'software device' : 'passkey';
}

/**
 * Which client a member's device runs. Passkeys are used in browsers, which run the web client
 * this server delivers (threat T9: a server that cannot be trusted could deliver a modified
 * one); software devices are the native client, which runs no code from the server.
 */
export function clientLabel(kind: DeviceKind | string | null): string {
  return kind === 'software' ? 'native client' : kind === 'passkey' ? 'web client' : 'unknown client';
}

/** Said wherever a member is marked as on the web client. */
export const WEB_CLIENT_NOTE = 'Runs the web client this server delivers: its code comes from the server (threat T9).';

export function levelLabel(level: Level): string {
  return level;
}

export function levelDescription(level: Level): string {
  switch (level) {
    case 'open':
      return 'invited users, any network';
    case 'internal':
      return 'invited users, internal networks only';
    case 'restricted':
      return 'invited users on approved devices, configured networks only, always with a lobby';
  }
}

export function roleLabel(role: Role): string {
  return role;
}

export function mayOrganise(role: Role): boolean {
  return role === 'admin' || role === 'organiser';
}

/** A meeting's time window as one sentence. */
export function windowLabel(startsAt: number | null, endsAt: number | null): string {
  const fmt = (s: number) => formatDateTime(new Date(s * 1000));
  if (startsAt === null && endsAt === null) return 'No time limit';
  if (startsAt !== null && endsAt !== null) return `${fmt(startsAt)} until ${fmt(endsAt)}`;
  if (startsAt !== null) return `From ${fmt(startsAt)}`;
  return `Until ${fmt(endsAt as number)}`;
}

/** A safe http(s) URL from the server for an `href`, or null. */
export function safeHttpUrl(url: string): string | null {
  try {
    const u = new URL(url, location.origin);
    return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : null;
  } catch {
    return null;
  }
}

/** A default device name, e.g. "Browser on Linux x86_64". */
export function defaultDeviceName(): string {
  const nav = navigator as Navigator & { userAgentData?: { platform?: string } };
  const platform = nav.userAgentData?.platform || navigator.platform || 'this computer';
  return `Browser on ${platform}`;
}
