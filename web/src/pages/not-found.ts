import { pageHeading, type PageContext } from '../app';
import { append, h } from '../dom';

export function notFoundPage(ctx: PageContext): void {
  append(
    ctx.main,
    pageHeading('Page not found'),
    h('p', null, 'There is nothing at this address. ', h('a', { href: '/' }, 'Go to my meetings'), '.'),
  );
}
