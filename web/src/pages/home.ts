// /: the meetings I am invited to.

import { api } from '../api';
import { pageHeading, type PageContext } from '../app';
import { append, h } from '../dom';
import { levelDescription, levelLabel, mayOrganise, windowLabel } from '../format';
import type { MeetingSummary } from '../proto';

export function meetingPath(id: string): string {
  return `/m/${encodeURIComponent(id)}`;
}

function meetingItem(m: MeetingSummary): HTMLLIElement {
  const fact = (label: string, value: string, cls = '') =>
    h('div', { class: `fact ${cls}`.trim() }, h('dt', null, label), h('dd', null, value));
  return h(
    'li',
    { class: 'meeting-item', testid: 'meeting-item', 'data-meeting': m.id },
    h('h2', { class: 'meeting-name' }, h('a', { href: meetingPath(m.id) }, m.title)),
    h(
      'dl',
      { class: 'facts' },
      fact('Level', `${levelLabel(m.level)} (${levelDescription(m.level)})`, `level-${m.level}`),
      fact('When', windowLabel(m.starts_at, m.ends_at)),
      fact('Lobby', m.lobby ? 'on: a host admits each person' : 'off'),
      fact('Locked', m.locked ? 'yes: no one new can join' : 'no'),
      fact('Your part', m.host ? 'host' : 'invited'),
      fact('Organiser', m.organiser),
    ),
  );
}

export async function homePage(ctx: PageContext): Promise<void> {
  const me = ctx.me!;
  const heading = pageHeading('My meetings');
  append(ctx.main, heading);
  if (mayOrganise(me.role)) {
    append(ctx.main, h('p', null, h('a', { href: '/meetings/new', class: 'button-link' }, 'Create a meeting')));
  }
  const meetings = await api.meetings();
  if (!ctx.alive()) return;
  const list = h('ul', { class: 'meeting-list', testid: 'meeting-list', 'aria-label': 'Meetings you are invited to' });
  for (const m of meetings) list.appendChild(meetingItem(m));
  append(ctx.main, meetings.length === 0 ? h('p', { class: 'empty' }, 'You are not invited to any meetings yet.') : null, list);
}
