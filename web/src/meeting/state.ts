// The meeting page as a pure state machine: server messages and socket events go in, a new view
// state and the effects to perform come out. No DOM, no socket, no timers here, so the
// transitions can be reasoned about (and tested) on their own.

import type { LobbyEntry, MeetingInfo, Participant, RefusalReason, ServerMsg, SocketState } from '../proto';

/**
 * What the page shows; also exposed as `data-state` on `meeting-state`. `reconnecting`: the
 * socket dropped while admitted (neither a leave nor the server ended it), the server keeps our
 * place for its reconnect grace, and the page opens new sockets until admitted again (the same
 * device skips the lobby then) or it gives up (`disconnected`).
 */
export type Phase = 'connecting' | 'refused' | 'lobby' | 'admitted' | 'reconnecting' | 'left' | 'disconnected';

/** The close code with which the server ends a participation (it sends `refused` first). */
export const CLOSE_ENDED_BY_SERVER = 4001;

/** How long reconnecting goes on: a little less than the server's default grace (20 s). */
export const RECONNECT_LIMIT_MS = 18_000;

/** Delay before reconnect attempt `attempt` (0-based): 0.5 s, 1 s, 2 s, then every 4 s. */
export function reconnectDelayMs(attempt: number): number {
  return Math.min(500 * 2 ** Math.max(0, attempt), 4000);
}

export interface MeetingView {
  phase: Phase;
  /** The socket state from the server's `hello`, null before it. */
  socketState: SocketState | null;
  /** Why the last join was refused (or participation ended); kept after the socket closes. */
  refusal: { reason: RefusalReason; message: string } | null;
  /** The socket is closed. After a refusal the phase stays `refused` and this says so. */
  closed: boolean;
  /** We asked to leave: the socket closing now is no reason to reconnect. */
  leaving: boolean;
  /** The meeting, once admitted (kept after leaving, for its title). */
  meeting: MeetingInfo | null;
  /** Our participant id while admitted. */
  you: string | null;
  host: boolean;
  participants: Participant[];
  /** Hosts only: who waits in the lobby. */
  waiting: LobbyEntry[];
}

export type Effect =
  /** Ask the server to join (after `hello`). */
  | { kind: 'send_join' }
  /** Show a protocol error in the status region; nothing else changed. */
  | { kind: 'show_error'; code: string; message: string }
  /** Show a security notice (a new device was enrolled). */
  | { kind: 'show_notice'; message: string }
  /** Media signaling for the call (call/media.ts); only meaningful while admitted. */
  | { kind: 'media'; msg: MediaMsg }
  /** The MLS delivery service's messages, for the call's MLS worker (e2ee/session.ts); admitted only. */
  | { kind: 'mls'; msg: MlsMsg };

/** The server messages of the MLS delivery service. */
export type MlsMsg = Extract<
  ServerMsg,
  { type: 'mls_binding' | 'mls_create' | 'mls_proposal' | 'mls_commit' | 'mls_welcome' | 'mls_rejected' | 'mls_app' }
>;

/** The server messages that belong to the media connection. */
export type MediaMsg = Extract<ServerMsg, { type: 'media_offer' | 'media_answer' | 'media_tracks' }>;

export interface Step {
  view: MeetingView;
  effects: Effect[];
}

export function initialView(): MeetingView {
  return {
    phase: 'connecting',
    socketState: null,
    refusal: null,
    closed: false,
    leaving: false,
    meeting: null,
    you: null,
    host: false,
    participants: [],
    waiting: [],
  };
}

/** Leaving the meeting (by refusal, removal, leave or disconnect) drops everything live. */
function outOfMeeting(v: MeetingView): MeetingView {
  return { ...v, you: null, host: false, participants: [], waiting: [] };
}

