// page-destructor: Xen's out-of-tree foreign-page destructor (linux-2.6.18-xen netback: SetPageForeign(page,
// netif_page_release)), as Jeremy Fitzhardinge describes it in seed 002 (netdev, 2008-12-19): "marking a page as
// having been allocated by a foreign allocator, and overloads the private memory of struct page with a
// destructor function pointer, which put_page calls as appropriate". Per page: when the stack's last reference
// goes and the count falls back to the mapping's own, that page's grant goes back, whatever skb held it.
// Zoltan Kiss's 2014 cover letter: page destructors were "not an upstreamable solution" (a page flag, an mm hook).
// Departure: 2.6.18-xen fires the destructor when the count reaches 0 and re-inits it to 1; here the mapping's
// own reference stays counted (Page.count 1 = mapped, unused), so "falls back to 1" is the same event.
import type { Page } from './page.js';
import type { DesignInfo, GrantSink, RefDataOp } from './release.js';
import { POINTER_BYTES } from './release-util.js';
import type { SkbContext, SkBuff, SkbSharedInfo } from './skbuff.js';

/** Runs the page's destructor: untag it and hand its grant to the sink. */
function fire(ctx: SkbContext, page: Page, sink: GrantSink): void {
  page.priv = null;
  ctx.stats.pageReleases++;
  sink.release(page, true);
}

/** Xen's foreign-page destructor: a hook on the page's own last put (PG_foreign + destructor in struct page). */
export const pageDestructor: DesignInfo = {
  name: 'page-destructor',
  source: 'seed 002: J. Fitzhardinge on Xen\'s out-of-tree foreign page destructor (PG_foreign, put_page hook), netdev 2008-12-19',
  sound: true,
  unsoundCases: [],
  bookkeeping: {
    perPage: POINTER_BYTES,
    perSkb: 0,
    perPacket: 0,
    note: 'the destructor pointer overloaded into struct page (plus the PG_foreign flag bit)',
  },
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
    if (skb.users === 0) throw new Error('attach: skb is freed');
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      if (page.foreign === null) throw new Error(`page-destructor attach: page ${page.id} is not foreign`);
      if (page.priv !== null) throw new Error(`page-destructor attach: page ${page.id} already has a destructor`);
      page.priv = sink;
      // A page the stack holds no reference to is free already.
      if (page.count === 1) fire(skb.ctx, page, sink);
    }
  },
  refDataParent(_parent: SkBuff, _child: SkbSharedInfo, _op: RefDataOp): void {
    // Page counts carry everything.
  },
  mayMoveFrags(_from: SkBuff, _to: SkBuff): boolean {
    return true;
  },
  pagePut(ctx: SkbContext, page: Page): void {
    const sink = page.priv as GrantSink | null;
    if (sink !== null && page.count === 1) fire(ctx, page, sink);
  },
};
