// The rule each release design adds beyond the classic cases: zccd's two slots and third-descriptor refusal,
// net_priv's per-owner counting (and the hash variant's lookup on every get and put), the foreign-page
// destructor's last put, Kuznetsov's finish order and older-wins merge, ubuf's orphan and completion points,
// grant copy, rusty-page's early drop of a dead parent's frags; plus DESIGNS and the bookkeeping figures.
import test from 'ava';
import { bindForeignPage, getPage, putPage, unbindForeignPage, type Page } from '../../backend/page.js';
import {
  DESIGNS,
  DESIGN_NAMES,
  designByName,
  naive,
  rusty,
  rustyPage,
  type DesignInfo,
  type GrantSink,
  type ReleaseDesign,
} from '../../backend/release.js';
import { copy } from '../../backend/release-copy.js';
import { netPriv, netPrivHash } from '../../backend/release-net-priv.js';
import { pageDestructor } from '../../backend/release-page-destructor.js';
import { token, tokenAlloc, type TransactionToken } from '../../backend/release-token.js';
import { ubuf, type UbufInfo } from '../../backend/release-ubuf.js';
import { POINTER_BYTES } from '../../backend/release-util.js';
import { zccd, type Zccd } from '../../backend/release-zccd.js';
import {
  __pskbPullTail,
  kfreeSkb,
  kfreeSkbPartial,
  pskbCopy,
  pskbExpandHead,
  pskbTrim,
  skbClone,
  skbHeaderRelease,
  skbOrphanFrags,
  skbOrphanFragsRx,
  skbShift,
  skbSplit,
  skbTryCoalesce,
  allocSkb,
  type SkBuff,
  type SkbContext,
} from '../../backend/skbuff.js';
import { buildSkb, contentOf, foreignPage, localPage, newCtx, reachablePages, type FragSpec } from './skb-fixtures.js';

class Guest implements GrantSink {
  readonly log: Page[] = [];
  readonly flags: boolean[] = [];
  release(page: Page, zerocopySuccess = true): void {
    this.log.push(page);
    this.flags.push(zerocopySuccess);
  }
}

const F = (size: number, offset = 0): FragSpec => ({ offset, size });
const ids = (ps: readonly Page[]): number[] => ps.map((p) => p.id).sort((a, b) => a - b);

type Packet = { skb: SkBuff; pages: Page[]; model: Uint8Array };

/** A stack with `design`, a guest, and a builder of netback packets (`header` linear bytes, one foreign frag per size). */
function setup(design: ReleaseDesign): { ctx: SkbContext; g: Guest; pkt: (header: number, sizes: readonly number[], seed?: number) => Packet } {
  const ctx = newCtx(design);
  const g = new Guest();
  return { ctx, g, pkt: (header, sizes, seed = 1) => buildSkb(ctx, g, { header, frags: sizes.map((s) => F(s)), seed }) };
}

// ---- DESIGNS ----

test('DESIGNS: every design of the issue, by name, each with a source, soundness and bookkeeping', (t) => {
  const names = ['rusty', 'naive', 'zccd', 'net_priv', 'net_priv-hash', 'page-destructor', 'token', 'token-alloc', 'ubuf', 'copy', 'rusty-page'];
  t.deepEqual(DESIGN_NAMES, names);
  for (const d of DESIGNS) {
    t.is(designByName(d.name), d);
    t.true(d.source.length > 20, d.name);
  }
  t.is(designByName('rusty-pages'), undefined);
  t.deepEqual(DESIGNS.filter((d) => !d.sound).map((d) => d.name), ['naive', 'zccd', 'token', 'token-alloc']);
});

test('rusty and naive define no optional hook: the other designs cost them one check each', (t) => {
  const hooks = ['pageGet', 'pagePut', 'shinfoRelease', 'shinfoDeref', 'fragsMoved', 'orphanPoint', 'orphaned', 'pulledLinear'];
  for (const d of [rusty, naive]) t.deepEqual(hooks.filter((h) => h in d), [], d.name);
});

