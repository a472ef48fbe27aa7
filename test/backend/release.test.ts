// Release designs: WHEN the sink receives each foreign page. The seed-002 objections (Herbert Xu) as named
// regressions: rusty (seed 001 with orig parent refs) returns each grant exactly when no live skb can read its
// page; naive (seed 001 without skb_ref_data_parent) returns it while a live skb still has it in its frags.
import test from 'ava';
import { testProp, fc } from '@fast-check/ava';
import type { Page } from '../../backend/page.js';
import { GrantRelease, designByName, grantDestructor, naive, rusty, type ReleaseDesign } from '../../backend/release.js';
import {
  SKB_DATAREF_SHIFT,
  __pskbPullTail,
  __skbPull,
  allocSkb,
  consumeSkb,
  kfreeSkb,
  kfreeSkbPartial,
  pskbCopy,
  pskbExpandHead,
  skbCheck,
  skbClone,
  skbFragListAppend,
  skbReserve,
  skbSegment,
  skbShift,
  skbSplit,
  skbTryCoalesce,
  tcpTrimHead,
  type SkBuff,
} from '../../backend/skbuff.js';
import { FakeGuest, buildSkb, contentOf, newCtx, reachablePages, type FragSpec } from './skb-fixtures.js';

/** Live roots and the guest; `op` runs one stack operation and returns the pages released early by it. */
class World {
  readonly guest = new FakeGuest();
  readonly roots = new Set<SkBuff>();
  readonly ctx;
  constructor(design: ReleaseDesign) {
    this.ctx = newCtx(design);
  }
  build(opts: { header: number; frags: readonly FragSpec[]; tailroom?: number; seed?: number }): { skb: SkBuff; pages: Page[]; model: Uint8Array } {
    const b = buildSkb(this.ctx, this.guest, opts);
    this.roots.add(b.skb);
    return b;
  }
  /** Runs a step; the sink queue is "flushed" after it: returns released pages still reachable from a live root. */
  op(fn: () => void): Page[] {
    const before = this.guest.log.length;
    fn();
    const live = reachablePages(this.roots);
    return this.guest.log.slice(before).filter((p) => live.has(p));
  }
  free(skb: SkBuff): Page[] {
    return this.op(() => {
      this.roots.delete(skb);
      kfreeSkb(skb);
    });
  }
}

const ids = (pages: readonly Page[]): number[] => pages.map((p) => p.id).sort((a, b) => a - b);
const F = (offset: number, size: number): FragSpec => ({ offset, size });

test('designByName finds rusty and naive', (t) => {
  t.is(designByName('rusty'), rusty);
  t.is(designByName('naive'), naive);
  t.is(designByName('bogus'), undefined);
});

test('attach: one shared destructor function, a pooled arg; each page to the sink exactly once', (t) => {
  const w = new World(rusty);
  const a = w.build({ header: 10, frags: [F(0, 10), F(0, 20)] });
  const b = w.build({ header: 10, frags: [F(0, 30)], seed: 2 });
  t.is(a.skb.shinfo.destructor, grantDestructor);
  t.is(b.skb.shinfo.destructor, a.skb.shinfo.destructor, 'no closure per packet');
  const arg = a.skb.shinfo.destructorArg;
  t.true(arg instanceof GrantRelease);
  t.deepEqual(w.free(a.skb), []);
  t.deepEqual(w.guest.ids(), a.pages.map((p) => p.id));
  t.deepEqual(a.pages.map((p) => p.count), [1, 1], 'at release only the mapping holds the page');
  t.is(w.ctx.destructorArgPool[0], arg, 'arg recycled');
  const c = w.build({ header: 10, frags: [F(0, 5)], seed: 3 });
  t.is(c.skb.shinfo.destructorArg, arg, 'and reused by the next packet');
  t.throws(() => rusty.attach(c.skb, c.pages, w.guest), { message: 'attach: shinfo already has a destructor' });
  w.free(b.skb);
  w.free(c.skb);
  t.deepEqual([...w.guest.returned.values()], [1, 1, 1, 1]);
  t.is(w.ctx.stats.destructorCalls, 3);
});

