// /login: "Sign in with passkey" (discoverable credential, no user name typed).

import { api } from '../api';
import { pageHeading, reportError, type PageContext } from '../app';
import { actionButton, append, h } from '../dom';
import { navigate, safeNextPath } from '../router';
import { showInfo } from '../status';
import { passkeysSupported, usePasskey } from '../webauthn';

export function loginPage(ctx: PageContext): void {
  const next = safeNextPath(new URLSearchParams(location.search).get('next')) ?? '/';

  const button = actionButton('Sign in with passkey', { class: 'primary', testid: 'login-button' }, async () => {
    try {
      showInfo('Waiting for your passkey…');
      const started = await api.loginPasskeyStart();
      const credential = await usePasskey(started.options);
      await api.loginPasskeyFinish({ flow_id: started.flow_id, credential });
      if (!ctx.alive()) return;
      navigate(next, { replace: true });
    } catch (e) {
      if (ctx.alive()) reportError(e, { redirectOn401: false });
    }
  });

  append(
    ctx.main,
    h(
      'section',
      { class: 'card narrow' },
      pageHeading('Sign in'),
      h('p', null, 'Sign in with the passkey you created when you enrolled this device.'),
      !passkeysSupported() &&
        h('p', { class: 'warning', role: 'note' }, 'This browser does not support passkeys the way sealroom needs. Use a current browser.'),
      h('div', { class: 'actions' }, button),
      h(
        'p',
        { class: 'hint' },
        'No passkey yet? Ask an administrator for an enrolment link. There are no passwords and no guest access.',
      ),
    ),
  );
}