/** What a design really stores once a packet is attached: pointer fields set on the shinfo, page.priv, a page table. */
function storedPointers(design: DesignInfo): { perSkb: number; perPage: number } {
  const { ctx, pkt } = setup(design);
  const { skb, pages } = pkt(14, [100, 200]);
  const s = skb.shinfo;
  const fields = [s.destructor, s.destructorArg, s.orig, s.zccd, s.zccd2, s.transactionToken, s.uarg];
  const perSkb = fields.filter((f) => f !== null).length * POINTER_BYTES;
  let perPage = pages[0]!.priv !== null ? POINTER_BYTES : 0;
  const table = (ctx.designState as { table?: Map<Page, unknown> } | null)?.table;
  if (table !== undefined && table.has(pages[0]!)) perPage += 3 * POINTER_BYTES;
  kfreeSkb(skb);
  return { perSkb, perPage };
}

test('bookkeeping: at least what each design really stores per skb and per page once a packet is attached', (t) => {
  for (const d of DESIGNS) {
    const got = storedPointers(d);
    t.true(d.bookkeeping.perSkb >= got.perSkb, `${d.name} per skb ${d.bookkeeping.perSkb} < stored ${got.perSkb}`);
    t.true(d.bookkeeping.perPage >= got.perPage, `${d.name} per page ${d.bookkeeping.perPage} < stored ${got.perPage}`);
  }
  t.deepEqual([copy.bookkeeping.perPage, copy.bookkeeping.perSkb, copy.bookkeeping.perPacket], [0, 0, 0]);
  t.deepEqual([pageDestructor.bookkeeping.perSkb, netPriv.bookkeeping.perSkb], [0, 0], 'per-page designs add nothing to shinfos');
  t.true(netPrivHash.bookkeeping.perPage > netPriv.bookkeeping.perPage, 'a table entry costs more than a struct page field');
  t.is(token.bookkeeping.perPacket, tokenAlloc.bookkeeping.perPacket);
});

// ---- zccd ----

test('zccd: pskb_copy and pskb_expand_head take descriptor references as the patch does; orphan drops the slots', (t) => {
  const { g, pkt } = setup(zccd);
  const a = pkt(14, [500, 500]);
  const d = a.skb.shinfo.zccd as Zccd;
  t.is(d.count, 1, 'the shinfo holds the only reference after the send');
  const n = pskbCopy(a.skb);
  t.is(n.shinfo.zccd, d);
  t.is(d.count, 2);
  const c = skbClone(a.skb);
  pskbExpandHead(c, 16, 0);
  t.is(c.shinfo.zccd, d);
  t.is(d.count, 3, 'expand_head of a clone: its private shinfo holds one more');
  kfreeSkb(a.skb);
  kfreeSkb(n);
  t.deepEqual(g.log, []);
  t.is(skbOrphanFrags(c), 0);
  t.is(c.shinfo.zccd, null, 'copied data => no descriptor');
  t.deepEqual(ids(g.log), ids(a.pages));
  kfreeSkb(c);
});

test('zccd: frags carry their descriptor into a free slot; a third descriptor is refused (tcp_sendpage_zccd)', (t) => {
  const { ctx, g, pkt } = setup(zccd);
  const to = pkt(14, [100], 1);
  const b = pkt(0, [200], 2);
  const c = pkt(0, [300], 3);
  t.true(skbTryCoalesce(to.skb, b.skb).ok);
  kfreeSkbPartial(b.skb, false);
  t.deepEqual([to.skb.shinfo.zccd, to.skb.shinfo.zccd2].map((z) => (z as Zccd).count), [1, 1]);
  t.is(to.skb.shinfo.zccd2, b.skb === to.skb ? null : to.skb.shinfo.zccd2);
  t.deepEqual(g.log, [], 'b\'s pages now live in `to`, under its descriptor');
  t.deepEqual(skbTryCoalesce(to.skb, c.skb), { ok: false }, 'c\'s descriptor would be a third');
  t.is(ctx.stats.coalesceRefused, 1);
  t.is(to.skb.shinfo.nrFrags, 2, 'nothing moved');
  // Descriptors `to` already references need no slot.
  const n = pskbCopy(to.skb);
  t.true(zccd.mayMoveFrags(n, to.skb));
  t.false(zccd.mayMoveFrags(c.skb, n));
  kfreeSkb(n);
  kfreeSkb(c.skb);
  t.deepEqual(ids(g.log), ids(c.pages));
  kfreeSkb(to.skb);
  t.deepEqual(ids(g.log), ids([...c.pages, ...to.pages, ...b.pages]));
});