test('a clone alone shares the shinfo: the grant goes back after the last of the two (both designs)', (t) => {
  for (const design of [rusty, naive]) {
    const w = new World(design);
    const a = w.build({ header: 10, frags: [F(0, 100)] });
    const c = skbClone(a.skb);
    w.roots.add(c);
    t.deepEqual(w.free(a.skb), []);
    t.deepEqual(w.guest.ids(), []);
    t.deepEqual(w.free(c), []);
    t.deepEqual(w.guest.ids(), ids(a.pages));
  }
});

test('regression: pskb_expand_head on a clone makes a private shinfo copy', (t) => {
  // Herbert Xu: "if any clone does a pskb_expand_head then it will get its own private copy of the shared info.
  // So you can't use the shared info to ref count the pages in it."
  const r = new World(rusty);
  const a = r.build({ header: 14, frags: [F(0, 1000), F(100, 500), F(0, 4096)] });
  const c = skbClone(a.skb);
  r.roots.add(c);
  t.deepEqual(r.op(() => pskbExpandHead(c, 32, 0)), []);
  t.is(c.shinfo.orig, a.skb.shinfo, 'the private copy holds a parent ref');
  t.is(a.skb.shinfo.dataref, 2 + (1 << SKB_DATAREF_SHIFT));
  t.is(c.shinfo.destructor, null, 'seed 001 clears the copy\'s destructor');
  t.deepEqual(r.free(a.skb), []);
  t.deepEqual(r.guest.ids(), [], 'nothing returned while the expanded clone lives');
  t.deepEqual(contentOf(c), a.model);
  t.deepEqual(r.free(c), []);
  t.deepEqual(r.guest.ids(), ids(a.pages));
  t.deepEqual(a.pages.map((p) => p.count), [1, 1, 1]);

  const n = new World(naive);
  const na = n.build({ header: 14, frags: [F(0, 1000), F(100, 500), F(0, 4096)] });
  const nc = skbClone(na.skb);
  n.roots.add(nc);
  n.op(() => pskbExpandHead(nc, 32, 0));
  t.deepEqual(ids(n.free(na.skb)), ids(na.pages), 'naive: every grant returned while the clone\'s private shinfo has it');
  t.deepEqual(na.pages.map((p) => p.count), [2, 2, 2]);
});

test('regression: __pskb_pull_tail drops fully pulled pages', (t) => {
  // Herbert Xu: "The pages that were originally in the shared_info at creation time may no longer be there by the
  // time it's freed because of pskb_pull_tail." The destructor owns its page list, not the frags it ends with.
  const r = new World(rusty);
  const a = r.build({ header: 14, tailroom: 400, frags: [F(0, 100), F(0, 300), F(0, 50)] });
  const c = skbClone(a.skb);
  r.roots.add(c);
  t.deepEqual(r.op(() => t.true(__pskbPullTail(c, 100 + 20))), []);
  t.false(c.shinfo.frags.slice(0, c.shinfo.nrFrags).some((f) => f.page === a.pages[0]), 'page 0 pulled out of the clone');
  t.deepEqual(r.free(a.skb), []);
  t.deepEqual(r.guest.ids(), []);
  t.deepEqual(r.free(c), []);
  t.deepEqual(r.guest.ids(), ids(a.pages), 'the pulled page is returned too: no leak');

  // Uncloned: the pulled page stays held by the destructor until the skb dies (late, not early).
  const u = new World(rusty);
  const b = u.build({ header: 14, tailroom: 400, frags: [F(0, 100), F(0, 300)] });
  t.deepEqual(u.op(() => t.true(__pskbPullTail(b.skb, 100))), []);
  t.is(b.pages[0]!.count, 1);
  t.deepEqual(u.guest.ids(), []);
  u.free(b.skb);
  t.deepEqual(u.guest.ids(), ids(b.pages));

  const n = new World(naive);
  const na = n.build({ header: 14, tailroom: 400, frags: [F(0, 100), F(0, 300), F(0, 50)] });
  const nc = skbClone(na.skb);
  n.roots.add(nc);
  n.op(() => __pskbPullTail(nc, 120));
  t.deepEqual(n.free(na.skb), [na.pages[1]!, na.pages[2]!], 'naive: the pages the clone still holds go back early');
});

