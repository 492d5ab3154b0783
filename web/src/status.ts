// The one page-wide status region (`data-testid="status"`). It exists from start-up so that
// screen readers watch it (aria-live polite); errors are inserted as `role="alert"` paragraphs,
// which are announced at once.

import { h, replaceChildren } from './dom';

let region: HTMLElement | null = null;

export function statusRegion(): HTMLElement {
  if (!region) {
    region = h('div', { class: 'status', testid: 'status', 'aria-live': 'polite', 'aria-atomic': 'false' });
  }
  return region;
}

/** Shows an error message (replaces what was there). */
export function showError(message: string): void {
  replaceChildren(statusRegion(), h('p', { class: 'status-error', role: 'alert' }, message));
}

/** Shows a neutral progress or success message (replaces what was there). */
export function showInfo(message: string): void {
  replaceChildren(statusRegion(), h('p', { class: 'status-info' }, message));
}

export function clearStatus(): void {
  statusRegion().replaceChildren();
}
