// The application shell (header with who is signed in, navigation, main area, status region)
// and what every page receives: its `PageContext`.

import { api, ApiFailure } from './api';
import { h, replaceChildren } from './dom';
import { kindLabel, mayOrganise } from './format';
import type { Me } from './proto';
import { navigate } from './router';
import { showError, showInfo, statusRegion } from './status';
import { CeremonyError } from './webauthn';

export interface PageContext {
  /** Where the page draws itself. */
  main: HTMLElement;
  /** The signed-in user (null on public pages). */
  me: Me | null;
  /** Path parameters, e.g. `id` for /m/<id>. */
  params: Record<string, string>;
  /** False once the user navigated away: late async results must not touch the page. */
  alive(): boolean;
  /** Runs when the user navigates away (close sockets, clear timers). */
  onLeave(fn: () => void): void;
}

export type Page = (ctx: PageContext) => void | Promise<void>;

let root: HTMLElement | null = null;
let headerEl: HTMLElement | null = null;
let mainEl: HTMLElement | null = null;

/** Builds the persistent frame once: header, main, status region. */
export function mountShell(container: HTMLElement): HTMLElement {
  root = container;
  headerEl = h('header', { class: 'site-header' });
  mainEl = h('main', { id: 'main', class: 'content', tabindex: '-1' });
  const skip = h('a', { class: 'skip-link', href: '#main' }, 'Skip to content');
  skip.addEventListener('click', (ev) => {
    ev.preventDefault();
    mainEl?.focus();
  });
  replaceChildren(root, skip, headerEl, h('div', { class: 'content status-wrap' }, statusRegion()), mainEl);
  return mainEl;
}

/** Draws the header: brand only when signed out, identity and navigation when signed in. */
export function renderHeader(me: Me | null): void {
  if (!headerEl) return;
  const brand = h('a', { class: 'brand', href: '/' }, 'sealroom');
  if (!me) {
    replaceChildren(headerEl, h('div', { class: 'header-inner' }, brand));
    return;
  }
  const device = `${me.device_name} (${kindLabel(me.device_kind)})`;
  const whoami = h(
    'p',
    { class: 'whoami', testid: 'whoami' },
    'Signed in as ',
    h('strong', null, me.display_name),
    ` (${me.name}, ${me.role}) on `,
    device,
  );
  const here = location.pathname;
  const link = (href: string, label: string, testid: string) =>
    h('li', null, h('a', { href, testid, 'aria-current': here === href ? 'page' : false }, label));
  const nav = h(
    'nav',
    { 'aria-label': 'Main' },
    h(
      'ul',
      { class: 'nav' },
      link('/', 'My meetings', 'nav-meetings'),
      mayOrganise(me.role) && link('/meetings/new', 'New meeting', 'nav-new-meeting'),
      link('/devices', 'My devices', 'nav-devices'),
      me.role === 'admin' && link('/admin', 'Admin', 'nav-admin'),
      h('li', null, h('button', { type: 'button', class: 'link-button', testid: 'logout', on: { click: () => void signOut() } }, 'Sign out')),
    ),
  );
  replaceChildren(headerEl, h('div', { class: 'header-inner' }, brand, whoami, nav));
}

async function signOut(): Promise<void> {
  try {
    await api.logout();
  } catch (e) {
    // Signing out must still leave this page; a 401 means we were signed out already.
    if (!(e instanceof ApiFailure && e.status === 401)) {
      reportError(e, { redirectOn401: false });
      return;
    }
  }
  showInfo('You are signed out.');
  navigate('/login', { keepStatus: true });
}

export interface ReportOptions {
  /** On 401 (session gone), go to the login page. True on pages that need a session. */
  redirectOn401?: boolean;
}

/** Shows any failure in the status region; a lost session sends the user to /login. */
export function reportError(e: unknown, opts: ReportOptions = {}): void {
  const redirect = opts.redirectOn401 ?? true;
  if (e instanceof ApiFailure) {
    if (e.status === 401 && redirect) {
      showError(`${e.userMessage()} Sign in again.`);
      goToLogin(true);
      return;
    }
    showError(e.userMessage());
  } else if (e instanceof CeremonyError) {
    showError(e.message);
  } else {
    console.error(e);
    showError('Something went wrong. Reload the page and try again.');
  }
}

/** Goes to /login, remembering where we were. */
export function goToLogin(keepStatus = false): void {
  const here = location.pathname + location.search;
  const next = here === '/' || here.startsWith('/login') || here.startsWith('/enrol') ? '' : `?next=${encodeURIComponent(here)}`;
  navigate(`/login${next}`, { replace: true, keepStatus });
}

/** A page's top heading; focused after navigation so screen readers announce the new page. */
export function pageHeading(text: string, attrs: Record<string, unknown> = {}): HTMLHeadingElement {
  document.title = `${text} · sealroom`;
  return h('h1', { tabindex: '-1', class: 'page-heading', ...attrs }, text);
}
