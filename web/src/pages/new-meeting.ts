// /meetings/new: create a meeting (organisers and admins).

import { api } from '../api';
import { pageHeading, reportError, type PageContext } from '../app';
import { append, checkbox, field, h, replaceChildren, uid } from '../dom';
import { levelDescription, mayOrganise, safeHttpUrl } from '../format';
import type { CreateMeeting, Level, UserRef } from '../proto';
import { showError, showInfo } from '../status';
import { meetingPath } from './home';

const LEVELS: Level[] = ['open', 'internal', 'restricted'];

/** Splits "alice, bob ,," into ["alice", "bob"]. */
export function splitNames(text: string): string[] {
  return text
    .split(/[,\s]+/)
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function unique(names: string[]): string[] {
  return [...new Set(names)];
}

/** `datetime-local` value → unix seconds, or null when empty. */
function unixSeconds(value: string): number | null {
  if (value === '') return null;
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? null : Math.floor(ms / 1000);
}

interface Picker {
  element: HTMLElement;
  checked(): string[];
}

/** A fieldset of checkboxes, one per user, plus a free-text field of comma-separated names. */
function userPicker(legend: string, users: UserRef[], textTestId: string, textLabel: string): Picker & { text: HTMLInputElement } {
  const boxes: HTMLInputElement[] = [];
  const fs = h('fieldset', { class: 'picker' }, h('legend', null, legend));
  if (users.length > 0) {
    const grid = h('div', { class: 'picker-grid' });
    for (const u of users) {
      const { wrap, input } = checkbox(`${u.display_name} (${u.name})`, { value: u.name, 'data-user': u.name });
      boxes.push(input);
      grid.appendChild(wrap);
    }
    fs.appendChild(grid);
  }
  const text = h('input', { type: 'text', testid: textTestId, autocomplete: 'off', placeholder: 'e.g. alice, bob' });
  fs.appendChild(field(textLabel, text, 'User names, separated by commas.'));
  return {
    element: fs,
    text,
    checked: () => [...boxes.filter((b) => b.checked).map((b) => b.value), ...splitNames(text.value)],
  };
}

export async function newMeetingPage(ctx: PageContext): Promise<void> {
  const me = ctx.me!;
  append(ctx.main, pageHeading('New meeting'));
  if (!mayOrganise(me.role)) {
    append(ctx.main, h('p', { class: 'warning', role: 'note' }, 'Only organisers and administrators can create meetings.'));
    return;
  }

  let users: UserRef[] = [];
  try {
    users = await api.users();
  } catch (e) {
    // The form still works with typed names.
    reportError(e);
  }
  if (!ctx.alive()) return;
  users = users.filter((u) => u.name !== me.name);

  const title = h('input', { type: 'text', testid: 'meeting-title-input', required: true, maxlength: '120', autocomplete: 'off' });
  const level = h('select', { testid: 'meeting-level-select' });
  for (const l of LEVELS) level.appendChild(h('option', { value: l }, `${l}: ${levelDescription(l)}`));
  level.value = 'internal';
  const invitees = userPicker('Invitees', users, 'meeting-invitees', 'Other invitees');
  const hosts = userPicker('Hosts (also invited)', users, 'meeting-hosts', 'Other hosts');
  const startsAt = h('input', { type: 'datetime-local' });
  const endsAt = h('input', { type: 'datetime-local' });
  const lobby = checkbox('Lobby: a host admits each person', { testid: 'meeting-lobby-checkbox' });
  const restrictedNote = h('p', { class: 'hint', id: uid('hint') }, 'Restricted meetings always have a lobby.');
  const capacity = h('input', { type: 'number', testid: 'meeting-capacity', min: '1', max: '1000', step: '1', value: '50', required: true });
  const submit = h('button', { type: 'submit', class: 'primary', testid: 'meeting-create-button' }, 'Create meeting');
  const result = h('div', { class: 'result', 'aria-live': 'polite' });

  // Restricted meetings always have a lobby: keep the box ticked (not disabled, so it stays
  // focusable and its state is still read out).
  const syncLobby = () => {
    const restricted = level.value === 'restricted';
    if (restricted) lobby.input.checked = true;
    restrictedNote.hidden = !restricted;
  };
  level.addEventListener('change', syncLobby);
  lobby.input.addEventListener('change', syncLobby);
  lobby.input.setAttribute('aria-describedby', restrictedNote.id);
  syncLobby();

  const form = h(
    'form',
    { class: 'form', novalidate: true },
    field('Title', title),
    field('Level', level),
    invitees.element,
    hosts.element,
    h('div', { class: 'row' }, field('Starts (optional)', startsAt), field('Ends (optional)', endsAt)),
    lobby.wrap,
    restrictedNote,
    field('Capacity', capacity, 'Most people admitted at the same time.'),
    h('div', { class: 'actions' }, submit),
  );

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void (async () => {
      const t = title.value.trim();
      if (t === '') {
        showError('Give the meeting a title.');
        title.focus();
        return;
      }
      const cap = Number(capacity.value);
      if (!Number.isInteger(cap) || cap < 1) {
        showError('Capacity must be a whole number of at least 1.');
        capacity.focus();
        return;
      }
      const hostNames = unique(hosts.checked()).filter((n) => n !== me.name);
      const body: CreateMeeting = {
        title: t,
        level: level.value as Level,
        // A host who is not invited could not join, so hosts are invited too.
        invitees: unique([...invitees.checked(), ...hostNames]).filter((n) => n !== me.name),
        hosts: hostNames,
        starts_at: unixSeconds(startsAt.value),
        ends_at: unixSeconds(endsAt.value),
        lobby: level.value === 'restricted' ? true : lobby.input.checked,
        capacity: cap,
      };
      if (body.starts_at !== null && body.ends_at !== null && body.ends_at <= body.starts_at) {
        showError('The end must be after the start.');
        endsAt.focus();
        return;
      }
      submit.disabled = true;
      try {
        showInfo('Creating the meeting…');
        const created = await api.createMeeting(body);
        if (!ctx.alive()) return;
        const href = safeHttpUrl(created.url) ?? meetingPath(created.id);
        const link = h('a', { href, testid: 'meeting-created-link' }, created.url);
        replaceChildren(
          result,
          h('h2', null, 'Meeting created'),
          h('p', null, 'Share this link with the invitees; only they can join, from an enrolled device: ', link),
          h('p', null, h('a', { href: meetingPath(created.id), class: 'button-link' }, 'Open the meeting')),
        );
        showInfo(`Meeting "${t}" created.`);
        link.focus();
      } catch (e) {
        if (ctx.alive()) reportError(e);
      } finally {
        submit.disabled = false;
      }
    })();
  });

  append(ctx.main, form, result);
}