test('zccd and token: skb_shift carries the descriptor / the older token into the target, so the source may die', (t) => {
  for (const design of [zccd, token]) {
    const { g, pkt } = setup(design);
    const from = pkt(0, [1000, 1000], 1);
    const to = pkt(14, [500], 2);
    t.is(skbShift(to.skb, from.skb, 1200), 1200, design.name);
    const live = (): Set<Page> => reachablePages([to.skb, from.skb]);
    t.deepEqual(g.log.filter((p) => live().has(p)), [], design.name);
    kfreeSkb(from.skb);
    t.deepEqual(g.log.filter((p) => reachablePages([to.skb]).has(p)), [], `${design.name}: from's pages in \`to\` stay mapped`);
    kfreeSkb(to.skb);
    t.deepEqual(ids(g.log), ids([...from.pages, ...to.pages]), design.name);
  }
});

test('orphan of an skb whose frags were all pulled linear still drops its zero-copy state (zccd, token)', (t) => {
  for (const design of [zccd, token]) {
    const { ctx, g } = setup(design);
    const a = buildSkb(ctx, g, { header: 14, tailroom: 400, frags: [F(100), F(200)] });
    t.true(__pskbPullTail(a.skb, 300));
    t.deepEqual(g.log, [], `${design.name}: the pulled pages wait for the shinfo`);
    t.is(skbOrphanFrags(a.skb), 0);
    t.deepEqual(ids(g.log), ids(a.pages), `${design.name}: nothing zero-copy left, so everything goes back`);
    kfreeSkb(a.skb);
  }
});

// ---- net_priv ----

test('net_priv: struct page net_priv tags the owner; callbacks run for tagged pages only; all pages back together', (t) => {
  const { ctx, g } = setup(netPriv);
  const a = buildSkb(ctx, g, { header: 14, tailroom: 200, frags: [F(100), F(200), F(300)] });
  t.true(a.pages.every((p) => p.priv !== null && p.priv === a.pages[0]!.priv));
  const before = ctx.stats.netPageCallbacks;
  const local = localPage(ctx, 9);
  getPage(ctx, local);
  putPage(ctx, local);
  t.is(ctx.stats.netPageCallbacks, before, 'an untagged page runs no callback');
  t.true(__pskbPullTail(a.skb, 100), 'pulls p0 out entirely (one put_page, no expand: there is tailroom)');
  t.is(ctx.stats.netPageCallbacks, before + 1);
  t.deepEqual(g.log, [], 'the owner still has references: nothing back yet');
  kfreeSkb(a.skb);
  t.deepEqual(ids(g.log), ids(a.pages));
  t.true(a.pages.every((p) => p.priv === null), 'untagged when the owner completes');
  t.is(ctx.stats.hashLookups, 0);
});

test('net_priv-hash: no struct page field; the table is looked up on every get_page and put_page', (t) => {
  const { ctx, g, pkt } = setup(netPrivHash);
  const a = pkt(14, [100, 200]);
  t.true(a.pages.every((p) => p.priv === null));
  const s = ctx.stats;
  const before = { lookups: s.hashLookups, ops: s.pageGets + s.pagePuts, cb: s.netPageCallbacks };
  const n = pskbCopy(a.skb);
  const local = localPage(ctx, 3);
  getPage(ctx, local);
  putPage(ctx, local);
  putPage(ctx, local);
  kfreeSkb(a.skb);
  kfreeSkb(n);
  t.is(s.hashLookups - before.lookups, s.pageGets + s.pagePuts - before.ops, 'one lookup per get and per put, tagged or not');
  t.is(s.netPageCallbacks - before.cb, 2 + 2 + 2, 'callbacks only for the tagged pages: 2 gets (pskb_copy), 4 puts');
  t.deepEqual(ids(g.log), ids(a.pages));
  t.is((ctx.designState as { table: Map<Page, unknown> }).table.size, 0);
});

