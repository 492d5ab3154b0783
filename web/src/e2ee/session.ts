// The page side of end-to-end encryption for one call: starts the MLS worker, relays the
// delivery service's mls_* messages to it and its messages to the server, connects it to the
// transform worker with a MessageChannel (keys go worker to worker; the page only passes the
// port on), pins the server's identity key per origin on first use (docs/E2EE.md §2), and keeps
// what the call screen shows: status (epoch, security code, roster) and chat.

import type { ClientMsg, Level, Participant } from '../proto';
import { CHAT_MAX_CHARS } from './mls';
import type { MlsCommand, MlsReport, MlsServerMsg, MlsStatus } from './protocol';
import workerUrl from './mls-worker.ts?worker&url';
import { trustedWorkerUrl } from './worker-url';

export { CHAT_MAX_CHARS };

/** localStorage key of the pinned server identity key (standard base64). */
const PIN_KEY = 'sealroom.serverIdentityKey';

export interface ChatEntry {
  /** Local sequence number (ours: the id we sent it with). */
  n: number;
  fromLeaf: number | null;
  self: boolean;
  text: string;
  epoch: number | null;
  state: 'sending' | 'sent' | 'received' | 'failed';
  /** Why it failed (ours). */
  problem: string | null;
  at: number;
}

export interface E2eeHooks {
  send(msg: ClientMsg): boolean;
  /** Status, roster or chat changed. */
  changed(): void;
  /** We can no longer take part safely: the caller leaves the call at once. */
  fatal(reason: string, message: string): void;
  notice(message: string): void;
}

export function initialStatus(withheld: boolean): MlsStatus {
  return {
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
    keysWithheld: withheld,
    commits: { seen: 0, ours: 0, refused: 0 },
  };
}

/** Test switches read when a call or a signaling socket starts (set with Playwright's addInitScript). */
export interface TestFlags {
  /** The MLS worker never gives the transform worker a key ("without keys" check). */
  withholdKeys?: boolean;
  /** Signaling pings this often instead of every 20 s (the dead-connection check). */
  pingIntervalMs?: number;
  /** A ping unanswered this long drops the socket, instead of 10 s. */
  pongTimeoutMs?: number;
}

export function testFlags(): TestFlags {
  return (window as unknown as { __sealroomTestFlags?: TestFlags }).__sealroomTestFlags ?? {};
}

export class E2eeSession {
  private readonly worker: Worker;
  status: MlsStatus;
  readonly chat: ChatEntry[] = [];
  private nextChat = 1;
  private stopped = false;
  private fatalSent = false;
  private announcedKey = '';

  /**
   * Starts the MLS worker; `keysPort` receives the other end of the key channel (give it to the
   * transform worker unread). Throws when the worker cannot start.
   */
  constructor(
    meetingId: string,
    private readonly level: Level,
    private readonly hooks: E2eeHooks,
    keysPort: (port: MessagePort) => void,
  ) {
    const withhold = testFlags().withholdKeys === true;
    this.status = initialStatus(withhold);
    this.worker = new Worker(trustedWorkerUrl(workerUrl), { type: 'module', name: 'sealroom-mls' });
    this.worker.addEventListener('message', (ev: MessageEvent<MlsReport>) => this.onReport(ev.data));
    this.worker.addEventListener('error', () => this.fail('worker', 'The encryption worker stopped.'));
    const channel = new MessageChannel();
    keysPort(channel.port2);
    const start: MlsCommand = { type: 'start', meetingId, level, origin: location.origin, keys: channel.port1, withholdKeys: withhold };
    this.worker.postMessage(start, [channel.port1]);
  }

  get withheld(): boolean {
    return this.status.keysWithheld;
  }

  /** One mls_* message from the server. */
  handleServer(msg: MlsServerMsg): void {
    if (this.stopped) return;
    if (msg.type === 'mls_binding' && !this.checkPin(msg.identity_key)) return;
    this.post({ type: 'server', msg });
  }

  /**
   * The server's participant list (every one it sends, in socket order): the MLS worker hands
   * out no key at `restricted` while a member the server never announced is in the group.
   */
  announce(participants: readonly Participant[]): void {
    if (this.stopped) return;
    const devices = participants.map((p): [string, string] => [p.user_name, p.device_id]);
    const key = JSON.stringify(devices);
    if (key === this.announcedKey) return;
    this.announcedKey = key;
    this.post({ type: 'participants', devices });
  }

