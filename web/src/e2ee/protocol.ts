// The messages between the three places E2EE lives in the browser:
//
//   page (main thread)  ── MlsCommand ──▶  MLS worker  ── KeyMessage (MessagePort) ──▶  transform worker
//        ▲                                     │                                              │
//        └──────────── MlsReport ──────────────┘                                              │
//        └──────────────────────────── WorkerReport (counts, SFrame statistics) ──────────────┘
//
// Keys (the SFrame base key of each epoch) travel only MLS worker → transform worker, over a
// MessageChannel whose ports the page hands over without ever reading them: the page's main
// thread sees the roster, the epoch, the security code, chat plaintext and status, never a key.
// Types only: this module is imported by all three and holds no code.

import type { ClientMsg, Level, ServerMsg, Source } from '../proto';
import type { DropReason } from './sframe';

/** The server messages that belong to the MLS delivery service. */
export type MlsServerMsg = Extract<
  ServerMsg,
  { type: 'mls_binding' | 'mls_create' | 'mls_proposal' | 'mls_commit' | 'mls_welcome' | 'mls_rejected' | 'mls_app' }
>;

/** The client messages the MLS worker asks the page to send. */
export type MlsClientMsg = Extract<ClientMsg, { type: 'mls_bind' | 'mls_key_package' | 'mls_group_info' | 'mls_commit' | 'mls_app' }>;

// ---------------------------------------------------------------------------------------------
// MLS worker → transform worker (MessagePort)

export type KeyMessage =
  /**
   * A new epoch (the member processed the commit, or joined): senders switch to it at once,
   * receivers keep the previous one under the grace rule. `members` are the leaf indices of the
   * epoch; a different `group` (a new generation) forgets every earlier key first.
   */
  | { type: 'epoch'; group: string; epoch: bigint; baseKey: Uint8Array; ownLeaf: number; members: number[] }
  /** Out of the group (removed, left, failed): forget every key; nothing is sent or decrypted. */
  | { type: 'clear' };

// ---------------------------------------------------------------------------------------------
// page → MLS worker

export type MlsCommand =
  | {
      type: 'start';
      meetingId: string;
      level: Level;
      /** This page's origin: the server id every binding must carry. */
      origin: string;
      /** The end of the channel to the transform worker. */
      keys: MessagePort;
      /** Test switch: never give the transform worker a key (it then sends and decrypts nothing). */
      withholdKeys: boolean;
    }
  | { type: 'server'; msg: MlsServerMsg }
  /**
   * The server's latest participant list, as (user name, device id) pairs, relayed in socket
   * order with the `mls_*` messages: at `restricted` a member the server never announced gets no
   * key (docs/E2EE.md §8).
   */
  | { type: 'participants'; devices: [string, string][] }
  | { type: 'chat'; id: number; text: string }
  /** Leave the group's keys behind (the call ends): the transform worker forgets them. */
  | { type: 'stop' };

// ---------------------------------------------------------------------------------------------
// MLS worker → page

/** What the page may know of one member: its leaf and what its credential says. */
export interface RosterMember {
  leaf: number;
  self: boolean;
  /** The credential verifies (docs/E2EE.md §2). */
  verified: boolean;
  /** Why it does not verify (null when it does). */
  failure: string | null;
  /** From the binding (as claimed, when it does not verify; null when unreadable). */
  userId: string | null;
  username: string | null;
  displayName: string | null;
  deviceId: string | null;
  deviceName: string | null;
  deviceKind: string | null;
}

export type MlsPhase =
  /** Asking the identity authority for a binding. */
  | 'binding'
  /** KeyPackage sent: waiting for the Welcome (or the request to create the group). */
  | 'joining'
  /** In the group: keys exist. */
  | 'member'
  /** A commit removed us. */
  | 'removed'
  /** Something refused: no keys (fail closed); `failure` says what. */
  | 'failed'
  | 'stopped';

export interface MlsStatus {
  phase: MlsPhase;
  groupId: string | null;
  /** Current epoch (a number: epochs stay far below 2^53). */
  epoch: number | null;
  ownLeaf: number | null;
  /** docs/E2EE.md §6: twenty digits in four groups of five. */
  securityCode: string | null;
  /** Hex of MLS-Exporter("sealroom test", "", 16): equal on every member of an epoch (tests). */
  checkValue: string | null;
  members: RosterMember[];
  /** Server proposals waiting for a commit (chat is held meanwhile). */
  pendingProposals: number;
  /** Our commit is out, waiting for the delivery service's echo. */
  commitPending: boolean;
  /** Chat messages held until the pending proposals are committed. */
  heldChat: number;
  /** Why we are not (or no longer) in the group. */
  failure: { reason: string; message: string } | null;
  keysWithheld: boolean;
  /** Epoch changes seen, and commits of ours the delivery service accepted / refused. */
  commits: { seen: number; ours: number; refused: number };
}