// ---- page-destructor ----

test('page-destructor: a page goes back exactly when its count falls to the mapping\'s reference, then rebinds cleanly', (t) => {
  const { ctx, g, pkt } = setup(pageDestructor);
  const a = pkt(14, [100, 200]);
  const [p0, p1] = a.pages as [Page, Page];
  const n = pskbCopy(a.skb);
  t.is(p0.count, 3);
  kfreeSkb(a.skb);
  t.deepEqual(g.log, []);
  t.true(__pskbPullTail(n, 100));
  t.deepEqual(g.log, [p0], 'p0 left the last skb: back at once');
  t.is(p0.count, 1);
  t.is(p0.priv, null);
  unbindForeignPage(ctx, p0);
  bindForeignPage(p0, new Uint8Array(4096), { domid: 1, gref: 999 });
  t.is(p0.count, 1);
  kfreeSkb(n);
  t.deepEqual(g.log, [p0, p1]);
});

test('bindForeignPage refuses a page still tagged by a design (its old owner would account the new grant)', (t) => {
  const ctx = newCtx(netPriv);
  const p = foreignPage(ctx, 1);
  p.priv = { owner: 'a packet that never completed' };
  t.throws(() => bindForeignPage(p, new Uint8Array(4096), { domid: 1, gref: 5 }), {
    message: `bindForeignPage: page ${p.id} still carries release-design state for grant 1:${p.foreign!.gref}`,
  });
});

// ---- token ----

test('token: finish callbacks run in open order; a younger token waits for every older one', (t) => {
  for (const design of [token, tokenAlloc]) {
    const { ctx, g, pkt } = setup(design);
    const a = pkt(14, [100], 1);
    const b = pkt(14, [200], 2);
    kfreeSkb(b.skb);
    t.deepEqual(g.log, [], `${design.name}: b's io_count is 0 but a's token is still open`);
    kfreeSkb(a.skb);
    t.deepEqual(g.log, [...a.pages, ...b.pages], `${design.name}: a then b`);
    t.is(ctx.stats.tokensFinished, 2);
  }
});

test('token: a merge keeps the older token; the younger one cannot finish first', (t) => {
  const { g, pkt } = setup(token);
  const old = pkt(0, [300], 1);
  const to = pkt(14, [100], 2);
  const t1 = old.skb.shinfo.transactionToken as TransactionToken;
  t.true(skbTryCoalesce(to.skb, old.skb).ok);
  kfreeSkbPartial(old.skb, false);
  t.is(to.skb.shinfo.transactionToken, t1, 'the older token is inherited');
  t.deepEqual(g.log, []);
  kfreeSkb(to.skb);
  t.deepEqual(g.log, [...old.pages, ...to.pages]);
});

test('token embeds its tokens (a pool per sender); token-alloc allocates one per send', (t) => {
  const allocs = (design: ReleaseDesign): number => {
    const { ctx, pkt } = setup(design);
    for (let i = 0; i < 20; i++) kfreeSkb(pkt(14, [100], i).skb);
    return ctx.stats.designAllocs;
  };
  t.is(allocs(token), 1);
  t.is(allocs(tokenAlloc), 20);
});

// ---- ubuf ----

test('ubuf: local delivery (skb_orphan_frags_rx) copies and completes at once with success false; rusty keeps the frags', (t) => {
  const u = setup(ubuf);
  const a = u.pkt(14, [100, 200]);
  t.is(skbOrphanFragsRx(a.skb), 0);
  t.deepEqual(ids(u.g.log), ids(a.pages));
  t.deepEqual(u.g.flags, [false, false]);
  t.deepEqual(contentOf(a.skb), a.model);
  t.deepEqual([u.ctx.stats.zerocopyFail, u.ctx.stats.bytesCopied], [1, 300]);
  kfreeSkb(a.skb);
  const r = setup(rusty);
  const b = r.pkt(14, [100, 200]);
  t.is(skbOrphanFragsRx(b.skb), 0);
  t.deepEqual(r.g.log, []);
  t.true(b.skb.shinfo.frags[0]!.page === b.pages[0]);
  kfreeSkb(b.skb);
});

