// sealroom web client — entry point and routing table.
//
// Module layout (vanilla DOM, no framework; see STYLE.md "Web client"):
//   main.ts          this file: routes, page lifecycle (session check, leave hooks, focus)
//   proto.ts         wire types GENERATED from crates/proto (`cargo run -p sealroom-proto --bin
//                    gen-ts -- web/src/proto.ts`); never edit or redeclare them by hand
//   api.ts           REST client: one function per call of docs/API.md, `ApiFailure` errors
//   app.ts           shell (header, nav, status region), `PageContext`, error reporting
//   router.ts        history-API navigation and same-origin link interception
//   dom.ts           `h()` element builder and form helpers; text only via text nodes
//   status.ts        the page-wide aria-live status region (`data-testid="status"`)
//   format.ts        wording for roles, levels, device kinds, time windows
//   webauthn.ts      passkey ceremonies (parse*OptionsFromJSON, credential.toJSON())
//   meeting/state.ts pure state machine of the meeting page: ServerMsg in, view state out
//   meeting/socket.ts the signaling WebSocket (join after hello, ping every 20 s)
//   pages/*.ts       one module per page: login, enrol, home, new-meeting, meeting, devices,
//                    admin, not-found
//   style.css        all styling (no inline styles: the CSP forbids them)
//
// Security rules this code keeps (DESIGN.md §7): no HTML-string sinks (innerHTML & co.), user
// text only through textContent, no inline script or style, no network except same-origin
// /api/..., the enrolment token only ever read from the URL fragment and sent in a JSON body.

import './style.css';

import { api, ApiFailure } from './api';
import { goToLogin, mountShell, renderHeader, reportError, type Page, type PageContext } from './app';
import { h, replaceChildren } from './dom';
import { adminPage } from './pages/admin';
import { devicesPage } from './pages/devices';
import { enrolPage } from './pages/enrol';
import { homePage } from './pages/home';
import { loginPage } from './pages/login';
import { meetingPage } from './pages/meeting';
import { newMeetingPage } from './pages/new-meeting';
import { notFoundPage } from './pages/not-found';
import { startRouter, type NavigateOptions } from './router';
import { clearStatus } from './status';

interface Route {
  pattern: RegExp;
  /** Names of the pattern's capture groups, in order. */
  keys?: string[];
  page: Page;
  /** Needs a session: without one, go to /login. */
  auth: boolean;
}

const routes: Route[] = [
  { pattern: /^\/$/, page: homePage, auth: true },
  { pattern: /^\/login$/, page: loginPage, auth: false },
  { pattern: /^\/enrol$/, page: enrolPage, auth: false },
  { pattern: /^\/meetings\/new$/, page: newMeetingPage, auth: true },
  { pattern: /^\/m\/([^/]+)$/, keys: ['id'], page: meetingPage, auth: true },
  { pattern: /^\/devices$/, page: devicesPage, auth: true },
  { pattern: /^\/admin$/, page: adminPage, auth: true },
];

function match(pathname: string): { route: Route; params: Record<string, string> } | null {
  const path = pathname.length > 1 ? pathname.replace(/\/+$/, '') : pathname;
  for (const route of routes) {
    const m = route.pattern.exec(path);
    if (!m) continue;
    const params: Record<string, string> = {};
    (route.keys ?? []).forEach((key, i) => {
      const raw = m[i + 1] ?? '';
      try {
        params[key] = decodeURIComponent(raw);
      } catch {
        params[key] = raw;
      }
    });
    return { route, params };
  }
  return null;
}

const app = document.getElementById('app');
if (!app) throw new Error('index.html lacks #app');
const main = mountShell(app);

let generation = 0;
let leaveHooks: (() => void)[] = [];
let firstRender = true;

function leaveCurrentPage(): void {
  const hooks = leaveHooks;
  leaveHooks = [];
  for (const hook of hooks) {
    try {
      hook();
    } catch (e) {
      console.error(e);
    }
  }
}

async function render(opts: NavigateOptions): Promise<void> {
  generation += 1;
  const mine = generation;
  leaveCurrentPage();
  if (!opts.keepStatus) clearStatus();
  const focusHeading = !firstRender;
  firstRender = false;

  const found = match(location.pathname);
  const route = found?.route ?? { pattern: /$^/, page: notFoundPage, auth: false };
  const ctx: PageContext = {
    main,
    me: null,
    params: found?.params ?? {},
    alive: () => generation === mine,
    onLeave: (fn) => {
      if (generation === mine) leaveHooks.push(fn);
      else fn();
    },
  };

  if (route.auth) {
    replaceChildren(main, h('p', { class: 'loading' }, 'Loading…'));
    try {
      ctx.me = await api.me();
    } catch (e) {
      if (!ctx.alive()) return;
      if (e instanceof ApiFailure && e.status === 401) {
        goToLogin(opts.keepStatus ?? false);
      } else {
        renderHeader(null);
        replaceChildren(main);
        reportError(e, { redirectOn401: false });
      }
      return;
    }
    if (!ctx.alive()) return;
  }

  renderHeader(ctx.me);
  replaceChildren(main);
  try {
    await route.page(ctx);
  } catch (e) {
    if (ctx.alive()) reportError(e);
  }
  if (focusHeading && ctx.alive()) {
    const heading = main.querySelector<HTMLElement>('h1');
    heading?.focus({ preventScroll: false });
  }
}

startRouter((opts) => void render(opts));
