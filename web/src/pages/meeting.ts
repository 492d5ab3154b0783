// /m/<id>: join a meeting over the signaling socket; lobby, admission, roster and host controls,
// and the call itself once admitted.
//
// The view is redrawn from `MeetingView` after every change (meeting/state.ts decides what
// changes). Redraws keep keyboard focus on the "same" control through `data-focus-key`.
// When the socket drops while admitted, the call's media ends (the server tore its transport
// down) and new sockets are opened with backoff; the server keeps our place for its reconnect
// grace, so the same device is admitted again directly and the call starts afresh.
// The call screen (call/view.ts) lives outside the redrawn part: it exists while admitted and
// updates its tiles in place, so video and audio keep playing across redraws.
// End-to-end encryption (e2ee/session.ts) belongs to the call: the page relays the delivery
// service's mls_* messages to the MLS worker and never holds a key; when the encryption cannot
// be trusted (a member that does not verify at `restricted`, a commit our rules refuse, the
// server's identity key changed) the page leaves the call at once and says why.

import { pageHeading, type PageContext } from '../app';
import { append, h, replaceChildren, uid, type Child } from '../dom';
import { WEB_CLIENT_NOTE, clientLabel, kindLabel, levelDescription, levelLabel } from '../format';
import type { ClientMsg, DeviceKind, LobbyEntry, Participant } from '../proto';
import { CallMedia, type LocalState } from '../call/media';
import { CallView } from '../call/view';
import { E2eeSession } from '../e2ee/session';
import { SignalingSocket } from '../meeting/socket';
import {
  RECONNECT_LIMIT_MS,
  handleClose,
  handleLeave,
  handleReconnectEnded,
  handleRetry,
  handleServerMsg,
  initialView,
  reconnectDelayMs,
  type MediaMsg,
  type MeetingView,
  type MlsMsg,
  type Phase,
} from '../meeting/state';
import { showError, showInfo } from '../status';

const PHASE_TEXT: Record<Phase, string> = {
  connecting: 'Connecting and asking to join…',
  refused: 'You are not in the meeting.',
  lobby: 'Waiting in the lobby for a host to admit you.',
  admitted: 'You are in the meeting.',
  reconnecting: 'Connection to the server lost. Reconnecting…',
  left: 'You left the meeting.',
  disconnected: 'Disconnected from the server. You are no longer in the meeting.',
};

/** How long a leave waits for the server's `left` before the media transport closes anyway. */
const LEAVE_CONFIRM_MS = 3000;

/** Reasons after which trying again cannot help until the user signs in again. */
const SESSION_REASONS = new Set(['session_ended', 'device_revoked']);

function deviceText(name: string, kind: DeviceKind): Child[] {
  return [
    'Device: ',
    name,
    ' ',
    h('span', { class: kind === 'software' ? 'badge badge-software' : 'badge badge-passkey' }, kindLabel(kind)),
    ' ',
    h('span', { class: 'badge badge-client', testid: 'client-kind', 'data-client': kind === 'software' ? 'native' : 'web', title: kind === 'software' ? null : WEB_CLIENT_NOTE }, clientLabel(kind)),
  ];
}

