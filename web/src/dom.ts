// Small DOM helpers. Everything the app shows is built with `document.createElement`;
// text (including every name and title that came from a user) only ever goes in through
// `textContent` / text nodes. There is no HTML-string sink anywhere in the client, which is
// what the server's Trusted Types CSP (`trusted-types 'none'`) demands.

export type Child = Node | string | number | null | undefined | false;

export interface Attrs {
  /** Space-separated class names. */
  class?: string;
  /** Sets `data-testid`, the stable hook for the browser tests. */
  testid?: string;
  /** Event listeners, e.g. `{ click: () => ... }`. */
  on?: { [K in keyof HTMLElementEventMap]?: (ev: HTMLElementEventMap[K]) => void };
  /** Any other attribute; `true` sets it empty, `false`/`null`/`undefined` leave it out. */
  [name: string]: unknown;
}

/** Creates an element with attributes and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [name, value] of Object.entries(attrs)) {
      if (name === 'on') {
        for (const [type, listener] of Object.entries(value as Record<string, EventListener>)) {
          el.addEventListener(type, listener);
        }
      } else if (name === 'class') {
        if (typeof value === 'string' && value !== '') el.className = value;
      } else if (name === 'testid') {
        if (typeof value === 'string') el.dataset['testid'] = value;
      } else {
        setAttr(el, name, value);
      }
    }
  }
  append(el, ...children);
  return el;
}

/** Sets or removes one attribute. Inline event-handler and style attributes are refused. */
export function setAttr(el: Element, name: string, value: unknown): void {
  const lower = name.toLowerCase();
  if (lower.startsWith('on') || lower === 'style' || lower === 'srcdoc') {
    throw new Error(`refusing to set attribute ${name}`);
  }
  if (value === false || value === null || value === undefined) {
    el.removeAttribute(name);
  } else if (value === true) {
    el.setAttribute(name, '');
  } else {
    el.setAttribute(name, String(value));
  }
}

/** Appends children; strings become text nodes. */
export function append(parent: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    parent.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
}

/** Replaces all children of `parent`. */
export function replaceChildren(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, ...children);
}

let idCounter = 0;
/** A document-unique id for label/aria wiring. */
export function uid(prefix: string): string {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A `<label>` + control pair wrapped in a field container. */
export function field(labelText: string, control: HTMLElement, hint?: string): HTMLDivElement {
  if (!control.id) control.id = uid('f');
  const wrap = h('div', { class: 'field' }, h('label', { for: control.id }, labelText), control);
  if (hint) {
    const hintEl = h('p', { class: 'hint', id: uid('hint') }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
    wrap.appendChild(hintEl);
  }
  return wrap;
}

/** A checkbox with its label after it. */
export function checkbox(
  labelText: string,
  attrs: Attrs = {},
): { wrap: HTMLDivElement; input: HTMLInputElement } {
  const input = h('input', { type: 'checkbox', id: uid('cb'), ...attrs });
  const wrap = h('div', { class: 'check' }, input, h('label', { for: input.id }, labelText));
  return { wrap, input };
}

/** A `<time>` element for a unix-seconds instant, shown in the local time zone. */
export function timeEl(unixSeconds: number): HTMLTimeElement {
  const d = new Date(unixSeconds * 1000);
  return h('time', { datetime: d.toISOString() }, formatDateTime(d));
}

export function formatDateTime(d: Date): string {
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A button that disables itself while its async action runs (no double submits). */
export function actionButton(
  label: string,
  attrs: Attrs,
  action: (btn: HTMLButtonElement) => Promise<void> | void,
): HTMLButtonElement {
  const btn = h('button', { type: 'button', ...attrs }, label);
  btn.addEventListener('click', () => {
    if (btn.getAttribute('aria-busy') === 'true') return;
    btn.setAttribute('aria-busy', 'true');
    btn.disabled = true;
    void Promise.resolve()
      .then(() => action(btn))
      .finally(() => {
        btn.removeAttribute('aria-busy');
        btn.disabled = false;
      });
  });
  return btn;
}