  /** Sends a chat message (held by the worker while proposals are pending). */
  sendChat(text: string): string | null {
    const t = text.trim();
    if (t === '') return 'Type a message first.';
    if ([...t].length > CHAT_MAX_CHARS) return `A message has at most ${CHAT_MAX_CHARS} characters.`;
    if (this.status.phase !== 'member') return 'Not in the encrypted group yet: chat waits for the keys.';
    const n = this.nextChat++;
    this.chat.push({ n, fromLeaf: this.status.ownLeaf, self: true, text: t, epoch: null, state: 'sending', problem: null, at: Date.now() });
    this.trimChat();
    this.post({ type: 'chat', id: n, text: t });
    this.hooks.changed();
    return null;
  }

  /** The call ends: the keys are forgotten and the worker stops. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.post({ type: 'stop' });
    // Let the worker clear the transform worker's keys first, then end it.
    const w = this.worker;
    window.setTimeout(() => w.terminate(), 200);
  }

  private post(cmd: MlsCommand): void {
    this.worker.postMessage(cmd);
  }

  /**
   * docs/E2EE.md §2: the server's identity key is pinned per origin on first use; a different
   * key later is refused (this protects only against a server that changes keys between visits).
   */
  private checkPin(key: string): boolean {
    let pinned: string | null = null;
    try {
      pinned = localStorage.getItem(PIN_KEY);
      if (pinned === null) localStorage.setItem(PIN_KEY, key);
    } catch {
      pinned = null; // no storage: nothing to compare with
    }
    if (pinned !== null && pinned !== key) {
      this.fail('identity-key-changed', 'The server’s identity key is not the one this browser saw before. Someone may be impersonating the server: the call was left.');
      return false;
    }
    return true;
  }

  /**
   * Fail closed from the page's side (a rule that needs the server's participant list: an MLS
   * member the server does not announce, at `restricted`): the keys go, the call is left.
   */
  failClosed(reason: string, message: string): void {
    if (this.stopped || this.status.phase === 'failed') return;
    this.fail(reason, message);
  }

  private fail(reason: string, message: string): void {
    this.status = { ...this.status, phase: 'failed', failure: { reason, message } };
    this.post({ type: 'stop' });
    this.raiseFatal(reason, message);
    this.hooks.changed();
  }

  private raiseFatal(reason: string, message: string): void {
    if (this.fatalSent || this.stopped) return;
    this.fatalSent = true;
    this.hooks.fatal(reason, message);
  }

  private trimChat(): void {
    if (this.chat.length > 500) this.chat.splice(0, this.chat.length - 500);
  }

  private onReport(r: MlsReport): void {
    if (this.stopped) return;
    switch (r.type) {
      case 'send':
        this.hooks.send(r.msg);
        return;
      case 'status':
        this.status = r.status;
        // Out of the group (refused, or removed by a commit while the server keeps us admitted):
        // no keys, so the call is left rather than kept up without encryption.
        if ((r.status.phase === 'failed' || r.status.phase === 'removed') && r.status.failure) this.raiseFatal(r.status.failure.reason, r.status.failure.message);
        // At `restricted`, a member whose credential does not verify ends our participation.
        if (this.level === 'restricted') {
          const bad = r.status.members.find((m) => !m.verified);
          if (bad) this.fail('unverified-member', `A member (leaf ${bad.leaf}, claiming ${bad.displayName ?? 'nobody'}) has a credential that does not verify (${bad.failure ?? 'unknown'}).`);
        }
        this.hooks.changed();
        return;
      case 'chat': {
        if (r.self && r.id !== null) {
          const mine = this.chat.find((c) => c.self && c.n === r.id);
          if (mine) {
            mine.state = 'sent';
            mine.epoch = r.epoch;
            mine.fromLeaf = r.fromLeaf;
          }
        } else {
          this.chat.push({ n: this.nextChat++, fromLeaf: r.fromLeaf, self: false, text: r.text, epoch: r.epoch, state: 'received', problem: null, at: Date.now() });
          this.trimChat();
        }
        this.hooks.changed();
        return;
      }
      case 'chat_failed': {
        const mine = this.chat.find((c) => c.self && c.n === r.id);
        if (mine) {
          mine.state = 'failed';
          mine.problem = r.message;
        }
        this.hooks.changed();
        return;
      }
      case 'notice':
        this.hooks.notice(r.message);
        return;
    }
  }
}