test('regression: skb_split', (t) => {
  const r = new World(rusty);
  const a = r.build({ header: 14, frags: [F(0, 1000), F(0, 1000), F(0, 1000)] });
  const skb1 = allocSkb(r.ctx, 64);
  r.roots.add(skb1);
  t.deepEqual(r.op(() => skbSplit(a.skb, skb1, 14 + 1500)), []);
  t.is(skb1.shinfo.orig, a.skb.shinfo);
  t.deepEqual(r.free(a.skb), [], 'the acked head part frees; the tail part keeps the grants');
  t.deepEqual(r.guest.ids(), []);
  t.deepEqual(contentOf(skb1), a.model.subarray(1514));
  t.deepEqual(r.free(skb1), []);
  t.deepEqual(r.guest.ids(), ids(a.pages));

  const n = new World(naive);
  const na = n.build({ header: 14, frags: [F(0, 1000), F(0, 1000), F(0, 1000)] });
  const n1 = allocSkb(n.ctx, 64);
  n.roots.add(n1);
  n.op(() => skbSplit(na.skb, n1, 14 + 1500));
  t.deepEqual(ids(n.free(na.skb)), ids([na.pages[1]!, na.pages[2]!]), 'naive: skb1\'s pages go back with skb');
});

test('regression: skb_segment GSO segments share frags', (t) => {
  const run = (design: ReleaseDesign, sg: boolean) => {
    const w = new World(design);
    const a = w.build({ header: 54, frags: [F(0, 1400), F(0, 1400), F(0, 1400)] });
    const skb = a.skb;
    skb.macHeader = skb.data;
    skb.networkHeader = skb.data + 14;
    skb.transportHeader = skb.data + 34;
    __skbPull(skb, 54);
    skb.shinfo.gsoSize = 1000;
    let segs: SkBuff[] = [];
    const early1 = w.op(() => {
      segs = skbSegment(skb, { sg }) as SkBuff[];
      for (const s of segs) w.roots.add(s);
    });
    const early2 = w.op(() => {
      w.roots.delete(skb);
      consumeSkb(skb);
    });
    const whenConsumed = w.guest.ids();
    const early3: Page[] = [];
    const returnedAfter: number[][] = [];
    for (const s of segs) {
      early3.push(...w.free(s));
      returnedAfter.push(w.guest.ids());
    }
    return { a, segs, early: [...early1, ...early2, ...early3], whenConsumed, returnedAfter };
  };
  const r = run(rusty, true);
  t.is(r.segs.length, 5);
  t.deepEqual(r.early, []);
  t.deepEqual(r.whenConsumed, [], 'segments keep the original shinfo alive');
  t.deepEqual(r.returnedAfter.slice(0, 4), [[], [], [], []]);
  t.deepEqual(r.returnedAfter[4], ids(r.a.pages), 'returned with the last segment');

  const copied = run(rusty, false);
  t.deepEqual(copied.early, []);
  t.deepEqual(copied.whenConsumed, ids(copied.a.pages), 'without sg the segments copied: grants go back at once');

  const n = run(naive, true);
  t.deepEqual(ids(n.early), ids(n.a.pages), 'naive: returned at consume_skb while segments hold the pages');
});

