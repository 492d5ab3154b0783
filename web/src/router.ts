// History-API routing. The server serves index.html for every non-/api path, so the client
// decides what a path shows. Same-origin link clicks are handled here without a page load.

export interface NavigateOptions {
  /** Replace the current history entry instead of pushing a new one. */
  replace?: boolean;
  /** Keep the status region's message across the navigation (e.g. "session ended"). */
  keepStatus?: boolean;
}

type Render = (opts: NavigateOptions) => void;

let render: Render | null = null;

export function startRouter(r: Render): void {
  render = r;
  window.addEventListener('popstate', () => r({}));
  document.addEventListener('click', onLinkClick);
  r({});
}

/** Goes to a same-origin path (with optional query and fragment). */
export function navigate(path: string, opts: NavigateOptions = {}): void {
  if (opts.replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render?.(opts);
}

/** A local path that is safe to send the user to after login (no open redirect). */
export function safeNextPath(next: string | null): string | null {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return null;
  try {
    const u = new URL(next, location.origin);
    if (u.origin !== location.origin || u.pathname.startsWith('/api/') || u.pathname === '/login') return null;
    return u.pathname + u.search;
  } catch {
    return null;
  }
}

function onLinkClick(ev: MouseEvent): void {
  if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const target = ev.target instanceof Element ? ev.target.closest('a') : null;
  if (!target || !target.href || target.target || target.hasAttribute('download')) return;
  const url = new URL(target.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/api/')) return;
  ev.preventDefault();
  navigate(url.pathname + url.search + url.hash);
}
