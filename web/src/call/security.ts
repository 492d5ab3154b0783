// The call's end-to-end encryption panel: the security code (with epoch, member count and
// level, readable aloud), the roster drawn from our own MLS group state joined with the server's
// participant list (verified or not, device, device kind, network, and every disagreement),
// security warnings, and the encrypted chat. Everything is text (DESIGN §7: user-supplied text
// only ever reaches the DOM as text; every security state has words, not only colour).

import { h, uid } from '../dom';
import { clientLabel, levelLabel } from '../format';
import type { Level } from '../proto';
import type { ChatEntry, E2eeSession } from '../e2ee/session';
import { CHAT_MAX_CHARS } from '../e2ee/session';
import type { MlsStatus, RosterMember } from '../e2ee/protocol';
import type { RosterRow } from '../e2ee/roster';

function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

function setData(el: HTMLElement, name: string, value: string): void {
  if (el.dataset[name] !== value) el.dataset[name] = value;
}

/** "01234 56789 …" spoken digit by digit: "0 1 2 3 4, 5 6 7 8 9, …". */
export function spokenCode(code: string): string {
  return code
    .split(' ')
    .map((g) => g.split('').join(' '))
    .join(', ');
}

const PHASE_TEXT: Record<MlsStatus['phase'], string> = {
  binding: 'Getting this device’s credential from the server…',
  joining: 'Waiting to be added to the encrypted group…',
  member: 'End-to-end encrypted',
  removed: 'Removed from the encrypted group: no keys',
  failed: 'Encryption failed: no keys, nothing is sent',
  stopped: 'Encryption stopped',
};

const STATE_TEXT: Record<RosterRow['state'], string> = {
  verified: 'verified',
  unverified: 'NOT VERIFIED',
  'not-announced': 'verified, but not announced by the server',
  'no-keys': 'no keys',
  joining: 'joining (no keys yet)',
};

/** Who a member is, from its credential: "Bob Member (bob)". */
export function memberName(m: RosterMember | null): string {
  if (!m) return 'unknown sender';
  const name = m.displayName ?? 'unreadable credential';
  return m.username ? `${name} (${m.username})` : name;
}

export function deviceKindText(kind: string | null): string {
  return kind === 'software' ? 'software device' : kind === 'passkey' ? 'passkey' : (kind ?? 'unknown kind');
}

export class SecurityPanel {
  readonly root: HTMLElement;
  readonly chatRoot: HTMLElement;
  private readonly phase: HTMLParagraphElement;
  private readonly code: HTMLElement;
  private readonly codeFacts: HTMLParagraphElement;
  private readonly warnings: HTMLDivElement;
  private readonly roster: HTMLUListElement;
  private rosterKey = '';
  private readonly chatLog: HTMLOListElement;
  private readonly chatInput: HTMLTextAreaElement;
  private readonly chatSend: HTMLButtonElement;
  private readonly chatNote: HTMLParagraphElement;
  private chatKey = '';
  private warningsKey = '';