test('regression: coalesce/shift refused for destructor skbs', (t) => {
  const setup = (design: ReleaseDesign) => {
    const w = new World(design);
    const to = w.build({ header: 0, frags: [F(0, 100)], seed: 1 });
    const from = w.build({ header: 14, frags: [F(0, 1000), F(0, 500)], seed: 2 });
    w.op(() => tcpTrimHead(from.skb, 14)); // no linear data left: frags could move
    return { w, to, from };
  };
  const r = setup(rusty);
  const rModel = contentOf(r.to.skb);
  t.deepEqual(skbTryCoalesce(r.to.skb, r.from.skb), { ok: false });
  t.is(skbShift(r.to.skb, r.from.skb, 600), 0);
  t.deepEqual([r.w.ctx.stats.coalesceRefused, r.w.ctx.stats.shiftRefused], [1, 1]);
  t.deepEqual(contentOf(r.to.skb), rModel, 'nothing moved');
  t.is(r.to.skb.shinfo.nrFrags, 1);
  // The copy-into-tailroom path moves no page ref and stays allowed.
  const lin = r.w.build({ header: 10, tailroom: 2000, frags: [], seed: 3 });
  t.true(skbTryCoalesce(lin.skb, r.from.skb).ok);
  t.deepEqual(r.w.op(() => {
    r.w.roots.delete(r.from.skb);
    kfreeSkbPartial(r.from.skb, false);
  }), []);
  t.deepEqual(r.w.guest.ids(), ids(r.from.pages), 'copied: the grants go back at once');

  const n = setup(naive);
  t.true(skbTryCoalesce(n.to.skb, n.from.skb).ok);
  t.deepEqual(ids(n.w.op(() => {
    n.w.roots.delete(n.from.skb);
    kfreeSkbPartial(n.from.skb, false);
  })), ids(n.from.pages), 'naive: from\'s destructor returns the pages now in `to`');

  const s = setup(naive);
  t.is(skbShift(s.to.skb, s.from.skb, 1200), 1200);
  t.deepEqual(ids(s.w.free(s.from.skb)), ids(s.from.pages), 'naive: shifted pages go back with the emptied skb');
});

test('pskb_copy of an skb whose pages all sit in its frag_list still takes the parent ref (beyond seed 001)', (t) => {
  // Netback's frag_list overflow: one destructor on the head covers the frag_list skb's pages too.
  const w = new World(rusty);
  const top = buildSkb(w.ctx, null, { header: 14, frags: [] });
  const child = buildSkb(w.ctx, null, { header: 0, frags: [F(0, 800), F(0, 900)], seed: 2 });
  skbFragListAppend(top.skb, child.skb);
  rusty.attach(top.skb, child.pages, w.guest);
  w.roots.add(top.skb);
  const n = pskbCopy(top.skb);
  w.roots.add(n);
  t.is(n.shinfo.orig, top.skb.shinfo);
  t.deepEqual(w.free(top.skb), []);
  t.deepEqual(w.guest.ids(), []);
  t.deepEqual(w.free(n), []);
  t.deepEqual(w.guest.ids(), ids(child.pages));
});

test('skb_segment pins a frag_list skb with its own destructor, copying earlier page data when the orig slot is taken', (t) => {
  const w = new World(rusty);
  const top = w.build({ header: 54, frags: [F(0, 300)] });
  const child = buildSkb(w.ctx, w.guest, { header: 0, frags: [F(0, 500)], seed: 2 });
  skbFragListAppend(top.skb, child.skb);
  const skb = top.skb;
  skb.macHeader = skb.data;
  __skbPull(skb, 54);
  skb.shinfo.gsoSize = 1000;
  let segs: SkBuff[] = [];
  t.deepEqual(w.op(() => {
    segs = skbSegment(skb, { sg: true }) as SkBuff[];
    for (const s of segs) w.roots.add(s);
  }), []);
  t.is(segs.length, 1);
  const seg = segs[0]!;
  t.is(seg.shinfo.orig, child.skb.shinfo, 'the second parent wins the orig slot');
  t.true(seg.shinfo.frags[0]!.page.foreign === null, 'the first parent\'s page data was copied');
  t.is(seg.shinfo.frags[1]!.page, child.pages[0]);
  t.deepEqual(w.free(skb), []);
  t.deepEqual(w.guest.ids(), ids(top.pages), 'the head\'s grant is free: the segment holds a copy');
  t.deepEqual(w.free(seg), []);
  t.deepEqual(w.guest.ids(), ids([...top.pages, ...child.pages]));
});