export type MlsReport =
  | { type: 'send'; msg: MlsClientMsg }
  | { type: 'status'; status: MlsStatus }
  /** A chat message: from another member (decrypted), or ours once it went out (`id` set). */
  | { type: 'chat'; fromLeaf: number; self: boolean; text: string; epoch: number; id: number | null }
  /** Our chat message `id` could not be sent. */
  | { type: 'chat_failed'; id: number; message: string }
  /** Something the user should know about (a refused message, a refused commit); not fatal. */
  | { type: 'notice'; message: string };

// ---------------------------------------------------------------------------------------------
// transform worker → page

/** Per sending leaf (from the KID): what arrived and what became of it. */
export interface LeafStats {
  decrypted: number;
  failed: Partial<Record<DropReason, number>>;
  /** Sources (from the KID's context id) seen decrypting. */
  sources: Source[];
  /** When the first frame of this leaf decrypted (Date.now(); null: none yet), for benchmarks. */
  firstDecryptedAt: number | null;
}

/** Per receiving transceiver (mid). */
export interface MidStats {
  /** Sender leaf of the last frame whose KID could be read. */
  leaf: number | null;
  /** Source of the last decrypted frame (KID context id). */
  source: Source | null;
  /** Epoch of the last decrypted frame. */
  epoch: number | null;
  received: number;
  decrypted: number;
  /** Frames arrive on it, and none decrypted for 2 s (security warning). */
  stalled: boolean;
  /** Milliseconds since the last decrypted frame (null: never). */
  sinceDecryptedMs: number | null;
}

/** Time the transform worker spent on frames: sums of performance.now() deltas. */
export interface FrameTiming {
  frames: number;
  /** Milliseconds, summed over `frames`. */
  totalMs: number;
  /** Frame bytes in (before the transform), summed over `frames`. */
  bytes: number;
}

/**
 * The cost of SFrame in the transform worker, per frame that went through (benchmarks read it):
 * `encrypt` and `decrypt` from the frame as delivered to the frame ready to pass on (reading and
 * replacing its data, header, WebCrypto AES-GCM with its await, bookkeeping; an early frame's
 * wait for its epoch's key is not counted); `copy` is the identity baseline measured the same way
 * on a sample of the same frames (every 8th, both sides): reading the frame's data and copying
 * it, what a transform without crypto would do at least. Per media kind (Opus frames are a few
 * hundred bytes, VP8 frames kilobytes).
 */
export interface SframeTiming {
  encrypt: FrameTiming;
  decrypt: FrameTiming;
  copy: FrameTiming;
}

export interface SframeStats {
  /** The epoch the transform worker holds keys for (null: none). */
  keyEpoch: number | null;
  /** Frames encrypted, per source. */
  encrypted: Partial<Record<Source, number>>;
  /** Outgoing frames dropped: no key yet, or not a valid frame of its codec. */
  sendDropped: number;
  /** Incoming frames, per sender leaf. */
  byLeaf: Record<string, LeafStats>;
  /** Incoming frames dropped before any KID could be read. */
  unattributed: Partial<Record<DropReason, number>>;
  byMid: Record<string, MidStats>;
  /** Early frames held until the next epoch's key arrived (DESIGN §7: up to 300 ms). */
  heldEarly: number;
  /** The last few dropped incoming frames, for diagnosis (no content, only where and why). */
  recentDrops: { mid: string; reason: DropReason; leaf: number | null; epochLow: number | null; context: number | null; ctr: string | null; keyFrame: boolean | null; at: number }[];
  timing: Record<'audio' | 'video', SframeTiming>;
}

/** Frames passed on per side, frames dropped, and per transform key. */
export interface FrameCounts {
  send: number;
  receive: number;
  dropped: number;
  /** Frames that reached a transform (passed on or dropped), per `send:<source>` / `receive:<mid>`. */
  byTransceiver: Record<string, number>;
  sframe: SframeStats;
}

/** Transform worker → page. */
export type WorkerReport = { type: 'counts'; counts: FrameCounts };

/** Page → transform worker: the end of the key channel from the MLS worker. */
export type TransformCommand = { type: 'keys'; port: MessagePort };