  constructor(
    private readonly session: E2eeSession | null,
    private readonly level: Level,
  ) {
    const headingId = uid('e2ee-heading');
    this.phase = h('p', { class: 'e2ee-phase', testid: 'e2ee-status', 'aria-live': 'polite' });
    this.code = h('strong', { class: 'security-code', testid: 'security-code' });
    this.codeFacts = h('p', { class: 'security-facts', testid: 'security-facts' });
    this.warnings = h('div', { class: 'e2ee-warnings', testid: 'e2ee-warnings', role: 'alert' });
    this.roster = h('ul', { class: 'people e2ee-roster', testid: 'e2ee-roster', 'aria-label': 'Encrypted group members' });
    this.root = h(
      'section',
      { class: 'e2ee', 'aria-labelledby': headingId, testid: 'e2ee-panel' },
      h('h3', { id: headingId }, 'End-to-end encryption'),
      this.phase,
      h('div', { class: 'security-code-box', role: 'group', 'aria-label': 'Security code' }, h('p', { class: 'security-code-line' }, 'Security code: ', this.code), this.codeFacts),
      h('p', { class: 'e2ee-hint' }, 'Read the code aloud with the others: everyone in the same encrypted group sees the same code. It changes whenever someone joins or leaves.'),
      this.warnings,
      h('h4', null, 'Who holds the keys'),
      this.roster,
    );

    const chatHeading = uid('chat-heading');
    const inputId = uid('chat-input');
    this.chatLog = h('ol', { class: 'chat-log', testid: 'chat-log', 'aria-live': 'polite', 'aria-label': 'Chat messages' });
    this.chatInput = h('textarea', { id: inputId, testid: 'chat-input', rows: 2, maxlength: CHAT_MAX_CHARS });
    this.chatSend = h('button', { type: 'submit', testid: 'chat-send' }, 'Send');
    this.chatNote = h('p', { class: 'chat-note', testid: 'chat-note', 'aria-live': 'polite' });
    const form = h(
      'form',
      {
        class: 'chat-form',
        on: {
          submit: (ev) => {
            ev.preventDefault();
            this.submit();
          },
        },
      },
      h('label', { for: inputId }, 'Message (end-to-end encrypted)'),
      this.chatInput,
      this.chatSend,
    );
    this.chatInput.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this.submit();
      }
    });
    this.chatRoot = h('section', { class: 'chat', 'aria-labelledby': chatHeading, testid: 'chat' }, h('h3', { id: chatHeading }, 'Chat'), this.chatLog, form, this.chatNote);
    if (!session) {
      this.chatInput.disabled = true;
      this.chatSend.disabled = true;
    }
  }

  private submit(): void {
    const s = this.session;
    if (!s) return;
    const problem = s.sendChat(this.chatInput.value);
    if (problem) {
      setText(this.chatNote, problem);
      return;
    }
    this.chatInput.value = '';
    setText(this.chatNote, '');
  }

  update(status: MlsStatus, rows: RosterRow[], warnings: string[], chat: readonly ChatEntry[]): void {
    const inGroup = status.phase === 'member';
    setText(this.phase, status.failure && status.phase !== 'member' ? `${PHASE_TEXT[status.phase]}: ${status.failure.message}` : PHASE_TEXT[status.phase] + (status.keysWithheld ? ' (test switch: media keys withheld)' : ''));
    setData(this.phase, 'phase', status.phase);
    const code = inGroup && status.securityCode ? status.securityCode : '—';
    setText(this.code, code);
    setData(this.code, 'code', inGroup ? (status.securityCode ?? '') : '');
    setData(this.code, 'epoch', status.epoch === null ? '' : String(status.epoch));
    if (inGroup && status.securityCode) this.code.setAttribute('aria-label', spokenCode(status.securityCode));
    else this.code.removeAttribute('aria-label');
    const n = status.members.length;
    setText(
      this.codeFacts,
      inGroup
        ? `Epoch ${status.epoch ?? '?'} · ${n} member${n === 1 ? '' : 's'} · level ${levelLabel(this.level)}`
        : `No encrypted group yet · level ${levelLabel(this.level)}`,
    );

    const wkey = JSON.stringify(warnings);
    if (wkey !== this.warningsKey) {
      this.warningsKey = wkey;
      this.warnings.replaceChildren(...warnings.map((w) => h('p', { class: 'e2ee-warning', testid: 'e2ee-warning' }, 'Security warning: ', w)));
      this.warnings.hidden = warnings.length === 0;
    }

    const rkey = JSON.stringify(rows.map((r) => [r.key, r.state, r.flags, r.self, r.member, r.participant?.network, r.participant?.id]));
    if (rkey !== this.rosterKey) {
      this.rosterKey = rkey;
      this.roster.replaceChildren(...rows.map((r) => this.rosterItem(r)));
    }

    const ckey = JSON.stringify([chat.map((c) => [c.n, c.state, c.fromLeaf]), status.members.map((m) => m.leaf), status.heldChat]);
    if (ckey !== this.chatKey) {
      this.chatKey = ckey;
      this.chatLog.replaceChildren(...chat.map((c) => this.chatItem(c, status.members)));
      if (status.heldChat > 0) setText(this.chatNote, 'Held until the group has taken in the latest change (a few seconds).');
      else if (this.chatNote.textContent?.startsWith('Held')) setText(this.chatNote, '');
    }
    const canChat = this.session !== null && inGroup;
    this.chatSend.disabled = !canChat;
    this.chatInput.disabled = this.session === null || status.phase === 'failed' || status.phase === 'removed' || status.phase === 'stopped';
  }

  private rosterItem(r: RosterRow): HTMLLIElement {
    const m = r.member;
    const p = r.participant;
    const name = m ? memberName(m) : p ? `${p.display_name} (${p.user_name})` : 'unknown';
    const kind = m ? m.deviceKind : p ? p.device_kind : null;
    const device = m ? `${m.deviceName ?? 'unknown device'} (${deviceKindText(kind)}, ${clientLabel(kind)})` : p ? `${p.device_name} (${deviceKindText(kind)}, ${clientLabel(kind)})` : '';
    return h(
      'li',
      {
        class: `person roster-${r.state}`,
        testid: 'roster-member',
        'data-state': r.state,
        'data-leaf': m ? String(m.leaf) : '',
        'data-user': m?.username ?? p?.user_name ?? '',
        'data-device': m?.deviceId ?? p?.device_id ?? '',
        'data-self': String(r.self),
      },
      h('div', { class: 'person-main' }, h('strong', null, name), r.self ? h('span', { class: 'badge badge-you' }, 'you') : null, ' ', h('span', { class: `badge badge-key-${r.state}`, testid: 'roster-state' }, STATE_TEXT[r.state])),
      device && h('div', { class: 'person-detail' }, 'Device: ', device),
      h('div', { class: 'person-detail' }, 'Network (server’s view): ', p ? p.network : 'unknown'),
      m && h('div', { class: 'person-detail' }, `Leaf ${m.leaf}`),
      r.flags.length > 0 && h('ul', { class: 'roster-flags' }, ...r.flags.map((f) => h('li', { testid: 'roster-flag' }, f))),
    );
  }

  private chatItem(c: ChatEntry, members: RosterMember[]): HTMLLIElement {
    const m = c.fromLeaf === null ? null : (members.find((x) => x.leaf === c.fromLeaf) ?? null);
    const who = c.self ? 'You' : m ? `${m.displayName ?? 'unknown'}${m.verified ? '' : ' (NOT VERIFIED)'}` : `leaf ${c.fromLeaf ?? '?'} (no longer in the group)`;
    const state = c.state === 'sending' ? ' (sending…)' : c.state === 'failed' ? ` (not sent: ${c.problem ?? 'error'})` : '';
    return h(
      'li',
      { class: 'chat-message', testid: 'chat-message', 'data-self': String(c.self), 'data-state': c.state, 'data-from-leaf': c.fromLeaf === null ? '' : String(c.fromLeaf) },
      h('strong', { class: 'chat-from' }, who),
      ': ',
      h('span', { class: 'chat-text', testid: 'chat-text' }, c.text),
      state,
    );
  }
}