test('ubuf: pulling everything into the linear area completes with false; a partial pull or a trim does not complete', (t) => {
  const { ctx, g, pkt } = setup(ubuf);
  const a = pkt(14, [100, 200]);
  t.true(__pskbPullTail(a.skb, 150));
  t.is(pskbTrim(a.skb, 14 + 160), 0);
  t.deepEqual(g.log, [], 'p1 trimmed off, still no completion (held until the shinfo dies)');
  t.true(__pskbPullTail(a.skb, a.skb.dataLen));
  t.deepEqual(ids(g.log), ids(a.pages));
  t.deepEqual(g.flags, [false, false]);
  t.is(a.skb.shinfo.uarg, null);
  kfreeSkb(a.skb);
  t.deepEqual([ctx.stats.zerocopySuccess, ctx.stats.zerocopyFail], [0, 1]);
});

test('ubuf: skb_split shares the ubuf_info with a reference; the callback walks the slot chain once', (t) => {
  const { ctx, g, pkt } = setup(ubuf);
  const a = pkt(14, [1000, 1000, 1000]);
  const uarg = a.skb.shinfo.uarg as UbufInfo;
  const chain: Page[] = [];
  for (let u: UbufInfo | null = uarg; u !== null; u = u.ctx) chain.push(u.desc!);
  t.deepEqual(chain, a.pages, 'one descriptor per slot, in order');
  const b = allocSkb(ctx, 64);
  skbSplit(a.skb, b, 14 + 1500);
  t.is(b.shinfo.uarg, uarg);
  t.is(uarg.refcnt, 2);
  kfreeSkb(a.skb);
  t.deepEqual(g.log, []);
  kfreeSkb(b);
  t.deepEqual(g.log, a.pages);
  t.deepEqual(g.flags, [true, true, true]);
  t.deepEqual([ctx.stats.zerocopySuccess, ctx.stats.zerocopyFail], [1, 0]);
});

// ---- copy ----

test('copy: attach copies every attached frag into local pages and returns every grant at once (success false)', (t) => {
  const { ctx, g, pkt } = setup(copy);
  const a = pkt(14, [100, 200, 300]);
  t.deepEqual(g.log, a.pages);
  t.deepEqual(g.flags, [false, false, false]);
  t.is(ctx.stats.bytesCopied - 0, 600);
  t.true([0, 1, 2].every((i) => a.skb.shinfo.frags[i]!.page.foreign === null));
  t.deepEqual(contentOf(a.skb), a.model);
  kfreeSkb(a.skb);
});

// ---- rusty-page ----

test('rusty-page: a parent kept only by its children\'s orig references drops its frags at once', (t) => {
  const { ctx, g, pkt } = setup(rustyPage);
  const a = pkt(14, [1000, 1000, 1000]);
  const [p0, p1, p2] = a.pages as [Page, Page, Page];
  const b = allocSkb(ctx, 64);
  skbSplit(a.skb, b, 14 + 1500);
  const parent = a.skb.shinfo;
  t.is(b.shinfo.orig, parent);
  t.is(parent.origRefs, 1);
  kfreeSkb(a.skb);
  t.is(ctx.stats.parentDataDrops, 1);
  t.is(parent.nrFrags, 0, 'the dead parent holds no frag');
  t.deepEqual(g.log, [p0], 'p0 is nobody\'s any more: back at once');
  t.is(p1.count, 2, 'p1 is still read by skb1');
  kfreeSkb(b);
  t.deepEqual(g.log, [p0, p1, p2]);
  // Children that die first give their references back: the parent is dead once the last skb and the first child go.
  const c = pkt(14, [100], 2);
  const n1 = pskbCopy(c.skb);
  const n2 = pskbCopy(c.skb);
  kfreeSkb(n1);
  t.is(c.skb.shinfo.origRefs, 1);
  const cs = c.skb.shinfo;
  kfreeSkb(c.skb);
  t.is(cs.nrFrags, 0, 'dropped: only n2 reads the page now');
  t.is(ctx.stats.parentDataDrops, 2);
  kfreeSkb(n2);
  t.deepEqual(g.log, [p0, p1, p2, ...c.pages]);
});