test('rusty.mayMoveFrags refuses a destructor or orig on either side; naive always allows', (t) => {
  const w = new World(rusty);
  const plain = buildSkb(w.ctx, null, { header: 0, frags: [{ offset: 0, size: 10, local: true }] }).skb;
  const plain2 = buildSkb(w.ctx, null, { header: 0, frags: [{ offset: 0, size: 10, local: true }] }).skb;
  const attached = w.build({ header: 0, frags: [F(0, 10)] }).skb;
  const child = pskbCopy(attached);
  t.true(rusty.mayMoveFrags(plain, plain2));
  t.false(rusty.mayMoveFrags(attached, plain));
  t.false(rusty.mayMoveFrags(plain, attached));
  t.false(rusty.mayMoveFrags(child, plain), 'orig only');
  t.true(naive.mayMoveFrags(attached, child));
});

// ---- property: random op sequences balance every reference, and rusty returns each grant once, never early ----

const NOPS = 17;
const MAX_LIVE = 8;
const HDR = 54;

interface H {
  skb: SkBuff;
  model: Uint8Array;
}

function cat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const o = new Uint8Array(a.length + b.length);
  o.set(a, 0);
  o.set(b, a.length);
  return o;
}

function runOps(ops: readonly [number, number, number, number][], t: { fail(m: string): void }): { violations: string[]; w: World; foreign: Set<Page> } {
  const w = new World(rusty);
  const hs: H[] = [];
  const foreign = new Set<Page>();
  const violations: string[] = [];
  const returned = new Map<Page, number>();
  const pick = (a: number): H | undefined => hs[a % Math.max(1, hs.length)];
  const sync = (): void => {
    w.roots.clear();
    for (const h of hs) w.roots.add(h.skb);
  };
  const unshare = (h: H): void => {
    if (hs.filter((x) => x.skb === h.skb).length < 2) return;
    const n = skbClone(h.skb);
    kfreeSkb(h.skb);
    h.skb = n;
  };
  const unclone = (h: H): void => void pskbExpandHead(h.skb, 0, 0);
  const drop = (h: H): void => {
    hs.splice(hs.indexOf(h), 1);
    kfreeSkb(h.skb);
  };
  const build = (a: number, b: number): void => {
    let x = a;
    const rnd = (n: number): number => {
      x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0;
      return x % n;
    };
    const frags: FragSpec[] = [];
    for (let i = rnd(6); i > 0; i--) {
      const size = 1 + rnd(1500);
      frags.push({ offset: rnd(4097 - size), size, local: (b & 4) === 4 || rnd(4) === 0 });
    }
    const bb = buildSkb(w.ctx, w.guest, { header: rnd(4) === 0 ? 0 : 1 + rnd(127), tailroom: rnd(3) === 0 ? rnd(3000) : rnd(100), frags, fclone: (b & 2) === 2, seed: a & 0xffff });
    for (const p of bb.pages) foreign.add(p);
    let model = bb.model;
    if ((b & 1) === 1) {
      const c = buildSkb(w.ctx, w.guest, { header: rnd(3) === 0 ? 1 + rnd(40) : 0, frags: [{ offset: 0, size: 1 + rnd(2000) }], seed: (a >>> 16) + 7 });
      for (const p of c.pages) foreign.add(p);
      bb.skb.shinfo.fragList = c.skb;
      bb.skb.len += c.skb.len;
      bb.skb.dataLen += c.skb.len;
      model = cat(model, c.model);
    }
    hs.push({ skb: bb.skb, model });
  };

  for (const [kind, a, b, c] of ops) {
    if (hs.length >= MAX_LIVE) drop(hs[a % hs.length]!);
    const before = w.guest.log.length;
    const h = pick(a);
    const h2 = hs.length > 1 && h !== undefined ? hs[(hs.indexOf(h) + 1 + (b % (hs.length - 1))) % hs.length] : undefined;
    switch (h === undefined ? 0 : kind) {
      case 0:
        build(a, b);
        break;
      case 1:
        hs.push({ skb: skbClone(h!.skb), model: h!.model });
        break;
      case 2:
        skbGet(h!.skb);
        hs.push({ skb: h!.skb, model: h!.model });
        break;
      case 3:
        hs.push({ skb: (c & 1) === 0 ? pskbCopy(h!.skb) : skbCopyOf(h!.skb), model: h!.model });
        break;
      case 4:
        unshare(h!);
        pskbExpandHead(h!.skb, b % 100, c % 100);
        break;
      case 5:
        unshare(h!);
        if (h!.skb.dataLen > 0) __pskbPullTail(h!.skb, 1 + (b % h!.skb.dataLen));
        break;
      case 6:
        unshare(h!);
        if (h!.skb.len > 0) {
          const len = b % h!.skb.len;
          pskbTrimOf(h!.skb, len);
          h!.model = h!.model.slice(0, len);
        }
        break;
      case 7:
        unshare(h!);
        if (h!.skb.len > 1 && h!.skb.shinfo.fragList === null) {
          const len = 1 + (b % (h!.skb.len - 1));
          tcpTrimHead(h!.skb, len);
          h!.model = h!.model.slice(len);
        }
        break;
      case 8:
        unshare(h!);
        if (h!.skb.len > 1 && h!.skb.shinfo.fragList === null) {
          unclone(h!);
          const len = 1 + (b % (h!.skb.len - 1));
          const skb1 = allocSkb(w.ctx, 32 + Math.max(0, h!.skb.len - h!.skb.dataLen - len));
          skbReserve(skb1, 32);
          skbSplit(h!.skb, skb1, len);
          hs.push({ skb: skb1, model: h!.model.slice(len) });
          h!.model = h!.model.slice(0, len);
        }
        break;
      case 9: {
        unshare(h!);
        const skb = h!.skb;
        if (skb.len <= HDR || !pskbMayPullOf(skb, HDR)) break;
        skb.macHeader = skb.data;
        __skbPull(skb, HDR);
        const gso = Math.max(1 + (b % skb.len), Math.ceil(skb.len / 6));
        skb.shinfo.gsoSize = gso;
        const res = skbSegment(skb, { sg: (c & 1) === 1 });
        skb.shinfo.gsoSize = 0;
        skbPushOf(skb, HDR);
        if (typeof res === 'number') break;
        const hdr = h!.model.subarray(0, HDR);
        res.forEach((seg, i) => hs.push({ skb: seg, model: cat(hdr, h!.model.subarray(HDR + i * gso, HDR + (i + 1) * gso)) }));
        if ((c & 2) === 2) drop(h!);
        while (hs.length > MAX_LIVE) drop(hs[0]!);
        break;
      }
      case 10:
        if (h2 === undefined || h2.skb === h!.skb) break;
        unshare(h!);
        unshare(h2);
        if (skbTryCoalesce(h!.skb, h2.skb).ok) {
          h!.model = cat(h!.model, h2.model);
          hs.splice(hs.indexOf(h2), 1);
          kfreeSkbPartial(h2.skb, false);
        }
        break;
      case 11:
        if (h2 === undefined || h2.skb === h!.skb || h2.skb.len === 0) break;
        if (h!.skb.shinfo.fragList !== null || h2.skb.shinfo.fragList !== null) break;
        unshare(h!);
        unshare(h2);
        unclone(h!);
        unclone(h2);
        {
          const n = skbShift(h!.skb, h2.skb, 1 + (c % h2.skb.len));
          h!.model = cat(h!.model, h2.model.subarray(0, n));
          h2.model = h2.model.slice(n);
        }
        break;
      case 12:
        unshare(h!);
        skbOrphanFragsOf(h!.skb);
        break;
      case 13:
        skbLinearizeOf((unshare(h!), h!.skb));
        break;
      case 14:
        if (h2 === undefined || h2.skb === h!.skb || h2.skb.shinfo.fragList !== null || hs.some((x) => x !== h2 && x.skb === h2.skb)) break;
        unshare(h!);
        unclone(h!);
        skbFragListAppend(h!.skb, h2.skb);
        h!.model = cat(h!.model, h2.model);
        hs.splice(hs.indexOf(h2), 1);
        break;
      default:
        drop(h!);
    }
    // "Flush" the sink queue between operations: check what it returned against the live structure.
    sync();
    const live = reachablePages(w.roots);
    for (const p of w.guest.log.slice(before)) {
      const n = (returned.get(p) ?? 0) + 1;
      returned.set(p, n);
      if (n > 1) violations.push(`page ${p.id} returned twice`);
      if (live.has(p)) violations.push(`page ${p.id} returned while reachable (op ${kind})`);
      if (p.count !== 1) violations.push(`page ${p.id} returned with count ${p.count}`);
    }
    for (const x of hs) {
      skbCheck(x.skb);
      const got = contentOf(x.skb);
      if (got.length !== x.model.length || got.some((v, i) => v !== x.model[i])) {
        t.fail(`content mismatch after op ${kind}`);
        return { violations, w, foreign };
      }
    }
  }
  while (hs.length > 0) drop(hs[0]!);
  for (const p of w.guest.log) if (!returned.has(p)) returned.set(p, (returned.get(p) ?? 0) + 1);
  return { violations, w, foreign };
}

