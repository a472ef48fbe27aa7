// net_priv: seed 002, Vladislav Bolkhovitin's "[RFC 23/23] Support for zero-copy TCP transmit of user space data"
// (netdev, 2008-12-10): struct page gains `void *net_priv` pointing at the owner (his iSCSI command; here the
// netback packet), and every get_page/put_page in net/ becomes net_get_page/net_put_page, which call global
// callbacks counting the network's references per owner. When an owner's count reaches zero every page of the
// packet has left the stack and the owner completes: all its grants go back.
// 'net_priv-hash' is the variant he rejected (approach 2): no struct page field, a table from page to owner looked
// up on every get and put ("20*20*2 = 800 ticks" against ~1500 for copying the page); here a Map, really consulted
// on every call (ctx.stats.hashLookups counts them).
// Departure: the owner is tagged at attach, after netback took the frags' page references, so its count starts
// at the stack references the pages already have (page.count - 1: the mapping's own is not the network's).
import type { Page } from './page.js';
import type { DesignInfo, GrantSink, RefDataOp } from './release.js';
import { ATOMIC_BYTES, POINTER_BYTES, PageList } from './release-util.js';
import type { SkbContext, SkBuff, SkbSharedInfo } from './skbuff.js';

/** The owner a page's net_priv points at (the iSCSI command of seed 002; here a netback packet). */
export class NetPrivOwner {
  /** The network's references on the owner's pages (net_ref_cnt in iSCSI-SCST). */
  count = 0;
  readonly list = new PageList();
}

/** Per-stack state: the owner pool and, for the hash variant, the page-to-owner table. */
class NetPrivState {
  readonly pool: NetPrivOwner[] = [];
  readonly table = new Map<Page, NetPrivOwner>();
}

function state(ctx: SkbContext): NetPrivState {
  let st = ctx.designState as NetPrivState | null;
  if (st === null) {
    st = new NetPrivState();
    ctx.designState = st;
  }
  return st;
}

/** The owner is done: untag its pages, hand every grant back, recycle it. */
function complete(ctx: SkbContext, o: NetPrivOwner, hashed: boolean): void {
  const st = state(ctx);
  const list = o.list;
  for (let i = 0; i < list.n; i++) {
    const page = list.pages[i]!;
    if (hashed) st.table.delete(page);
    else page.priv = null;
  }
  list.releaseAll(true);
  st.pool.push(o);
}

/** Tags each page with a fresh owner (net_priv or the table) counting the stack's references already taken. */
function attachOwner(skb: SkBuff, pages: readonly Page[], sink: GrantSink, hashed: boolean): void {
  if (skb.users === 0) throw new Error('attach: skb is freed');
  const ctx = skb.ctx;
  const st = state(ctx);
  let o = st.pool.pop();
  if (o === undefined) {
    o = new NetPrivOwner();
    ctx.stats.designAllocs++;
  }
  o.count = 0;
  o.list.fill(pages, sink);
  for (let i = 0; i < pages.length; i++) {
    const page = pages[i]!;
    if (hashed) {
      if (st.table.has(page)) throw new Error(`net_priv-hash attach: page ${page.id} already has an owner`);
      st.table.set(page, o);
    } else {
      if (page.priv !== null) throw new Error(`net_priv attach: page ${page.id} already has an owner`);
      page.priv = o;
    }
    o.count += page.count - 1;
  }
  if (o.count === 0) complete(ctx, o, hashed);
}

const bookkeepingPerPacket = ATOMIC_BYTES + POINTER_BYTES + ATOMIC_BYTES;

/** seed 002 (Bolkhovitin): a net_priv pointer in struct page and per-owner counting get/put callbacks. */
export const netPriv: DesignInfo = {
  name: 'net_priv',
  source: 'seed 002: V. Bolkhovitin, [RFC 23/23] zero-copy TCP transmit (struct page net_priv, net_get_page/net_put_page), netdev 2008-12',
  sound: true,
  unsoundCases: [],
  bookkeeping: {
    perPage: POINTER_BYTES + POINTER_BYTES,
    perSkb: 0,
    perPacket: bookkeepingPerPacket,
    note: 'struct page net_priv; the owner\'s page list entry; owner {count, sink, page count}',
  },
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
    attachOwner(skb, pages, sink, false);
  },
  refDataParent(_parent: SkBuff, _child: SkbSharedInfo, _op: RefDataOp): void {
    // Page references carry everything: nothing hangs on shinfos.
  },
  mayMoveFrags(_from: SkBuff, _to: SkBuff): boolean {
    // His point against a per-skb tag: pages of different owners may merge freely.
    return true;
  },
  pageGet(ctx: SkbContext, page: Page): void {
    const o = page.priv as NetPrivOwner | null;
    if (o === null) return;
    ctx.stats.netPageCallbacks++;
    o.count++;
  },
  pagePut(ctx: SkbContext, page: Page): void {
    const o = page.priv as NetPrivOwner | null;
    if (o === null) return;
    ctx.stats.netPageCallbacks++;
    if (--o.count === 0) complete(ctx, o, false);
  },
};

/** seed 002's rejected variant 2: the same counting, with the owner looked up in a table on every get and put. */
export const netPrivHash: DesignInfo = {
  name: 'net_priv-hash',
  source: 'seed 002: V. Bolkhovitin, [RFC 23/23], rejected approach 2 (a hashed page -> command table searched on every get and put)',
  sound: true,
  unsoundCases: [],
  bookkeeping: {
    perPage: 3 * POINTER_BYTES + POINTER_BYTES,
    perSkb: 0,
    perPacket: bookkeepingPerPacket,
    note: 'a hash entry {page, owner, chain} per tracked page; the owner\'s page list entry; owner {count, sink, page count}',
  },
  attach(skb: SkBuff, pages: readonly Page[], sink: GrantSink): void {
    attachOwner(skb, pages, sink, true);
  },
  refDataParent(_parent: SkBuff, _child: SkbSharedInfo, _op: RefDataOp): void {
    // As net_priv.
  },
  mayMoveFrags(_from: SkBuff, _to: SkBuff): boolean {
    return true;
  },
  pageGet(ctx: SkbContext, page: Page): void {
    ctx.stats.hashLookups++;
    const o = state(ctx).table.get(page);
    if (o === undefined) return;
    ctx.stats.netPageCallbacks++;
    o.count++;
  },
  pagePut(ctx: SkbContext, page: Page): void {
    ctx.stats.hashLookups++;
    const o = state(ctx).table.get(page);
    if (o === undefined) return;
    ctx.stats.netPageCallbacks++;
    if (--o.count === 0) complete(ctx, o, true);
  },
};