test('rusty-page: a payload-only (nohdr) clone keeps the parent\'s frags alive next to a child', (t) => {
  const { g, pkt } = setup(rustyPage);
  const a = pkt(14, [1000, 1000]);
  const c = skbClone(a.skb);
  skbHeaderRelease(c); // a TCP clone: payload-only reference, same 0x10001 as an orig
  const n = pskbCopy(a.skb);
  kfreeSkb(a.skb);
  t.is(c.shinfo.nrFrags, 2, 'not mistaken for a dead parent');
  t.deepEqual(contentOf(c), a.model);
  t.deepEqual(g.log, []);
  kfreeSkb(n);
  kfreeSkb(c);
  t.deepEqual(ids(g.log), ids(a.pages));
});

test('rusty-page: a page returned early and re-bound to a new grant is not returned again by its old destructor', (t) => {
  const { ctx, g } = setup(rustyPage);
  const a = buildSkb(ctx, g, { header: 14, tailroom: 200, frags: [F(100), F(300)], seed: 1 });
  const [p0, p1] = a.pages as [Page, Page];
  t.true(__pskbPullTail(a.skb, 100), 'p0 pulled out of an uncloned skb');
  t.deepEqual(g.log, [p0]);
  // Netback unmaps, answers, and maps the next request's grant onto the same Page object.
  unbindForeignPage(ctx, p0);
  bindForeignPage(p0, new Uint8Array(4096), { domid: 1, gref: 4242 });
  getPage(ctx, p0);
  const b = allocSkb(ctx, 64);
  buildInto(b, p0, 50);
  rustyPage.attach(b, [p0], g);
  kfreeSkb(a.skb);
  t.deepEqual(g.log, [p0, p1], 'a\'s destructor skips the slot it already returned');
  kfreeSkb(b);
  t.deepEqual(g.log, [p0, p1, p0], 'the new grant on p0 comes back with b');
});

function buildInto(skb: SkBuff, page: Page, size: number): void {
  skb.shinfo.frags[0]!.page = page;
  skb.shinfo.frags[0]!.offset = 0;
  skb.shinfo.frags[0]!.size = size;
  skb.shinfo.nrFrags = 1;
  skb.len += size;
  skb.dataLen += size;
}

test('per-page designs never return a page that a live skb reaches, also through a frag_list chain', (t) => {
  for (const design of [pageDestructor, rustyPage, netPriv, netPrivHash]) {
    const ctx = newCtx(design);
    const g = new Guest();
    const top = buildSkb(ctx, g, { header: 14, frags: [F(400)], seed: 1 });
    const child = buildSkb(ctx, g, { header: 0, frags: [F(500), F(600)], seed: 2 });
    top.skb.shinfo.fragList = child.skb;
    top.skb.len += child.skb.len;
    top.skb.dataLen += child.skb.len;
    const n = pskbCopy(top.skb);
    kfreeSkb(top.skb);
    const live = reachablePages([n]);
    t.deepEqual(g.log.filter((p) => live.has(p)), [], design.name);
    kfreeSkb(n);
    t.deepEqual(ids(g.log), ids([...top.pages, ...child.pages]), design.name);
  }
});

test('foreignPage fixture pages can be attached by every design and come back exactly once after a free', (t) => {
  for (const design of DESIGNS) {
    const ctx = newCtx(design);
    const g = new Guest();
    const skb = allocSkb(ctx, 64);
    const p = foreignPage(ctx, 5);
    getPage(ctx, p);
    buildInto(skb, p, 64);
    design.attach(skb, [p], g);
    kfreeSkb(skb);
    t.deepEqual(g.log, [p], design.name);
    t.is(p.count, 1, design.name);
  }
});