export function handleServerMsg(v: MeetingView, msg: ServerMsg): Step {
  switch (msg.type) {
    case 'hello': {
      // Our session was valid once and is not any more (this device was revoked, or the
      // session ended): say why. Joining would only get the answer every stranger gets.
      if (msg.ended) {
        return {
          view: { ...outOfMeeting(v), phase: 'refused', socketState: msg.state, refusal: { reason: msg.ended.reason, message: msg.ended.message }, leaving: false, closed: false },
          effects: [],
        };
      }
      // A reconnect attempt stays `reconnecting` until the join is answered.
      const phase = v.phase === 'reconnecting' ? 'reconnecting' : 'connecting';
      return { view: { ...v, socketState: msg.state, phase, closed: false }, effects: [{ kind: 'send_join' }] };
    }
    case 'refused':
      return {
        view: { ...outOfMeeting(v), phase: 'refused', socketState: 'authenticated', refusal: { reason: msg.reason, message: msg.message }, leaving: false },
        effects: [],
      };
    case 'lobby':
      // Also the end of a reconnect that came too late: the place was given up, we queue again.
      return { view: { ...outOfMeeting(v), phase: 'lobby', socketState: 'lobby', refusal: null, leaving: false }, effects: [] };
    case 'admitted':
      return {
        view: {
          ...v,
          phase: 'admitted',
          socketState: 'admitted',
          refusal: null,
          leaving: false,
          meeting: msg.meeting,
          you: msg.you,
          host: msg.host,
          participants: msg.participants,
          waiting: msg.host ? v.waiting : [],
        },
        effects: [],
      };
    case 'participants': {
      // Our own entry tells us if a host made us one (or took it away).
      const self = v.you === null ? undefined : msg.participants.find((p) => p.id === v.you);
      return { view: { ...v, participants: msg.participants, host: self ? self.host : v.host }, effects: [] };
    }
    case 'lobby_update':
      return { view: { ...v, waiting: msg.waiting }, effects: [] };
    case 'meeting_update':
      return { view: { ...v, meeting: msg.meeting }, effects: [] };
    case 'left':
      return { view: { ...outOfMeeting(v), phase: 'left', socketState: 'authenticated', refusal: null, leaving: false }, effects: [] };
    case 'error':
      return { view: v, effects: [{ kind: 'show_error', code: msg.code, message: msg.message }] };
    case 'pong':
      return { view: v, effects: [] };
    case 'mls_binding':
    case 'mls_create':
    case 'mls_proposal':
    case 'mls_commit':
    case 'mls_welcome':
    case 'mls_rejected':
    case 'mls_app':
      // The call's MLS worker asked for them (mls_bind); they mean nothing outside the call.
      return { view: v, effects: v.phase === 'admitted' ? [{ kind: 'mls', msg }] : [] };
    case 'media_offer':
    case 'media_answer':
    case 'media_tracks':
      return { view: v, effects: v.phase === 'admitted' ? [{ kind: 'media', msg }] : [] };
    case 'device_added': {
      const kind = msg.device_kind === 'software' ? 'software device' : 'passkey';
      return {
        view: v,
        effects: [{ kind: 'show_notice', message: `New device enrolled for ${msg.user_name}: “${msg.device_name}” (${kind}). If this was not expected, revoke it now.` }],
      };
    }
    default: {
      // A message type this client does not know (a newer server): ignore it.
      const _exhaustive: never = msg;
      void _exhaustive;
      return { view: v, effects: [] };
    }
  }
}

/**
 * The socket closed with `code`. A refusal stays on screen. A drop while admitted (or while
 * reconnecting: an attempt failed) is `reconnecting`, unless we were leaving or the server
 * ended it; anything else becomes `disconnected`.
 */
export function handleClose(v: MeetingView, code: number): MeetingView {
  const out = { ...outOfMeeting(v), closed: true, socketState: null, leaving: false };
  if (v.phase === 'refused') return out;
  const dropped = code !== CLOSE_ENDED_BY_SERVER && !v.leaving;
  if (dropped && (v.phase === 'admitted' || v.phase === 'reconnecting')) return { ...out, phase: 'reconnecting', refusal: null };
  return { ...out, phase: 'disconnected', refusal: null };
}

/** Reconnecting ran out of time, or the user stopped it: `disconnected`. */
export function handleReconnectEnded(v: MeetingView): MeetingView {
  if (v.phase !== 'reconnecting') return v;
  return { ...outOfMeeting(v), phase: 'disconnected', closed: true, socketState: null, refusal: null, leaving: false };
}

/** The user asked to leave (the meeting or the lobby). */
export function handleLeave(v: MeetingView): MeetingView {
  return { ...v, leaving: true };
}

/** The user asked to join again (on the same socket, or on a new one). */
export function handleRetry(v: MeetingView, newSocket: boolean): MeetingView {
  return {
    ...outOfMeeting(v),
    phase: 'connecting',
    refusal: null,
    leaving: false,
    closed: newSocket ? false : v.closed,
    socketState: newSocket ? null : v.socketState,
  };
}

/** Parses one text frame; null when it is not a JSON object with a string `type`. */
export function parseServerMsg(data: unknown): ServerMsg | null {
  if (typeof data !== 'string') return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    return null;
  }
  if (typeof parsed !== 'object' || parsed === null || typeof (parsed as { type?: unknown }).type !== 'string') return null;
  return parsed as ServerMsg;
}
