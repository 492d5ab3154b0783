// /enrol#<token>: register this device's passkey for the person the link was made for.
//
// The token lives only in the URL fragment (never sent in a request line, so never in a log) and
// in JSON bodies. Loading the page only asks `/api/enrol/info`, which changes nothing; the
// token is consumed by the final `/api/enrol/passkey/finish`. Afterwards the fragment is
// dropped from the history entry.

import { api } from '../api';
import { pageHeading, reportError, type PageContext } from '../app';
import { actionButton, append, field, h, replaceChildren, timeEl } from '../dom';
import { defaultDeviceName, kindLabel, roleLabel } from '../format';
import { navigate } from '../router';
import { showInfo } from '../status';
import { createPasskey, passkeysSupported } from '../webauthn';

function tokenFromFragment(): string {
  const raw = location.hash.startsWith('#') ? location.hash.slice(1) : location.hash;
  try {
    return decodeURIComponent(raw).trim();
  } catch {
    return raw.trim();
  }
}

export async function enrolPage(ctx: PageContext): Promise<void> {
  const card = h('section', { class: 'card narrow' }, pageHeading('Enrol this device'));
  append(ctx.main, card);

  const token = tokenFromFragment();
  if (token === '') {
    append(
      card,
      h('p', { role: 'alert', class: 'warning' }, 'This enrolment link is incomplete: the part after "#" is missing. Open the full link you were given.'),
    );
    return;
  }

  const body = h('div', null, h('p', { class: 'loading' }, 'Checking the enrolment link…'));
  append(card, body);

  let info;
  try {
    info = await api.enrolInfo({ token });
  } catch (e) {
    if (!ctx.alive()) return;
    replaceChildren(body, h('p', null, 'This enrolment link cannot be used. It may have expired, been used already, or been revoked. Ask an administrator for a new one.'));
    reportError(e, { redirectOn401: false });
    return;
  }
  if (!ctx.alive()) return;

  const deviceName = h('input', {
    type: 'text',
    testid: 'device-name',
    name: 'device_name',
    required: true,
    maxlength: '64',
    autocomplete: 'off',
    value: defaultDeviceName(),
  });

  const button = actionButton('Create passkey', { class: 'primary', testid: 'enrol-button' }, async () => {
    const name = deviceName.value.trim();
    if (name === '') {
      deviceName.focus();
      showInfo('Give this device a name first.');
      return;
    }
    try {
      showInfo('Follow your browser’s prompt to create the passkey…');
      const started = await api.enrolPasskeyStart({ token, device_name: name });
      const credential = await createPasskey(started.options);
      const me = await api.enrolPasskeyFinish({ flow_id: started.flow_id, token, credential });
      if (!ctx.alive()) return;
      showInfo(`Enrolled ${me.display_name} on ${me.device_name} (${kindLabel(me.device_kind)}). You are signed in.`);
      // Replacing the entry drops the token from the address bar and from history.
      navigate('/', { replace: true, keepStatus: true });
    } catch (e) {
      if (ctx.alive()) reportError(e, { redirectOn401: false });
    }
  });

  const form = h('form', { class: 'form', novalidate: true }, field('Device name', deviceName, 'Shown to you and to administrators, e.g. "Work laptop".'), h('div', { class: 'actions' }, button));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    button.click();
  });

  replaceChildren(
    body,
    h(
      'p',
      { class: 'enrol-info', testid: 'enrol-info' },
      'You are enrolling ',
      h('strong', null, info.display_name),
      ` (${info.name}), role ${roleLabel(info.role)}; link expires `,
      timeEl(info.expires_at),
      '.',
    ),
    h('p', null, 'If this is not you, close this page and tell the administrator who sent the link.'),
    !passkeysSupported() &&
      h('p', { class: 'warning', role: 'note' }, 'This browser does not support passkeys the way sealroom needs. Use a current browser.'),
    form,
  );
}