// Thin wrappers keep the op table readable.
import { pskbMayPull, pskbTrim, skbCopy, skbGet, skbLinearize, skbOrphanFrags, skbPush } from '../../backend/skbuff.js';
const skbCopyOf = skbCopy;
const pskbTrimOf = (skb: SkBuff, len: number): void => void pskbTrim(skb, len);
const pskbMayPullOf = pskbMayPull;
const skbPushOf = (skb: SkBuff, len: number): void => void skbPush(skb, len);
const skbOrphanFragsOf = (skb: SkBuff): void => void skbOrphanFrags(skb);
const skbLinearizeOf = (skb: SkBuff): void => void skbLinearize(skb);

testProp(
  'rusty: random op sequences return every grant exactly once, never while reachable, and balance every reference',
  [fc.array(fc.tuple(fc.nat(NOPS), fc.nat(), fc.nat(), fc.nat()), { minLength: 1, maxLength: 40 })],
  (t, ops) => {
    const { violations, w, foreign } = runOps(ops, t);
    t.deepEqual(violations, []);
    const s = w.ctx.stats;
    t.is(s.skbAllocs, s.skbFrees, 'every skb freed');
    t.is(s.shinfoAllocs, s.shinfoFrees, 'every shinfo freed');
    t.is(s.pageAllocs, s.pageFrees, 'every local page back in the pool');
    t.is(s.pageGets + s.pageAllocs, s.pagePuts, 'every page reference dropped');
    t.true(w.ctx.pages.free.every((p) => p.count === 0));
    for (const p of foreign) {
      t.is(w.guest.returned.get(p.id), 1, `foreign page ${p.id} returned exactly once`);
      t.is(p.count, 1, 'only the mapping holds it');
    }
    t.is(w.guest.log.length, foreign.size);
  },
  { numRuns: Number(process.env.SKB_RUNS ?? 150) },
);