export function meetingPage(ctx: PageContext): void {
  const meetingId = ctx.params['id'] ?? '';
  let view: MeetingView = initialView();

  const heading = pageHeading('Meeting', { testid: 'meeting-title', id: uid('meeting-title') });
  const stateWord = h('strong', { testid: 'meeting-state', 'data-state': view.phase }, view.phase);
  const stateText = h('span', { class: 'state-text' });
  const stateLine = h('p', { class: 'state-line', 'aria-live': 'polite' }, 'Status: ', stateWord, ' — ', stateText);
  const body = h('div', { class: 'meeting-body' });
  const callRoot = h('div', { class: 'call-root' });
  append(ctx.main, h('section', { class: 'meeting', 'aria-labelledby': heading.id }, heading, stateLine, callRoot, body));

  /** The call of the current admission (null when not admitted). */
  let call: { you: string; media: CallMedia | null; e2ee: E2eeSession | null; view: CallView; leaving: boolean } | null = null;
  /** Why the page left the call on its own (encryption could not be trusted): shown after it. */
  let securityExit: string | null = null;
  /**
   * Microphone and camera as they were when a call ended by a drop: the next call starts that
   * way, so a reconnect never turns on a microphone or camera that the user had turned off.
   */
  let resumeLocal: Pick<LocalState, 'audioMuted' | 'videoMuted'> | null = null;
  /** While `reconnecting`: the next attempt and the overall limit. */
  let reconnect: { attempts: number; next: number | null; limit: number } | null = null;

  const socket = new SignalingSocket({
    onMessage: (msg) => {
      const step = handleServerMsg(view, msg);
      view = step.view;
      for (const effect of step.effects) {
        if (effect.kind === 'send_join') send({ type: 'join', meeting_id: meetingId });
        else if (effect.kind === 'show_error' && effect.code === 'media_refused' && call?.media) call.media.handleRefused(effect.message);
        else if (effect.kind === 'show_error') showError(`${effect.message} (${effect.code})`);
        else if (effect.kind === 'show_notice') showInfo(effect.message);
        else if (effect.kind === 'media') routeMedia(effect.msg);
        else if (effect.kind === 'mls') routeMls(effect.msg);
      }
      draw();
    },
    onClose: (ev) => {
      view = handleClose(view, ev.code);
      if (view.phase === 'reconnecting') scheduleReconnect();
      draw();
    },
  });
  ctx.onLeave(() => {
    stopReconnecting();
    endCall();
    socket.shutdown();
  });

  /** The next attempt after a drop (or a failed attempt); the first one starts the limit. */
  function scheduleReconnect(): void {
    reconnect ??= {
      attempts: 0,
      next: null,
      limit: window.setTimeout(() => endReconnecting(), RECONNECT_LIMIT_MS),
    };
    const r = reconnect;
    if (r.next !== null) window.clearTimeout(r.next);
    r.next = window.setTimeout(() => {
      r.next = null;
      if (reconnect === r && view.phase === 'reconnecting') socket.open();
    }, reconnectDelayMs(r.attempts));
    r.attempts += 1;
  }

  function stopReconnecting(): void {
    if (!reconnect) return;
    if (reconnect.next !== null) window.clearTimeout(reconnect.next);
    window.clearTimeout(reconnect.limit);
    reconnect = null;
  }

  /** Gives up reconnecting (time is up, or the user said so): `disconnected`, "Try again". */
  function endReconnecting(): void {
    stopReconnecting();
    if (view.phase !== 'reconnecting') return;
    socket.shutdown();
    view = handleReconnectEnded(view);
    draw();
  }

  function routeMedia(msg: MediaMsg): void {
    const media = call?.media;
    if (!media) return;
    if (msg.type === 'media_offer') media.handleOffer(msg.sdp);
    else if (msg.type === 'media_answer') media.handleAnswer(msg.sdp);
    else media.handleTracks(msg.tracks);
  }

  function routeMls(msg: MlsMsg): void {
    call?.e2ee?.handleServer(msg);
  }

  /**
   * Fail closed (DESIGN §4 `restricted`, §7): the encryption cannot be trusted any more, so the
   * call is left at once: nothing more is sent, the keys are dropped, and the page says why.
   */
  function leaveForSecurity(message: string): void {
    if (!call || call.leaving) return;
    securityExit = message;
    showError(`You left the call: ${message}`);
    call.media?.stopSending();
    call.e2ee?.close();
    leaveMeeting();
    draw();
  }

  /** Starts the call on admission, ends it on leaving; passes roster changes on. */
  function syncCall(): void {
    const you = view.phase === 'admitted' ? view.you : null;
    if (call && call.you !== you) {
      if (view.phase === 'reconnecting' && call.media) resumeLocal = { audioMuted: call.media.local.audioMuted, videoMuted: call.media.local.videoMuted };
      endCall();
    }
    if (!you) return;
    if (!call) {
      let media: CallMedia | null = null;
      let startError: string | null = null;
      const hooks = {
        send: (msg: ClientMsg) => socket.send(msg),
        changed: () => call?.view.refresh(),
        problem: (message: string) => {
          showError(message);
          call?.view.showNotice(message);
        },
      };
      const level = view.meeting?.level ?? 'restricted';
      let e2ee: E2eeSession | null = null;
      try {
        media = new CallMedia(you, level, hooks, resumeLocal ?? undefined);
        resumeLocal = null;
        if (window.__sealroom) window.__sealroom.dropSignaling = () => socket.drop();
        const m = media;
        // The MLS worker; its keys go straight to the transform worker (this page passes the port on).
        e2ee = new E2eeSession(
          meetingId,
          level,
          {
            send: (msg) => socket.send(msg),
            changed: () => call?.view.refresh(),
            fatal: (_reason, message) => leaveForSecurity(message),
            notice: (message) => call?.view.showNotice(message),
          },
          (port) => m.connectKeys(port),
        );
      } catch (e) {
        startError = e instanceof Error ? e.message : String(e);
        media?.close();
        media = null;
        e2ee = null;
      }
      securityExit = null;
      const callView = new CallView(media, startError, { leave: leaveMeeting }, e2ee, level);
      if (window.__sealroom && media) window.__sealroom.e2ee = callView.debug();
      call = { you, media, e2ee, view: callView, leaving: false };
      callRoot.replaceChildren(callView.root);
      if (media) {
        media.setParticipants(view.participants);
        void media.start().catch((e: unknown) => hooks.problem(`Audio and video could not start: ${e instanceof Error ? e.message : String(e)}`));
      }
    }
    call.media?.setParticipants(view.participants);
    call.view.setRoster(you, view.participants);
  }

  function endCall(): void {
    if (!call) return;
    call.e2ee?.close();
    call.media?.close();
    call.view.dispose();
    callRoot.replaceChildren();
    call = null;
  }

  /**
   * Nothing is sent from the moment the button is pressed; the transport itself closes when the
   * server confirms with `left` (closing it first would reach the SFU before the leave does, and
   * the server would take it for a media failure).
   */
  function leaveMeeting(): void {
    const leaving = call;
    if (leaving?.leaving) return;
    if (leaving) leaving.leaving = true;
    view = handleLeave(view);
    if (!socket.send({ type: 'leave' })) {
      endCall();
      showError('Not connected to the server. Use "Try again" to reconnect.');
      return;
    }
    leaving?.media?.stopSending();
    window.setTimeout(() => {
      if (call === leaving) endCall();
    }, LEAVE_CONFIRM_MS);
  }

  function send(msg: ClientMsg): void {
    if (!socket.send(msg)) showError('Not connected to the server. Use "Try again" to reconnect.');
  }

  function retry(): void {
    if (socket.isOpen && view.socketState !== null) {
      view = handleRetry(view, false);
      send({ type: 'join', meeting_id: meetingId });
    } else {
      view = handleRetry(view, true);
      socket.open();
    }
    draw();
  }

  const retryButton = (label: string) =>
    h('button', { type: 'button', class: 'primary', testid: 'retry-join', 'data-focus-key': 'retry', on: { click: retry } }, label);
  const leaveButton = (label: string) =>
    h(
      'button',
      {
        type: 'button',
        testid: 'leave-button',
        'data-focus-key': 'leave',
        on: {
          click: () => {
            view = handleLeave(view);
            send({ type: 'leave' });
          },
        },
      },
      label,
    );
  const backLink = () => h('a', { href: '/' }, 'Back to my meetings');

  function participantItem(p: Participant): HTMLLIElement {
    const isYou = p.id === view.you;
    const who = `${p.display_name} (${p.user_name})`;
    return h(
      'li',
      { class: 'person', testid: 'participant', 'data-user': p.user_name, 'data-participant': p.id },
      h(
        'div',
        { class: 'person-main' },
        h('strong', null, p.display_name),
        ` (${p.user_name})`,
        isYou && h('span', { class: 'badge badge-you' }, 'you'),
        p.host && h('span', { class: 'badge badge-host' }, 'host'),
        p.away && h('span', { class: 'badge badge-away', testid: 'participant-away' }, 'reconnecting'),
      ),
      h('div', { class: 'person-detail' }, ...deviceText(p.device_name, p.device_kind)),
      h('div', { class: 'person-detail' }, 'Network: ', p.network),
      view.host &&
        !isYou &&
        h(
          'div',
          { class: 'person-actions' },
          h(
            'button',
            {
              type: 'button',
              class: 'danger',
              testid: 'remove-button',
              'aria-label': `Remove ${who}`,
              'data-focus-key': `remove:${p.id}`,
              on: { click: () => send({ type: 'remove', participant_id: p.id }) },
            },
            'Remove',
          ),
        ),
    );
  }

  function lobbyItem(w: LobbyEntry): HTMLLIElement {
    const who = `${w.display_name} (${w.user_name})`;
    return h(
      'li',
      { class: 'person', testid: 'lobby-entry', 'data-user': w.user_name, 'data-participant': w.id },
      h('div', { class: 'person-main' }, h('strong', null, w.display_name), ` (${w.user_name})`),
      h('div', { class: 'person-detail' }, ...deviceText(w.device_name, w.device_kind)),
      h('div', { class: 'person-detail' }, 'Network: ', w.network),
      h(
        'div',
        { class: 'person-actions' },
        h(
          'button',
          {
            type: 'button',
            class: 'primary',
            testid: 'admit-button',
            'aria-label': `Admit ${who}`,
            'data-focus-key': `admit:${w.id}`,
            on: { click: () => send({ type: 'admit', participant_id: w.id }) },
          },
          'Admit',
        ),
        h(
          'button',
          {
            type: 'button',
            class: 'danger',
            testid: 'refuse-button',
            'aria-label': `Refuse ${who}`,
            'data-focus-key': `refuse:${w.id}`,
            on: { click: () => send({ type: 'refuse', participant_id: w.id }) },
          },
          'Refuse',
        ),
      ),
    );
  }

  function admittedBody(): Child[] {
    const m = view.meeting!;
    const fact = (label: string, value: Child, cls = '') =>
      h('div', { class: `fact ${cls}`.trim() }, h('dt', null, label), h('dd', null, value));
    const others = view.participants.filter((p) => p.id !== view.you);
    const out: Child[] = [
      h(
        'dl',
        { class: 'facts meeting-facts' },
        fact('Level', `${levelLabel(m.level)} (${levelDescription(m.level)})`, `level-${m.level}`),
        fact(
          'Lock',
          h('span', { testid: 'lock-state', 'data-locked': String(m.locked) }, m.locked ? 'locked: no one new can join' : 'unlocked'),
          m.locked ? 'is-locked' : '',
        ),
        fact('Lobby', m.lobby ? 'on' : 'off'),
        fact('Your role', view.host ? 'host' : 'participant'),
        fact('People', `${view.participants.length} of ${m.capacity}`),
      ),
    ];
    if (view.host) {
      out.push(
        h(
          'div',
          { class: 'actions host-controls' },
          h(
            'button',
            {
              type: 'button',
              testid: 'lock-toggle',
              'data-focus-key': 'lock',
              on: { click: () => send({ type: 'lock', locked: !m.locked }) },
            },
            m.locked ? 'Unlock meeting' : 'Lock meeting',
          ),
        ),
      );
    }
    const plist = h('ul', { class: 'people', testid: 'participant-list', 'aria-label': 'Participants' });
    for (const p of view.participants) plist.appendChild(participantItem(p));
    out.push(
      h(
        'section',
        { 'data-focus-fallback': 'participants' },
        h('h2', { tabindex: '-1' }, `Participants (${view.participants.length})`),
        others.length === 0 ? h('p', { class: 'empty' }, 'No one else is here yet.') : null,
        plist,
      ),
    );
    if (view.host) {
      const llist = h('ul', { class: 'people', testid: 'lobby-list', 'aria-label': 'Waiting in the lobby' });
      for (const w of view.waiting) llist.appendChild(lobbyItem(w));
      out.push(
        h(
          'section',
          { 'data-focus-fallback': 'lobby' },
          h('h2', { tabindex: '-1' }, `Lobby (${view.waiting.length} waiting)`),
          view.waiting.length === 0 ? h('p', { class: 'empty' }, 'No one is waiting.') : null,
          llist,
        ),
      );
    }
    // "Leave meeting" is among the call controls while admitted.
    return out;
  }

  function refusedBody(): Child[] {
    const r = view.refusal!;
    return [
      h(
        'div',
        { class: 'alert', role: 'alert' },
        h('p', { class: 'alert-title' }, 'Not admitted'),
        h('p', { testid: 'refusal-reason', 'data-reason': r.reason }, r.message),
        h('p', { class: 'reason-code' }, 'Reason code: ', h('code', null, r.reason)),
      ),
      view.closed && h('p', { testid: 'connection-closed' }, 'Disconnected: the server closed the connection.'),
      h(
        'div',
        { class: 'actions' },
        SESSION_REASONS.has(r.reason) ? h('a', { href: '/login', class: 'button-link' }, 'Sign in again') : retryButton('Try again'),
        backLink(),
      ),
    ];
  }

  function bodyFor(): Child[] {
    switch (view.phase) {
      case 'connecting':
        return [h('p', { class: 'loading' }, PHASE_TEXT.connecting)];
      case 'refused':
        return refusedBody();
      case 'lobby':
        return [
          h('p', { class: 'lobby-wait' }, 'Waiting in the lobby for a host to admit you. The hosts see your name, device and network.'),
          h('div', { class: 'actions' }, leaveButton('Leave the lobby')),
        ];
      case 'admitted':
        return admittedBody();
      case 'reconnecting':
        return [
          h(
            'p',
            { class: 'warning', testid: 'reconnecting' },
            'The connection to the server was lost. Reconnecting: the meeting keeps your place for a short while, and you will be back in the call without waiting in the lobby.',
          ),
          h(
            'div',
            { class: 'actions' },
            h('button', { type: 'button', testid: 'stop-reconnecting', 'data-focus-key': 'stop-reconnecting', on: { click: endReconnecting } }, 'Stop reconnecting'),
            backLink(),
          ),
        ];
      case 'left':
        return [
          securityExit
            ? h('div', { class: 'alert', role: 'alert', testid: 'security-exit' }, h('p', { class: 'alert-title' }, 'You left the call for your security'), h('p', null, securityExit))
            : null,
          h('p', null, 'You left the meeting.'),
          h('div', { class: 'actions' }, retryButton('Rejoin'), backLink()),
        ];
      case 'disconnected':
        return [
          h('p', { class: 'warning' }, 'Disconnected. You are no longer in the meeting.'),
          h('div', { class: 'actions' }, retryButton('Reconnect and join'), backLink()),
        ];
    }
  }

  function draw(): void {
    if (!ctx.alive()) return;
    // Reconnecting ends with whatever answer the join gets (admitted, lobby, refused).
    if (view.phase !== 'reconnecting') stopReconnecting();
    syncCall();
    const title = view.meeting?.title ?? 'Meeting';
    if (heading.textContent !== title) heading.textContent = title;
    document.title = `${title} · sealroom`;
    if (stateWord.dataset['state'] !== view.phase) {
      stateWord.dataset['state'] = view.phase;
      stateWord.textContent = view.phase;
      stateText.textContent = PHASE_TEXT[view.phase];
    }

    // Keep focus on the same control across the redraw.
    const active = document.activeElement;
    const hadFocus = active instanceof HTMLElement && body.contains(active);
    const key = hadFocus ? active.dataset['focusKey'] : undefined;
    const section = hadFocus ? active.closest<HTMLElement>('[data-focus-fallback]') : null;
    const fallbackKey = section?.dataset['focusFallback'];

    replaceChildren(body, ...bodyFor());

    if (hadFocus) {
      const again = key ? body.querySelector<HTMLElement>(`[data-focus-key="${CSS.escape(key)}"]`) : null;
      const fb = fallbackKey ? body.querySelector<HTMLElement>(`[data-focus-fallback="${CSS.escape(fallbackKey)}"] h2`) : null;
      (again ?? fb ?? heading).focus();
    }
  }

  stateText.textContent = PHASE_TEXT[view.phase];
  draw();
  socket.open();
}
