// /admin: users and their devices, enrolment links (role admin; the server enforces it).

import { api } from '../api';
import { pageHeading, reportError, type PageContext } from '../app';
import { actionButton, append, checkbox, field, h, replaceChildren, timeEl } from '../dom';
import type { DeviceView, EnrolmentLink, EnrolmentView, Role, UserView } from '../proto';
import { showError, showInfo } from '../status';
import { deviceFacts } from './devices';

const ROLES: Role[] = ['member', 'organiser', 'admin'];

export async function adminPage(ctx: PageContext): Promise<void> {
  const me = ctx.me!;
  append(ctx.main, pageHeading('Administration'));
  if (me.role !== 'admin') {
    append(ctx.main, h('p', { class: 'warning', role: 'note' }, 'Only administrators can use this page.'));
    return;
  }

  // --- The latest enrolment link (one field, so there is exactly one `enrolment-url`). ---
  const linkFor = h('p', { class: 'link-for' });
  const urlField = h('input', { type: 'text', readonly: true, testid: 'enrolment-url', class: 'mono', autocomplete: 'off', spellcheck: 'false' });
  const copyButton = h('button', { type: 'button', testid: 'enrolment-copy' }, 'Copy');
  copyButton.addEventListener('click', () => void copyLink());
  const linkPanel = h(
    'section',
    { class: 'card link-panel', hidden: true, 'aria-labelledby': 'enrolment-link-heading' },
    h('h2', { id: 'enrolment-link-heading', tabindex: '-1' }, 'Enrolment link'),
    linkFor,
    h('div', { class: 'copy-row' }, field('Link', urlField), copyButton),
    h('p', { class: 'hint' }, 'Give this link to the person over a trusted channel. It works once, on the device where they open it. Anyone holding it can enrol as that person until it is used, revoked or expires.'),
  );

  async function copyLink(): Promise<void> {
    urlField.select();
    try {
      await navigator.clipboard.writeText(urlField.value);
      showInfo('Link copied.');
    } catch {
      showInfo('Press Ctrl+C (or ⌘C) to copy the selected link.');
    }
  }

  function showLink(link: EnrolmentLink): void {
    replaceChildren(linkFor, `For ${link.enrolment.user_name}; expires `, timeEl(link.enrolment.expires_at), '.');
    urlField.value = link.url;
    linkPanel.hidden = false;
    urlField.focus();
    urlField.select();
  }

  // --- Create a user. ---
  const nameInput = h('input', { type: 'text', testid: 'admin-user-name', required: true, autocomplete: 'off', spellcheck: 'false', maxlength: '64' });
  const displayInput = h('input', { type: 'text', testid: 'admin-display-name', required: true, autocomplete: 'off', maxlength: '100' });
  const roleSelect = h('select', { testid: 'admin-role' });
  for (const r of ROLES) roleSelect.appendChild(h('option', { value: r }, r));
  const createButton = h('button', { type: 'submit', class: 'primary', testid: 'admin-create-user' }, 'Create user and enrolment link');
  const createForm = h(
    'form',
    { class: 'form', novalidate: true, 'aria-labelledby': 'create-user-heading' },
    h('h2', { id: 'create-user-heading' }, 'Create a user'),
    h(
      'div',
      { class: 'row' },
      field('User name', nameInput, 'Lower-case letters, digits, dots, dashes.'),
      field('Display name', displayInput),
      field('Role', roleSelect),
    ),
    h('div', { class: 'actions' }, createButton),
  );
  createForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void (async () => {
      const name = nameInput.value.trim();
      const displayName = displayInput.value.trim();
      if (name === '' || displayName === '') {
        showError('Enter a user name and a display name.');
        (name === '' ? nameInput : displayInput).focus();
        return;
      }
      createButton.disabled = true;
      try {
        const link = await api.adminCreateUser({ name, display_name: displayName, role: roleSelect.value as Role });
        if (!ctx.alive()) return;
        showInfo(`Created ${displayName} (${name}).`);
        nameInput.value = '';
        displayInput.value = '';
        showLink(link);
        await reload();
      } catch (e) {
        if (ctx.alive()) reportError(e);
      } finally {
        createButton.disabled = false;
      }
    })();
  });

  // --- Users and their devices. ---
  const userList = h('ul', { class: 'user-list', 'aria-label': 'Users' });
  const enrolmentTable = h('tbody');

  function deviceRow(d: DeviceView): HTMLLIElement {
    const toggle = checkbox('Approved for restricted meetings', {
      testid: 'device-restricted-toggle',
      checked: d.restricted_ok,
      disabled: d.revoked,
    });
    toggle.input.addEventListener('change', () => {
      const allowed = toggle.input.checked;
      toggle.input.disabled = true;
      void (async () => {
        try {
          await api.adminSetRestricted(d.id, allowed);
          if (!ctx.alive()) return;
          showInfo(allowed ? `${d.name} is approved for restricted meetings.` : `${d.name} is no longer approved for restricted meetings.`);
          await reload();
          refocus(`[data-device="${CSS.escape(d.id)}"] [data-testid="device-restricted-toggle"]`);
        } catch (e) {
          toggle.input.checked = !allowed;
          toggle.input.disabled = false;
          if (ctx.alive()) reportError(e);
        }
      })();
    });
    return h(
      'li',
      { class: `device${d.revoked ? ' revoked' : ''}`, testid: 'admin-device', 'data-device': d.id },
      h('h4', { class: 'device-name' }, d.name),
      deviceFacts(d),
      h(
        'div',
        { class: 'actions' },
        toggle.wrap,
        !d.revoked &&
          actionButton('Revoke device', { class: 'danger', testid: 'device-revoke', 'aria-label': `Revoke device ${d.name}` }, async () => {
            try {
              await api.adminRevokeDevice(d.id);
              if (!ctx.alive()) return;
              showInfo(`Revoked ${d.name}.`);
              await reload();
              refocus(`[data-device="${CSS.escape(d.id)}"] .device-name`);
            } catch (e) {
              if (ctx.alive()) reportError(e);
            }
          }),
      ),
    );
  }

  function userRow(u: UserView): HTMLLIElement {
    const devices = h('ul', { class: 'device-list', 'aria-label': `Devices of ${u.display_name}` });
    for (const d of u.devices) devices.appendChild(deviceRow(d));
    return h(
      'li',
      { class: `user${u.disabled ? ' disabled' : ''}`, testid: 'admin-user', 'data-user': u.name },
      h(
        'h3',
        null,
        u.display_name,
        ` (${u.name})`,
        h('span', { class: 'badge' }, u.role),
        u.disabled && h('span', { class: 'badge badge-revoked' }, 'disabled'),
        u.id === me.user_id && h('span', { class: 'badge badge-you' }, 'you'),
      ),
      h(
        'div',
        { class: 'actions' },
        !u.disabled &&
          actionButton('New enrolment link', { testid: 'admin-new-enrolment', 'aria-label': `New enrolment link for ${u.name}` }, async () => {
            try {
              const link = await api.adminNewEnrolment(u.id);
              if (!ctx.alive()) return;
              showLink(link);
              await reloadEnrolments();
            } catch (e) {
              if (ctx.alive()) reportError(e);
            }
          }),
        !u.disabled &&
          u.id !== me.user_id &&
          actionButton('Disable user', { class: 'danger', testid: 'admin-disable-user', 'aria-label': `Disable user ${u.name}` }, async () => {
            try {
              await api.adminDisableUser(u.id);
              if (!ctx.alive()) return;
              showInfo(`Disabled ${u.name}.`);
              await reload();
            } catch (e) {
              if (ctx.alive()) reportError(e);
            }
          }),
      ),
      u.devices.length === 0 ? h('p', { class: 'empty' }, 'No devices enrolled yet.') : devices,
    );
  }

  function enrolmentRow(e: EnrolmentView): HTMLTableRowElement {
    return h(
      'tr',
      { testid: 'admin-enrolment', 'data-enrolment': e.id, 'data-state': e.state },
      h('td', null, e.user_name),
      h('td', null, timeEl(e.created_at)),
      h('td', null, timeEl(e.expires_at)),
      h('td', null, e.state),
      h(
        'td',
        null,
        e.state === 'pending' &&
          actionButton('Revoke', { class: 'danger', testid: 'enrolment-revoke', 'aria-label': `Revoke enrolment link for ${e.user_name}` }, async () => {
            try {
              await api.adminRevokeEnrolment(e.id);
              if (!ctx.alive()) return;
              showInfo(`Revoked the enrolment link for ${e.user_name}.`);
              await reloadEnrolments();
            } catch (err) {
              if (ctx.alive()) reportError(err);
            }
          }),
      ),
    );
  }

  async function reloadUsers(): Promise<void> {
    const users = await api.adminUsers();
    if (!ctx.alive()) return;
    replaceChildren(userList, ...users.map(userRow));
  }

  async function reloadEnrolments(): Promise<void> {
    const enrolments = await api.adminEnrolments();
    if (!ctx.alive()) return;
    replaceChildren(enrolmentTable, ...enrolments.map(enrolmentRow));
    if (enrolments.length === 0) enrolmentTable.appendChild(h('tr', null, h('td', { colspan: '5' }, 'No enrolment links.')));
  }

  /** After a redraw, puts keyboard focus back near the control that was used. */
  function refocus(selector: string): void {
    const el = ctx.main.querySelector<HTMLElement>(selector);
    if (!el) return;
    if (!el.matches('input, button, select, textarea, a[href]')) el.setAttribute('tabindex', '-1');
    el.focus();
  }

  async function reload(): Promise<void> {
    await Promise.all([reloadUsers(), reloadEnrolments()]);
  }

  append(
    ctx.main,
    h('section', { class: 'card' }, createForm),
    linkPanel,
    h('section', { 'aria-labelledby': 'users-heading' }, h('h2', { id: 'users-heading' }, 'Users'), userList),
    h(
      'section',
      { 'aria-labelledby': 'enrolments-heading' },
      h('h2', { id: 'enrolments-heading' }, 'Enrolment links'),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table' },
          h('thead', null, h('tr', null, ...['User', 'Created', 'Expires', 'State', 'Action'].map((t) => h('th', { scope: 'col' }, t)))),
          enrolmentTable,
        ),
      ),
    ),
  );

  await reload();
}
