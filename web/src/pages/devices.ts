// /devices: my enrolled devices, with Revoke.

import { api } from '../api';
import { goToLogin, pageHeading, reportError, type PageContext } from '../app';
import { actionButton, append, h, replaceChildren, timeEl, type Child } from '../dom';
import { kindLabel } from '../format';
import type { DeviceView } from '../proto';
import { showInfo } from '../status';

/** The facts about a device, as a definition list (shared with the admin page). */
export function deviceFacts(d: DeviceView, isCurrent = false): HTMLDListElement {
  const fact = (label: string, value: Child, cls = '') =>
    h('div', { class: `fact ${cls}`.trim() }, h('dt', null, label), h('dd', null, value));
  return h(
    'dl',
    { class: 'facts' },
    fact('Kind', kindLabel(d.kind), d.kind === 'software' ? 'is-software' : ''),
    fact('Status', d.revoked ? 'revoked' : isCurrent ? 'active (this device)' : 'active', d.revoked ? 'is-revoked' : ''),
    fact('Created', timeEl(d.created_at)),
    fact('Last used', d.last_used_at === null ? 'never' : timeEl(d.last_used_at)),
    fact('Restricted meetings', d.restricted_ok ? 'approved for restricted' : 'not approved for restricted'),
    fact(
      'Passkey storage',
      d.kind === 'software' ? 'not a passkey' : d.backup_eligible ? 'synced passkey (backup eligible)' : 'device-bound passkey',
    ),
  );
}

export async function devicesPage(ctx: PageContext): Promise<void> {
  const me = ctx.me!;
  append(
    ctx.main,
    pageHeading('My devices'),
    h('p', null, 'Revoking a device ends its sessions and meeting connections at once. Revoke any device you no longer use or no longer have.'),
  );
  const list = h('ul', { class: 'device-list', 'aria-label': 'My devices' });
  append(ctx.main, list);

  async function load(): Promise<void> {
    const devices = await api.myDevices();
    if (!ctx.alive()) return;
    replaceChildren(list, ...devices.map(row));
    if (devices.length === 0) list.appendChild(h('li', { class: 'empty' }, 'No devices.'));
  }

  function row(d: DeviceView): HTMLLIElement {
    const isCurrent = d.id === me.device_id;
    return h(
      'li',
      { class: `device${d.revoked ? ' revoked' : ''}`, testid: 'my-device', 'data-device': d.id },
      h('h2', { class: 'device-name' }, d.name, isCurrent && h('span', { class: 'badge badge-you' }, 'this device')),
      deviceFacts(d, isCurrent),
      !d.revoked &&
        h(
          'div',
          { class: 'actions' },
          actionButton(
            isCurrent ? 'Revoke this device (signs you out)' : 'Revoke',
            {
              class: 'danger',
              testid: 'device-revoke',
              'aria-label': isCurrent ? `Revoke this device (signs you out): ${d.name}` : `Revoke ${d.name}`,
            },
            async () => {
              try {
                await api.revokeMyDevice(d.id);
                if (!ctx.alive()) return;
                showInfo(`Revoked ${d.name}.`);
                if (isCurrent) {
                  goToLogin(true);
                  return;
                }
                await load();
              } catch (e) {
                if (ctx.alive()) reportError(e);
              }
            },
          ),
        ),
    );
  }

  await load();
}
